// Does the size of the pool a kernel's weights are drawn from change how fast it streams them? A standalone probe.
// Question it answered (session 20): 120b's weights span ~61 GB, 20b's ~13 GB; do the MoE's first loads of a
// token's four fresh experts pay address-translation misses (2 MB pages: ~30 000 of them for 120b) that a smaller
// pool keeps in the TLBs? No: H100, 12.05 µs a launch from a 1.7 GB pool, 12.12 from 3 GB, 12.18 from 61 GB
// (+1 %). (A 120b timeline then showed its layers take as long as 20b's: 54.8 vs 55.7 µs.)
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Icsrc benchmarks/tlb_reach.cu -o tlb_reach
//   ./tlb_reach               (prints one table; last line JSON)
// Each launch streams 4 "experts" of mlp1's size (5760 rows × 1440 B = 8.29 MB each, 33.2 MB) drawn at random from
// a pool of P experts laid end to end, with 1440 CTAs × 64 threads and the package's streaming loads, as mlp1
// does. A graph of 512 launches, each with its own 4 draws, is replayed; time per launch. Every pool but the
// smallest is far larger than L2, and 512 launches touch ~8 000 distinct 2 MB pages, so only the pool's size
// differs between rows. `warm` first has one thread a 2 MB page load one word of each expert (the TLB fill without
// the stream), in a separate launch before the stream: the cost a translation prefetch would move off the stream.
// Measured: 13.43–13.54 µs at every pool size; the extra launch costs 1.4 µs and saves nothing.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cuda/weight_stream.cuh"
#include "cuda_check.h"

using gpt_oss::ld_stream;

constexpr size_t kExpertBytes = 5760ull * 1440;  // one mlp1 expert of gpt-oss (MXFP4 codes)
constexpr int kCtas = 1440, kThreads = 64;       // mlp1's grid: 360 tiles × 4 experts
constexpr size_t kPage = 2ull << 20;

struct Draw {
  int e[4];
};

__global__ void __launch_bounds__(kThreads) stream_experts(const char* __restrict__ pool, Draw d,
                                                           unsigned* __restrict__ sink) {
  // A quarter of the grid an expert; a thread reads 16 B every (quarter's threads × 16 B), six loads in flight.
  const int quarter = blockIdx.x / (kCtas / 4);
  const long t = (blockIdx.x % (kCtas / 4)) * kThreads + threadIdx.x, stride = (kCtas / 4) * kThreads;
  const uint4* base = reinterpret_cast<const uint4*>(pool + d.e[quarter] * kExpertBytes);
  const long n = kExpertBytes / 16;
  uint32_t acc = 0;
  for (long i = t; i < n; i += 6 * stride) {
    uint4 v[6];
#pragma unroll
    for (int j = 0; j < 6; ++j) v[j] = i + j * stride < n ? ld_stream(base + i + j * stride) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int j = 0; j < 6; ++j) acc ^= v[j].x ^ v[j].y ^ v[j].z ^ v[j].w;
  }
  if (acc == 0x12345678u) sink[0] = acc;  // keeps the loads; practically never stores
}

// One thread a 2 MB page of the four experts loads one word: fills the translation, moves ~no bytes.
__global__ void touch_pages(const char* __restrict__ pool, Draw d, unsigned* __restrict__ sink) {
  constexpr int kPagesAnExpert = kExpertBytes / kPage + 2;
  const int quarter = threadIdx.x / kPagesAnExpert, p = threadIdx.x % kPagesAnExpert;
  if (quarter >= 4) return;
  const size_t begin = d.e[quarter] * kExpertBytes, offset = (begin / kPage + p) * kPage;
  if (offset < begin || offset >= begin + kExpertBytes) return;
  const uint32_t v = gpt_oss::ld_stream_u32(pool + offset);
  if (v == 0x12345678u) sink[0] = v;
}

int main() {
  size_t free_bytes = 0, total = 0;
  CK(cudaMemGetInfo(&free_bytes, &total));
  const int max_experts = static_cast<int>((free_bytes - (4ull << 30)) / kExpertBytes);
  char* pool;
  CK(cudaMalloc(&pool, max_experts * kExpertBytes));
  CK(cudaMemset(pool, 0x5b, max_experts * kExpertBytes));
  unsigned* sink;
  CK(cudaMalloc(&sink, 4));
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  std::mt19937 rng(7);
  constexpr int kLaunches = 512;
  std::printf("pool of up to %d experts (%.1f GB); %d launches a graph, 4 random experts (33.2 MB) each\n",
              max_experts, max_experts * kExpertBytes / 1e9, kLaunches);
  std::printf("%-8s %10s %8s %10s %10s\n", "mode", "pool GB", "experts", "us/launch", "TB/s");
  std::string json;
  for (int warm = 0; warm < 2; ++warm)
    for (double gb : {1.7, 3.0, 4.5, 6.0, 9.0, 13.0, 30.0, 61.0}) {
      const int experts = std::min(max_experts, static_cast<int>(gb * 1e9 / kExpertBytes));
      std::uniform_int_distribution<int> pick(0, experts - 1);
      cudaGraph_t graph;
      cudaGraphExec_t exec;
      CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
      for (int l = 0; l < kLaunches; ++l) {
        Draw d;
        for (int q = 0; q < 4; ++q) d.e[q] = pick(rng);
        if (warm) touch_pages<<<1, 32 * 4, 0, st>>>(pool, d, sink);
        stream_experts<<<kCtas, kThreads, 0, st>>>(pool, d, sink);
      }
      CK(cudaStreamEndCapture(st, &graph));
      CK(cudaGraphInstantiate(&exec, graph, 0));
      const float us = graph_us_per_launch(exec, st, 5, kLaunches);
      const double tbs = 4 * kExpertBytes / (us * 1e-6) / 1e12;
      std::printf("%-8s %10.1f %8d %10.2f %10.3f\n", warm ? "warm" : "stream", experts * kExpertBytes / 1e9, experts,
                  us, tbs);
      char buf[160];
      std::snprintf(buf, sizeof buf, "%s{\"mode\": \"%s\", \"pool_gb\": %.1f, \"us\": %.3f}", json.empty() ? "" : ", ",
                    warm ? "warm" : "stream", experts * kExpertBytes / 1e9, us);
      json += buf;
      CK(cudaGraphExecDestroy(exec));
      CK(cudaGraphDestroy(graph));
    }
  std::printf("[%s]\n", json.c_str());
  return 0;
}
