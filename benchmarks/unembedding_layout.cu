// Does the unembedding's address order cost HBM bandwidth? A standalone probe (of the package, only the streaming
// load of weight_stream.cuh): the unembedding's grid and loads, nothing else (no x, no mma), in two orders.
// Question it answers: the unembedding streams 1.158 GB at ~2.71 TB/s (427 µs, H100, session 11) where a copy
// runs at ~3.01. Each of its load instructions covers 8 rows × 64 B (lane (g, t) reads 16 B of row g and of row
// g + 8: the mma fragment), so a warp's batch is 16 pieces of 512 B, 5760 B apart. If the same loads laid out
// contiguously (the weight repacked at load time in the order the kernel reads it) stream faster, a repack is
// worth its code; if not, the gap is elsewhere (the batches' round trips, the tail).
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Icsrc benchmarks/unembedding_layout.cu \
//     -o unembedding_layout && ./unembedding_layout
// Orders (a warp walks tiles of 16 rows gw, gw + warps, ... like unembedding_kernel; per tile 90 chunks of 32
// columns, each chunk two 16-byte loads a lane):
//   rows     row-major (the kernel until session 11): load (chunk c, half h) of lane (g, t) reads row g + 8h,
//            columns 32c + 8t .. + 7
//   packed   the same loads, the tile's 92 KB stored in load order: load j reads bytes 512 j + 16 lane of the tile
// Batches: B chunks a batch issued before any use; the rest one chunk at a time (the kernel's B = 8: 11 batches and
// 2 single chunks a tile; B = 10 divides 90).
// Measured (H100 80GB HBM3, copy 2.985 TB/s, session 11): rows 2.49 / 2.57 / 2.50 TB/s at B = 8 / 10 / 4, packed
// 3.03 / 3.03 / 3.01. The order, not the round trips, held the unembedding back: it now stores its weight packed.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "cuda/weight_stream.cuh"
#include "cuda_check.h"

using gpt_oss::ld_stream;

constexpr int kVocab = 201088, kHidden = 2880, kTileRows = 16, kChunks = kHidden / 32;

template <int B, bool kPacked>
__global__ void __launch_bounds__(256, 2) read_kernel(const char* __restrict__ W, unsigned* __restrict__ sink) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int warps = gridDim.x * 8, tiles = kVocab / kTileRows;
  uint32_t acc = 0;
  auto address = [&](int tile, int c, int h) -> const char* {
    const char* base = W + static_cast<long>(tile) * kTileRows * kHidden * 2;
    if (kPacked) return base + (2L * c + h) * 512 + 16 * lane;
    return base + static_cast<long>(g + 8 * h) * kHidden * 2 + c * 64 + 16 * t;
  };
  for (int tile = blockIdx.x * 8 + threadIdx.x / 32; tile < tiles; tile += warps) {
    int c = 0;
    for (; c + B <= kChunks; c += B) {
      uint4 a[B], b[B];
#pragma unroll
      for (int u = 0; u < B; ++u) a[u] = ld_stream(address(tile, c + u, 0)), b[u] = ld_stream(address(tile, c + u, 1));
#pragma unroll
      for (int u = 0; u < B; ++u) acc ^= a[u].x ^ a[u].w ^ b[u].y ^ b[u].z;
    }
    for (; c < kChunks; ++c) {
      const uint4 a = ld_stream(address(tile, c, 0)), b = ld_stream(address(tile, c, 1));
      acc ^= a.x ^ a.w ^ b.y ^ b.z;
    }
  }
  if (acc == 0x12345678u) sink[0] = acc;  // keeps the loads; practically never stores
}

int main() {
  int sms = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const size_t bytes = static_cast<size_t>(kVocab) * kHidden * 2;
  char* W;
  unsigned* sink;
  CK(cudaMalloc(&W, bytes));
  CK(cudaMemset(W, 0x5b, bytes));
  CK(cudaMalloc(&sink, 4));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  auto time_us = [&](auto launch) {
    launch();
    CK(cudaDeviceSynchronize());
    std::vector<float> times;
    for (int it = 0; it < 9; ++it) {
      CK(cudaEventRecord(e0));
      launch();
      CK(cudaEventRecord(e1));
      CK(cudaEventSynchronize(e1));
      float ms;
      CK(cudaEventElapsedTime(&ms, e0, e1));
      times.push_back(ms * 1e3f);
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
  };
  {  // copy on the same card, 1 GiB, for scale
    void* b;
    CK(cudaMalloc(&b, 1ull << 30));
    const float us = time_us([&] { CK(cudaMemcpy(b, W, 1ull << 30, cudaMemcpyDeviceToDevice)); });
    std::printf("copy %.3f TB/s (read + write), %d SMs, grid %d x 256 threads\n", 2.0 * (1ull << 30) / us / 1e6,
                sms, 2 * sms);
    CK(cudaFree(b));
  }
  std::printf("%-8s %3s %10s %10s\n", "order", "B", "us", "TB/s");
  auto row = [&](const char* name, int B, auto kernel) {
    const float us = time_us([&] { kernel<<<2 * sms, 256>>>(W, sink); });
    std::printf("%-8s %3d %10.2f %10.3f\n", name, B, us, bytes / us / 1e6);
  };
  row("rows", 8, read_kernel<8, false>);
  row("packed", 8, read_kernel<8, true>);
  row("rows", 10, read_kernel<10, false>);
  row("packed", 10, read_kernel<10, true>);
  row("rows", 4, read_kernel<4, false>);
  row("packed", 4, read_kernel<4, true>);
  CK(cudaGetLastError());
  return 0;
}
