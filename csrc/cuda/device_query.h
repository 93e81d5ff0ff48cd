// Which CUDA devices this process can use. Returns an empty list without a driver or a GPU (never throws),
// so `import gpt_oss_native` works on CPU-only machines.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace gpt_oss {

struct CudaDeviceInfo {
  int index = 0;
  std::string name;
  int major = 0, minor = 0;
  int multiprocessors = 0;
  size_t total_memory = 0;
};

std::vector<CudaDeviceInfo> cuda_device_query();

}  // namespace gpt_oss
