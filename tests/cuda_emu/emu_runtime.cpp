// The emulator's out-of-line definitions (the fiber switch), linked into every emulated
// library once.
#define CUDA_EMU_MAIN
#include "cuda_emu.h"
