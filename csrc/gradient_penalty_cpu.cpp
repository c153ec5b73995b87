// CPU kernels of genfast.ops.gradient_penalty (OpenMP over samples). fp32 arithmetic, the same
// formulas as the CUDA kernels (kernels/gradient_penalty.cuh).
#include <vector>

#include "gradient_penalty.cuh"
#include "gradient_penalty.h"

namespace genfast {
namespace {

float load_alpha(uintptr_t alpha, int dtype, int64_t b) {
  switch (dtype) {
    case kFloat16: return Convert<Half>::load(reinterpret_cast<const Half*>(alpha) + b);
    case kBFloat16: return Convert<BFloat16>::load(reinterpret_cast<const BFloat16*>(alpha) + b);
    case kFloat64: return static_cast<float>(reinterpret_cast<const double*>(alpha)[b]);
    default: return reinterpret_cast<const float*>(alpha)[b];
  }
}

template <typename T>
void interpolate(const T* real, const T* fake, T* out, uintptr_t alpha, int alpha_dtype, int64_t batch, int64_t row,
                 uint64_t seed, uint64_t offset) {
#pragma omp parallel for schedule(static) if (batch * row > 65536)
  for (int64_t b = 0; b < batch; ++b) {
    const float a = alpha ? load_alpha(alpha, alpha_dtype, b) : gp_alpha(seed, offset, b);
    const int64_t base = b * row;
    for (int64_t j = 0; j < row; ++j) {
      const float r = Convert<T>::load(real + base + j), f = Convert<T>::load(fake + base + j);
      Convert<T>::store(out + base + j, a * r + (1.f - a) * f);
    }
  }
}

template <typename T>
void norm_penalty(const T* grad, float* norms, T* penalty, int64_t batch, int64_t row, float weight, float center,
                  int mode) {
  std::vector<float> sq(static_cast<size_t>(batch));
#pragma omp parallel for schedule(static) if (batch * row > 65536)
  for (int64_t b = 0; b < batch; ++b) {
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};  // 8 lanes: vectorizes, and less rounding drift
    const T* g = grad + b * row;
    int64_t j = 0;
    for (; j + 8 <= row; j += 8)
      for (int k = 0; k < 8; ++k) {
        const float v = Convert<T>::load(g + j + k);
        acc[k] += v * v;
      }
    for (; j < row; ++j) {
      const float v = Convert<T>::load(g + j);
      acc[0] += v * v;
    }
    const float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    sq[b] = s;
    norms[b] = sqrtf(s);
  }
  float total = 0.f;
  for (int64_t b = 0; b < batch; ++b) total += gp_term(sq[b], center, mode);
  Convert<T>::store(penalty, gp_penalty_scale(weight, mode) * (total / static_cast<float>(batch)));
}

template <typename T>
void norm_penalty_backward(const T* grad_out, const T* grad, const float* norms, T* out, int64_t batch, int64_t row,
                           float weight, float center, int mode) {
  const float go = Convert<T>::load(grad_out) * weight / static_cast<float>(batch);
#pragma omp parallel for schedule(static) if (batch * row > 65536)
  for (int64_t b = 0; b < batch; ++b) {
    const float scale = go * gp_backward_factor(norms[b], center, mode);
    const int64_t base = b * row;
    for (int64_t j = 0; j < row; ++j) Convert<T>::store(out + base + j, Convert<T>::load(grad + base + j) * scale);
  }
}

}  // namespace

void gp_interpolate_cpu(uintptr_t real, uintptr_t fake, uintptr_t out, uintptr_t alpha, int alpha_dtype, int64_t batch,
                        int64_t row, int dtype, StreamArgs rng) {
  gp_check_common(batch, row, dtype, "real");
  if (alpha) check_dtype(alpha_dtype, "alpha");
  if (batch * row == 0) return;
  check_arg(real && fake && out, "real/fake/out: null data pointer");
  const uint64_t seed = load_stream_value(rng.seed, rng.seed_ptr);
  const uint64_t offset = load_stream_value(rng.offset, rng.offset_ptr);
  switch (dtype) {
    case kFloat32:
      interpolate(reinterpret_cast<const float*>(real), reinterpret_cast<const float*>(fake), reinterpret_cast<float*>(out),
                  alpha, alpha_dtype, batch, row, seed, offset);
      break;
    case kFloat16:
      interpolate(reinterpret_cast<const Half*>(real), reinterpret_cast<const Half*>(fake), reinterpret_cast<Half*>(out),
                  alpha, alpha_dtype, batch, row, seed, offset);
      break;
    case kBFloat16:
      interpolate(reinterpret_cast<const BFloat16*>(real), reinterpret_cast<const BFloat16*>(fake),
                  reinterpret_cast<BFloat16*>(out), alpha, alpha_dtype, batch, row, seed, offset);
      break;
  }
}

void gp_norm_penalty_cpu(uintptr_t grad, uintptr_t norms, uintptr_t penalty, int64_t batch, int64_t row, int dtype,
                         float weight, float center, int mode) {
  gp_check_common(batch, row, dtype, "grad");
  gp_check_mode(mode);
  if (batch == 0) return;
  check_arg(norms && penalty && (row == 0 || grad), "grad/norms/penalty: null data pointer");
  float* n = reinterpret_cast<float*>(norms);
  switch (dtype) {
    case kFloat32:
      norm_penalty(reinterpret_cast<const float*>(grad), n, reinterpret_cast<float*>(penalty), batch, row, weight, center, mode);
      break;
    case kFloat16:
      norm_penalty(reinterpret_cast<const Half*>(grad), n, reinterpret_cast<Half*>(penalty), batch, row, weight, center, mode);
      break;
    case kBFloat16:
      norm_penalty(reinterpret_cast<const BFloat16*>(grad), n, reinterpret_cast<BFloat16*>(penalty), batch, row, weight,
                   center, mode);
      break;
  }
}

void gp_norm_penalty_backward_cpu(uintptr_t grad_out, uintptr_t grad, uintptr_t norms, uintptr_t out, int64_t batch,
                                  int64_t row, int dtype, float weight, float center, int mode) {
  gp_check_common(batch, row, dtype, "grad");
  gp_check_mode(mode);
  if (batch * row == 0) return;
  check_arg(grad_out && grad && norms && out, "grad_out/grad/norms/out: null data pointer");
  const float* n = reinterpret_cast<const float*>(norms);
  switch (dtype) {
    case kFloat32:
      norm_penalty_backward(reinterpret_cast<const float*>(grad_out), reinterpret_cast<const float*>(grad), n,
                            reinterpret_cast<float*>(out), batch, row, weight, center, mode);
      break;
    case kFloat16:
      norm_penalty_backward(reinterpret_cast<const Half*>(grad_out), reinterpret_cast<const Half*>(grad), n,
                            reinterpret_cast<Half*>(out), batch, row, weight, center, mode);
      break;
    case kBFloat16:
      norm_penalty_backward(reinterpret_cast<const BFloat16*>(grad_out), reinterpret_cast<const BFloat16*>(grad), n,
                            reinterpret_cast<BFloat16*>(out), batch, row, weight, center, mode);
      break;
  }
}

}  // namespace genfast
