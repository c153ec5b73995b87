// CPU kernel of genfast.ops.ddim_step / ddpm_step: one pass over memory in chunks of kChunk elements
// (OpenMP over chunks). Per chunk: inputs are converted to fp32 buffers, the noise is drawn with one
// Philox call per four consecutive elements, then each run of elements of one batch sample goes through
// a branch-free-per-element inner loop with that sample's coefficients (kernels/diffusion.cuh).
#include <cmath>
#include <cstring>

#include "diffusion.h"
#include "philox.cuh"


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

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define GF_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define GF_VECTOR_CLONES
#endif

// log and sincos in fp32 written so that loops over them vectorize (libm calls do not): Cephes-style
// polynomials, within ~2 ulp of libm, so the stream's normals agree with genfast.ops.randn to a few ulps.
__attribute__((always_inline)) inline float vlogf(float x) {
  int32_t bits;
  std::memcpy(&bits, &x, 4);
  const int32_t small = ((bits & 0x007fffff) < 0x3504f3) ? 1 : 0;  // mantissa < sqrt(0.5) * 2
  const int32_t e = (bits >> 23) - 126 - small;
  const int32_t mbits = (bits & 0x007fffff) | (0x3f000000 + (small << 23));  // [sqrt(.5), sqrt(2))
  float m;
  std::memcpy(&m, &mbits, 4);
  m = m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const float fe = static_cast<float>(e);
  y += -2.12194440e-4f * fe;
  y += -0.5f * z;
  return m + y + 0.693359375f * fe;
}

// sqrt of a value that is never negative here (libm's errno branch still blocks vectorizing this loop).
__attribute__((always_inline)) inline float vsqrtf(float v) { return std::sqrt(v); }

// sin and cos of a in [0, 2*pi]: Cody-Waite reduction by pi/2, then the minimax polynomials on [-pi/4, pi/4].
__attribute__((always_inline)) inline void vsincosf(float a, float& s, float& c) {
  const int j = static_cast<int>(a * 0.636619772367581343f + 0.5f);  // a >= 0: round to nearest quadrant
  const float fj = static_cast<float>(j);
  const float r = ((a - fj * 1.5703125f) - fj * 4.837512969970703125e-4f) - fj * 7.54978995489188216e-8f;
  const float r2 = r * r;
  const float sr = r + r * r2 * (-1.6666654611e-1f + r2 * (8.3321608736e-3f + r2 * -1.9515295891e-4f));
  const float cr = 1.0f - 0.5f * r2 + r2 * r2 * (4.166664568298827e-2f + r2 * (-1.388731625493765e-3f + r2 * 2.443315711809948e-5f));
  const int q = j & 3;
  const float odd = static_cast<float>(q & 1);
  const float s0 = odd * cr + (1.0f - odd) * sr;
  const float c0 = odd * sr + (1.0f - odd) * cr;
  s = (1.0f - static_cast<float>(q & 2)) * s0;        // q in {2, 3}: negate
  c = (1.0f - static_cast<float>((q + 1) & 2)) * c0;  // q in {1, 2}: negate
}

// Normals of counters q0 .. q0 + nq - 1 of the stream (element 4q + k -> out[4 (q - q0) + k]).
constexpr int64_t kMaxQ = 2048 / 4;
GF_VECTOR_CLONES void fill_normals(uint64_t seed, uint64_t offset, uint64_t q0, int64_t nq, float* out) {
  alignas(64) float u0[kMaxQ], u1[kMaxQ], u2[kMaxQ], u3[kMaxQ];
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const uint32_t o0 = static_cast<uint32_t>(offset), o1 = static_cast<uint32_t>(offset >> 32);
  for (int64_t i = 0; i < nq; ++i) {
    const uint64_t q = q0 + static_cast<uint64_t>(i);
    uint32_t c0 = static_cast<uint32_t>(q), c1 = static_cast<uint32_t>(q >> 32), c2 = o0, c3 = o1;
    uint32_t key0 = k0, key1 = k1;
    for (int round = 0; round < 10; ++round) {
      const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
      const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ key0;
      const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ key1;
      c1 = static_cast<uint32_t>(p1);
      c3 = static_cast<uint32_t>(p0);
      c0 = n0;
      c2 = n2;
      key0 += 0x9E3779B9u;
      key1 += 0xBB67AE85u;
    }
    u0[i] = word_to_uniform(c0);
    u1[i] = word_to_uniform(c1);
    u2[i] = word_to_uniform(c2);
    u3[i] = word_to_uniform(c3);
  }
#pragma omp simd
  for (int64_t i = 0; i < nq; ++i) {
    const float ra = vsqrtf(-2.0f * vlogf(u0[i]));
    const float rb = vsqrtf(-2.0f * vlogf(u2[i]));
    float sa, ca, sb, cb;
    vsincosf(6.28318548202514648438f * u1[i], sa, ca);
    vsincosf(6.28318548202514648438f * u3[i], sb, cb);
    u0[i] = ra * ca;
    u1[i] = ra * sa;
    u2[i] = rb * cb;
    u3[i] = rb * sb;
  }
  for (int64_t i = 0; i < nq; ++i) {
    out[4 * i + 0] = u0[i];
    out[4 * i + 1] = u1[i];
    out[4 * i + 2] = u2[i];
    out[4 * i + 3] = u3[i];
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
        fill_normals(seed, offset, static_cast<uint64_t>(start / 4), (len + 3) / 4, zs);
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
