// Compiled with the REAL CUDA headers: the other half of bridge_emu.cpp (which see).
#include "cuda/common.h"

extern "C" [[noreturn]] void halcdl_emu_throw_cuda(int code, const char* call, const char* file, int line) {
  halcdl::gpu::throw_cuda(static_cast<cudaError_t>(code), call, file, line);
}
