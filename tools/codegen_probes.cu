// Straight-line probe kernels for the per-element instruction model of benchmarks/RESULTS.md
// (tools/cuda_codegen.py --probes): each computes one building block of the op kernels, with every
// option a compile-time constant, so its SASS length minus the copy probe's is that block's issued
// instructions (rare slow paths of sqrtf and the divide included statically).
#include <cuda_runtime.h>

#include "diffusion.cuh"
#include "philox.cuh"
#include "vae.cuh"

using namespace genfast;

__device__ __forceinline__ uint64_t probe_index() { return blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; }

extern "C" __global__ void probe_copy(float4* out, const float4* in) {
  const uint64_t i = probe_index();
  out[i] = in[i];
}

// One Philox4x32-10 counter: 4 words.
extern "C" __global__ void probe_philox(float4* out, const float4* in, uint64_t seed, uint64_t offset) {
  const uint64_t i = probe_index();
  const U32x4 r = philox_block(seed, offset, i);
  const float4 v = in[i];
  out[i] = make_float4(v.x + __uint_as_float(r.x), v.y + __uint_as_float(r.y), v.z + __uint_as_float(r.z),
                       v.w + __uint_as_float(r.w));
}

// Four uniforms from one counter.
extern "C" __global__ void probe_uniform4(float4* out, const float4* in, uint64_t seed, uint64_t offset) {
  const uint64_t i = probe_index();
  const F32x4 u = uniform4(philox_block(seed, offset, i));
  const float4 v = in[i];
  out[i] = make_float4(v.x + u.x, v.y + u.y, v.z + u.z, v.w + u.w);
}

// Four normals from one counter (Philox + two Box-Muller pairs).
extern "C" __global__ void probe_normal4(float4* out, const float4* in, uint64_t seed, uint64_t offset) {
  const uint64_t i = probe_index();
  const F32x4 n = normal4(philox_block(seed, offset, i));
  const float4 v = in[i];
  out[i] = make_float4(v.x + n.x, v.y + n.y, v.z + n.z, v.w + n.w);
}

// Four elements of a DDIM epsilon step with noise from a tensor (no Philox): the step math alone.
extern "C" __global__ void probe_step_ddim(float4* out, const float4* x, const float4* m, const float4* z, StepCoeffs c) {
  const uint64_t i = probe_index();
  StepParams p{};
  p.kind = kDDIM;
  p.prediction_type = kEpsilon;
  const float4 a = x[i], b = m[i], n = z[i];
  float x0;
  float4 r;
  r.x = step_element<ReciprocalMultiply>(p, c, a.x, b.x, 0.f, n.x, true, false, 1.f, x0);
  r.y = step_element<ReciprocalMultiply>(p, c, a.y, b.y, 0.f, n.y, true, false, 1.f, x0);
  r.z = step_element<ReciprocalMultiply>(p, c, a.z, b.z, 0.f, n.z, true, false, 1.f, x0);
  r.w = step_element<ReciprocalMultiply>(p, c, a.w, b.w, 0.f, n.w, true, false, 1.f, x0);
  out[i] = r;
}

// The same with IEEE divides (what the kernel did before: x0 = (x - sb m) / sa).
extern "C" __global__ void probe_step_ddim_divide(float4* out, const float4* x, const float4* m, const float4* z,
                                                  StepCoeffs c) {
  const uint64_t i = probe_index();
  StepParams p{};
  p.kind = kDDIM;
  p.prediction_type = kEpsilon;
  const float4 a = x[i], b = m[i], n = z[i];
  float x0;
  float4 r;
  r.x = step_element<ExactDivision>(p, c, a.x, b.x, 0.f, n.x, true, false, 1.f, x0);
  r.y = step_element<ExactDivision>(p, c, a.y, b.y, 0.f, n.y, true, false, 1.f, x0);
  r.z = step_element<ExactDivision>(p, c, a.z, b.z, 0.f, n.z, true, false, 1.f, x0);
  r.w = step_element<ExactDivision>(p, c, a.w, b.w, 0.f, n.w, true, false, 1.f, x0);
  out[i] = r;
}

// Four elements of a DDPM fixed-small step with thresholding (clamp and scale by 1/s).
extern "C" __global__ void probe_step_ddpm_threshold(float4* out, const float4* x, const float4* m, const float4* z,
                                                     StepCoeffs c, float s) {
  const uint64_t i = probe_index();
  StepParams p{};
  p.kind = kDDPM;
  p.prediction_type = kEpsilon;
  p.variance_type = kFixedSmall;
  const float4 a = x[i], b = m[i], n = z[i];
  const float inv_s = 1.0f / s;
  float x0;
  float4 r;
  r.x = step_element<ReciprocalMultiply>(p, c, a.x, b.x, 0.f, n.x, true, true, s, x0, inv_s);
  r.y = step_element<ReciprocalMultiply>(p, c, a.y, b.y, 0.f, n.y, true, true, s, x0, inv_s);
  r.z = step_element<ReciprocalMultiply>(p, c, a.z, b.z, 0.f, n.z, true, true, s, x0, inv_s);
  r.w = step_element<ReciprocalMultiply>(p, c, a.w, b.w, 0.f, n.w, true, true, s, x0, inv_s);
  out[i] = r;
}

// Four elements of the VAE forward (z and KL) with the noise given.
extern "C" __global__ void probe_vae_forward(float4* out, float4* kl_out, const float4* mu, const float4* lv,
                                             const float4* eps) {
  const uint64_t i = probe_index();
  const float4 a = mu[i], b = lv[i], e = eps[i];
  float4 z, kl;
  vae_forward_element(a.x, b.x, e.x, z.x, kl.x);
  vae_forward_element(a.y, b.y, e.y, z.y, kl.y);
  vae_forward_element(a.z, b.z, e.z, z.z, kl.z);
  vae_forward_element(a.w, b.w, e.w, z.w, kl.w);
  out[i] = z;
  kl_out[i] = kl;
}
