// Shadows the toolkit's <cuda_runtime.h> in the emulated build (kernels/host_emulation/cuda_emulation.h).
#pragma once
#include "../cuda_emulation.h"
