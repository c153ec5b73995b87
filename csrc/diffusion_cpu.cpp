// CPU kernel of genfast.ops.ddim_step / ddpm_step: one pass over memory in chunks of kChunk elements
// (OpenMP over chunks). Per chunk: inputs are converted to fp32 buffers, the noise is drawn with one
// Philox call per four consecutive elements, then each run of elements of one batch sample goes through
// a branch-free-per-element inner loop with that sample's coefficients (kernels/diffusion.cuh).
#include <cmath>
#include <cstring>

#include "diffusion.h"
#include "philox.cuh"
#include "stream_cpu.h"


namespace genfast {
namespace {

constexpr int64_t kChunk = 2048;  // multiple of 4: chunk starts are Philox-counter aligned

float load_any(uintptr_t base, int dtype, int64_t i) {
  switch (dtype) {
    case kFloat32: return reinterpret_cast<const float*>(base)[i];
    case kFloat16: return half_bits_to_float(reinterpret_cast<const uint16_t*>(base)[i]);
    case kBFloat16: return bf16_bits_to_float(reinterpret_cast<const uint16_t*>(base)[i]);
    default: return static_cast<float>(reinterpret_cast<const double*>(base)[i]);
  }
}

template <typename T>
inline void load_run(const T* src, float* dst, int64_t len) {
  for (int64_t j = 0; j < len; ++j) dst[j] = Convert<T>::load(src + j);
}

// The inner loop over one run of elements sharing a sample's coefficients; templated on what decides
// the per-element arithmetic so the compiler sees a straight-line, vectorizable body.
template <int Kind, int Pred>
void step_run(const StepParams& p, const StepCoeffs& c, const float* x, const float* m, const float* v, const float* z,
              bool with_noise, bool thresholding, float s, float* prev, float* x0, int64_t len) {
  StepParams q = p;
  q.kind = Kind;
  q.prediction_type = Pred;
  if (!with_noise) {
    for (int64_t j = 0; j < len; ++j) prev[j] = step_element(q, c, x[j], m[j], 0.0f, 0.0f, false, thresholding, s, x0[j]);
  } else {
    for (int64_t j = 0; j < len; ++j) prev[j] = step_element(q, c, x[j], m[j], v[j], z[j], true, thresholding, s, x0[j]);
  }
}

using StepRunFn = void (*)(const StepParams&, const StepCoeffs&, const float*, const float*, const float*,
                           const float*, bool, bool, float, float*, float*, int64_t);

StepRunFn pick_run(int kind, int pred) {
  static const StepRunFn table[2][3] = {
      {step_run<kDDIM, kEpsilon>, step_run<kDDIM, kSample>, step_run<kDDIM, kVPrediction>},
      {step_run<kDDPM, kEpsilon>, step_run<kDDPM, kSample>, step_run<kDDPM, kVPrediction>}};
  return table[kind][pred];
}

template <typename T>
void run(const StepParams& p) {
  const T* sample = reinterpret_cast<const T*>(p.sample);
  const T* model = reinterpret_cast<const T*>(p.model);
  const T* cond = reinterpret_cast<const T*>(p.cond);
  const float* at_ptr = reinterpret_cast<const float*>(p.alpha_t_ptr);
  const float* ap_ptr = reinterpret_cast<const float*>(p.alpha_prev_ptr);
  const float* lo_ptr = reinterpret_cast<const float*>(p.thresh_lo);
  const float* hi_ptr = reinterpret_cast<const float*>(p.thresh_hi);
  const bool learned = p.kind == kDDPM && (p.variance_type == kLearned || p.variance_type == kLearnedRange);
  const bool thresholding = p.thresh_lo != 0 && !p.mode_abs_x0;
  const bool per_sample = p.alpha_t_per_sample || p.alpha_prev_per_sample || thresholding;
  const bool with_noise = !p.mode_abs_x0 && p.noise_mode != kNoiseNever && p.noise_src != kSrcNone;
  const uint64_t seed = load_stream_value(p.seed, p.seed_ptr);
  const uint64_t offset = load_stream_value(p.offset, p.offset_ptr);
  auto alpha_of = [&](int64_t b, bool t) {
    const float* ptr = t ? at_ptr : ap_ptr;
    const bool each = t ? p.alpha_t_per_sample : p.alpha_prev_per_sample;
    return ptr ? ptr[each ? b : 0] : (t ? p.alpha_t : p.alpha_prev);
  };
  const StepCoeffs base = step_coeffs(p.kind, p.variance_type, p.noise_mode, p.eta, alpha_of(0, true), alpha_of(0, false));
  const StepRunFn step = pick_run(p.kind, p.prediction_type);
  const int64_t n = p.n, inner = p.inner;
  const int64_t chunks = (n + kChunk - 1) / kChunk;

#pragma omp parallel for schedule(static) if (n > 4 * kChunk)
  for (int64_t ci = 0; ci < chunks; ++ci) {
    alignas(64) float xs[kChunk], ms[kChunk], vs[kChunk], zs[kChunk], ps[kChunk], x0s[kChunk];
    const int64_t start = ci * kChunk;
    const int64_t len = n - start < kChunk ? n - start : kChunk;
    load_run(sample + start, xs, len);
    if (with_noise) {
      if (p.noise_src == kSrcStream) {
        stream_normals_cpu(seed, offset, start, len, zs);
      } else if (p.noise_dtype == kFloat32) {
        std::memcpy(zs, reinterpret_cast<const float*>(p.noise) + start, len * sizeof(float));
      } else {
        for (int64_t j = 0; j < len; ++j) zs[j] = load_any(p.noise, p.noise_dtype, start + j);
      }
    }
    // model output (guided), per run of one batch sample when the layout is per-sample (learned: 2C channels)
    for (int64_t i = start; i < start + len;) {
      const int64_t b = i / inner;
      const int64_t run_end = (b + 1) * inner < start + len ? (b + 1) * inner : start + len;
      const int64_t rl = run_end - i, o = i - start;
      const int64_t midx = learned ? b * 2 * inner + (i - b * inner) : i;
      load_run(model + midx, ms + o, rl);
      if (p.guidance) {
        const float w = p.guidance_scale;
        for (int64_t j = 0; j < rl; ++j) {
          const float u = ms[o + j];
          ms[o + j] = u + w * (Convert<T>::load(cond + midx + j) - u);
        }
      }
      if (learned) load_run((p.guidance ? cond : model) + midx + inner, vs + o, rl);
      StepCoeffs c = base;
      float s = 1.0f;
      if (per_sample) {
        c = step_coeffs(p.kind, p.variance_type, p.noise_mode, p.eta, alpha_of(b, true), alpha_of(b, false));
        if (thresholding) s = threshold_scale(lo_ptr[b], hi_ptr[b], p.thresh_weight, p.thresh_max);
      }
      if (p.mode_abs_x0) {
        float* out = reinterpret_cast<float*>(p.out) + i;
        for (int64_t j = 0; j < rl; ++j) out[j] = std::fabs(step_x0(p.prediction_type, c, xs[o + j], ms[o + j]));
      } else {
        step(p, c, xs + o, ms + o, vs + o, zs + o, with_noise, thresholding, s, ps + o, x0s + o, rl);
      }
      i = run_end;
    }
    if (p.mode_abs_x0) continue;
    T* out = reinterpret_cast<T*>(p.out) + start;
    for (int64_t j = 0; j < len; ++j) Convert<T>::store(out + j, ps[j]);
    if (p.out_x0) {
      T* ox = reinterpret_cast<T*>(p.out_x0) + start;
      for (int64_t j = 0; j < len; ++j) Convert<T>::store(ox + j, x0s[j]);
    }
  }
}

}  // namespace

void diffusion_step_cpu(const StepParams& p) {
  check_step_params(p);
  if (p.n == 0) return;
  switch (p.dtype) {
    case kFloat32: run<float>(p); break;
    case kFloat16: run<Half>(p); break;
    case kBFloat16: run<BFloat16>(p); break;
  }
}

}  // namespace genfast
