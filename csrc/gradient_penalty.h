// genfast.ops.gradient_penalty: interpolation (alpha drawn in-kernel), per-sample norm + penalty in
// one launch, and the penalty's elementwise backward. Tensors are contiguous [B, row].
#pragma once
#include "genfast.h"

namespace genfast {
void gp_interpolate_cpu(uintptr_t real, uintptr_t fake, uintptr_t out, uintptr_t alpha, int alpha_dtype, int64_t batch,
                        int64_t row, int dtype, StreamArgs rng);
void gp_norm_penalty_cpu(uintptr_t grad, uintptr_t norms, uintptr_t penalty, int64_t batch, int64_t row, int dtype,
                         float weight, float center, int mode);
void gp_norm_penalty_backward_cpu(uintptr_t grad_out, uintptr_t grad, uintptr_t norms, uintptr_t out, int64_t batch,
                                  int64_t row, int dtype, float weight, float center, int mode);
#ifdef GENFAST_WITH_CUDA
void gp_interpolate_cuda(uintptr_t real, uintptr_t fake, uintptr_t out, uintptr_t alpha, int alpha_dtype,
                         int64_t batch, int64_t row, int dtype, StreamArgs rng, uintptr_t stream, int device);
void gp_norm_penalty_cuda(uintptr_t grad, uintptr_t norms, uintptr_t penalty, uintptr_t partials, int64_t capacity,
                          uintptr_t counter, int64_t batch, int64_t row, int dtype, float weight, float center, int mode,
                          uintptr_t stream, int device);
void gp_norm_penalty_backward_cuda(uintptr_t grad_out, uintptr_t grad, uintptr_t norms, uintptr_t out, int64_t batch,
                                   int64_t row, int dtype, float weight, float center, int mode, uintptr_t stream,
                                   int device);
#endif

// Checks shared by both sides (they throw std::invalid_argument -> Python ValueError).
inline void gp_check_common(int64_t batch, int64_t row, int dtype, const char* name) {
  check_arg(batch >= 0 && row >= 0, std::string(name) + ": negative size");
  check_dtype(dtype, name);
  check_arg(dtype != kFloat64, std::string(name) + ": float64 runs on the reference backend only");
}
inline void gp_check_mode(int mode) { check_arg(mode >= 0 && mode <= 2, "mode: unknown penalty mode code"); }
}  // namespace genfast
