// CPU kernels of genfast.ops.reparameterize_kl. One pass: the (B, D) matrix is cut into tasks of
// (row group, column chunk); each task draws the noise of a row chunk into a small buffer (one Philox
// call per four elements), then computes z and the KL in a loop over the chunk, keeping one partial KL
// per (row, chunk) and, with free bits, per (row group, column). The few partials are summed at the
// end in a fixed order (results do not depend on the thread count).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "philox.cuh"
#include "vae.cuh"
#include "vae.h"

namespace genfast {
namespace {

constexpr int64_t kChunk = 2048;   // columns per task chunk (a multiple of 4)
constexpr int64_t kRowGroups = 8;  // row groups (bounds the per-column partial buffer to 8 * D floats)

// Box-Muller with branch-free float approximations that the compiler vectorizes (libm's scalar logf,
// sinf and cosf dominate the CPU time otherwise). Both agree with libm to about 1-2 ulps, within the
// "few ulps" that genfast's normals promise across backends; the uniforms are bit-identical.
inline float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

// log(x) for normal positive x: x = 2^e * m with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(f / (2 + f)).
inline float log_approx(float x) {
  uint32_t ix = float_to_bits(x);
  ix += 0x3f800000u - 0x3f3504f3u;  // so that the exponent rounds m into [sqrt(1/2), sqrt(2))
  const int e = static_cast<int>(ix >> 23) - 0x7f;
  const float m = bits_to_float((ix & 0x007fffffu) + 0x3f3504f3u);
  const float f = m - 1.0f;
  const float sv = f / (2.0f + f);
  const float s2 = sv * sv;
  const float poly = s2 * (0.6666666666667f + s2 * (0.4f + s2 * (0.2857142857f + s2 * 0.2222222222f)));
  const float log_m = 2.0f * sv + sv * poly;
  return static_cast<float>(e) * 0.693147180559945f + log_m;
}

// sin and cos of a in [0, 6.3): quadrant k = round(a / (pi/2)), r = a - k pi/2 (Cody-Waite), |r| <= pi/4.
inline void sincos_approx(float a, float& s, float& c) {
  const int k = static_cast<int>(a * 0.636619772367581f + 0.5f);
  const float kf = static_cast<float>(k);
  float r = a - kf * 1.5703125f;
  r -= kf * 4.837512969970703125e-4f;
  r -= kf * 7.54978995489188216e-8f;
  const float r2 = r * r;
  const float sp = r + r * r2 * (-1.6666654611e-1f + r2 * (8.3321608736e-3f + r2 * -1.9515295891e-4f));
  const float cp = 1.0f - 0.5f * r2 + r2 * r2 * (4.166664568298827e-2f + r2 * (-1.388731625493765e-3f + r2 * 2.443315711809948e-5f));
  // Quadrant by bit operations (no branches, so the loop vectorizes): odd k swaps sin and cos, and
  // k = 2, 3 negates sin, k = 1, 2 negates cos.
  const uint32_t q = static_cast<uint32_t>(k);
  const uint32_t swap = 0u - (q & 1u);
  const uint32_t sb = float_to_bits(sp), cb = float_to_bits(cp);
  s = bits_to_float(((sb & ~swap) | (cb & swap)) ^ ((q & 2u) << 30));
  c = bits_to_float(((cb & ~swap) | (sb & swap)) ^ (((q + 1u) & 2u) << 30));
}

constexpr int kBatch = 64;  // Philox counters per vectorized batch

// Box-Muller on kBatch pairs of words (a, b) -> (radius * cos, radius * sin). Plain arithmetic loops
// the compiler vectorizes; the sqrt goes through SSE directly (std::sqrt's errno path blocks that).
void box_muller_batch(const uint32_t* __restrict__ a, const uint32_t* __restrict__ b, float* __restrict__ cos_out,
                      float* __restrict__ sin_out) {
  alignas(64) float r2[kBatch];
#pragma omp simd
  for (int c = 0; c < kBatch; ++c) {
    // word_to_uniform with a signed conversion (< 2^23, so exact and identical), which SSE2 vectorizes.
    const float u0 = (static_cast<float>(static_cast<int32_t>(a[c] >> 9)) + 0.5f) * 1.1920928955078125e-07f;
    const float u1 = (static_cast<float>(static_cast<int32_t>(b[c] >> 9)) + 0.5f) * 1.1920928955078125e-07f;
    r2[c] = -2.0f * log_approx(u0);
    float sn, cs;
    sincos_approx(6.28318548202514648438f * u1, sn, cs);
    cos_out[c] = cs;
    sin_out[c] = sn;
  }
#if defined(__SSE2__)
  for (int c = 0; c < kBatch; c += 4) _mm_store_ps(r2 + c, _mm_sqrt_ps(_mm_load_ps(r2 + c)));
#else
  for (int c = 0; c < kBatch; ++c) r2[c] = std::sqrt(r2[c]);
#endif
#pragma omp simd
  for (int c = 0; c < kBatch; ++c) {
    cos_out[c] *= r2[c];
    sin_out[c] *= r2[c];
  }
}

// eps[0 .. n) = stream elements [first, first + n).
inline void draw_normals(float* eps, int64_t first, int64_t n, uint64_t seed, uint64_t offset) {
  int64_t i = first;
  const int64_t end = first + n;
  auto scalar_block = [&](int64_t stop) {
    while (i < stop) {
      const F32x4 v = normal4(philox_block(seed, offset, static_cast<uint64_t>(i / 4)));
      const float vals[4] = {v.x, v.y, v.z, v.w};
      for (int k = static_cast<int>(i % 4); k < 4 && i < stop; ++k, ++i) eps[i - first] = vals[k];
    }
  };
  scalar_block(std::min(end, (first + 3) / 4 * 4));  // up to a counter boundary
  alignas(64) uint32_t w[4][kBatch];
  alignas(64) float out[4][kBatch];
  while (end - i >= 4 * kBatch) {
    const uint64_t q0 = static_cast<uint64_t>(i / 4);
    for (int c = 0; c < kBatch; ++c) {
      const U32x4 r = philox_block(seed, offset, q0 + c);
      w[0][c] = r.x; w[1][c] = r.y; w[2][c] = r.z; w[3][c] = r.w;
    }
    box_muller_batch(w[0], w[1], out[0], out[1]);
    box_muller_batch(w[2], w[3], out[2], out[3]);
    float* dst = eps + (i - first);
    for (int c = 0; c < kBatch; ++c) {
      dst[4 * c] = out[0][c]; dst[4 * c + 1] = out[1][c]; dst[4 * c + 2] = out[2][c]; dst[4 * c + 3] = out[3][c];
    }
    i += 4 * kBatch;
  }
  scalar_block(end);
}

inline LogvarClamp to_clamp(VaeClampArgs c) { return LogvarClamp{c.on, c.lo, c.hi}; }

template <typename T>
void forward(const T* mu, const T* lv, const T* noise, T* z, float* kl_rows, float* kl_cols, int64_t B, int64_t D,
             uint64_t seed, uint64_t offset, LogvarClamp clamp) {
  // Without a clamp the bounds are +-inf, so the branch-free clamp is the identity (NaN stays NaN).
  const float lo = clamp.on ? clamp.lo : -INFINITY, hi = clamp.on ? clamp.hi : INFINITY;
  const int64_t n_chunks = (D + kChunk - 1) / kChunk;
  const int64_t n_groups = std::min<int64_t>(B, kRowGroups);
  const int64_t rows_per_group = (B + n_groups - 1) / n_groups;
  const bool with_kl = kl_rows != nullptr;
  std::vector<float> row_part(with_kl ? static_cast<size_t>(n_chunks * B) : 0);
  std::vector<float> col_part(kl_cols ? static_cast<size_t>(n_groups * D) : 0, 0.0f);
  const int64_t tasks = n_groups * n_chunks;
#pragma omp parallel for schedule(static) if (B * D > 32768)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t g = t / n_chunks, c = t % n_chunks;
    const int64_t j0 = c * kChunk, len = std::min(kChunk, D - j0);
    alignas(64) float eps_buf[kChunk], m_buf[kChunk], l_buf[kChunk], z_buf[kChunk], kl_buf[kChunk];
    float* col_acc = kl_cols ? col_part.data() + g * D + j0 : nullptr;
    for (int64_t b = g * rows_per_group; b < std::min(B, (g + 1) * rows_per_group); ++b) {
      const int64_t base = b * D + j0;
      const float* eps = eps_buf;
      if (noise) {
        for (int64_t k = 0; k < len; ++k) eps_buf[k] = Convert<T>::load(noise + base + k);
      } else {
        draw_normals(eps_buf, base, len, seed, offset);
      }
      // Stage the row chunk through fp32 buffers so that the arithmetic loop vectorizes.
      for (int64_t k = 0; k < len; ++k) m_buf[k] = Convert<T>::load(mu + base + k);
      for (int64_t k = 0; k < len; ++k) l_buf[k] = Convert<T>::load(lv + base + k);
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t k = 0; k < len; ++k) {
        const float m = m_buf[k];
        const float l = l_buf[k] < lo ? lo : (l_buf[k] > hi ? hi : l_buf[k]);  // clamped_logvar, branch-free
        const float sd = std::exp(0.5f * l);
        z_buf[k] = m + sd * eps[k];
        const float kl = 0.5f * (m * m + sd * sd - 1.0f - l);
        kl_buf[k] = kl;
        acc += kl;
      }
      for (int64_t k = 0; k < len; ++k) Convert<T>::store(z + base + k, z_buf[k]);
      if (col_acc)
        for (int64_t k = 0; k < len; ++k) col_acc[k] += kl_buf[k];
      if (with_kl) row_part[c * B + b] = acc;
    }
  }
  if (with_kl) {
    for (int64_t b = 0; b < B; ++b) {
      float s = 0.0f;
      for (int64_t c = 0; c < n_chunks; ++c) s += row_part[c * B + b];
      kl_rows[b] = s;
    }
  }
  if (kl_cols) {
    for (int64_t j = 0; j < D; ++j) kl_cols[j] = 0.0f;
    for (int64_t g = 0; g < n_groups; ++g)
      for (int64_t j = 0; j < D; ++j) kl_cols[j] += col_part[g * D + j];
  }
}

template <typename T>
void backward(const T* gz, const float* grow, const float* gcol, const T* mu, const T* lv, const T* noise, T* gmu,
              T* glv, int64_t B, int64_t D, uint64_t seed, uint64_t offset, LogvarClamp clamp) {
  const float lo = clamp.on ? clamp.lo : -INFINITY, hi = clamp.on ? clamp.hi : INFINITY;
  const int64_t n_chunks = (D + kChunk - 1) / kChunk;
  const int64_t tasks = B * n_chunks;
#pragma omp parallel for schedule(static) if (B * D > 32768)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t b = t / n_chunks, c = t % n_chunks;
    const int64_t j0 = c * kChunk, len = std::min(kChunk, D - j0);
    const int64_t base = b * D + j0;
    alignas(64) float eps_buf[kChunk], m_buf[kChunk], l_buf[kChunk], g_buf[kChunk], c_buf[kChunk];
    if (gz) {
      if (noise) {
        for (int64_t k = 0; k < len; ++k) eps_buf[k] = Convert<T>::load(noise + base + k);
      } else {
        draw_normals(eps_buf, base, len, seed, offset);
      }
    }
    const float row_coef = grow ? grow[b] : 0.0f;
    for (int64_t k = 0; k < len; ++k) m_buf[k] = Convert<T>::load(mu + base + k);
    for (int64_t k = 0; k < len; ++k) l_buf[k] = Convert<T>::load(lv + base + k);
    for (int64_t k = 0; k < len; ++k) g_buf[k] = gz ? Convert<T>::load(gz + base + k) : 0.0f;
    for (int64_t k = 0; k < len; ++k) c_buf[k] = row_coef + (gcol ? gcol[j0 + k] : 0.0f);
    if (!gz)
      for (int64_t k = 0; k < len; ++k) eps_buf[k] = 0.0f;
#pragma omp simd
    for (int64_t k = 0; k < len; ++k) {
      // vae_backward_element (kernels/vae.cuh) with the vectorizable exp.
      const float l_raw = l_buf[k];
      const float l = l_raw < lo ? lo : (l_raw > hi ? hi : l_raw);
      const float sd = std::exp(0.5f * l);
      const float coef = c_buf[k];
      const float gl = 0.5f * (g_buf[k] * sd * eps_buf[k] + coef * (sd * sd - 1.0f));
      m_buf[k] = g_buf[k] + coef * m_buf[k];
      l_buf[k] = (l_raw >= lo && l_raw <= hi) || !clamp.on ? gl : 0.0f;  // logvar_in_range
    }
    for (int64_t k = 0; k < len; ++k) Convert<T>::store(gmu + base + k, m_buf[k]);
    for (int64_t k = 0; k < len; ++k) Convert<T>::store(glv + base + k, l_buf[k]);
  }
}

template <typename T>
const T* cptr(uintptr_t p) { return reinterpret_cast<const T*>(p); }
template <typename T>
T* mptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

}  // namespace

void vae_forward_cpu(uintptr_t mu, uintptr_t logvar, uintptr_t noise, uintptr_t z, uintptr_t kl_rows,
                     uintptr_t kl_cols, int64_t B, int64_t D, int dtype, StreamArgs rng, VaeClampArgs clamp) {
  vae_check_args(B, D, dtype, clamp);
  const int64_t n = B * D;
  check_numel(n, mu, "mu");
  check_numel(n, logvar, "logvar");
  check_numel(n, z, "z");
  if (n == 0) {
    if (kl_rows) for (int64_t b = 0; b < B; ++b) mptr<float>(kl_rows)[b] = 0.0f;
    if (kl_cols) for (int64_t j = 0; j < D; ++j) mptr<float>(kl_cols)[j] = 0.0f;
    return;
  }
  const uint64_t seed = noise ? 0 : load_stream_value(rng.seed, rng.seed_ptr);
  const uint64_t offset = noise ? 0 : load_stream_value(rng.offset, rng.offset_ptr);
  const LogvarClamp c = to_clamp(clamp);
  switch (dtype) {
#define GF_VAE_FWD(T) forward<T>(cptr<T>(mu), cptr<T>(logvar), cptr<T>(noise), mptr<T>(z), mptr<float>(kl_rows), \
                                 mptr<float>(kl_cols), B, D, seed, offset, c)
    case kFloat32: GF_VAE_FWD(float); break;
    case kFloat16: GF_VAE_FWD(Half); break;
    case kBFloat16: GF_VAE_FWD(BFloat16); break;
#undef GF_VAE_FWD
  }
}

void vae_backward_cpu(uintptr_t grad_z, uintptr_t grad_rows, uintptr_t grad_cols, uintptr_t mu, uintptr_t logvar,
                      uintptr_t noise, uintptr_t grad_mu, uintptr_t grad_logvar, int64_t B, int64_t D, int dtype,
                      StreamArgs rng, VaeClampArgs clamp) {
  vae_check_args(B, D, dtype, clamp);
  const int64_t n = B * D;
  check_numel(n, mu, "mu");
  check_numel(n, logvar, "logvar");
  check_numel(n, grad_mu, "grad_mu");
  check_numel(n, grad_logvar, "grad_logvar");
  if (n == 0) return;
  const uint64_t seed = noise ? 0 : load_stream_value(rng.seed, rng.seed_ptr);
  const uint64_t offset = noise ? 0 : load_stream_value(rng.offset, rng.offset_ptr);
  const LogvarClamp c = to_clamp(clamp);
  switch (dtype) {
#define GF_VAE_BWD(T) backward<T>(cptr<T>(grad_z), cptr<float>(grad_rows), cptr<float>(grad_cols), cptr<T>(mu), \
                                  cptr<T>(logvar), cptr<T>(noise), mptr<T>(grad_mu), mptr<T>(grad_logvar), B, D,  \
                                  seed, offset, c)
    case kFloat32: GF_VAE_BWD(float); break;
    case kFloat16: GF_VAE_BWD(Half); break;
    case kBFloat16: GF_VAE_BWD(BFloat16); break;
#undef GF_VAE_BWD
  }
}

}  // namespace genfast
