// CPU kernel of genfast.ops.rand / randn: one Philox call per four consecutive elements.
#include "random.h"
#include "philox.cuh"
#include "stream_cpu.h"

namespace genfast {
namespace {

constexpr int64_t kChunk = 4096;  // elements per task: a multiple of 4, so chunks start on a counter

template <typename T>
void fill(T* out, int64_t n, uint64_t seed, uint64_t offset, bool normal) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (chunks > 4)
  for (int64_t c = 0; c < chunks; ++c) {
    alignas(64) float buf[kChunk];
    const int64_t base = c * kChunk;
    const int64_t len = n - base < kChunk ? n - base : kChunk;
    if (normal) {
      stream_normals_cpu(seed, offset, base, len, buf);
    } else {
      for (int64_t q = 0; q < (len + 3) / 4; ++q) {
        const F32x4 v = uniform4(philox_block(seed, offset, static_cast<uint64_t>(base / 4 + q)));
        buf[4 * q] = v.x; buf[4 * q + 1] = v.y; buf[4 * q + 2] = v.z; buf[4 * q + 3] = v.w;
      }
    }
    for (int64_t k = 0; k < len; ++k) Convert<T>::store(out + base + k, buf[k]);
  }
}

}  // namespace

void random_fill_cpu(uintptr_t out, int64_t n, int dtype, StreamArgs rng, bool normal) {
  check_numel(n, out, "out");
  check_dtype(dtype, "out");
  const uint64_t seed = load_stream_value(rng.seed, rng.seed_ptr);
  const uint64_t offset = load_stream_value(rng.offset, rng.offset_ptr);
  switch (dtype) {
    case kFloat32: fill(reinterpret_cast<float*>(out), n, seed, offset, normal); break;
    case kFloat16: fill(reinterpret_cast<Half*>(out), n, seed, offset, normal); break;
    case kBFloat16: fill(reinterpret_cast<BFloat16*>(out), n, seed, offset, normal); break;
    case kFloat64: fill(reinterpret_cast<double*>(out), n, seed, offset, normal); break;
  }
}

}  // namespace genfast
