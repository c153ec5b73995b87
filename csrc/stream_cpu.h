// genfast's random stream drawn on the CPU in vectors (csrc/stream_cpu.cpp): Philox4x32-10 on kW
// counters at a time, Box-Muller with fp32 polynomials. Element i of a draw depends only on (seed,
// offset, i), never on the range it was drawn in or the instruction set.
#pragma once
#include <cstdint>

namespace genfast {
// out[0 .. n) = normals of stream (seed, offset) at elements [first, first + n). streaming: write out
// with non-temporal stores where aligned (an output larger than the cache, not read again soon).
void stream_normals_cpu(uint64_t seed, uint64_t offset, int64_t first, int64_t n, float* out, bool streaming = false);
// out[0 .. n) = uniforms of the stream (exact: ((word >> 9) + 0.5) * 2^-23) at elements [first, first + n).
void stream_uniforms_cpu(uint64_t seed, uint64_t offset, int64_t first, int64_t n, float* out, bool streaming = false);
}  // namespace genfast
