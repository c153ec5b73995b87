// Vectorized CPU draw of genfast's normal stream, shared by the CPU kernels (randn, the diffusion step,
// the VAE reparameterization). Philox words for a batch of counters go to arrays, then Box-Muller runs
// as a plain loop over them with polynomial log/sincos (libm calls do not vectorize); AVX2 clone where
// the compiler supports target_clones. Normals agree with the reference to a few ulps; uniforms of
// the stream (word_to_uniform) are exact everywhere.
#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define GF_PHILOX_AVX2 1
#endif

#include "philox.cuh"
#include "stream_cpu.h"

namespace genfast {
namespace {

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define GF_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define GF_VECTOR_CLONES
#endif

// log and sincos in fp32 written so that loops over them vectorize (libm calls do not): Cephes-style
// polynomials, within ~2 ulp of libm, so the stream's normals agree with genfast.ops.randn to a few ulps.
__attribute__((always_inline)) inline float vlogf(float x) {
  int32_t bits;
  std::memcpy(&bits, &x, 4);
  const int32_t small = ((bits & 0x007fffff) < 0x3504f3) ? 1 : 0;  // mantissa < sqrt(0.5) * 2
  const int32_t e = (bits >> 23) - 126 - small;
  const int32_t mbits = (bits & 0x007fffff) | (0x3f000000 + (small << 23));  // [sqrt(.5), sqrt(2))
  float m;
  std::memcpy(&m, &mbits, 4);
  m = m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const float fe = static_cast<float>(e);
  y += -2.12194440e-4f * fe;
  y += -0.5f * z;
  return m + y + 0.693359375f * fe;
}

// sqrt of a value that is never negative here (libm's errno branch still blocks vectorizing this loop).
__attribute__((always_inline)) inline float vsqrtf(float v) { return std::sqrt(v); }

// sin and cos of a in [0, 2*pi]: Cody-Waite reduction by pi/2, then the minimax polynomials on [-pi/4, pi/4].
__attribute__((always_inline)) inline void vsincosf(float a, float& s, float& c) {
  const int j = static_cast<int>(a * 0.636619772367581343f + 0.5f);  // a >= 0: round to nearest quadrant
  const float fj = static_cast<float>(j);
  const float r = ((a - fj * 1.5703125f) - fj * 4.837512969970703125e-4f) - fj * 7.54978995489188216e-8f;
  const float r2 = r * r;
  const float sr = r + r * r2 * (-1.6666654611e-1f + r2 * (8.3321608736e-3f + r2 * -1.9515295891e-4f));
  const float cr = 1.0f - 0.5f * r2 + r2 * r2 * (4.166664568298827e-2f + r2 * (-1.388731625493765e-3f + r2 * 2.443315711809948e-5f));
  const int q = j & 3;
  const float odd = static_cast<float>(q & 1);
  const float s0 = odd * cr + (1.0f - odd) * sr;
  const float c0 = odd * sr + (1.0f - odd) * cr;
  s = (1.0f - static_cast<float>(q & 2)) * s0;        // q in {2, 3}: negate
  c = (1.0f - static_cast<float>((q + 1) & 2)) * c0;  // q in {1, 2}: negate
}

#if defined(GF_PHILOX_AVX2)
// Philox4x32-10 of 8 counters at a time with AVX2 intrinsics (the compiler's own vectorization of the
// 32x32->64 products widens every lane to 64 bits): the products of even lanes come from one
// _mm256_mul_epu32, those of odd lanes from another on the lanes shifted down, and blends put their
// high and low halves back in place. Integer math, so the words (and uniforms) are those of the scalar
// loop bit for bit. Writes the uniforms of counters q0 .. q0 + 8 * floor(nq / 8) - 1; returns how many.
__attribute__((target("avx2"), always_inline)) inline void mulhilo_avx2(__m256i a, __m256i m, __m256i& hi,
                                                                       __m256i& lo) {
  const __m256i pe = _mm256_mul_epu32(a, m);                         // lanes 0, 2, 4, 6 as 64-bit products
  const __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);  // lanes 1, 3, 5, 7
  lo = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
}

// word_to_uniform of 8 words, exact: (r >> 9) < 2^23 converts exactly, + 0.5 and * 2^-23 are exact.
__attribute__((target("avx2"), always_inline)) inline __m256 to_uniform_avx2(__m256i r) {
  return _mm256_mul_ps(_mm256_add_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(r, 9)), _mm256_set1_ps(0.5f)),
                       _mm256_set1_ps(1.1920928955078125e-07f));
}

__attribute__((target("avx2"))) int64_t philox_uniforms_avx2(uint32_t k0, uint32_t k1, uint32_t o0, uint32_t o1,
                                                              uint64_t q0, int64_t nq, float* u0, float* u1, float* u2,
                                                              float* u3) {
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  const int64_t n8 = nq / 8 * 8;
  for (int64_t i = 0; i < n8; i += 8) {
    alignas(32) uint32_t lo32[8], hi32[8];
    for (int k = 0; k < 8; ++k) {
      const uint64_t q = q0 + static_cast<uint64_t>(i + k);
      lo32[k] = static_cast<uint32_t>(q);
      hi32[k] = static_cast<uint32_t>(q >> 32);
    }
    __m256i c0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo32));
    __m256i c1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi32));
    __m256i c2 = _mm256_set1_epi32(static_cast<int>(o0)), c3 = _mm256_set1_epi32(static_cast<int>(o1));
    uint32_t key0 = k0, key1 = k1;
    for (int round = 0; round < 10; ++round) {
      __m256i hi0, lo0, hi1, lo1;
      mulhilo_avx2(c0, m0, hi0, lo0);
      mulhilo_avx2(c2, m1, hi1, lo1);
      const __m256i n0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(key0)));
      const __m256i n2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(key1)));
      c1 = lo1;
      c3 = lo0;
      c0 = n0;
      c2 = n2;
      key0 += 0x9E3779B9u;
      key1 += 0xBB67AE85u;
    }
    _mm256_store_ps(u0 + i, to_uniform_avx2(c0));
    _mm256_store_ps(u1 + i, to_uniform_avx2(c1));
    _mm256_store_ps(u2 + i, to_uniform_avx2(c2));
    _mm256_store_ps(u3 + i, to_uniform_avx2(c3));
  }
  return n8;
}
#endif

// Normals of counters q0 .. q0 + nq - 1 of the stream (element 4q + k -> out[4 (q - q0) + k]).
constexpr int64_t kMaxQ = 512;  // counters per batch (stack arrays of 8 KiB)
GF_VECTOR_CLONES void fill_normals(uint64_t seed, uint64_t offset, uint64_t q0, int64_t nq, float* out) {
  alignas(64) float u0[kMaxQ], u1[kMaxQ], u2[kMaxQ], u3[kMaxQ];
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const uint32_t o0 = static_cast<uint32_t>(offset), o1 = static_cast<uint32_t>(offset >> 32);
  int64_t i_first = 0;  // counters before it done by the AVX2 Philox
#if defined(GF_PHILOX_AVX2)
  if (__builtin_cpu_supports("avx2")) i_first = philox_uniforms_avx2(k0, k1, o0, o1, q0, nq, u0, u1, u2, u3);
#endif
  for (int64_t i = i_first; i < nq; ++i) {
    const uint64_t q = q0 + static_cast<uint64_t>(i);
    uint32_t c0 = static_cast<uint32_t>(q), c1 = static_cast<uint32_t>(q >> 32), c2 = o0, c3 = o1;
    uint32_t key0 = k0, key1 = k1;
    for (int round = 0; round < 10; ++round) {
      const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
      const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ key0;
      const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ key1;
      c1 = static_cast<uint32_t>(p1);
      c3 = static_cast<uint32_t>(p0);
      c0 = n0;
      c2 = n2;
      key0 += 0x9E3779B9u;
      key1 += 0xBB67AE85u;
    }
    u0[i] = word_to_uniform(c0);
    u1[i] = word_to_uniform(c1);
    u2[i] = word_to_uniform(c2);
    u3[i] = word_to_uniform(c3);
  }
#pragma omp simd
  for (int64_t i = 0; i < nq; ++i) {
    const float ra = vsqrtf(-2.0f * vlogf(u0[i]));
    const float rb = vsqrtf(-2.0f * vlogf(u2[i]));
    float sa, ca, sb, cb;
    vsincosf(6.28318548202514648438f * u1[i], sa, ca);
    vsincosf(6.28318548202514648438f * u3[i], sb, cb);
    u0[i] = ra * ca;
    u1[i] = ra * sa;
    u2[i] = rb * cb;
    u3[i] = rb * sb;
  }
  for (int64_t i = 0; i < nq; ++i) {
    out[4 * i + 0] = u0[i];
    out[4 * i + 1] = u1[i];
    out[4 * i + 2] = u2[i];
    out[4 * i + 3] = u3[i];
  }
}


}  // namespace

void stream_normals_cpu(uint64_t seed, uint64_t offset, int64_t first, int64_t n, float* out) {
  // Every element comes from fill_normals, partial counters at either end included, so an element's
  // value never depends on the range it was drawn in (a prefix of a longer draw is the shorter draw).
  int64_t i = first;
  const int64_t end = first + n;
  auto partial_counter = [&](int64_t stop) {
    alignas(16) float tmp[4];
    fill_normals(seed, offset, static_cast<uint64_t>(i / 4), 1, tmp);
    for (int k = static_cast<int>(i % 4); k < 4 && i < stop; ++k, ++i) out[i - first] = tmp[k];
  };
  if (i % 4 != 0 && i < end) partial_counter(end);
  while (end - i >= 4) {
    const int64_t nq = std::min<int64_t>((end - i) / 4, kMaxQ);
    fill_normals(seed, offset, static_cast<uint64_t>(i / 4), nq, out + (i - first));
    i += 4 * nq;
  }
  if (i < end) partial_counter(end);
}

}  // namespace genfast
