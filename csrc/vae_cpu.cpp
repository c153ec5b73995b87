// CPU kernels of genfast.ops.reparameterize_kl. One pass: the (B, D) matrix is cut into tasks of
// (row group, column chunk); each task draws the noise of a row chunk into a small buffer (one Philox
// call per four elements), then computes z and the KL in a loop over the chunk, keeping one partial KL
// per (row, chunk) and, with free bits, per (row group, column). The few partials are summed at the
// end in a fixed order (results do not depend on the thread count).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "philox.cuh"
#include "stream_cpu.h"
#include "vae.cuh"
#include "vae.h"

namespace genfast {
namespace {

constexpr int64_t kChunk = 2048;   // columns per task chunk (a multiple of 4)
constexpr int64_t kRowGroups = 8;  // row groups (bounds the per-column partial buffer to 8 * D floats)

// eps[0 .. n) = stream elements [first, first + n) (csrc/stream_cpu.cpp, vectorized).
inline void draw_normals(float* eps, int64_t first, int64_t n, uint64_t seed, uint64_t offset) {
  stream_normals_cpu(seed, offset, first, n, eps);
}

inline LogvarClamp to_clamp(VaeClampArgs c) { return LogvarClamp{c.on, c.lo, c.hi}; }

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define GF_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define GF_VECTOR_CLONES
#endif

// exp(x) in fp32 written so that loops over it vectorize (libm's expf does not): x = n ln2 + r with
// |r| <= ln2 / 2 (two-part ln2), exp(r) = 1 + r + r^2 P(r) with P of degree 5 fitted here to
// (exp(r) - 1 - r) / r^2 on that interval (fit error ~5e-11 relative; ~1-2 ulp after fp32 rounding),
// times 2^n applied as two exact power-of-two factors so that n in [-150, 128] needs no special case:
// overflow gives inf, underflow a denormal or 0 as libm does, NaN stays NaN. n is rounded to nearest
// with the 1.5 * 2^23 shifter (exact without -ffast-math; no float->int conversion needed). CPU only:
// the CUDA kernels keep expf (kernels/vae.cuh).
__attribute__((always_inline)) inline float vexpf(float x) {
  const float xc = x > 89.0f ? 89.0f : (x < -104.0f ? -104.0f : x);  // NaN passes through
  constexpr float kShift = 12582912.0f;                               // 1.5 * 2^23
  const float t = xc * 1.44269504088896341f + kShift;
  const float n = t - kShift;
  float r = xc - n * 0.693359375f;  // ln2, high part (n * it is exact)
  r = r + n * 2.12194440e-4f;       // ln2 - 0.693359375
  float p = 1.9790320948e-4f;
  p = p * r + 1.3944649836e-3f;
  p = p * r + 8.3334967494e-3f;
  p = p * r + 4.1666295379e-2f;
  p = p * r + 1.6666665673e-1f;
  p = p * r + 5.0000000000e-1f;
  p = p * (r * r) + r + 1.0f;
  uint32_t tb, sb;
  std::memcpy(&tb, &t, 4);
  std::memcpy(&sb, &kShift, 4);
  const int32_t ni = static_cast<int32_t>(tb - sb);  // n as an integer, in [-150, 128]
  const int32_t n1 = ni >> 1, n2 = ni - n1;          // both in [-75, 64]
  const uint32_t b1 = static_cast<uint32_t>(n1 + 127) << 23, b2 = static_cast<uint32_t>(n2 + 127) << 23;
  float s1, s2;
  std::memcpy(&s1, &b1, 4);
  std::memcpy(&s2, &b2, 4);
  return (p * s1) * s2;
}

// z, the KL terms and their sum over one row chunk (all fp32); col_acc (optional) += the KL terms.
template <bool kCols>
__attribute__((always_inline)) inline float forward_chunk_impl(const float* __restrict m, const float* __restrict l,
                                                               const float* __restrict eps, float* __restrict z,
                                                               float* __restrict col_acc, int64_t len, float lo,
                                                               float hi) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t k = 0; k < len; ++k) {
    const float mk = m[k];
    const float lk = l[k] < lo ? lo : (l[k] > hi ? hi : l[k]);  // clamped_logvar, branch-free
    const float sd = vexpf(0.5f * lk);
    z[k] = mk + sd * eps[k];
    const float kl = 0.5f * (mk * mk + sd * sd - 1.0f - lk);
    if (kCols) col_acc[k] += kl;
    acc += kl;
  }
  return acc;
}

GF_VECTOR_CLONES float forward_chunk(const float* m, const float* l, const float* eps, float* z, float* col_acc,
                                     int64_t len, float lo, float hi) {
  return col_acc ? forward_chunk_impl<true>(m, l, eps, z, col_acc, len, lo, hi)
                 : forward_chunk_impl<false>(m, l, eps, z, nullptr, len, lo, hi);
}

// vae_backward_element (kernels/vae.cuh) over one row chunk with the vectorizable exp; g/eps (the
// incoming grad_z and the noise) and gcol (per-column KL coefficients) are optional.
template <bool kGz, bool kCols, bool kClamp>
__attribute__((always_inline)) inline void backward_chunk_impl(const float* __restrict g, const float* __restrict eps,
                                                               const float* __restrict m, const float* __restrict l,
                                                               float row_coef, const float* __restrict gcol,
                                                               float* __restrict gm, float* __restrict gl, int64_t len,
                                                               float lo, float hi) {
#pragma omp simd
  for (int64_t k = 0; k < len; ++k) {
    const float l_raw = l[k];
    const float lk = l_raw < lo ? lo : (l_raw > hi ? hi : l_raw);
    const float sd = vexpf(0.5f * lk);
    const float coef = kCols ? row_coef + gcol[k] : row_coef;
    const float gzk = kGz ? g[k] : 0.0f;
    const float ek = kGz ? eps[k] : 0.0f;
    const float glk = 0.5f * (gzk * sd * ek + coef * (sd * sd - 1.0f));
    gm[k] = gzk + coef * m[k];
    // logvar_in_range; bitwise & (no short-circuit branch, so the loop vectorizes).
    gl[k] = kClamp ? (((l_raw >= lo) & (l_raw <= hi)) ? glk : 0.0f) : glk;
  }
}

template <bool kGz, bool kCols>
__attribute__((always_inline)) inline void backward_chunk_clamp(const float* g, const float* eps, const float* m,
                                                                const float* l, float row_coef, const float* gcol,
                                                                float* gm, float* gl, int64_t len, float lo, float hi,
                                                                bool clamp_on) {
  if (clamp_on) backward_chunk_impl<kGz, kCols, true>(g, eps, m, l, row_coef, gcol, gm, gl, len, lo, hi);
  else backward_chunk_impl<kGz, kCols, false>(g, eps, m, l, row_coef, gcol, gm, gl, len, lo, hi);
}

GF_VECTOR_CLONES void backward_chunk(const float* g, const float* eps, const float* m, const float* l, float row_coef,
                                     const float* gcol, float* gm, float* gl, int64_t len, float lo, float hi,
                                     bool clamp_on) {
  if (g) {
    if (gcol) backward_chunk_clamp<true, true>(g, eps, m, l, row_coef, gcol, gm, gl, len, lo, hi, clamp_on);
    else backward_chunk_clamp<true, false>(g, eps, m, l, row_coef, gcol, gm, gl, len, lo, hi, clamp_on);
  } else {
    if (gcol) backward_chunk_clamp<false, true>(g, eps, m, l, row_coef, gcol, gm, gl, len, lo, hi, clamp_on);
    else backward_chunk_clamp<false, false>(g, eps, m, l, row_coef, gcol, gm, gl, len, lo, hi, clamp_on);
  }
}

// A row chunk as fp32: the data itself when T is float, else converted into buf.
template <typename T>
inline const float* as_f32(const T* p, float* buf, int64_t len) {
  if constexpr (std::is_same<T, float>::value) {
    return p;
  } else {
    for (int64_t k = 0; k < len; ++k) buf[k] = Convert<T>::load(p + k);
    return buf;
  }
}

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
    alignas(64) float eps_buf[kChunk], m_buf[kChunk], l_buf[kChunk], z_buf[kChunk];
    float* col_acc = kl_cols ? col_part.data() + g * D + j0 : nullptr;
    for (int64_t b = g * rows_per_group; b < std::min(B, (g + 1) * rows_per_group); ++b) {
      const int64_t base = b * D + j0;
      const float* eps;
      if (noise) {
        eps = as_f32(noise + base, eps_buf, len);
      } else {
        draw_normals(eps_buf, base, len, seed, offset);
        eps = eps_buf;
      }
      const float* m = as_f32(mu + base, m_buf, len);
      const float* l = as_f32(lv + base, l_buf, len);
      float* zo;
      if constexpr (std::is_same<T, float>::value) zo = z + base;
      else zo = z_buf;
      const float acc = forward_chunk(m, l, eps, zo, col_acc, len, lo, hi);
      if constexpr (!std::is_same<T, float>::value)
        for (int64_t k = 0; k < len; ++k) Convert<T>::store(z + base + k, z_buf[k]);
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
    alignas(64) float eps_buf[kChunk], m_buf[kChunk], l_buf[kChunk], g_buf[kChunk], gm_buf[kChunk], gl_buf[kChunk];
    const float* eps = nullptr;
    const float* g = nullptr;
    if (gz) {
      if (noise) {
        eps = as_f32(noise + base, eps_buf, len);
      } else {
        draw_normals(eps_buf, base, len, seed, offset);
        eps = eps_buf;
      }
      g = as_f32(gz + base, g_buf, len);
    }
    const float row_coef = grow ? grow[b] : 0.0f;
    const float* m = as_f32(mu + base, m_buf, len);
    const float* l = as_f32(lv + base, l_buf, len);
    float *gm, *gl;
    if constexpr (std::is_same<T, float>::value) {
      gm = gmu + base;
      gl = glv + base;
    } else {
      gm = gm_buf;
      gl = gl_buf;
    }
    backward_chunk(g, eps, m, l, row_coef, gcol ? gcol + j0 : nullptr, gm, gl, len, lo, hi, clamp.on);
    if constexpr (!std::is_same<T, float>::value) {
      for (int64_t k = 0; k < len; ++k) Convert<T>::store(gmu + base + k, gm_buf[k]);
      for (int64_t k = 0; k < len; ++k) Convert<T>::store(glv + base + k, gl_buf[k]);
    }
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
