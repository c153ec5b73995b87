// The analytic backward of one DDIM / DDPM step (kernels/diffusion.cuh), shared by the CPU
// (csrc/diffusion_backward_cpu.cpp) and CUDA (kernels/diffusion_backward.cu) kernels;
// genfast/triton/diffusion_backward.py and the reference's analytic backward (genfast/ops/diffusion.py)
// follow the same formulas. Elementwise: dynamic thresholding (whose scale depends on all of a sample's
// x0) and gradients of alpha tensors are not computed here but by a vjp through the reference.
#pragma once
#include <cmath>
#include <cstdint>

#include "diffusion.cuh"

namespace genfast {

// The forward's parameters plus the incoming and outgoing gradients. All gradient tensors are
// contiguous in the sample's dtype; grad_model / grad_cond have model_output's layout (2C channels
// for the learned variance types, the variance half written too). An output pointer of 0 is not
// written; grad_x0 of 0 means no gradient reaches pred_original_sample.
struct StepBackwardParams {
  StepParams fwd;  // fwd.out, fwd.out_x0 and fwd.thresh_* are unused
  uintptr_t grad_prev, grad_x0;
  uintptr_t grad_sample, grad_model, grad_cond, grad_noise;
};

// Gradients of one element: w.r.t. the sample x, the (guided) prediction m, the predicted variance
// v (learned types) and the noise z.
struct StepElementGrads {
  float x, m, v, z;
};

// True where the backward needs the noise values themselves (not only std): the learned variance
// types, whose std depends on v, so dprev/dv = z * dstd/dv.
GF_HD bool step_backward_needs_noise(const StepParams& p) {
  return p.kind == kDDPM && (p.variance_type == kLearned || p.variance_type == kLearnedRange);
}

// d prev / d (each input) times the incoming gradients gp (of prev) and gx0 (of pred_original_sample).
// Div: as in step_element (the CPU divides, the CUDA kernel multiplies by the per-sample reciprocals).
template <typename Div = ExactDivision>
GF_HD StepElementGrads step_element_backward(const StepParams& p, const StepCoeffs& c, float x, float m, float v,
                                             float z, bool with_noise, float gp, float gx0) {
  StepElementGrads g{0.0f, 0.0f, 0.0f, 0.0f};
  const float x0 = step_x0<Div>(p.prediction_type, c, x, m);
  float g_x0c;  // gradient reaching the clipped x0
  if (p.kind == kDDIM) {
    if (p.use_clipped) {  // eps = (x - sa * x0c) / sb
      g_x0c = gp * (c.sap - c.dir * Div::div(c.sa, c.sb, c.inv_sb)) + gx0;
      g.x = gp * Div::div(c.dir, c.sb, c.inv_sb);
    } else {
      g_x0c = gp * c.sap + gx0;
      const float g_eps = gp * c.dir;
      switch (p.prediction_type) {
        case kEpsilon: g.m = g_eps; break;
        case kSample: g.x = Div::div(g_eps, c.sb, c.inv_sb); g.m = -g_eps * Div::div(c.sa, c.sb, c.inv_sb); break;  // eps = (x - sa * m) / sb
        default: g.m = g_eps * c.sa; g.x = g_eps * c.sb; break;                  // eps = sa * m + sb * x
      }
    }
    if (with_noise) g.z = gp * c.std;
  } else {
    g_x0c = gp * c.c_x0 + gx0;
    g.x = gp * c.c_x;
    if (with_noise) {
      float std = c.std;
      if (p.variance_type == kLearned) {  // std = sqrt(v) * mask
        const float r = sqrtf(v);
        std = r * c.mask;
        g.v = gp * z * c.mask * 0.5f / r;
      } else if (p.variance_type == kLearnedRange) {  // std = exp((frac lb + (1 - frac) lv) / 2) * mask
        const float frac = (v + 1.0f) * 0.5f;  // exact: the same as / 2
        const float e = expf(0.5f * (frac * c.log_beta + (1.0f - frac) * c.log_var));
        std = e * c.mask;
        g.v = gp * z * c.mask * e * 0.25f * (c.log_beta - c.log_var);
      }
      g.z = gp * std;
    }
  }
  // torch.clamp's gradient: passed where lo <= x0 <= hi (bounds included), zero elsewhere and for NaN.
  const float g_x0 = (!p.clip || (x0 >= -p.clip_range && x0 <= p.clip_range)) ? g_x0c : 0.0f;
  switch (p.prediction_type) {
    case kEpsilon: g.x += Div::div(g_x0, c.sa, c.inv_sa); g.m -= g_x0 * Div::div(c.sb, c.sa, c.inv_sa); break;  // x0 = (x - sb m) / sa
    case kSample: g.m += g_x0; break;                                      // x0 = m
    default: g.x += g_x0 * c.sa; g.m -= g_x0 * c.sb; break;                // x0 = sa x - sb m
  }
  return g;
}

}  // namespace genfast
