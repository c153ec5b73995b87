// genfast.ops.ddim_step / ddpm_step: one fused step (StepParams in kernels/diffusion.cuh).
#pragma once
#include "genfast.h"
#include "diffusion.cuh"

namespace genfast {

// Checks what the kernels rely on; throws std::invalid_argument (a Python ValueError).
inline void check_step_params(const StepParams& p) {
  check_arg(p.kind == kDDIM || p.kind == kDDPM, "kind: unknown step kind " + std::to_string(p.kind));
  check_arg(p.prediction_type >= 0 && p.prediction_type <= 2, "prediction_type: unknown code");
  check_arg(p.variance_type >= 0 && p.variance_type <= 5, "variance_type: unknown code");
  check_arg(p.noise_mode >= 0 && p.noise_mode <= 2, "noise_mode: unknown code");
  check_arg(p.noise_src >= 0 && p.noise_src <= 2, "noise_src: unknown code");
  check_arg(p.dtype == kFloat32 || p.dtype == kFloat16 || p.dtype == kBFloat16,
            "sample: the compiled step takes float32, float16 or bfloat16 (float64 runs on the reference)");
  check_numel(p.n, p.sample, "sample");
  check_numel(p.n, p.out, "out");
  check_numel(p.n, p.model, "model_output");
  if (p.n == 0) return;
  check_arg(p.inner > 0 && p.n % p.inner == 0, "sample: elements per batch sample must divide the total");
  if (p.guidance) check_arg(p.cond != 0, "model_output: guidance needs the cond tensor");
  if (p.noise_src == kSrcTensor) {
    check_arg(p.noise != 0, "noise: null data pointer");
    check_dtype(p.noise_dtype, "noise");
  }
  check_arg((p.thresh_lo == 0) == (p.thresh_hi == 0), "thresholding: both order statistics are needed");
}

void diffusion_step_cpu(const StepParams& p);
#ifdef GENFAST_WITH_CUDA
void diffusion_step_cuda(const StepParams& p, uintptr_t stream, int device);
#endif

}  // namespace genfast
