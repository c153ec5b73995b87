// CPU kernel of genfast.ops.rand / randn: one Philox call per four consecutive elements.
#include "random.h"
#include "philox.cuh"

namespace genfast {
namespace {

template <typename T>
void fill(T* out, int64_t n, uint64_t seed, uint64_t offset, bool normal) {
  const int64_t nq = (n + 3) / 4;
#pragma omp parallel for schedule(static) if (nq > 16384)
  for (int64_t q = 0; q < nq; ++q) {
    const U32x4 r = philox_block(seed, offset, static_cast<uint64_t>(q));
    const F32x4 v = normal ? normal4(r) : uniform4(r);
    const int64_t base = q * 4;
    const int64_t len = n - base < 4 ? n - base : 4;
    for (int k = 0; k < len; ++k) Convert<T>::store(out + base + k, component(v, k));
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
