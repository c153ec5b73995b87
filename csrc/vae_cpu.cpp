// CPU kernels of genfast.ops.reparameterize_kl. One pass: the (B, D) matrix is cut into tasks of
// (row group, column chunk); each task draws the noise of a row chunk into a small buffer (one Philox
// call per four elements), then computes z and the KL in a loop over the chunk, keeping one partial KL
// per (row, chunk) and, with free bits, per (row group, column). The few partials are summed at the
// end in a fixed order (results do not depend on the thread count).
#include <algorithm>
#include <cmath>
#include <vector>

#include "philox.cuh"
#include "vae.cuh"
#include "vae.h"

namespace genfast {
namespace {

constexpr int64_t kChunk = 2048;   // columns per task chunk (a multiple of 4)
constexpr int64_t kRowGroups = 8;  // row groups (bounds the per-column partial buffer to 8 * D floats)

// eps[0 .. n) = stream elements [first, first + n).
inline void draw_normals(float* eps, int64_t first, int64_t n, uint64_t seed, uint64_t offset) {
  int64_t i = first;
  const int64_t end = first + n;
  while (i < end) {
    const F32x4 v = normal4(philox_block(seed, offset, static_cast<uint64_t>(i / 4)));
    const float vals[4] = {v.x, v.y, v.z, v.w};
    for (int k = static_cast<int>(i % 4); k < 4 && i < end; ++k, ++i) eps[i - first] = vals[k];
  }
}

inline LogvarClamp to_clamp(VaeClampArgs c) { return LogvarClamp{c.on, c.lo, c.hi}; }

template <typename T>
void forward(const T* mu, const T* lv, const T* noise, T* z, float* kl_rows, float* kl_cols, int64_t B, int64_t D,
             uint64_t seed, uint64_t offset, LogvarClamp clamp) {
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
    float eps_buf[kChunk];
    float* col_acc = kl_cols ? col_part.data() + g * D + j0 : nullptr;
    for (int64_t b = g * rows_per_group; b < std::min(B, (g + 1) * rows_per_group); ++b) {
      const int64_t base = b * D + j0;
      const float* eps = eps_buf;
      if (noise) {
        for (int64_t k = 0; k < len; ++k) eps_buf[k] = Convert<T>::load(noise + base + k);
      } else {
        draw_normals(eps_buf, base, len, seed, offset);
      }
      float acc = 0.0f;
      for (int64_t k = 0; k < len; ++k) {
        const float m = Convert<T>::load(mu + base + k);
        const float l = clamped_logvar(Convert<T>::load(lv + base + k), clamp);
        float zv, kl;
        vae_forward_element(m, l, eps[k], zv, kl);
        Convert<T>::store(z + base + k, zv);
        acc += kl;
        if (col_acc) col_acc[k] += kl;
      }
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
  const int64_t n_chunks = (D + kChunk - 1) / kChunk;
  const int64_t tasks = B * n_chunks;
#pragma omp parallel for schedule(static) if (B * D > 32768)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t b = t / n_chunks, c = t % n_chunks;
    const int64_t j0 = c * kChunk, len = std::min(kChunk, D - j0);
    const int64_t base = b * D + j0;
    float eps_buf[kChunk];
    if (gz) {
      if (noise) {
        for (int64_t k = 0; k < len; ++k) eps_buf[k] = Convert<T>::load(noise + base + k);
      } else {
        draw_normals(eps_buf, base, len, seed, offset);
      }
    }
    const float row_coef = grow ? grow[b] : 0.0f;
    for (int64_t k = 0; k < len; ++k) {
      const float coef = row_coef + (gcol ? gcol[j0 + k] : 0.0f);
      const float g = gz ? Convert<T>::load(gz + base + k) : 0.0f;
      float gm, gl;
      vae_backward_element(g, coef, Convert<T>::load(mu + base + k), Convert<T>::load(lv + base + k),
                           gz ? eps_buf[k] : 0.0f, clamp, gm, gl);
      Convert<T>::store(gmu + base + k, gm);
      Convert<T>::store(glv + base + k, gl);
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
