// genfast.ops sampler steps (Euler, Euler ancestral, DPM-Solver++): one fused step, SamplerStepParams in
// kernels/sampler_steps.cuh.
#pragma once
#include "genfast.h"
#include "sampler_steps.cuh"

namespace genfast {

// Checks what the kernels rely on; throws std::invalid_argument (a Python ValueError).
inline void check_sampler_step_params(const SamplerStepParams& p) {
  check_arg(p.dtype == kFloat32 || p.dtype == kFloat16 || p.dtype == kBFloat16,
            "sample: the compiled sampler step takes float32, float16 or bfloat16 (float64 runs on the reference)");
  check_arg(p.aux_dtype == p.dtype || p.aux_dtype == kFloat32, "out_aux: dtype must be the data's or float32");
  check_arg(p.history >= 0 && p.history <= 2, "history: 0, 1 or 2 previous model outputs");
  check_arg(p.noise_src >= 0 && p.noise_src <= 2, "noise_src: unknown code");
  check_numel(p.n, p.sample, "sample");
  check_numel(p.n, p.out, "out");
  check_numel(p.n, p.model, "model_output");
  if (p.n == 0) return;
  check_arg(p.inner > 0 && p.n % p.inner == 0, "sample: elements per batch sample must divide the total");
  check_arg(p.model_stride >= p.inner, "model_output: batch stride smaller than a sample");
  if (p.guidance) check_arg(p.cond != 0, "model_output: guidance needs the cond tensor");
  if (p.history >= 1) check_arg(p.hist1 != 0, "history[0]: null data pointer");
  if (p.history >= 2) check_arg(p.hist2 != 0, "history[1]: null data pointer");
  if (p.noise_src == kSamplerNoiseTensor) {
    check_arg(p.noise != 0, "noise: null data pointer");
    check_dtype(p.noise_dtype, "noise");
  }
  check_arg((p.thresh_lo == 0) == (p.thresh_hi == 0), "thresholding: both order statistics are needed");
}

void sampler_step_cpu(const SamplerStepParams& p);
#ifdef GENFAST_WITH_CUDA
void sampler_step_cuda(const SamplerStepParams& p, uintptr_t stream, int device);
#endif

}  // namespace genfast
