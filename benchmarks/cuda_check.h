// CK(call): the standalone CUDA probes' (read_patterns.cu, latency_under_load.cu) check of a runtime call: print
// the error and where, and exit.
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CK(x)                                                                                     \
  do {                                                                                            \
    cudaError_t e_ = (x);                                                                         \
    if (e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s: %s (%s:%d)\n", #x, cudaGetErrorString(e_), __FILE__, __LINE__);  \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)
