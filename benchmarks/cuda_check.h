// What the standalone CUDA probes (benchmarks/*.cu) share: CK(call), the check of a runtime call (print the error
// and where, and exit), and the timing of a captured graph.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                                     \
  do {                                                                                            \
    cudaError_t e_ = (x);                                                                         \
    if (e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s: %s (%s:%d)\n", #x, cudaGetErrorString(e_), __FILE__, __LINE__);  \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)

// Replays exec once to warm up, then `replays` times; returns the median replay's µs divided by `launches` (the
// launches the graph holds): µs a launch.
inline float graph_us_per_launch(cudaGraphExec_t exec, cudaStream_t st, int replays, int launches) {
  CK(cudaGraphLaunch(exec, st));
  CK(cudaStreamSynchronize(st));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  std::vector<float> times;
  for (int r = 0; r < replays; ++r) {
    CK(cudaEventRecord(e0, st));
    CK(cudaGraphLaunch(exec, st));
    CK(cudaEventRecord(e1, st));
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    times.push_back(ms * 1e3f / launches);
  }
  CK(cudaEventDestroy(e0));
  CK(cudaEventDestroy(e1));
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}
