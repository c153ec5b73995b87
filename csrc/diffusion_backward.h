// The backward of genfast.ops.ddim_step / ddpm_step: one elementwise pass (StepBackwardParams and the
// math in kernels/diffusion_backward.cuh).
#pragma once
#include "diffusion_backward.cuh"
#include "genfast.h"

namespace genfast {

// Checks what the backward kernels rely on; throws std::invalid_argument (a Python ValueError).
inline void check_step_backward_params(const StepBackwardParams& q) {
  const StepParams& p = q.fwd;
  check_arg(p.kind == kDDIM || p.kind == kDDPM, "kind: unknown step kind " + std::to_string(p.kind));
  check_arg(p.prediction_type >= 0 && p.prediction_type <= 2, "prediction_type: unknown code");
  check_arg(p.variance_type >= 0 && p.variance_type <= 5, "variance_type: unknown code");
  check_arg(p.noise_mode >= 0 && p.noise_mode <= 2, "noise_mode: unknown code");
  check_arg(p.noise_src >= 0 && p.noise_src <= 2, "noise_src: unknown code");
  check_arg(p.dtype == kFloat32 || p.dtype == kFloat16 || p.dtype == kBFloat16,
            "sample: the compiled step backward takes float32, float16 or bfloat16 (float64 runs on the reference)");
  check_arg(p.mode_abs_x0 == 0, "mode_abs_x0: the backward has no |x0| mode");
  check_arg(p.thresh_lo == 0 && p.thresh_hi == 0,
            "thresholding: the backward of dynamic thresholding runs on the reference (vjp), not in this kernel");
  check_numel(p.n, p.sample, "sample");
  check_numel(p.n, p.model, "model_output");
  check_numel(p.n, q.grad_prev, "grad_prev");
  if (p.n == 0) return;
  check_arg(p.inner > 0 && p.n % p.inner == 0, "sample: elements per batch sample must divide the total");
  if (p.guidance) check_arg(p.cond != 0, "model_output: guidance needs the cond tensor");
  if (q.grad_cond != 0) check_arg(p.guidance, "grad_cond: written only with guidance");
  if (p.noise_src == kSrcTensor) {
    check_arg(p.noise != 0, "noise: null data pointer");
    check_dtype(p.noise_dtype, "noise");
  }
}

void diffusion_step_backward_cpu(const StepBackwardParams& q);
#ifdef GENFAST_WITH_CUDA
void diffusion_step_backward_cuda(const StepBackwardParams& q, uintptr_t stream, int device);
#endif

}  // namespace genfast
