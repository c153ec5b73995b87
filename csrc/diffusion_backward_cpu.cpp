// CPU kernel of the backward of genfast.ops.ddim_step / ddpm_step: one pass over memory in chunks of
// kChunk elements (OpenMP over chunks), like the forward (csrc/diffusion_cpu.cpp). Per chunk: the
// sample and incoming gradients are converted to fp32 buffers, the noise is regenerated from the
// stream only where the gradient needs its values (learned variance types), then each run of elements
// of one batch sample goes through the elementwise backward with that sample's coefficients
// (kernels/diffusion_backward.cuh) and its model/cond gradients are written in model_output's layout.

#include "diffusion_backward.h"
#include "stream_cpu.h"

namespace genfast {
namespace {

constexpr int64_t kChunk = 2048;  // multiple of 4: chunk starts are Philox-counter aligned
alignas(64) const float kZeros[kChunk] = {};  // inputs that are zero (no grad_x0, no noise values, no v)

// dst[j] = scale * src[j] (scale 1 is exact)
template <typename T>
inline void from_floats(T* dst, const float* src, float scale, int64_t len) {
  for (int64_t j = 0; j < len; ++j) Convert<T>::store(dst + j, scale * src[j]);
}

template <typename T>
inline void fill_zeros(T* dst, int64_t len) {
  for (int64_t j = 0; j < len; ++j) Convert<T>::store(dst + j, 0.0f);
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define GF_BACKWARD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define GF_BACKWARD_CLONES
#endif

// The inner loop over one run of elements sharing a sample's coefficients, templated on what decides
// the per-element arithmetic (as the forward's step_run). Local copies of the parameters and
// coefficients and non-aliasing pointers let the compiler hoist the per-sample constants (the divides
// of coefficients) out of the loop, unswitch the runtime options and vectorize it; AVX-512 and AVX2
// clones where the CPU has them (-ffp-contract=off: every clone gives the same bits).
template <int Kind, int Pred>
GF_BACKWARD_CLONES void backward_run(const StepParams& p, const StepCoeffs& c, const float* __restrict__ x,
                                     const float* __restrict__ m, const float* __restrict__ v,
                                     const float* __restrict__ z, bool with_noise, const float* __restrict__ gp,
                                     const float* __restrict__ gx0, float* __restrict__ gx, float* __restrict__ gm,
                                     float* __restrict__ gv, float* __restrict__ gz, int64_t len) {
  StepParams q = p;
  q.kind = Kind;
  q.prediction_type = Pred;
  const StepCoeffs cc = c;
  for (int64_t j = 0; j < len; ++j) {
    const StepElementGrads g = step_element_backward(q, cc, x[j], m[j], v[j], z[j], with_noise, gp[j], gx0[j]);
    gx[j] = g.x;
    gm[j] = g.m;
    gv[j] = g.v;
    gz[j] = g.z;
  }
}

using BackwardRunFn = void (*)(const StepParams&, const StepCoeffs&, const float*, const float*, const float*,
                               const float*, bool, const float*, const float*, float*, float*, float*, float*, int64_t);

BackwardRunFn pick_backward_run(int kind, int pred) {
  static const BackwardRunFn table[2][3] = {
      {backward_run<kDDIM, kEpsilon>, backward_run<kDDIM, kSample>, backward_run<kDDIM, kVPrediction>},
      {backward_run<kDDPM, kEpsilon>, backward_run<kDDPM, kSample>, backward_run<kDDPM, kVPrediction>}};
  return table[kind][pred];
}

template <typename T>
void run_backward(const StepBackwardParams& q) {
  const StepParams& p = q.fwd;
  const T* sample = reinterpret_cast<const T*>(p.sample);
  const T* model = reinterpret_cast<const T*>(p.model);
  const T* cond = reinterpret_cast<const T*>(p.cond);
  const T* grad_prev = reinterpret_cast<const T*>(q.grad_prev);
  const T* grad_x0 = reinterpret_cast<const T*>(q.grad_x0);
  T* grad_sample = reinterpret_cast<T*>(q.grad_sample);
  T* grad_model = reinterpret_cast<T*>(q.grad_model);
  T* grad_cond = reinterpret_cast<T*>(q.grad_cond);
  T* grad_noise = reinterpret_cast<T*>(q.grad_noise);
  const float* at_ptr = reinterpret_cast<const float*>(p.alpha_t_ptr);
  const float* ap_ptr = reinterpret_cast<const float*>(p.alpha_prev_ptr);
  const bool learned = step_backward_needs_noise(p);
  const bool per_sample = p.alpha_t_per_sample || p.alpha_prev_per_sample;
  const bool with_noise = p.noise_mode != kNoiseNever && p.noise_src != kSrcNone;
  const bool need_z = with_noise && learned && (grad_model || grad_cond);
  const uint64_t seed = load_stream_value(p.seed, p.seed_ptr);
  const uint64_t offset = load_stream_value(p.offset, p.offset_ptr);
  auto alpha_of = [&](int64_t b, bool t) {
    const float* ptr = t ? at_ptr : ap_ptr;
    const bool each = t ? p.alpha_t_per_sample : p.alpha_prev_per_sample;
    return ptr ? ptr[each ? b : 0] : (t ? p.alpha_t : p.alpha_prev);
  };
  const StepCoeffs base = step_coeffs(p.kind, p.variance_type, p.noise_mode, p.eta, alpha_of(0, true), alpha_of(0, false));
  const BackwardRunFn backward = pick_backward_run(p.kind, p.prediction_type);
  const float w = p.guidance_scale;
  const int64_t n = p.n, inner = p.inner;
  const int64_t chunks = (n + kChunk - 1) / kChunk;

#pragma omp parallel for schedule(static) if (n > 4 * kChunk)
  for (int64_t ci = 0; ci < chunks; ++ci) {
    alignas(64) float xs[kChunk], ms[kChunk], vs[kChunk], zs[kChunk], gps[kChunk], gx0s[kChunk];
    alignas(64) float gxs[kChunk], gms[kChunk], gvs[kChunk], gzs[kChunk];
    const int64_t start = ci * kChunk;
    const int64_t len = n - start < kChunk ? n - start : kChunk;
    to_float_array(sample + start, xs, len);
    to_float_array(grad_prev + start, gps, len);
    const float* gx0p = kZeros;
    if (grad_x0) {
      to_float_array(grad_x0 + start, gx0s, len);
      gx0p = gx0s;
    }
    const float* zp = kZeros;
    if (need_z) {
      if (p.noise_src == kSrcStream) {
        stream_normals_cpu(seed, offset, start, len, zs);
      } else {
        for (int64_t j = 0; j < len; ++j) zs[j] = load_as_float(p.noise, p.noise_dtype, start + j);
      }
      zp = zs;
    }
    for (int64_t i = start; i < start + len;) {
      const int64_t b = i / inner;
      const int64_t run_end = (b + 1) * inner < start + len ? (b + 1) * inner : start + len;
      const int64_t rl = run_end - i, o = i - start;
      const int64_t midx = learned ? b * 2 * inner + (i - b * inner) : i;  // learned: 2C channels per sample
      to_float_array(model + midx, ms + o, rl);
      if (p.guidance) {
        for (int64_t j = 0; j < rl; ++j) {
          const float u = ms[o + j];
          ms[o + j] = u + w * (Convert<T>::load(cond + midx + j) - u);
        }
      }
      const float* vp = kZeros;
      if (learned) {
        to_float_array((p.guidance ? cond : model) + midx + inner, vs + o, rl);
        vp = vs + o;
      }
      const StepCoeffs c = per_sample ? step_coeffs(p.kind, p.variance_type, p.noise_mode, p.eta, alpha_of(b, true),
                                                    alpha_of(b, false))
                                      : base;
      backward(p, c, xs + o, ms + o, vp, zp + o, with_noise, gps + o, gx0p + o, gxs + o, gms + o, gvs + o, gzs + o,
               rl);
      // d m / d uncond = 1 - w, d m / d cond = w; the variance channels (learned) belong to cond under guidance
      if (grad_model) {
        from_floats(grad_model + midx, gms + o, p.guidance ? 1.0f - w : 1.0f, rl);
        if (learned) {
          if (p.guidance) {
            fill_zeros(grad_model + midx + inner, rl);
          } else {
            from_floats(grad_model + midx + inner, gvs + o, 1.0f, rl);
          }
        }
      }
      if (grad_cond) {
        from_floats(grad_cond + midx, gms + o, w, rl);
        if (learned) from_floats(grad_cond + midx + inner, gvs + o, 1.0f, rl);
      }
      i = run_end;
    }
    if (grad_sample) from_floats(grad_sample + start, gxs, 1.0f, len);
    if (grad_noise) from_floats(grad_noise + start, gzs, 1.0f, len);
  }
}

}  // namespace

void diffusion_step_backward_cpu(const StepBackwardParams& q) {
  check_step_backward_params(q);
  if (q.fwd.n == 0) return;
  switch (q.fwd.dtype) {
    case kFloat32: run_backward<float>(q); break;
    case kFloat16: run_backward<Half>(q); break;
    case kBFloat16: run_backward<BFloat16>(q); break;
  }
}

}  // namespace genfast
