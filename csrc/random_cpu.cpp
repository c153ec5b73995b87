// CPU kernel of genfast.ops.rand / randn: the stream (csrc/stream_cpu.cpp) drawn straight into fp32
// outputs (streaming stores when the output is larger than the cache), through a small fp32 buffer for
// the other dtypes. Threads take contiguous ranges; a small draw stays on the calling thread.
#include <cstring>
#include <type_traits>

#include "common.cuh"
#include "random.h"
#include "simd_cpu.h"
#include "stream_cpu.h"

namespace genfast {
namespace {

constexpr int64_t kBlock = 2048;          // elements per buffered block (a multiple of every vector group)
constexpr int64_t kMinPerThread = 16384;  // ~10-20 us of Philox + Box-Muller per thread

void draw(bool normal, uint64_t seed, uint64_t offset, int64_t first, int64_t n, float* out, bool streaming) {
  if (normal) stream_normals_cpu(seed, offset, first, n, out, streaming);
  else stream_uniforms_cpu(seed, offset, first, n, out, streaming);
}

template <typename T>
void fill(T* out, int64_t n, uint64_t seed, uint64_t offset, bool normal) {
  const bool streaming = cpu::use_streaming_stores(n * static_cast<int64_t>(sizeof(T)));
  const int threads = cpu::threads_for(n, kMinPerThread);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    int part = 0, parts = 1;
#if defined(_OPENMP)
    part = omp_get_thread_num();
    parts = omp_get_num_threads();
#endif
    int64_t begin, end;
    cpu::split_range(n, parts, part, 64, begin, end);
    if constexpr (std::is_same<T, float>::value) {
      draw(normal, seed, offset, begin, end - begin, out + begin, streaming);
    } else {
      alignas(64) float buf[kBlock];
      for (int64_t start = begin; start < end; start += kBlock) {
        const int64_t len = std::min(kBlock, end - start);
        draw(normal, seed, offset, start, len, buf, false);
        for (int64_t k = 0; k < len; ++k) Convert<T>::store(out + start + k, buf[k]);
      }
    }
  }
}

}  // namespace

void random_fill_cpu(uintptr_t out, int64_t n, int dtype, StreamArgs rng, bool normal) {
  check_numel(n, out, "out");
  check_dtype(dtype, "out");
  if (n == 0) return;
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
