// Compiled with the EMULATOR's headers (tests/cuda_emu/include → cuda_emu.h), linked with the
// translated kernels.cu: the seam between the emulated kernels and the real host code.
//
// kernels.cu includes cuda/common.h, so it calls halcdl::gpu::throw_cuda(cudaError_t, ...) with
// the emulator's cudaError_t, a different type (and mangled name) from the real one that
// common.cpp defines. This file defines that overload and forwards to the real one through
// bridge_real.cpp, with the same numeric code. It also exposes the emulator's own last launch
// error and diagnostic to fake_cudart.cpp (cudaGetLastError / cudaGetErrorString).
#include <string>

#include "cuda/common.h"
#include "cuda_emu.h"

extern "C" [[noreturn]] void halcdl_emu_throw_cuda(int code, const char* call, const char* file, int line);

namespace halcdl::gpu {
void throw_cuda(cudaError_t e, const char* call, const char* file, int line) {
  halcdl_emu_throw_cuda(static_cast<int>(e), call, file, line);
}
}  // namespace halcdl::gpu

// The emulated kernels' last launch error (cleared when `clear`), 0 when none.
extern "C" int halcdl_emu_kernel_error(int clear) {
  std::lock_guard<std::recursive_mutex> lock(emu::launch_mutex());
  const cudaError_t e = emu::last_error();
  if (clear) emu::last_error() = cudaSuccess;
  return static_cast<int>(e);
}

// The emulator's diagnostic of the last failed launch ("" when none).
extern "C" const char* halcdl_emu_kernel_message() { return emu::last_message().c_str(); }
