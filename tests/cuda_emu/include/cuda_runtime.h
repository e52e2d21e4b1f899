// Stub for the CUDA emulation (tests/cuda_emu): the runtime API is cuda_emu.h.
#pragma once
#include "cuda_emu.h"
