// Per-element math of the fused VAE reparameterization + KL (genfast.ops.reparameterize_kl), shared by
// the CPU kernels (csrc/vae_cpu.cpp) and the CUDA kernels (kernels/vae.cu) so both compute one formula:
//   lv  = clamp(logvar, lo, hi)          (only when logvar_clamp is given)
//   std = exp(lv / 2)
//   z   = mu + std * eps
//   kl  = (mu^2 + std^2 - 1 - lv) / 2    (KL(N(mu, std^2) || N(0, 1)) of one latent element)
// and the backward, given the incoming grad_z and the coefficient c = dLoss/dkl of the element:
//   grad_mu     = grad_z + c * mu
//   grad_logvar = [lo <= logvar <= hi] * (grad_z * std * eps / 2 + c * (std^2 - 1) / 2)
// (the clamp passes gradient where torch.clamp does: inside the closed interval).
#pragma once
#include <cmath>

#include "common.cuh"

namespace genfast {

struct LogvarClamp {
  bool on;
  float lo, hi;
};

GF_HD float clamped_logvar(float lv, const LogvarClamp& c) {
  if (!c.on) return lv;
  // NaN stays NaN, like torch.clamp.
  return lv < c.lo ? c.lo : (lv > c.hi ? c.hi : lv);
}

GF_HD bool logvar_in_range(float lv, const LogvarClamp& c) { return !c.on || (lv >= c.lo && lv <= c.hi); }

GF_HD float vae_std(float lv) {
#if defined(__CUDA_ARCH__)
  return expf(0.5f * lv);  // full-precision expf (built without --use_fast_math)
#else
  return std::exp(0.5f * lv);
#endif
}

// z and the KL term of one element; `lv` is already clamped.
GF_HD void vae_forward_element(float mu, float lv, float eps, float& z, float& kl) {
  const float s = vae_std(lv);
  z = mu + s * eps;
  kl = 0.5f * (mu * mu + s * s - 1.0f - lv);
}

// Gradients of one element; `lv_raw` is the logvar as given (before the clamp).
GF_HD void vae_backward_element(float grad_z, float coef, float mu, float lv_raw, float eps, const LogvarClamp& clamp,
                                float& grad_mu, float& grad_logvar) {
  const float lv = clamped_logvar(lv_raw, clamp);
  const float s = vae_std(lv);
  grad_mu = grad_z + coef * mu;
  const float g = 0.5f * (grad_z * s * eps + coef * (s * s - 1.0f));
  grad_logvar = logvar_in_range(lv_raw, clamp) ? g : 0.0f;
}

}  // namespace genfast
