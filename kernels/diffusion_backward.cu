// CUDA kernel of the backward of genfast.ops.ddim_step / ddpm_step (math: kernels/diffusion_backward.cuh).
// One pass: each thread step handles one group of kG = 4 * kCPR consecutive elements (16 bytes of fp32,
// or of fp16/bf16 with kCPR = 2), reads the sample, model output(s) and incoming gradients with 16-byte
// loads when aligned and writes every requested gradient with 16-byte stores. The noise is regenerated
// from the stream (kCPR Philox calls per group, the forward's counters) only where the gradient needs
// its values (learned variance types). int64 indices, grid-stride loop, no dependence on block order.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_utils.cuh"
#include "diffusion_backward.h"
#include "philox.cuh"

namespace genfast {
namespace {

__device__ __forceinline__ StepCoeffs coeffs_of(const StepParams& p, const float* at_ptr, const float* ap_ptr,
                                                int64_t b) {
  return step_coeffs(p.kind, p.variance_type, p.noise_mode, p.eta, alpha_at(at_ptr, p.alpha_t_per_sample, p.alpha_t, b),
                     alpha_at(ap_ptr, p.alpha_prev_per_sample, p.alpha_prev, b));
}

// aligned: every tensor pointer is 16-byte aligned (the noise's separately: noise_vec also needs the
// noise in the sample's dtype).
template <typename T, int kCPR>
// (256, 2): two blocks per SM, i.e. up to 128 registers; with (256) ptxas held the fp32 variant at 80 and
// spilled around the divide/sqrt slow-path calls of the coefficient prologue on sm_80 (codegen gate).
__global__ void __launch_bounds__(256, 2) diffusion_step_backward_kernel(const StepBackwardParams q, bool aligned,
                                                                      bool noise_vec) {
  constexpr int kG = 4 * kCPR;
  const StepParams& p = q.fwd;
  const float* at_ptr = reinterpret_cast<const float*>(p.alpha_t_ptr);
  const float* ap_ptr = reinterpret_cast<const float*>(p.alpha_prev_ptr);
  const T* sample = reinterpret_cast<const T*>(p.sample);
  const T* model = reinterpret_cast<const T*>(p.model);
  const T* cond = reinterpret_cast<const T*>(p.cond);
  const T* grad_prev = reinterpret_cast<const T*>(q.grad_prev);
  const T* grad_x0 = reinterpret_cast<const T*>(q.grad_x0);
  T* grad_sample = reinterpret_cast<T*>(q.grad_sample);
  T* grad_model = reinterpret_cast<T*>(q.grad_model);
  T* grad_cond = reinterpret_cast<T*>(q.grad_cond);
  T* grad_noise = reinterpret_cast<T*>(q.grad_noise);
  const bool learned = step_backward_needs_noise(p);
  const bool per_sample = p.alpha_t_per_sample || p.alpha_prev_per_sample;
  const bool with_noise = p.noise_mode != kNoiseNever && p.noise_src != kSrcNone;
  const bool need_z = with_noise && learned && (grad_model || grad_cond);
  const int64_t n = p.n, inner = p.inner;
  // a group's model elements are contiguous unless a learned layout (2C channels) splits it
  const bool model_runs = !learned || inner % kG == 0;
  const float w = p.guidance_scale;
  const float w_uncond = p.guidance ? 1.0f - w : 1.0f;
  uint64_t seed = 0, offset = 0;
  if (need_z && p.noise_src == kSrcStream) {
    seed = p.seed_ptr ? static_cast<uint64_t>(*reinterpret_cast<const int64_t*>(p.seed_ptr)) : p.seed;
    offset = p.offset_ptr ? static_cast<uint64_t>(*reinterpret_cast<const int64_t*>(p.offset_ptr)) : p.offset;
  }
  const StepCoeffs base = coeffs_of(p, at_ptr, ap_ptr, 0);
  const float zeros[kG] = {};
  const int64_t groups = (n + kG - 1) / kG;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += stride) {
    const int64_t i0 = g * kG;
    const int64_t n_valid = n - i0 < kG ? n - i0 : kG;
    const bool vec = aligned && n_valid == kG;
    float x[kG], m[kG], v[kG], z[kG], gp[kG], gx0[kG], gx[kG], gm[kG], gv[kG], gz[kG];
    load_group<T, kG>(sample, i0, n_valid, vec, x);
    load_group<T, kG>(grad_prev, i0, n_valid, vec, gp);
    if (grad_x0) {
      load_group<T, kG>(grad_x0, i0, n_valid, vec, gx0);
    } else {
#pragma unroll
      for (int k = 0; k < kG; ++k) gx0[k] = 0.0f;
    }
    const int64_t b0 = per_sample || learned ? i0 / inner : 0;
    const int64_t m0 = learned ? i0 + b0 * inner : i0;  // model index of element i0 (b * 2 * inner + j)
    if (model_runs) {
      load_group<T, kG>(model, m0, n_valid, vec, m);
      if (p.guidance) {
        float c[kG];
        load_group<T, kG>(cond, m0, n_valid, vec, c);
#pragma unroll
        for (int k = 0; k < kG; ++k) m[k] = m[k] + w * (c[k] - m[k]);
      }
      if (learned) {
        load_group<T, kG>(p.guidance ? cond : model, m0 + inner, n_valid, vec, v);
      } else {
#pragma unroll
        for (int k = 0; k < kG; ++k) v[k] = 0.0f;
      }
    } else {  // learned, inner not a multiple of kG: the group may cross into the next sample
      int64_t bb = b0;
#pragma unroll
      for (int k = 0; k < kG; ++k) {
        const int64_t i = i0 + k;
        if (i >= (bb + 1) * inner) ++bb;
        const int64_t mi = i + bb * inner;
        if (k < n_valid) {
          float mm = to_f32<T>(model[mi]);
          if (p.guidance) mm = mm + w * (to_f32<T>(cond[mi]) - mm);
          m[k] = mm;
          v[k] = to_f32<T>((p.guidance ? cond : model)[mi + inner]);
        } else {
          m[k] = 0.0f;
          v[k] = 1.0f;
        }
      }
    }
    if (need_z) {
      if (p.noise_src == kSrcStream) {
#pragma unroll
        for (int c = 0; c < kCPR; ++c) {
          const F32x4 nz = normal4(philox_block(seed, offset, static_cast<uint64_t>(g * kCPR + c)));
          z[4 * c + 0] = nz.x;
          z[4 * c + 1] = nz.y;
          z[4 * c + 2] = nz.z;
          z[4 * c + 3] = nz.w;
        }
      } else if (noise_vec && n_valid == kG) {
        load_group<T, kG>(reinterpret_cast<const T*>(p.noise), i0, n_valid, true, z);
      } else {
#pragma unroll
        for (int k = 0; k < kG; ++k) z[k] = k < n_valid ? load_any(p.noise, p.noise_dtype, i0 + k) : 0.0f;
      }
    } else {
#pragma unroll
      for (int k = 0; k < kG; ++k) z[k] = 0.0f;
    }
    int64_t b = b0;
    StepCoeffs c = per_sample ? coeffs_of(p, at_ptr, ap_ptr, b) : base;
#pragma unroll
    for (int k = 0; k < kG; ++k) {
      if (per_sample && k < n_valid && i0 + k >= (b + 1) * inner) {  // the group crosses into the next sample
        ++b;
        c = coeffs_of(p, at_ptr, ap_ptr, b);
      }
      const StepElementGrads e =
          step_element_backward<ReciprocalMultiply>(p, c, x[k], m[k], v[k], z[k], with_noise, gp[k], gx0[k]);
      gx[k] = e.x;
      gm[k] = e.m;
      gv[k] = e.v;
      gz[k] = e.z;
    }
    if (grad_sample) store_group<T, kG>(grad_sample, i0, n_valid, vec, gx, 1.0f);
    if (grad_noise) store_group<T, kG>(grad_noise, i0, n_valid, vec, gz, 1.0f);
    if (model_runs) {
      if (grad_model) {
        store_group<T, kG>(grad_model, m0, n_valid, vec, gm, w_uncond);
        if (learned) {  // the variance channels: from cond under guidance (no gradient to model's)
          if (p.guidance) {
            store_group<T, kG>(grad_model, m0 + inner, n_valid, vec, zeros, 1.0f);
          } else {
            store_group<T, kG>(grad_model, m0 + inner, n_valid, vec, gv, 1.0f);
          }
        }
      }
      if (grad_cond) {
        store_group<T, kG>(grad_cond, m0, n_valid, vec, gm, w);
        if (learned) store_group<T, kG>(grad_cond, m0 + inner, n_valid, vec, gv, 1.0f);
      }
    } else {
      int64_t bb = b0;
      for (int k = 0; k < n_valid; ++k) {
        const int64_t i = i0 + k;
        if (i >= (bb + 1) * inner) ++bb;
        const int64_t mi = i + bb * inner;
        if (grad_model) {
          grad_model[mi] = from_f32<T>(w_uncond * gm[k]);
          grad_model[mi + inner] = from_f32<T>(p.guidance ? 0.0f : gv[k]);
        }
        if (grad_cond) {
          grad_cond[mi] = from_f32<T>(w * gm[k]);
          grad_cond[mi + inner] = from_f32<T>(gv[k]);
        }
      }
    }
  }
}

bool aligned16(uintptr_t ptr) { return ptr % 16 == 0; }  // 0 (absent) counts as aligned

template <typename T, int kCPR>
void launch(const StepBackwardParams& q, cudaStream_t stream, int device) {
  constexpr int kThreads = 256;
  const StepParams& p = q.fwd;
  const int64_t groups = (p.n + 4 * kCPR - 1) / (4 * kCPR);
  const bool aligned = aligned16(p.sample) && aligned16(p.model) && aligned16(p.cond) && aligned16(q.grad_prev) &&
                       aligned16(q.grad_x0) && aligned16(q.grad_sample) && aligned16(q.grad_model) &&
                       aligned16(q.grad_cond) && aligned16(q.grad_noise);
  const bool noise_vec = p.noise_src == kSrcTensor && p.noise_dtype == p.dtype && aligned16(p.noise);
  GF_LAUNCH_KERNEL((diffusion_step_backward_kernel<T, kCPR>), grid_for(groups, kThreads, device), kThreads, 0,
                   stream)(q, aligned, noise_vec);
  check_launch("diffusion_step_backward_kernel");
}

}  // namespace

void diffusion_step_backward_cuda(const StepBackwardParams& q, uintptr_t stream, int device) {
  check_step_backward_params(q);
  if (q.fwd.n == 0) return;
  DeviceGuard guard(device);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (q.fwd.dtype) {
    case kFloat32: launch<float, 1>(q, s, device); break;
    case kFloat16: launch<__half, 2>(q, s, device); break;
    case kBFloat16: launch<__nv_bfloat16, 2>(q, s, device); break;
  }
}

}  // namespace genfast
