// How fast does HBM serve the decode kernels' access patterns? A standalone probe (of the package, only the
// streaming loads of weight_stream.cuh): each pattern reads the same bytes with the same warps and loads in
// flight; only the address order differs.
// Question it answers: is the MoE's ~2.2 TB/s per-byte rate (NOTES, session 3 sweep) set by the order in
// which the 2880 warps walk memory, by the separate 32-byte scale loads, or by loads in flight?
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Icsrc benchmarks/read_patterns.cu -o read_patterns
//   ./read_patterns            (prints one table; last line JSON)
// Patterns (CTAs × 64 threads, each warp B loads of 16 B a lane per batch, batches in series):
//   per_warp      warp w reads its own contiguous span, batch after batch (mlp1 today)
//   per_warp+sc   the same plus one 4-byte load a lane from a separate scale array per 512 B chunk (mlp1 exactly)
//   batch_major   batch u of every warp is contiguous across warps: the whole grid sweeps memory front to back
//   load_major    load i of batch u of every warp is contiguous across warps: every load instruction of the
//                 grid covers one contiguous range
// Time is per launch, launches back to back in a graph, rotating 8 buffer sets (> L2).
// Measured (H100 80GB HBM3, copy 3.03 TB/s, session 4): at mlp1's 35.4 MB every order streams at 2.75-2.81 TB/s
// (12.7-12.9 µs; per_warp+sc 13.6 µs for 37.6 MB), at 70.8 MB 2.91-2.96 TB/s; doubling the loads in flight a warp
// (B = 12) changes < 2 %. So the order and the separate scale loads are not what holds mlp1 (then 20.6 µs) back:
// its arithmetic and bookkeeping between serial batches were (benchmarks/NOTES.md, session 4).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "cuda/weight_stream.cuh"
#include "cuda_check.h"
#include <cstdlib>
#include <vector>


using gpt_oss::ld_stream;  // the decode kernels' own streaming loads
using gpt_oss::ld_stream_u32;

enum Pattern { kPerWarp = 0, kPerWarpScales, kBatchMajor, kLoadMajor, kPatterns };
const char* kNames[kPatterns] = {"per_warp", "per_warp+sc", "batch_major", "load_major"};

// chunk = 512 B (32 lanes × 16 B). A warp does `batches` batches of B chunks.
template <int B>
__global__ void __launch_bounds__(64) read_kernel(const uint4* __restrict__ codes,
                                                  const uint32_t* __restrict__ scales, int pattern, int batches,
                                                  unsigned* __restrict__ sink) {
  const int lane = threadIdx.x % 32;
  const long warps = static_cast<long>(gridDim.x) * 2, w = blockIdx.x * 2L + threadIdx.x / 32;
  uint32_t acc = 0;
  for (int u = 0; u < batches; ++u) {
    uint4 v[B];
    uint32_t s[B];
#pragma unroll
    for (int i = 0; i < B; ++i) {
      long chunk;
      if (pattern == kBatchMajor) chunk = (u * warps + w) * B + i;
      else if (pattern == kLoadMajor) chunk = (static_cast<long>(u) * B + i) * warps + w;
      else chunk = (w * batches + u) * B + i;
      v[i] = ld_stream(codes + chunk * 32 + lane);
      s[i] = pattern == kPerWarpScales ? ld_stream_u32(scales + chunk * 8 + lane / 4) : 0u;
    }
#pragma unroll
    for (int i = 0; i < B; ++i) acc ^= v[i].x ^ v[i].y ^ v[i].z ^ v[i].w ^ s[i];
  }
  if (acc == 0x12345678u) sink[0] = acc;  // keeps the loads; practically never stores
}

int main() {
  int sms = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  constexpr int kSets = 8;
  const int ctas = 1440;  // mlp1's grid for gpt-oss (360 tiles × 4 experts), all resident on a 132-SM H100
  const int max_batches = 8;
  const size_t max_chunks = static_cast<size_t>(ctas) * 2 * max_batches * 6;  // B · batches ≤ 48
  std::vector<uint4*> codes(kSets);
  std::vector<uint32_t*> scales(kSets);
  for (int s = 0; s < kSets; ++s) {
    CK(cudaMalloc(&codes[s], max_chunks * 512));
    CK(cudaMalloc(&scales[s], max_chunks * 32));
    CK(cudaMemset(codes[s], 0x5b + s, max_chunks * 512));  // nonzero data
    CK(cudaMemset(scales[s], 0x7f, max_chunks * 32));
  }
  unsigned* sink;
  CK(cudaMalloc(&sink, 4));
  // Copy bandwidth on the same card, for the table's last column.
  float copy_tbs = 0;
  {
    const size_t bytes = 1ull << 30;
    void *a, *b;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
    CK(cudaEventRecord(e0));
    for (int i = 0; i < 10; ++i) CK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    copy_tbs = 2.0 * bytes * 10 / (ms * 1e-3) / 1e12;
    CK(cudaFree(a));
    CK(cudaFree(b));
  }
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  std::printf("copy %.3f TB/s, %d SMs; %d CTAs x 2 warps, B x 512 B per warp batch\n", copy_tbs, sms, ctas);
  std::printf("%-12s %3s %8s %10s %10s %10s\n", "pattern", "B", "batches", "MB", "us", "TB/s");
  std::string json;
  // B = 12 doubles the loads a warp has in flight (mlp1 today: 6): does the rate follow the bytes in flight?
  for (int B : {6, 12})
  for (int p = 0; p < kPatterns; ++p) {
    for (int batches : {2, 4, 8}) {
      if (B == 12 && (batches == 8 || p == kPerWarpScales)) continue;
      const int reps = 40;
      cudaGraph_t graph;
      cudaGraphExec_t exec;
      CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
      for (int r = 0; r < reps; ++r)
        if (B == 6) read_kernel<6><<<ctas, 64, 0, st>>>(codes[r % kSets], scales[r % kSets], p, batches, sink);
        else read_kernel<12><<<ctas, 64, 0, st>>>(codes[r % kSets], scales[r % kSets], p, batches, sink);
      CK(cudaStreamEndCapture(st, &graph));
      CK(cudaGraphInstantiate(&exec, graph, 0));
      const float us = graph_us_per_launch(exec, st, 7, reps);
      const double bytes = static_cast<double>(ctas) * 2 * batches * B * (512 + (p == kPerWarpScales ? 32 : 0));
      std::printf("%-12s %3d %8d %10.1f %10.2f %10.3f\n", kNames[p], B, batches, bytes / 1e6, us,
                  bytes / (us * 1e-6) / 1e12);
      char buf[160];
      std::snprintf(buf, sizeof buf,
                    "%s{\"pattern\": \"%s\", \"B\": %d, \"batches\": %d, \"bytes\": %.0f, \"us\": %.3f}",
                    json.empty() ? "" : ", ", kNames[p], B, batches, bytes, us);
      json += buf;
      CK(cudaGraphExecDestroy(exec));
      CK(cudaGraphDestroy(graph));
    }
  }
  std::printf("\n{\"copy_tbs\": %.3f, \"rows\": [%s]}\n", copy_tbs, json.c_str());
  return 0;
}
