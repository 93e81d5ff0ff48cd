// When does a programmatic dependent's griddepcontrol.wait return after its primary ends? A standalone probe.
// Question: in a sliding layer (session 20's 120b timeline) the out-projection passes its wait 3.9 µs after
// attention's last CTA exits, in a full layer 1.1 µs. A sliding layer's attention is 2.7 µs long, a full one's ~8.
// Its CTAs issue their first weight batch (64 KB a CTA, 11.8 MB in all) before the wait.
// Answered (session 20, H100, first form of this probe: stream launches, no entry stamps): the loads in flight are
// not it. After a primary of 8 CTAs that released its dependent at once and spun 2 µs, the dependent (184 CTAs ×
// 256 threads) passed its wait 3.3–3.8 µs after the primary's last exit with 0, 4, 16 or 64 KB of loads a CTA in
// flight; after an 8 µs primary, 1.0–1.5 µs. A short primary costs its dependent ~2.5 µs of wake.
// Answered (session 21, H200, this form: a graph, entry stamps): the short primary is not it either. In a graph
// the dependent passed its wait 0.5–0.8 µs (median; last CTA ≤ 1.0) after the primary's last exit with a primary
// of 1, 2, 3, 4, 6 or 8 µs, released at its start (the dependent's CTAs resident from 0.5 µs after the primary's
// start) or at its end (wait 1.0 µs after, last ≤ 1.3), 0 or 16 KB of loads a CTA in flight. The first form's
// 3.3–3.8 µs came from stream launches, which decode does not use. So the sliding out-projection's 3.9 µs is most
// likely its own first batch: 11.8 MB issued before the wait, whose issue stalls on the SMs' room for loads in
// flight; at ~3 TB/s that is ~3.9 µs of DRAM work, not idle time (session 21's `arrivals`, which skipped PDL's
// completion signal for a count of attention's CTAs, lost 1.0 / 1.4 %).
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Icsrc benchmarks/pdl_wake.cu -o pdl_wake
//   ./pdl_wake                (prints one table)
// Primary: 8 CTAs that spin for `spin` µs and exit, calling griddepcontrol.launch_dependents at their start
// (release "start") or just before their exit ("end"). Dependent: 184 CTAs × 256 threads (the out-projection's grid),
// each thread issuing `loads` 16-byte streaming loads (a buffer far larger than L2) before its wait; thread 0 stamps
// its CTA's entry and the time its wait returned. 64 primary / dependent pairs in one CUDA graph (as decode runs
// them), replayed; per row, medians over the pairs of: the dependent's median CTA entry and median and last
// wait-return, each minus its primary's last exit (negative: before it).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "cuda/weight_stream.cuh"
#include "cuda_check.h"

using gpt_oss::ld_stream;

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
  return t;
}

constexpr int kPrimary = 8, kDependent = 184, kPairs = 64, kMaxLoads = 16;

__global__ void primary(int spin_ns, bool release_at_start, unsigned long long* exits) {
  if (release_at_start) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  const unsigned long long t0 = global_ns();
  while (global_ns() - t0 < static_cast<unsigned long long>(spin_ns)) {
  }
  __syncthreads();
  if (!release_at_start) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  if (threadIdx.x == 0) exits[blockIdx.x] = global_ns();
}

__global__ void __launch_bounds__(256, 2) dependent(const uint4* __restrict__ w, int loads, unsigned long long* entries,
                                                     unsigned long long* waits, unsigned* sink) {
  const unsigned long long entry = global_ns();
  const uint4* base = w + static_cast<size_t>(blockIdx.x) * kMaxLoads * 256 + threadIdx.x;
  uint4 v[kMaxLoads];
#pragma unroll
  for (int i = 0; i < kMaxLoads; ++i) v[i] = i < loads ? ld_stream(base + i * 256) : make_uint4(0, 0, 0, 0);
  asm volatile("griddepcontrol.wait;" ::: "memory");
  const unsigned long long t = global_ns();
  uint32_t acc = 0;
#pragma unroll
  for (int i = 0; i < kMaxLoads; ++i) acc ^= v[i].x ^ v[i].y ^ v[i].z ^ v[i].w;
  if (threadIdx.x == 0) entries[blockIdx.x] = entry, waits[blockIdx.x] = t;
  if (acc == 0x12345678u) sink[0] = acc;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int main() {
  const size_t per_pair = static_cast<size_t>(kDependent) * kMaxLoads * 256;  // uint4s a dependent may read
  uint4* w;
  CK(cudaMalloc(&w, kPairs * per_pair * sizeof(uint4)));  // 64 × 11.8 MB: each pair reads its own bytes (> L2)
  CK(cudaMemset(w, 0x5b, kPairs * per_pair * sizeof(uint4)));
  unsigned long long *exits, *entries, *waits;
  unsigned* sink;
  CK(cudaMalloc(&exits, kPairs * kPrimary * sizeof(unsigned long long)));
  CK(cudaMalloc(&entries, kPairs * kDependent * sizeof(unsigned long long)));
  CK(cudaMalloc(&waits, kPairs * kDependent * sizeof(unsigned long long)));
  CK(cudaMalloc(&sink, 4));
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  std::printf("%8s %8s %6s %12s %12s %12s\n", "spin us", "release", "loads", "entry50 us", "wake50 us", "wakemax us");
  for (int release_at_start = 1; release_at_start >= 0; --release_at_start)
    for (int spin_ns : {1000, 2000, 3000, 4000, 6000, 8000})
      for (int loads : {0, 16}) {
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
        for (int pair = 0; pair < kPairs; ++pair) {
          primary<<<kPrimary, 128, 0, st>>>(spin_ns, release_at_start, exits + pair * kPrimary);
          cudaLaunchConfig_t config = {};
          config.gridDim = dim3(kDependent);
          config.blockDim = dim3(256);
          config.stream = st;
          cudaLaunchAttribute attr = {};
          attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
          attr.val.programmaticStreamSerializationAllowed = 1;
          config.attrs = &attr;
          config.numAttrs = 1;
          CK(cudaLaunchKernelEx(&config, dependent, static_cast<const uint4*>(w + pair * per_pair), loads,
                                entries + pair * kDependent, waits + pair * kDependent, sink));
        }
        CK(cudaStreamEndCapture(st, &graph));
        CK(cudaGraphInstantiate(&exec, graph, 0));
        for (int r = 0; r < 3; ++r) CK(cudaGraphLaunch(exec, st));  // warm; the last replay's stamps are read
        std::vector<unsigned long long> e(kPairs * kPrimary), in(kPairs * kDependent), wt(kPairs * kDependent);
        CK(cudaMemcpyAsync(e.data(), exits, e.size() * 8, cudaMemcpyDeviceToHost, st));
        CK(cudaMemcpyAsync(in.data(), entries, in.size() * 8, cudaMemcpyDeviceToHost, st));
        CK(cudaMemcpyAsync(wt.data(), waits, wt.size() * 8, cudaMemcpyDeviceToHost, st));
        CK(cudaStreamSynchronize(st));
        std::vector<double> entry50, wake50, wakemax;
        for (int pair = 1; pair < kPairs; ++pair) {  // pair 0 follows the previous replay's tail: skipped
          const double last_exit =
              static_cast<double>(*std::max_element(e.begin() + pair * kPrimary, e.begin() + (pair + 1) * kPrimary));
          std::vector<double> en, wa;
          for (int c = 0; c < kDependent; ++c) {
            en.push_back((static_cast<double>(in[pair * kDependent + c]) - last_exit) * 1e-3);
            wa.push_back((static_cast<double>(wt[pair * kDependent + c]) - last_exit) * 1e-3);
          }
          entry50.push_back(median(en));
          wake50.push_back(median(wa));
          wakemax.push_back(*std::max_element(wa.begin(), wa.end()));
        }
        std::printf("%8.1f %8s %6d %12.2f %12.2f %12.2f\n", spin_ns * 1e-3, release_at_start ? "start" : "end",
                    loads, median(entry50), median(wake50), median(wakemax));
        CK(cudaGraphExecDestroy(exec));
        CK(cudaGraphDestroy(graph));
      }
  return 0;
}
