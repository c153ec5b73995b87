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
