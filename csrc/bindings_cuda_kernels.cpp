// Test surface of the CUDA kernels: `_C.cuda_kernels.<stem>(numpy arrays...) -> numpy arrays`. Each entry
// copies its inputs to the device, launches one kernel family's public launcher, synchronises and copies the
// outputs back, so tests/kernels/ can compare every kernel with a float64 NumPy reference. Built only with
// the CUDA backend; nothing on the decode path goes through here.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

namespace nb = nanobind;

namespace gpt_oss {

void register_cuda_kernel_tests(nb::module_& m) {
  m.doc() = "CUDA kernel test entry points (host arrays in, host arrays out)";
  // Entries are added below, one block per kernel family, each named by the kernel's stem.
}

}  // namespace gpt_oss
