// CPU kernel of genfast.ops.ddim_step / ddpm_step: one pass over memory. Threads take contiguous ranges
// of elements (a small step stays on the calling thread); each range goes through blocks of kBlock
// elements (noise drawn into an L1 buffer per block, half-type inputs converted per block) and runs of
// one batch sample each, whose loop is the instantiation of csrc/diffusion_cpu.inc for this call's
// options: straight-line vector code, no per-element branch. Outputs larger than the last-level cache are
// written with streaming stores. Compiled for AVX-512, AVX2 and baseline x86-64; csrc/simd_cpu.h picks.
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>

#include "diffusion.h"
#include "simd_cpu.h"
#include "stream_cpu.h"

namespace genfast {
namespace {

constexpr int64_t kBlock = 1024;          // elements per block: the fp32 buffers of a block stay in L1
constexpr int64_t kMinPerThread = 32768;  // below 2x this a step runs on one thread (~10 us of work)

// What the noise term of an element needs (the NoiseVar template argument).
enum NoiseVar : int { kNoNoise = 0, kFixedStd = 1, kLearnedStd = 2, kLearnedRangeStd = 3 };

// Coefficients of one run (StepCoeffs of kernels/diffusion.cuh, plus the clamp bounds of x0, the
// thresholding scale and the guidance weight).
struct RunCoeffs {
  float sa, sb, sap, dir, c_x0, c_x, std, log_var, log_beta, mask;
  float lo, hi, s, w;
};

// Pointers of one run (fp32: the tensors themselves, or buffers of converted half-type data).
struct RunArgs {
  const float *x, *m, *c, *v, *z;
  float *out, *x0;
  int64_t len;
  bool streaming;
};

struct StepCtx {
  StepParams p;
  uint64_t seed, offset;
  bool abs_mode, learned, need_v, with_noise, thresholding, per_sample, streaming;
  size_t table_index;
  RunCoeffs base;
  std::atomic<unsigned char>* nan_rows;  // abs mode: samples with a NaN in x0
};

float alpha_of(const StepParams& p, int64_t b, bool t) {
  const float* ptr = reinterpret_cast<const float*>(t ? p.alpha_t_ptr : p.alpha_prev_ptr);
  const bool each = t ? p.alpha_t_per_sample : p.alpha_prev_per_sample;
  return ptr ? ptr[each ? b : 0] : (t ? p.alpha_t : p.alpha_prev);
}

RunCoeffs run_coeffs(const StepCtx& ctx, int64_t b) {
  const StepParams& p = ctx.p;
  const StepCoeffs c =
      step_coeffs(p.kind, p.variance_type, p.noise_mode, p.eta, alpha_of(p, b, true), alpha_of(p, b, false));
  RunCoeffs k{c.sa, c.sb, c.sap, c.dir, c.c_x0, c.c_x, c.std, c.log_var, c.log_beta, c.mask,
              -INFINITY, INFINITY, 1.0f, p.guidance_scale};
  if (ctx.thresholding) {
    const float* lo = reinterpret_cast<const float*>(p.thresh_lo);
    const float* hi = reinterpret_cast<const float*>(p.thresh_hi);
    k.s = threshold_scale(lo[b], hi[b], p.thresh_weight, p.thresh_max);
    k.lo = -k.s;
    k.hi = k.s;
  } else if (p.clip && !ctx.abs_mode) {
    k.lo = -p.clip_range;
    k.hi = p.clip_range;
  }
  return k;
}

}  // namespace

#if GF_X86_DISPATCH
namespace isa_avx512 {
GF_ISA_REGION_BEGIN_AVX512
#define GF_ISA_LEVEL 2
#include "vec_cpu.inc"
#include "diffusion_cpu.inc"
#undef GF_ISA_LEVEL
GF_ISA_REGION_END
}  // namespace isa_avx512

namespace isa_avx2 {
GF_ISA_REGION_BEGIN_AVX2
#define GF_ISA_LEVEL 1
#include "vec_cpu.inc"
#include "diffusion_cpu.inc"
#undef GF_ISA_LEVEL
GF_ISA_REGION_END
}  // namespace isa_avx2
#endif

namespace isa_base {
#define GF_ISA_LEVEL 0
#include "vec_cpu.inc"
#include "diffusion_cpu.inc"
#undef GF_ISA_LEVEL
}  // namespace isa_base

void diffusion_step_cpu(const StepParams& p) {
  check_step_params(p);
  if (p.n == 0) return;
  StepCtx ctx;
  ctx.p = p;
  ctx.seed = load_stream_value(p.seed, p.seed_ptr);
  ctx.offset = load_stream_value(p.offset, p.offset_ptr);
  ctx.abs_mode = p.mode_abs_x0 != 0;
  ctx.learned = p.kind == kDDPM && (p.variance_type == kLearned || p.variance_type == kLearnedRange);
  ctx.thresholding = p.thresh_lo != 0 && !ctx.abs_mode;
  ctx.with_noise = !ctx.abs_mode && p.noise_mode != kNoiseNever && p.noise_src != kSrcNone;
  ctx.need_v = ctx.learned && ctx.with_noise;
  ctx.per_sample = p.alpha_t_per_sample || p.alpha_prev_per_sample || ctx.thresholding;
  int noise_var = kNoNoise;
  if (ctx.with_noise) {
    noise_var = kFixedStd;
    if (p.kind == kDDPM && p.variance_type == kLearned) noise_var = kLearnedStd;
    if (p.kind == kDDPM && p.variance_type == kLearnedRange) noise_var = kLearnedRangeStd;
  }
  ctx.table_index = static_cast<size_t>(p.kind + 2 * p.prediction_type + 6 * ctx.thresholding + 12 * p.guidance +
                                        24 * noise_var + 96 * (p.kind == kDDIM && p.use_clipped));
  ctx.base = run_coeffs(ctx, 0);  // per-sample coefficients are recomputed per run when they differ
  const int64_t batch = p.n / p.inner;
  std::unique_ptr<std::atomic<unsigned char>[]> nan_rows;
  if (ctx.abs_mode) {
    nan_rows.reset(new std::atomic<unsigned char>[static_cast<size_t>(batch)]);
    for (int64_t b = 0; b < batch; ++b) nan_rows[b].store(0, std::memory_order_relaxed);
  }
  ctx.nan_rows = nan_rows.get();
  // bytes read and written: sample, model output (2x with learned variance), cond, noise tensor, outputs
  const int64_t elem = p.dtype == kFloat32 ? 4 : 2;
  int64_t streams = 3 + (ctx.learned ? 1 : 0) + (p.guidance ? 1 + (ctx.learned ? 1 : 0) : 0) +
                    (p.out_x0 ? 1 : 0) + (ctx.with_noise && p.noise_src == kSrcTensor ? 1 : 0);
  ctx.streaming = !ctx.abs_mode && cpu::use_streaming_stores(p.n * elem * streams);

  using RangeFn = void (*)(const StepCtx&, int64_t, int64_t);
  RangeFn range = isa_base::step_range;
#if GF_X86_DISPATCH
  if (cpu::isa_level() == cpu::kIsaAvx512) range = isa_avx512::step_range;
  else if (cpu::isa_level() == cpu::kIsaAvx2) range = isa_avx2::step_range;
#endif
  cpu::parallel_ranges(p.n, kMinPerThread, [&](int64_t begin, int64_t end) { range(ctx, begin, end); });

  // torch.quantile of a row holding a NaN is NaN, which makes the whole thresholded sample NaN: a NaN row
  // of |x0| gives the same through the order statistics the caller selects from it.
  if (ctx.abs_mode) {
    float* out = reinterpret_cast<float*>(p.out);
    for (int64_t b = 0; b < batch; ++b)
      if (nan_rows[b].load(std::memory_order_relaxed))
        for (int64_t j = 0; j < p.inner; ++j) out[b * p.inner + j] = NAN;
  }
}

}  // namespace genfast
