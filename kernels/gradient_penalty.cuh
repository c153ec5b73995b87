// Math of genfast.ops.gradient_penalty shared by the CPU (csrc/) and CUDA (kernels/) kernels, so both
// compute the same formula: alpha from the stream, the per-mode penalty term and backward scale.
#pragma once
#include <cmath>
#include <cstdint>

#include "philox.cuh"

namespace genfast {

enum GpMode : int { kTwoSided = 0, kOneSided = 1, kR1 = 2 };

// alpha_b = element b of genfast.ops.rand([B], seed, offset).
GF_HD float gp_alpha(uint64_t seed, uint64_t offset, int64_t b) {
  const F32x4 u = uniform4(philox_block(seed, offset, static_cast<uint64_t>(b / 4)));
  return component(u, static_cast<int>(b % 4));
}

// Per-sample term whose mean (times weight, or weight / 2 for r1) is the penalty.
GF_HD float gp_term(float sq, float center, int mode) {
  if (mode == kR1) return sq;
  float d = sqrtf(sq) - center;
  if (mode == kOneSided && d < 0.f) d = 0.f;
  return d * d;
}

GF_HD float gp_penalty_scale(float weight, int mode) { return mode == kR1 ? 0.5f * weight : weight; }

// dPenalty/dg_b = grad_out * weight / B * s(n) * g_b; s = 0 for a zero row (as torch's norm backward).
GF_HD float gp_backward_factor(float n, float center, int mode) {
  if (mode == kR1) return 1.f;
  if (!(n > 0.f)) return 0.f;
  float d = n - center;
  if (mode == kOneSided && d < 0.f) d = 0.f;
  return 2.f * d / n;
}

}  // namespace genfast
