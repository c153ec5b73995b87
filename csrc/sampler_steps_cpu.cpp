// CPU kernel of genfast.ops' sampler steps (Euler, Euler ancestral, DPM-Solver++): one pass over memory
// in chunks of kChunk elements (OpenMP over chunks). Per chunk the inputs are converted to fp32 buffers
// (the model output per run of one batch sample, so a 2C-channel learned-variance output reads its first
// C channels in place), the noise is drawn with one Philox call per four elements, then a straight-line
// loop templated on what changes the per-element arithmetic evaluates kernels/sampler_steps.cuh.
#include <cmath>
#include <cstring>
#include <type_traits>

#include "philox.cuh"
#include "sampler_steps.h"
#include "stream_cpu.h"

namespace genfast {
namespace {

constexpr int64_t kChunk = 2048;  // multiple of 4: chunk starts are Philox-counter aligned
constexpr int64_t kGrain = 32768;
alignas(64) const float kZeros[kChunk] = {};  // the noise of a step without noise (z = 0, as before)

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define GF_SAMPLER_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define GF_SAMPLER_CLONES
#endif

// One run of elements sharing a batch sample (hence one thresholding scale); AVX-512 and AVX2 clones where
// the CPU has them (the build targets baseline x86-64; -ffp-contract=off keeps every clone's bits equal).
// The pointers never alias: outputs are fresh tensors or this chunk's buffers.
template <int History, bool Thresholding>
GF_SAMPLER_CLONES void sampler_run(const SamplerStepParams& p, const float* __restrict__ x, const float* __restrict__ m,
                                   const float* __restrict__ h1, const float* __restrict__ h2,
                                   const float* __restrict__ z, float s, float* __restrict__ prev,
                                   float* __restrict__ conv, int64_t len) {
  SamplerStepParams q = p;
  q.history = History;
  for (int64_t j = 0; j < len; ++j) {
    const float a = History >= 1 ? h1[j] : 0.0f;
    const float b = History >= 2 ? h2[j] : 0.0f;
    prev[j] = sampler_element(q, x[j], m[j], a, b, z[j], Thresholding, s, conv[j]);
  }
}

using SamplerRunFn = void (*)(const SamplerStepParams&, const float*, const float*, const float*, const float*,
                              const float*, float, float*, float*, int64_t);

SamplerRunFn pick_sampler_run(int history, bool thresholding) {
  static const SamplerRunFn table[3][2] = {{sampler_run<0, false>, sampler_run<0, true>},
                                           {sampler_run<1, false>, sampler_run<1, true>},
                                           {sampler_run<2, false>, sampler_run<2, true>}};
  return table[history][thresholding ? 1 : 0];
}

template <typename T>
void run(const SamplerStepParams& p) {
  const T* sample = reinterpret_cast<const T*>(p.sample);
  const T* model = reinterpret_cast<const T*>(p.model);
  const T* cond = reinterpret_cast<const T*>(p.cond);
  const T* hist1 = reinterpret_cast<const T*>(p.hist1);
  const T* hist2 = reinterpret_cast<const T*>(p.hist2);
  const float* lo_ptr = reinterpret_cast<const float*>(p.thresh_lo);
  const float* hi_ptr = reinterpret_cast<const float*>(p.thresh_hi);
  const bool thresholding = p.thresh_lo != 0 && !p.mode_abs_x0;
  const bool with_noise = p.noise_src != kSamplerNoiseNone;
  const uint64_t seed = load_stream_value(p.seed, p.seed_ptr);
  const uint64_t offset = load_stream_value(p.offset, p.offset_ptr);
  const SamplerRunFn step = pick_sampler_run(p.history, thresholding);
  const int64_t n = p.n, inner = p.inner, mstride = p.model_stride;
  const int64_t chunks = (n + kChunk - 1) / kChunk;

// Threads only past torch's grain size (32768 elements per thread): below it a parallel region costs more
// than it saves, and on a busy machine a spinning worker can stall the step for a whole time slice.
#pragma omp parallel for schedule(static) if (n > 2 * kGrain)
  for (int64_t ci = 0; ci < chunks; ++ci) {
    // fp32 data are read and written in place; other dtypes go through fp32 buffers of one chunk
    constexpr bool f32 = std::is_same<T, float>::value;
    alignas(64) float xs[f32 ? 1 : kChunk], h1s[f32 ? 1 : kChunk], h2s[f32 ? 1 : kChunk], ps[f32 ? 1 : kChunk];
    alignas(64) float ms[kChunk], zs[kChunk], cs[kChunk];
    const int64_t start = ci * kChunk;
    const int64_t len = n - start < kChunk ? n - start : kChunk;
    const float *xp, *h1p = h1s, *h2p = h2s;
    float* pp;
    if constexpr (f32) {
      xp = sample + start;
      if (p.history >= 1) h1p = hist1 + start;
      if (p.history >= 2) h2p = hist2 + start;
      pp = reinterpret_cast<float*>(p.out) + start;
    } else {
      to_float_array(sample + start, xs, len);
      if (p.history >= 1) to_float_array(hist1 + start, h1s, len);
      if (p.history >= 2) to_float_array(hist2 + start, h2s, len);
      xp = xs;
      pp = ps;
    }
    // conv straight into an fp32 out_aux; else a buffer (converted below, or dropped when not wanted)
    float* cp = p.out_aux != 0 && p.aux_dtype == kFloat32 ? reinterpret_cast<float*>(p.out_aux) + start : cs;
    const float* zp = zs;
    if (!with_noise) {
      zp = kZeros;
    } else if (p.noise_src == kSamplerNoiseStream) {
      stream_normals_cpu(seed, offset, start, len, zs);
    } else if (p.noise_dtype == kFloat32) {
      zp = reinterpret_cast<const float*>(p.noise) + start;
    } else {
      for (int64_t j = 0; j < len; ++j) zs[j] = load_as_float(p.noise, p.noise_dtype, start + j);
    }
    for (int64_t i = start; i < start + len;) {
      const int64_t b = i / inner;
      const int64_t run_end = (b + 1) * inner < start + len ? (b + 1) * inner : start + len;
      const int64_t rl = run_end - i, o = i - start;
      const int64_t midx = b * mstride + (i - b * inner);
      const float* mp = ms + o;
      if (p.guidance) {
        const float w = p.guidance_scale;
        for (int64_t j = 0; j < rl; ++j) {
          const float u = Convert<T>::load(model + midx + j);
          ms[o + j] = u + w * (Convert<T>::load(cond + midx + j) - u);
        }
      } else if constexpr (f32) {
        mp = model + midx;
      } else {
        to_float_array(model + midx, ms + o, rl);
      }
      if (p.mode_abs_x0) {
        float* out = reinterpret_cast<float*>(p.out) + i;
        for (int64_t j = 0; j < rl; ++j) out[j] = std::fabs(sampler_x0(p, xp[o + j], mp[j], zp[o + j]));
      } else {
        const float s = thresholding ? sampler_threshold_scale(lo_ptr[b], hi_ptr[b], p.thresh_weight, p.thresh_max) : 1.0f;
        step(p, xp + o, mp, h1p + o, h2p + o, zp + o, s, pp + o, cp + o, rl);
      }
      i = run_end;
    }
    if (p.mode_abs_x0) continue;
    if constexpr (!f32) from_float_array(reinterpret_cast<T*>(p.out) + start, ps, len);
    if (p.out_aux != 0 && p.aux_dtype != kFloat32) from_float_array(reinterpret_cast<T*>(p.out_aux) + start, cs, len);
  }
}

}  // namespace

void sampler_step_cpu(const SamplerStepParams& p) {
  check_sampler_step_params(p);
  if (p.n == 0) return;
  switch (p.dtype) {
    case kFloat32: run<float>(p); break;
    case kFloat16: run<Half>(p); break;
    case kBFloat16: run<BFloat16>(p); break;
  }
}

}  // namespace genfast
