// CUDA kernel of genfast.ops.ddim_step / ddpm_step (math: kernels/diffusion.cuh).
// Each thread step handles one group of 4 * kCPR consecutive elements (16 bytes of fp32, or of
// fp16/bf16 with kCPR = 2): 16-byte loads and stores when aligned, kCPR Philox calls for the group's
// noise (one call per four elements), int64 indices. Per-sample coefficients are computed once per
// sample a thread meets (see diffusion_step_kernel), reciprocals instead of per-element divisions.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_utils.cuh"
#include "diffusion.h"
#include "philox.cuh"

namespace genfast {
namespace {

// Coefficients (and the thresholding scale) of sample b.
struct SampleCoeffs {
  StepCoeffs c;
  float s, inv_s;
};

__device__ __forceinline__ SampleCoeffs sample_coeffs(const StepParams& p, const float* at_ptr, const float* ap_ptr,
                                                      const float* lo_ptr, const float* hi_ptr, bool thresholding,
                                                      int64_t b) {
  SampleCoeffs sc;
  sc.c = step_coeffs(p.kind, p.variance_type, p.noise_mode, p.eta, alpha_at(at_ptr, p.alpha_t_per_sample, p.alpha_t, b),
                     alpha_at(ap_ptr, p.alpha_prev_per_sample, p.alpha_prev, b));
  sc.s = thresholding ? threshold_scale(lo_ptr[b], hi_ptr[b], p.thresh_weight, p.thresh_max) : 1.0f;
  sc.inv_s = 1.0f / sc.s;
  return sc;
}

// Each block owns a contiguous range of groups (groups_per_block, a multiple of blockDim.x) and its
// threads stride through it by blockDim.x groups, so consecutive groups of one thread lie in the same
// batch sample for inner / (blockDim.x * kG) steps: the per-sample coefficients are recomputed only when
// the sample changes, and the sample index (b, r: position in the sample) advances by the constant
// stride (step_samples, step_rest) instead of an int64 division per group.
template <typename T, int kCPR>
__global__ void __launch_bounds__(256) diffusion_step_kernel(const StepParams p, bool aligned, bool learned_vec,
                                                              int64_t groups_per_block, int64_t step_samples,
                                                              int64_t step_rest) {
  constexpr int kG = 4 * kCPR;
  const uint64_t seed = p.seed_ptr ? static_cast<uint64_t>(*reinterpret_cast<const int64_t*>(p.seed_ptr)) : p.seed;
  const uint64_t offset = p.offset_ptr ? static_cast<uint64_t>(*reinterpret_cast<const int64_t*>(p.offset_ptr)) : p.offset;
  const float* at_ptr = reinterpret_cast<const float*>(p.alpha_t_ptr);
  const float* ap_ptr = reinterpret_cast<const float*>(p.alpha_prev_ptr);
  const float* lo_ptr = reinterpret_cast<const float*>(p.thresh_lo);
  const float* hi_ptr = reinterpret_cast<const float*>(p.thresh_hi);
  const T* sample = reinterpret_cast<const T*>(p.sample);
  const T* model = reinterpret_cast<const T*>(p.model);
  const T* cond = reinterpret_cast<const T*>(p.cond);
  const bool learned = p.kind == kDDPM && (p.variance_type == kLearned || p.variance_type == kLearnedRange);
  const bool thresholding = p.thresh_lo != 0 && !p.mode_abs_x0;
  const bool per_sample = p.alpha_t_per_sample || p.alpha_prev_per_sample || thresholding;
  const bool track = per_sample || learned;  // the sample index of each group is needed
  const bool with_noise = !p.mode_abs_x0 && p.noise_mode != kNoiseNever && p.noise_src != kSrcNone;
  const int64_t n = p.n, inner = p.inner;
  SampleCoeffs cur;
  cur.c = step_coeffs(p.kind, p.variance_type, p.noise_mode, p.eta, alpha_at(at_ptr, false, p.alpha_t, 0),
                      alpha_at(ap_ptr, false, p.alpha_prev, 0));
  cur.s = cur.inv_s = 1.0f;
  int64_t cur_b = -1;  // the sample `cur` belongs to (per_sample only)
  const int64_t groups = (n + kG - 1) / kG;
  const int64_t g_begin = static_cast<int64_t>(blockIdx.x) * groups_per_block;
  const int64_t g_end = min(g_begin + groups_per_block, groups);
  int64_t g = g_begin + threadIdx.x;
  int64_t b = 0, r = 0;
  if (track && g < g_end) {
    b = g * kG / inner;
    r = g * kG - b * inner;
  }
  for (; g < g_end; g += blockDim.x) {
    const int64_t i0 = g * kG;
    const int64_t n_valid = n - i0 < kG ? n - i0 : kG;
    const bool vec = aligned && n_valid == kG;
    const bool crosses = track && r + n_valid > inner;  // the group spans two or more samples
    if (per_sample && cur_b != b) {
      cur = sample_coeffs(p, at_ptr, ap_ptr, lo_ptr, hi_ptr, thresholding, b);
      cur_b = b;
    }
    float x[kG], m[kG], v[kG], z[kG], prev[kG], x0[kG];
    load_group<T, kG>(sample, i0, n_valid, vec, x);
    if (!learned) {
      load_group<T, kG>(model, i0, n_valid, vec, m);
      if (p.guidance) {
        float c[kG];
        load_group<T, kG>(cond, i0, n_valid, vec, c);
#pragma unroll
        for (int k = 0; k < kG; ++k) m[k] = m[k] + p.guidance_scale * (c[k] - m[k]);
      }
    } else if (learned_vec && !crosses) {
      // 2C channels: prediction at b*2*inner + j, variance inner elements later; inner % kG == 0 and
      // aligned pointers make both 16-byte accesses.
      const int64_t mi = i0 + b * inner;
      load_group<T, kG>(model, mi, n_valid, vec, m);
      if (p.guidance) {
        float c[kG];
        load_group<T, kG>(cond, mi, n_valid, vec, c);
#pragma unroll
        for (int k = 0; k < kG; ++k) m[k] = m[k] + p.guidance_scale * (c[k] - m[k]);
      }
      load_group<T, kG>(p.guidance ? cond : model, mi + inner, n_valid, vec, v);
    } else {
      int64_t bb = b, rr = r;
#pragma unroll
      for (int k = 0; k < kG; ++k) {
        if (rr == inner) {
          rr = 0;
          ++bb;
        }
        const int64_t mi = i0 + k + bb * inner;
        if (k < n_valid) {
          float mm = to_f32<T>(model[mi]);
          if (p.guidance) mm = mm + p.guidance_scale * (to_f32<T>(cond[mi]) - mm);
          m[k] = mm;
          v[k] = to_f32<T>((p.guidance ? cond : model)[mi + inner]);
        } else {
          m[k] = 0.0f;
          v[k] = 1.0f;
        }
        ++rr;
      }
    }
    if (with_noise) {
      if (p.noise_src == kSrcStream) {
#pragma unroll
        for (int c = 0; c < kCPR; ++c) {
          const F32x4 nz = normal4(philox_block(seed, offset, static_cast<uint64_t>(g * kCPR + c)));
          z[4 * c + 0] = nz.x;
          z[4 * c + 1] = nz.y;
          z[4 * c + 2] = nz.z;
          z[4 * c + 3] = nz.w;
        }
      } else {
#pragma unroll
        for (int k = 0; k < kG; ++k) z[k] = k < n_valid ? load_any(p.noise, p.noise_dtype, i0 + k) : 0.0f;
      }
    }
    if (!crosses) {
      if (p.mode_abs_x0) {
        float* out = reinterpret_cast<float*>(p.out);
#pragma unroll
        for (int k = 0; k < kG; ++k)  // unrolled over kG (not n_valid): x[] and m[] stay in registers
          if (k < n_valid) out[i0 + k] = fabsf(step_x0<ReciprocalMultiply>(p.prediction_type, cur.c, x[k], m[k]));
      } else {
#pragma unroll
        for (int k = 0; k < kG; ++k)
          prev[k] = step_element<ReciprocalMultiply>(p, cur.c, x[k], m[k], v[k], z[k], with_noise, thresholding, cur.s,
                                                     x0[k], cur.inv_s);
      }
    } else {  // rare: walk the elements, switching coefficients at each sample boundary
      SampleCoeffs sc = cur;
      int64_t rr = r, bb = b;
#pragma unroll
      for (int k = 0; k < kG; ++k) {
        if (k >= n_valid) break;
        if (rr == inner) {
          rr = 0;
          ++bb;
          if (per_sample) sc = sample_coeffs(p, at_ptr, ap_ptr, lo_ptr, hi_ptr, thresholding, bb);
        }
        if (p.mode_abs_x0) {
          reinterpret_cast<float*>(p.out)[i0 + k] = fabsf(step_x0<ReciprocalMultiply>(p.prediction_type, sc.c, x[k], m[k]));
        } else {
          prev[k] = step_element<ReciprocalMultiply>(p, sc.c, x[k], m[k], v[k], z[k], with_noise, thresholding, sc.s,
                                                     x0[k], sc.inv_s);
        }
        ++rr;
      }
    }
    if (!p.mode_abs_x0) {
      store_group<T, kG>(reinterpret_cast<T*>(p.out), i0, n_valid, vec, prev);
      if (p.out_x0) store_group<T, kG>(reinterpret_cast<T*>(p.out_x0), i0, n_valid, vec, x0);
    }
    if (track) {  // next group of this thread: blockDim.x * kG elements on
      b += step_samples;
      r += step_rest;
      if (r >= inner) {
        r -= inner;
        ++b;
      }
    }
  }
}

template <typename T, int kCPR>
void launch(const StepParams& p, cudaStream_t stream, int device) {
  constexpr int kThreads = 256;
  constexpr int kG = 4 * kCPR;
  const int64_t groups = (p.n + kG - 1) / kG;
  auto a16 = [](uintptr_t ptr) { return ptr % 16 == 0; };
  const bool learned = p.kind == kDDPM && (p.variance_type == kLearned || p.variance_type == kLearnedRange);
  const bool aligned = a16(p.sample) && a16(p.out) && a16(p.out_x0) && (learned || a16(p.model)) &&
                       (learned || !p.guidance || a16(p.cond)) && !p.mode_abs_x0;
  // learned: the model rows start at b * 2 * inner, 16-byte aligned only if inner is a multiple of kG
  const bool learned_vec = learned && aligned && p.inner % kG == 0 && a16(p.model) && (!p.guidance || a16(p.cond));
  const unsigned grid = grid_for(groups, kThreads, device);
  const int64_t per_block = ((groups + grid - 1) / grid + kThreads - 1) / kThreads * kThreads;
  const unsigned blocks = static_cast<unsigned>((groups + per_block - 1) / per_block);
  const int64_t stride = static_cast<int64_t>(kThreads) * kG;
  GF_LAUNCH_KERNEL((diffusion_step_kernel<T, kCPR>), blocks, kThreads, 0, stream)(p, aligned, learned_vec, per_block,
                                                                                   stride / p.inner, stride % p.inner);
  check_launch("diffusion_step_kernel");
}

}  // namespace

void diffusion_step_cuda(const StepParams& p, uintptr_t stream, int device) {
  check_step_params(p);
  if (p.n == 0) return;
  DeviceGuard guard(device);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case kFloat32: launch<float, 1>(p, s, device); break;
    case kFloat16: launch<__half, 2>(p, s, device); break;
    case kBFloat16: launch<__nv_bfloat16, 2>(p, s, device); break;
  }
}

}  // namespace genfast
