// CUDA kernel of genfast.ops' sampler steps (math: kernels/sampler_steps.cuh).
// Each thread step handles one group of 4 * kCPR consecutive elements (16 bytes of fp32, or of fp16/bf16
// with kCPR = 2): 16-byte loads and stores through small helpers when every pointer is aligned, kCPR
// Philox calls for the group's noise (one per four elements), int64 indices, a grid-stride loop that
// does not depend on block order. The batch sample of a group (thresholding scale, the model output's
// batch stride) is computed per element only when one of those is in use.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_utils.cuh"
#include "philox.cuh"
#include "sampler_steps.h"

namespace genfast {
namespace {

// `model_vec`: the model output (and cond) are read with vector loads (aligned, batch stride == inner).
template <typename T, int kCPR>
__global__ void __launch_bounds__(256) sampler_step_kernel(const SamplerStepParams p, bool aligned, bool model_vec) {
  constexpr int kG = 4 * kCPR;
  const uint64_t seed = p.seed_ptr ? static_cast<uint64_t>(*reinterpret_cast<const int64_t*>(p.seed_ptr)) : p.seed;
  const uint64_t offset =
      p.offset_ptr ? static_cast<uint64_t>(*reinterpret_cast<const int64_t*>(p.offset_ptr)) : p.offset;
  const T* sample = reinterpret_cast<const T*>(p.sample);
  const T* model = reinterpret_cast<const T*>(p.model);
  const T* cond = reinterpret_cast<const T*>(p.cond);
  const float* lo_ptr = reinterpret_cast<const float*>(p.thresh_lo);
  const float* hi_ptr = reinterpret_cast<const float*>(p.thresh_hi);
  const bool thresholding = p.thresh_lo != 0 && !p.mode_abs_x0;
  const bool strided = p.model_stride != p.inner;
  const bool with_noise = p.noise_src != kSamplerNoiseNone;
  const int64_t n = p.n, inner = p.inner, mstride = p.model_stride;
  const int64_t groups = (n + kG - 1) / kG;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += stride) {
    const int64_t i0 = g * kG;
    const int64_t n_valid = n - i0 < kG ? n - i0 : kG;
    const bool vec = aligned && n_valid == kG;
    float x[kG], m[kG], h1[kG], h2[kG], z[kG], prev[kG], conv[kG];
    load_group<T, kG>(sample, i0, n_valid, vec, x);
    if (!strided) {
      load_group<T, kG>(model, i0, n_valid, vec && model_vec, m);
      if (p.guidance) {
        float c[kG];
        load_group<T, kG>(cond, i0, n_valid, vec && model_vec, c);
#pragma unroll
        for (int k = 0; k < kG; ++k) m[k] = m[k] + p.guidance_scale * (c[k] - m[k]);
      }
    } else {
#pragma unroll
      for (int k = 0; k < kG; ++k) {
        const int64_t i = i0 + k;
        const int64_t b = i / inner;
        const int64_t mi = b * mstride + (i - b * inner);
        float mm = 0.0f;
        if (k < n_valid) {
          mm = to_f32<T>(model[mi]);
          if (p.guidance) mm = mm + p.guidance_scale * (to_f32<T>(cond[mi]) - mm);
        }
        m[k] = mm;
      }
    }
    if (p.history >= 1) load_group<T, kG>(reinterpret_cast<const T*>(p.hist1), i0, n_valid, vec, h1);
    if (p.history >= 2) load_group<T, kG>(reinterpret_cast<const T*>(p.hist2), i0, n_valid, vec, h2);
#pragma unroll
    for (int k = 0; k < kG; ++k) {
      z[k] = 0.0f;
      if (p.history < 1) h1[k] = 0.0f;
      if (p.history < 2) h2[k] = 0.0f;
    }
    if (with_noise) {
      if (p.noise_src == kSamplerNoiseStream) {
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
    if (p.mode_abs_x0) {
      float* out = reinterpret_cast<float*>(p.out);
      for (int k = 0; k < n_valid; ++k) out[i0 + k] = fabsf(sampler_x0(p, x[k], m[k], z[k]));
      continue;
    }
    int64_t b = -1;
    float s = 1.0f;
#pragma unroll
    for (int k = 0; k < kG; ++k) {
      if (thresholding && k < n_valid && (i0 + k) / inner != b) {  // the group may cross into the next sample
        b = (i0 + k) / inner;
        s = sampler_threshold_scale(lo_ptr[b], hi_ptr[b], p.thresh_weight, p.thresh_max);
      }
      prev[k] = sampler_element(p, x[k], m[k], h1[k], h2[k], z[k], thresholding, s, conv[k]);
    }
    store_group<T, kG>(reinterpret_cast<T*>(p.out), i0, n_valid, vec, prev);
    if (p.out_aux == 0) continue;
    if (p.aux_dtype == kFloat32) {
      float* aux = reinterpret_cast<float*>(p.out_aux);
#pragma unroll
      for (int k = 0; k < kG; ++k)
        if (k < n_valid) aux[i0 + k] = conv[k];
    } else {
      store_group<T, kG>(reinterpret_cast<T*>(p.out_aux), i0, n_valid, vec, conv);
    }
  }
}

template <typename T, int kCPR>
void launch(const SamplerStepParams& p, cudaStream_t stream, int device) {
  constexpr int kThreads = 256;
  const int64_t groups = (p.n + 4 * kCPR - 1) / (4 * kCPR);
  auto a16 = [](uintptr_t ptr) { return ptr % 16 == 0; };
  const bool aligned = a16(p.sample) && a16(p.out) && (p.aux_dtype != p.dtype || a16(p.out_aux)) &&
                       (p.history < 1 || a16(p.hist1)) && (p.history < 2 || a16(p.hist2)) && !p.mode_abs_x0;
  const bool model_vec = a16(p.model) && (!p.guidance || a16(p.cond));
  GF_LAUNCH_KERNEL((sampler_step_kernel<T, kCPR>), grid_for(groups, kThreads, device), kThreads, 0, stream)(p, aligned,
                                                                                                  model_vec);
  check_launch("sampler_step_kernel");
}

}  // namespace

void sampler_step_cuda(const SamplerStepParams& p, uintptr_t stream, int device) {
  check_sampler_step_params(p);
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
