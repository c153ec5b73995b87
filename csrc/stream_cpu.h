// genfast's normal stream drawn on the CPU in vectorized batches (csrc/stream_cpu.cpp).
#pragma once
#include <cstdint>

namespace genfast {
// out[0 .. n) = normals of stream (seed, offset) at elements [first, first + n).
void stream_normals_cpu(uint64_t seed, uint64_t offset, int64_t first, int64_t n, float* out);
}  // namespace genfast
