// genfast.ops.rand / randn: fill a contiguous buffer with genfast's stream.
#pragma once
#include "genfast.h"

namespace genfast {
void random_fill_cpu(uintptr_t out, int64_t n, int dtype, StreamArgs rng, bool normal);
#ifdef GENFAST_WITH_CUDA
void random_fill_cuda(uintptr_t out, int64_t n, int dtype, StreamArgs rng, bool normal, uintptr_t stream, int device);
#endif
}  // namespace genfast
