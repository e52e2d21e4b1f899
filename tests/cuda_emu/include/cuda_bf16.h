// Stub for the CUDA emulation (tests/cuda_emu): no bf16 type is emulated (kernels.cu stores
// bf16 as uint16_t bit patterns).
#pragma once
#include "cuda_emu.h"
