// Vectorized CPU draw of genfast's stream, shared by the CPU kernels (randn/rand, the diffusion step, the
// VAE reparameterization). kW counters at a time: Philox4x32-10 with 32x32->64-bit vector products,
// uniforms ((r >> 9) + 0.5) * 2^-23 (exact, so bit-identical to every backend), Box-Muller with the
// polynomial log/sincos of csrc/vec_cpu.inc (within a few ulps of libm), then a two-level shuffle puts
// the four normals of each counter at elements 4q .. 4q + 3. One copy per instruction set
// (csrc/simd_cpu.h); every copy gives the same bits.
#include <cmath>
#include <cstring>

#include "simd_cpu.h"  // before immintrin.h: GF_INCLUDE_INTRINSICS

#include "common.cuh"
#include "stream_cpu.h"

namespace genfast {

#if GF_X86_DISPATCH
namespace isa_avx512 {
GF_ISA_REGION_BEGIN_AVX512
#define GF_ISA_LEVEL 2
#include "vec_cpu.inc"
#include "stream_cpu.inc"
#undef GF_ISA_LEVEL
GF_ISA_REGION_END
}  // namespace isa_avx512

namespace isa_avx2 {
GF_ISA_REGION_BEGIN_AVX2
#define GF_ISA_LEVEL 1
#include "vec_cpu.inc"
#include "stream_cpu.inc"
#undef GF_ISA_LEVEL
GF_ISA_REGION_END
}  // namespace isa_avx2
#endif

namespace isa_base {
#define GF_ISA_LEVEL 0
#include "vec_cpu.inc"
#include "stream_cpu.inc"
#undef GF_ISA_LEVEL
}  // namespace isa_base

namespace {
template <bool kNormal>
void draw(uint64_t seed, uint64_t offset, int64_t first, int64_t n, float* out, bool streaming) {
  if (n <= 0) return;
#if GF_X86_DISPATCH
  switch (cpu::isa_level()) {
    case cpu::kIsaAvx512: return isa_avx512::fill<kNormal>(seed, offset, first, n, out, streaming);
    case cpu::kIsaAvx2: return isa_avx2::fill<kNormal>(seed, offset, first, n, out, streaming);
    default: break;
  }
#endif
  isa_base::fill<kNormal>(seed, offset, first, n, out, streaming);
}
}  // namespace

void stream_normals_cpu(uint64_t seed, uint64_t offset, int64_t first, int64_t n, float* out, bool streaming) {
  draw<true>(seed, offset, first, n, out, streaming);
}

void stream_uniforms_cpu(uint64_t seed, uint64_t offset, int64_t first, int64_t n, float* out, bool streaming) {
  draw<false>(seed, offset, first, n, out, streaming);
}

}  // namespace genfast
