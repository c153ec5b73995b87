// The math of one DDIM / DDPM step (diffusers' DDIMScheduler.step / DDPMScheduler.step), shared by the
// CPU (csrc/diffusion_cpu.cpp) and CUDA (kernels/diffusion.cu) kernels so both compute the same fp32
// formula in the same order. genfast/triton/diffusion.py and the reference follow the same order.
#pragma once
#include <cmath>
#include <cstdint>

#include "common.cuh"

namespace genfast {

enum StepKind : int { kDDIM = 0, kDDPM = 1 };
enum PredictionType : int { kEpsilon = 0, kSample = 1, kVPrediction = 2 };
enum VarianceType : int { kFixedSmall = 0, kFixedSmallLog = 1, kFixedLarge = 2, kFixedLargeLog = 3, kLearned = 4,
                          kLearnedRange = 5 };
enum NoiseMode : int { kNoiseNever = 0, kNoiseAlways = 1, kNoiseAuto = 2 };  // auto: where alpha_prev < 1
enum NoiseSource : int { kSrcNone = 0, kSrcTensor = 1, kSrcStream = 2 };

// Everything a step kernel needs, as plain integers and floats (built by the bindings from Python ints).
struct StepParams {
  int kind, mode_abs_x0;  // mode_abs_x0: write |x0| (fp32, before clipping) instead of the step
  int64_t n, inner;       // elements of sample, elements per batch sample
  uintptr_t out, out_x0, sample, model, cond, noise;
  int dtype, noise_dtype;
  uintptr_t alpha_t_ptr;   // fp32 tensor or 0 (then alpha_t); per-sample [B] when alpha_t_per_sample
  bool alpha_t_per_sample;
  uintptr_t alpha_prev_ptr;
  bool alpha_prev_per_sample;
  float alpha_t, alpha_prev, eta;
  int prediction_type, variance_type;
  bool guidance;
  float guidance_scale;
  bool clip;
  float clip_range;
  uintptr_t thresh_lo, thresh_hi;  // fp32 [B] order statistics of |x0| (0: no thresholding)
  float thresh_weight, thresh_max;
  bool use_clipped;
  int noise_mode, noise_src;
  uint64_t seed, offset;
  uintptr_t seed_ptr, offset_ptr;
};

// Per-sample coefficients, from the two cumulative alphas (fp32, same expressions as diffusers).
struct StepCoeffs {
  float sa, sb;          // sqrt(alpha_t), sqrt(1 - alpha_t)
  float sap, dir;        // DDIM: sqrt(alpha_prev), sqrt(1 - alpha_prev - std^2)
  float c_x0, c_x;       // DDPM: posterior mean coefficients
  float std;             // noise std (fixed variance types, DDIM); 0 where no noise
  float log_var, log_beta, mask;  // DDPM learned types: log of the clamped posterior variance, log beta_t
  float inv_sa, inv_sb;  // 1 / sa, 1 / sb: the CUDA kernel multiplies instead of dividing per element
};

GF_HD float gf_sqrt(float v) { return sqrtf(v); }

GF_HD StepCoeffs step_coeffs(int kind, int variance_type, int noise_mode, float eta, float a_t, float a_p) {
  StepCoeffs c;
  const float beta_t = 1.0f - a_t;
  c.sa = gf_sqrt(a_t);
  c.sb = gf_sqrt(beta_t);
  c.sap = gf_sqrt(a_p);
  c.inv_sa = 1.0f / c.sa;
  c.inv_sb = 1.0f / c.sb;
  c.mask = (noise_mode == kNoiseAuto) ? (a_p < 1.0f ? 1.0f : 0.0f) : 1.0f;
  if (kind == kDDIM) {
    const float var = (1.0f - a_p) / beta_t * (1.0f - a_t / a_p);
    c.std = eta * gf_sqrt(var);
    c.dir = gf_sqrt(1.0f - a_p - c.std * c.std);
    c.c_x0 = c.c_x = c.log_var = c.log_beta = 0.0f;
  } else {
    const float cur_alpha = a_t / a_p;
    const float cur_beta = 1.0f - cur_alpha;
    c.c_x0 = (c.sap * cur_beta) / beta_t;
    c.c_x = gf_sqrt(cur_alpha) * (1.0f - a_p) / beta_t;
    float var = (1.0f - a_p) / beta_t * cur_beta;
    var = var < 1e-20f ? 1e-20f : var;  // diffusers clamps before taking logs (NaN passes through)
    switch (variance_type) {
      case kFixedSmall: c.std = gf_sqrt(var); break;
      case kFixedSmallLog: c.std = expf(0.5f * logf(var)); break;
      case kFixedLarge:
      case kFixedLargeLog: c.std = gf_sqrt(cur_beta); break;
      default: c.std = 0.0f; break;  // learned: per element
    }
    c.std *= c.mask;
    c.log_var = logf(var);
    c.log_beta = logf(cur_beta);
    c.dir = 0.0f;
  }
  return c;
}

// torch.clamp: max with lo, then min with hi (so lo > hi gives hi everywhere); NaN stays NaN.
// A cumulative alpha of batch sample b: per-sample ([B] at ptr, each), one value at ptr, or the scalar.
GF_HD float alpha_at(const float* ptr, bool each, float value, int64_t b) {
  return ptr ? ptr[each ? b : 0] : value;
}

GF_HD float clamp_nan(float v, float lo, float hi) {
  const float t = v < lo ? lo : v;
  return t > hi ? hi : t;
}

// The dynamic-thresholding scale s of one sample: torch.quantile's linear interpolation between the
// two bracketing order statistics, clamped to [1, max_value].
GF_HD float threshold_scale(float lo, float hi, float weight, float max_value) {
  const float q = weight < 0.5f ? lo + weight * (hi - lo) : hi - (hi - lo) * (1.0f - weight);
  return clamp_nan(q, 1.0f, max_value);
}

// How the step divides by sqrt(alpha_t), sqrt(1 - alpha_t) and the thresholding scale: the CPU kernels
// divide (IEEE); the CUDA kernel multiplies by reciprocals computed once per sample (an IEEE divide is a
// dozen instructions on the GPU, where the noisy fp16/bf16 steps are issue-bound). Same formula, within
// an ulp or two.
struct ExactDivision {
  GF_HD static float div(float a, float b, float /*inv_b*/) { return a / b; }
};
struct ReciprocalMultiply {
  GF_HD static float div(float a, float /*b*/, float inv_b) { return a * inv_b; }
};

// Predicted x0 before clipping.
template <typename Div = ExactDivision>
GF_HD float step_x0(int prediction_type, const StepCoeffs& c, float x, float m) {
  switch (prediction_type) {
    case kEpsilon: return Div::div(x - c.sb * m, c.sa, c.inv_sa);
    case kSample: return m;
    default: return c.sa * x - c.sb * m;
  }
}

// One element of the step. m: the (guided) prediction; v: predicted variance (learned types);
// z: the noise value (ignored when !with_noise); s: thresholding scale (when thresholding; inv_s = 1 / s
// for the ReciprocalMultiply kernel).
template <typename Div = ExactDivision>
GF_HD float step_element(const StepParams& p, const StepCoeffs& c, float x, float m, float v, float z, bool with_noise,
                         bool thresholding, float s, float& x0_out, float inv_s = 1.0f) {
  const float x0 = step_x0<Div>(p.prediction_type, c, x, m);
  float x0c = x0;
  if (thresholding) {
    x0c = Div::div(clamp_nan(x0, -s, s), s, inv_s);
  } else if (p.clip) {
    x0c = clamp_nan(x0, -p.clip_range, p.clip_range);
  }
  x0_out = x0c;
  float prev;
  if (p.kind == kDDIM) {
    float eps;
    if (p.use_clipped) {
      eps = Div::div(x - c.sa * x0c, c.sb, c.inv_sb);
    } else {
      switch (p.prediction_type) {
        case kEpsilon: eps = m; break;
        case kSample: eps = Div::div(x - c.sa * x0, c.sb, c.inv_sb); break;
        default: eps = c.sa * m + c.sb * x; break;
      }
    }
    prev = c.sap * x0c + c.dir * eps;
    if (with_noise) prev = prev + c.std * z;
  } else {
    prev = c.c_x0 * x0c + c.c_x * x;
    if (with_noise) {
      float std = c.std;
      if (p.variance_type == kLearned) {
        std = sqrtf(v) * c.mask;
      } else if (p.variance_type == kLearnedRange) {
        const float frac = (v + 1.0f) * 0.5f;  // exact: the same as / 2
        std = expf(0.5f * (frac * c.log_beta + (1.0f - frac) * c.log_var)) * c.mask;
      }
      prev = prev + std * z;
    }
  }
  return prev;
}

}  // namespace genfast
