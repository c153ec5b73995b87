// The math of one Euler / Euler-ancestral / DPM-Solver(++) step (diffusers' EulerDiscreteScheduler,
// EulerAncestralDiscreteScheduler and DPMSolverMultistepScheduler), shared by the CPU
// (csrc/sampler_steps_cpu.cpp) and CUDA (kernels/sampler_steps.cu) kernels so both compute the same
// fp32 formula in the same order. genfast/triton/sampler_steps.py and the reference follow that order.
//
// Every one of these samplers is linear in the sample, the model output, the history of converted
// model outputs and the noise once its per-step coefficients are known; the host computes them (in
// float64, from the sigmas) and the kernel evaluates, per element:
//
//   m     = uncond + w * (cond - uncond)          classifier-free guidance (or the model output)
//   xs    = x + pre_noise * z                     Euler's "churn" (noise added before the update)
//   conv  = conv_x * xs + conv_m * m              the converted model output (x0 or epsilon)
//   conv  = threshold(conv)                       dynamic thresholding, in x0 space (optional)
//   prev  = c_x * xs + c_0 * conv + c_1 * (conv - h1) + c_2 * (h1 - h2) + c_noise * z
//
// h1, h2: the converted outputs of the previous steps (multistep history, read in the same pass);
// the kernel writes prev and conv (the next step's history, or Euler's pred_original_sample).
#pragma once
#include <cmath>
#include <cstdint>

#include "common.cuh"

namespace genfast {

enum SamplerNoiseSource : int { kSamplerNoiseNone = 0, kSamplerNoiseTensor = 1, kSamplerNoiseStream = 2 };

struct SamplerStepParams {
  int mode_abs_x0;          // 1: write |x0| (fp32, before thresholding) to `out` instead of the step
  int64_t n;                // elements of sample
  int64_t inner;            // elements per batch sample
  int64_t model_stride;     // elements between batch samples of model/cond (inner, or 2*inner: learned variance)
  uintptr_t out, out_aux, sample, model, cond, hist1, hist2, noise;
  int dtype;                // sample, model, cond, history, out
  int aux_dtype;            // out_aux (the data dtype or float32)
  int noise_dtype;
  int history;              // history tensors read: 0, 1 (h1) or 2 (h1, h2)
  bool guidance;
  float guidance_scale;
  float pre_noise, conv_x, conv_m;
  uintptr_t thresh_lo, thresh_hi;  // fp32 [B] order statistics of |x0| (0: no thresholding)
  float thresh_weight, thresh_max;
  float to_x0_x, to_x0_c, from_x0_x, from_x0_c;
  float c_x, c_0, c_1, c_2, c_noise;
  int noise_src;
  uint64_t seed, offset;
  uintptr_t seed_ptr, offset_ptr;
};

// NaN-propagating clamp of torch.clamp(v, lo, hi) = min(max(v, lo), hi) (hi wins when lo > hi).
GF_HD float sampler_clamp(float v, float lo, float hi) {
  if (v != v) return v;
  const float a = v < lo ? lo : v;
  return a > hi ? hi : a;
}

// The dynamic-thresholding scale of one batch sample: torch.quantile's linear interpolation between the
// bracketing order statistics, then torch.clamp(q, min=1, max=max_value) (max_value < 1 wins, as in torch).
GF_HD float sampler_threshold_scale(float lo, float hi, float weight, float max_value) {
  const float q = weight < 0.5f ? lo + weight * (hi - lo) : hi - (hi - lo) * (1.0f - weight);
  return sampler_clamp(q, 1.0f, max_value);
}

// x0 before thresholding (what the first pass of thresholding writes, as |x0|).
GF_HD float sampler_x0(const SamplerStepParams& p, float x, float m, float z) {
  const float xs = x + p.pre_noise * z;
  const float conv = p.conv_x * xs + p.conv_m * m;
  return p.to_x0_x * xs + p.to_x0_c * conv;
}

// One element: returns prev and writes conv (after thresholding with scale s when `thresholding`).
GF_HD float sampler_element(const SamplerStepParams& p, float x, float m, float h1, float h2, float z,
                            bool thresholding, float s, float& conv_out) {
  const float xs = x + p.pre_noise * z;
  float conv = p.conv_x * xs + p.conv_m * m;
  if (thresholding) {
    const float x0 = p.to_x0_x * xs + p.to_x0_c * conv;
    const float x0c = sampler_clamp(x0, -s, s) / s;
    conv = p.from_x0_x * xs + p.from_x0_c * x0c;
  }
  conv_out = conv;
  float prev = p.c_x * xs + p.c_0 * conv;
  if (p.history >= 1) prev = prev + p.c_1 * (conv - h1);
  if (p.history >= 2) prev = prev + p.c_2 * (h1 - h2);
  return prev + p.c_noise * z;
}

}  // namespace genfast
