// genfast.ops.reparameterize_kl: z = mu + exp(lv/2) * eps and the KL to N(0, I), forward and backward.
// Data are contiguous (B, D) matrices of one dtype; eps is `noise` when given (non-zero pointer),
// else genfast's stream at (seed, offset). See kernels/vae.cuh for the per-element math.
#pragma once
#include "genfast.h"

namespace genfast {

struct VaeClampArgs {
  bool on;
  float lo, hi;
};

// CPU: writes z, kl_rows[B] (float32, per-sample KL sums; 0 = not wanted) and kl_cols[D] (float32,
// per-element KL sums over the batch; 0 = not wanted).
void vae_forward_cpu(uintptr_t mu, uintptr_t logvar, uintptr_t noise, uintptr_t z, uintptr_t kl_rows,
                     uintptr_t kl_cols, int64_t B, int64_t D, int dtype, StreamArgs rng, VaeClampArgs clamp);
// grad_z (dtype, may be 0), grad_rows[B] / grad_cols[D] (float32, may be 0): dLoss/dKL per sample and
// per latent element; the KL coefficient of element (b, j) is grad_rows[b] + grad_cols[j].
void vae_backward_cpu(uintptr_t grad_z, uintptr_t grad_rows, uintptr_t grad_cols, uintptr_t mu, uintptr_t logvar,
                      uintptr_t noise, uintptr_t grad_mu, uintptr_t grad_logvar, int64_t B, int64_t D, int dtype,
                      StreamArgs rng, VaeClampArgs clamp);

#ifdef GENFAST_WITH_CUDA
// Partial-sum layout of the CUDA forward: {column chunks, row groups}; row_part is [chunks, B],
// col_part [groups, D] (float32), summed by the caller.
void vae_partials_shape_cuda(int64_t B, int64_t D, int dtype, bool col_sums, int64_t& n_chunks, int64_t& n_groups);
void vae_forward_cuda(uintptr_t mu, uintptr_t logvar, uintptr_t noise, uintptr_t z, uintptr_t row_part,
                      uintptr_t col_part, int64_t B, int64_t D, int dtype, StreamArgs rng, VaeClampArgs clamp,
                      bool col_sums, uintptr_t stream, int device);
void vae_backward_cuda(uintptr_t grad_z, uintptr_t grad_rows, uintptr_t grad_cols, uintptr_t mu, uintptr_t logvar,
                       uintptr_t noise, uintptr_t grad_mu, uintptr_t grad_logvar, int64_t B, int64_t D, int dtype,
                       StreamArgs rng, VaeClampArgs clamp, uintptr_t stream, int device);
#endif

inline void vae_check_args(int64_t B, int64_t D, int dtype, VaeClampArgs clamp) {
  check_arg(B >= 0, "mu: negative batch size " + std::to_string(B));
  check_arg(D >= 0, "mu: negative latent size " + std::to_string(D));
  check_arg(D == 0 || B <= INT64_MAX / D, "mu: B * D overflows int64");
  check_arg(dtype == kFloat32 || dtype == kFloat16 || dtype == kBFloat16,
            "mu: the compiled VAE kernels take float32, float16 or bfloat16 (dtype code " + std::to_string(dtype) + ")");
  check_arg(!clamp.on || clamp.lo <= clamp.hi, "logvar_clamp: lo exceeds hi");
}

}  // namespace genfast
