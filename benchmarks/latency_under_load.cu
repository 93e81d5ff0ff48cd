// What does a weight stream do to a dependent chain of loads running beside it? A standalone probe (of the
// package, only the streaming load of weight_stream.cuh).
// Question it answers: every variant that put weight bytes in flight during a latency-bound phase (attention's
// chain, the router tail) lost (benchmarks/NOTES.md, sessions 3-7). Is that because a deep burst of streaming
// loads queues every other load behind it, so that a shallower stream could keep HBM busy without slowing the
// chain? If so, a persistent decode kernel can overlap the next phase's weights with a chain, paced; if not,
// overlap has to keep chains off L2 / HBM altogether (shared or distributed shared memory only).
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Icsrc benchmarks/latency_under_load.cu \
//     -o latency_under_load && ./latency_under_load
// Stream: CTAs × warps, each warp reading its own contiguous span in batches of B 16-byte loads a lane
// (B × 512 B a warp in flight), 2 GB in all, each line once; in flight = CTAs × warps × B × 512 B. (Sessions 8-9's
// runs read a 1 GB buffer twice with warp w + N/2 starting on warp w's lines: half the stream hit L2, so their
// GB/s and depths are up to twice the DRAM's.)
// Chains (one thread, launched on another stream just before the stream kernel, running past its end):
//   L2    pointer chase over 512 KB held in L2 by a persisting access-policy window (ld.global.cg), like attention's
//         q / partial loads and the router tail's round trips (data another SM wrote a moment ago);
//   HBM   pointer chase over 256 MB, each run on lines no earlier run touched (every hop a miss), like a chain's
//         first touch of cold data. (Session 8's run restarted it at line 0 every time, so it hit L2.)
// A hop's time inside the middle 80 % of the stream's window is the chain under load; hops before the stream
// starts and after it ends are the idle figure.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <vector>

#include "cuda/weight_stream.cuh"
#include "cuda_check.h"


using gpt_oss::ld_stream;

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
  return t;
}

// stamps[0] = first CTA start (min), stamps[1] = last CTA end (max), in %globaltimer ns.
template <int B>
__global__ void stream_kernel(const uint4* __restrict__ buf, long chunks_per_warp, long buf_chunks,
                              unsigned* __restrict__ sink, unsigned long long* __restrict__ stamps) {
  if (threadIdx.x == 0) atomicMin(&stamps[0], global_ns());
  const int lane = threadIdx.x % 32;
  const long warp = blockIdx.x * static_cast<long>(blockDim.x / 32) + threadIdx.x / 32;
  const long first = warp * chunks_per_warp;
  uint32_t acc = 0;
  for (long c = 0; c < chunks_per_warp; c += B) {
    uint4 v[B];
#pragma unroll
    for (int i = 0; i < B; ++i) v[i] = ld_stream(buf + ((first + c + i) % buf_chunks) * 32 + lane);
#pragma unroll
    for (int i = 0; i < B; ++i) acc ^= v[i].x ^ v[i].y ^ v[i].z ^ v[i].w;
  }
  if (acc == 0x9e3779b9u) sink[0] = acc;  // keeps the loads
  __syncthreads();
  if (threadIdx.x == 0) atomicMax(&stamps[1], global_ns());
}

// The same stream by the TMA: one thread a CTA keeps `slots` bulk copies of `slot_bytes` (global → shared, one
// mbarrier each) in flight, re-issuing each as it lands. In flight = CTAs × slots × slot_bytes.
__global__ void stream_tma_kernel(const char* __restrict__ buf, long bytes_per_cta, long buf_bytes, int slots,
                                  int slot_bytes, unsigned long long* __restrict__ stamps) {
  extern __shared__ __align__(128) unsigned char ring[];
  __shared__ __align__(8) unsigned long long bars[16];
  if (threadIdx.x != 0) return;
  atomicMin(&stamps[0], global_ns());
  const unsigned ring_s = static_cast<unsigned>(__cvta_generic_to_shared(ring));
  const unsigned bar_s = static_cast<unsigned>(__cvta_generic_to_shared(bars));
  for (int s = 0; s < slots; ++s) asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(bar_s + 8 * s));
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  const long first = blockIdx.x * bytes_per_cta;
  const long copies = bytes_per_cta / slot_bytes;
  auto issue = [&](long c) {
    const int s = static_cast<int>(c % slots);
    const char* src = buf + (first + c * slot_bytes) % buf_bytes;
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar_s + 8 * s), "r"(slot_bytes)
                 : "memory");
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
            ring_s + s * slot_bytes),
        "l"(src), "r"(slot_bytes), "r"(bar_s + 8 * s)
        : "memory");
  };
  for (long c = 0; c < slots && c < copies; ++c) issue(c);
  for (long c = 0; c < copies; ++c) {
    const int s = static_cast<int>(c % slots);
    const unsigned parity = static_cast<unsigned>((c / slots) & 1);
    unsigned done = 0;
    while (!done) {
      asm volatile(
          "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
          : "=r"(done)
          : "r"(bar_s + 8 * s), "r"(parity)
          : "memory");
    }
    if (c + slots < copies) issue(c + slots);
  }
  atomicMax(&stamps[1], global_ns());
}

// One thread: hops of idx = next[idx] through L2 (ld.global.cg); times[k] = when hop 16·k finished. The chain
// goes on where the previous run left it (*cursor), so the HBM chain touches lines no earlier run cached.
__global__ void chase_kernel(const unsigned* __restrict__ next, unsigned* cursor, int hops,
                             unsigned long long* __restrict__ times) {
  unsigned idx = *cursor;
  times[0] = global_ns();
  for (int h = 1; h <= hops; ++h) {
    unsigned n;
    asm volatile("ld.global.cg.u32 %0, [%1];" : "=r"(n) : "l"(next + idx));
    idx = n;
    if (h % 16 == 0) times[h / 16] = global_ns() + (idx == 0xffffffffu);  // depends on the hop
  }
  *cursor = idx;
}

// A random single cycle over `lines` 128-byte lines (Sattolo), as u32 indices of each line's first word.
std::vector<unsigned> chase_array(size_t lines, unsigned seed) {
  std::vector<unsigned> order(lines);
  std::iota(order.begin(), order.end(), 0u);
  std::mt19937 rng(seed);
  for (size_t i = lines - 1; i > 0; --i) std::swap(order[i], order[std::uniform_int_distribution<size_t>(0, i - 1)(rng)]);
  std::vector<unsigned> next(lines * 32, 0);
  for (size_t i = 0; i < lines; ++i) next[static_cast<size_t>(order[i]) * 32] = order[(i + 1) % lines] * 32;
  return next;
}

struct Chain {
  const char* name;
  unsigned* next;
  unsigned* cursor;  // device: where the chain goes on
  int hops;
  cudaStream_t stream;
};

struct Result {
  double gbps, idle_ns, loaded_ns;
};

// Runs `launch_stream(stream)` (it returns the bytes it reads) with the chain beside it, started just before.
// Result: the stream's GB/s from its first CTA's start to its last CTA's end (stamps), the chain's mean hop outside
// and inside the middle 80 % of that window.
template <typename LaunchStream>
Result run(const Chain& chain, unsigned long long* stamps, unsigned long long* times, LaunchStream launch_stream) {
  const unsigned long long init[2] = {~0ull, 0ull};
  CK(cudaMemcpy(stamps, init, sizeof(init), cudaMemcpyHostToDevice));
  CK(cudaDeviceSynchronize());
  chase_kernel<<<1, 1, 0, chain.stream>>>(chain.next, chain.cursor, chain.hops, times);
  const double bytes = launch_stream();
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  unsigned long long st[2];
  CK(cudaMemcpy(st, stamps, sizeof(st), cudaMemcpyDeviceToHost));
  std::vector<unsigned long long> t(chain.hops / 16 + 1);
  CK(cudaMemcpy(t.data(), times, t.size() * sizeof(t[0]), cudaMemcpyDeviceToHost));
  const double window = static_cast<double>(st[1] - st[0]);
  const unsigned long long lo = st[0] + static_cast<unsigned long long>(0.1 * window);
  const unsigned long long hi = st[1] - static_cast<unsigned long long>(0.1 * window);
  double idle = 0, loaded = 0;
  long n_idle = 0, n_loaded = 0;
  for (size_t k = 1; k < t.size(); ++k) {
    const double ns = static_cast<double>(t[k] - t[k - 1]) / 16.0;
    if (t[k - 1] >= lo && t[k] <= hi) loaded += ns, ++n_loaded;
    else if (t[k] < st[0] || t[k - 1] > st[1]) idle += ns, ++n_idle;
  }
  return {bytes / window, n_idle ? idle / n_idle : -1.0, n_loaded ? loaded / n_loaded : -1.0};
}

// Register stream: 2 GB over ctas × warps, B chunks a warp in flight.
template <int B>
Result run_registers(const Chain& chain, const uint4* buf, long buf_chunks, int ctas, int warps, unsigned* sink,
                     unsigned long long* stamps, unsigned long long* times, cudaStream_t stream) {
  const long warps_total = static_cast<long>(ctas) * warps;
  const long per_warp = buf_chunks / warps_total / B * B;  // each line once: no two warps share a line
  return run(chain, stamps, times, [&] {
    stream_kernel<B><<<ctas, warps * 32, 0, stream>>>(buf, per_warp, buf_chunks, sink, stamps);
    return static_cast<double>(per_warp) * warps_total * 512.0;
  });
}

// TMA stream: 2 GB over ctas CTAs, `slots` bulk copies of slot_bytes a CTA in flight.
Result run_tma(const Chain& chain, const char* buf, long buf_bytes, int ctas, int slots, int slot_bytes,
               unsigned long long* stamps, unsigned long long* times, cudaStream_t stream) {
  const long per_cta = buf_bytes / ctas / slot_bytes * slot_bytes;
  return run(chain, stamps, times, [&] {
    stream_tma_kernel<<<ctas, 32, static_cast<size_t>(slots) * slot_bytes, stream>>>(buf, per_cta, buf_bytes, slots,
                                                                                       slot_bytes, stamps);
    return static_cast<double>(per_cta) * ctas;
  });
}

template <int B>
void sweep(const Chain* chains, int n_chains, const uint4* buf, long buf_chunks, int sms, unsigned* sink,
           unsigned long long* stamps, unsigned long long* times, cudaStream_t stream) {
  for (int per_sm : {1, 2}) {
    for (int warps : {4, 8, 16}) {
      const int ctas = sms * per_sm;
      const double in_flight_mb = static_cast<double>(ctas) * warps * B * 512 / 1e6;
      std::printf("%3d %6d %5d %6.2f", B, ctas, warps, in_flight_mb);
      for (int c = 0; c < n_chains; ++c) {
        const Result r = run_registers<B>(chains[c], buf, buf_chunks, ctas, warps, sink, stamps, times, stream);
        if (c == 0) std::printf(" %8.0f", r.gbps);
        std::printf(" %9.0f %9.0f", r.idle_ns, r.loaded_ns);
      }
      std::printf("\n");
    }
  }
}

int main() {
  int dev = 0, sms = 0;
  CK(cudaGetDevice(&dev));
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, dev));

  const size_t buf_bytes = size_t{2} << 30;
  uint4* buf = nullptr;
  CK(cudaMalloc(&buf, buf_bytes));
  CK(cudaMemset(buf, 1, buf_bytes));
  const long buf_chunks = static_cast<long>(buf_bytes / 512);

  const size_t l2_lines = 512 * 1024 / 128, hbm_lines = (size_t{256} << 20) / 128;
  unsigned *l2_next = nullptr, *hbm_next = nullptr;
  {
    const std::vector<unsigned> a = chase_array(l2_lines, 1), b = chase_array(hbm_lines, 2);
    CK(cudaMalloc(&l2_next, a.size() * 4));
    CK(cudaMalloc(&hbm_next, b.size() * 4));
    CK(cudaMemcpy(l2_next, a.data(), a.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(hbm_next, b.data(), b.size() * 4, cudaMemcpyHostToDevice));
  }
  cudaStream_t stream, l2_stream, hbm_stream;
  CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  CK(cudaStreamCreateWithFlags(&l2_stream, cudaStreamNonBlocking));
  CK(cudaStreamCreateWithFlags(&hbm_stream, cudaStreamNonBlocking));
  // Hold the L2 chain's 512 KB in L2 against the 2 GB stream: a persisting window on its stream.
  CK(cudaDeviceSetLimit(cudaLimitPersistingL2CacheSize, 4 << 20));
  cudaStreamAttrValue attr{};
  attr.accessPolicyWindow.base_ptr = l2_next;
  attr.accessPolicyWindow.num_bytes = l2_lines * 128;
  attr.accessPolicyWindow.hitRatio = 1.0f;
  attr.accessPolicyWindow.hitProp = cudaAccessPropertyPersisting;
  attr.accessPolicyWindow.missProp = cudaAccessPropertyStreaming;
  CK(cudaStreamSetAttribute(l2_stream, cudaStreamAttributeAccessPolicyWindow, &attr));

  unsigned* sink = nullptr;
  unsigned long long *stamps = nullptr, *times = nullptr;
  CK(cudaMalloc(&sink, 4));
  CK(cudaMalloc(&stamps, 16));
  const int max_hops = 16 * 1024;
  CK(cudaMalloc(&times, (max_hops / 16 + 1) * sizeof(unsigned long long)));
  // Hops: enough for each chain to outlast a 2 GB stream at its slowest (~1.5 ms).
  unsigned* cursors = nullptr;
  CK(cudaMalloc(&cursors, 2 * sizeof(unsigned)));
  CK(cudaMemset(cursors, 0, 2 * sizeof(unsigned)));
  // The HBM chain's 4096 hops a run walk on through its 2M-line cycle: ~500 runs before a line comes back.
  const Chain chains[2] = {{"L2", l2_next, cursors, 16 * 1024, l2_stream},
                           {"HBM", hbm_next, cursors + 1, 4 * 1024, hbm_stream}};
  chase_kernel<<<1, 1, 0, l2_stream>>>(l2_next, cursors, 4096, times);  // warm the L2 chain's lines
  CK(cudaDeviceSynchronize());

  std::printf("%s, %d SMs, L2 %d MB; stream 2 GB; chain ns a hop: idle (outside the stream) / loaded (inside)\n",
              prop.name, sms, prop.l2CacheSize >> 20);
  std::printf("%3s %6s %5s %6s %8s %9s %9s %9s %9s\n", "B", "CTAs", "warps", "MB fly", "GB/s", "L2 idle",
              "L2 load", "HBM idle", "HBM load");
  sweep<1>(chains, 2, buf, buf_chunks, sms, sink, stamps, times, stream);
  sweep<2>(chains, 2, buf, buf_chunks, sms, sink, stamps, times, stream);
  sweep<4>(chains, 2, buf, buf_chunks, sms, sink, stamps, times, stream);
  sweep<8>(chains, 2, buf, buf_chunks, sms, sink, stamps, times, stream);
  sweep<16>(chains, 2, buf, buf_chunks, sms, sink, stamps, times, stream);

  std::printf("TMA bulk copies into shared memory, one CTA an SM\n%6s %6s %6s %8s %9s %9s %9s %9s\n", "slots",
              "KB", "MB fly", "GB/s", "L2 idle", "L2 load", "HBM idle", "HBM load");
  const char* bytes = reinterpret_cast<const char*>(buf);
  for (int slot_kb : {8, 32}) {
    for (int slots : {1, 2, 4, 6}) {
      const int slot_bytes = slot_kb * 1024;
      CK(cudaFuncSetAttribute(stream_tma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, slots * slot_bytes));
      std::printf("%6d %6d %6.2f", slots, slot_kb, static_cast<double>(sms) * slots * slot_bytes / 1e6);
      for (int c = 0; c < 2; ++c) {
        const Result r = run_tma(chains[c], bytes, static_cast<long>(buf_bytes), sms, slots, slot_bytes, stamps,
                                 times, stream);
        if (c == 0) std::printf(" %8.0f", r.gbps);
        std::printf(" %9.0f %9.0f", r.idle_ns, r.loaded_ns);
      }
      std::printf("\n");
    }
  }
  return 0;
}
