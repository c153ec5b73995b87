// CPU kernels of genfast.ops.gradient_penalty: the interpolation and the penalty's backward are one
// streaming pass each (threads over contiguous element ranges, runs of one sample sharing alpha or the
// scale); the per-sample sums of squares are tiles of at most kTile elements summed in the fixed
// pairwise order of csrc/simd_cpu.h, combined per sample in the same order, and the penalty is the
// tree sum of the per-sample terms (a running fp32 sum over B = 10^6 samples lost 4e-4). fp32
// arithmetic, the formulas of kernels/gradient_penalty.cuh; results do not depend on the thread count.
#include <cmath>
#include <type_traits>
#include <vector>

#include "gradient_penalty.cuh"
#include "gradient_penalty.h"
#include "simd_cpu.h"

namespace genfast {
namespace {

constexpr int64_t kMinPerThread = 32768;  // elements; below 2x this a pass runs on the calling thread
constexpr int64_t kTile = 16384;          // elements of one sum-of-squares task (a multiple of kSumBlock)

float load_alpha(uintptr_t alpha, int dtype, int64_t b) {
  switch (dtype) {
    case kFloat16: return Convert<Half>::load(reinterpret_cast<const Half*>(alpha) + b);
    case kBFloat16: return Convert<BFloat16>::load(reinterpret_cast<const BFloat16*>(alpha) + b);
    case kFloat64: return static_cast<float>(reinterpret_cast<const double*>(alpha)[b]);
    default: return reinterpret_cast<const float*>(alpha)[b];
  }
}

struct GpCtx {
  uintptr_t a, b, out;  // interpolate: real, fake, out; backward: grad, -, out; squares: grad
  int dtype;
  int64_t row;
  bool streaming;
  // interpolate
  uintptr_t alpha;
  int alpha_dtype;
  uint64_t seed, offset;
  float alpha_of(int64_t b) const { return alpha ? load_alpha(alpha, alpha_dtype, b) : gp_alpha(seed, offset, b); }
  // backward
  const float* norms;
  float go, center;
  int mode;
  // sums of squares
  int64_t tile, tiles_per_row;
  float* partials;
};

}  // namespace

#if GF_X86_DISPATCH
namespace isa_avx512 {
GF_ISA_REGION_BEGIN_AVX512
#define GF_ISA_LEVEL 2
#include "vec_cpu.inc"
#include "gradient_penalty_cpu.inc"
#undef GF_ISA_LEVEL
GF_ISA_REGION_END
}  // namespace isa_avx512

namespace isa_avx2 {
GF_ISA_REGION_BEGIN_AVX2
#define GF_ISA_LEVEL 1
#include "vec_cpu.inc"
#include "gradient_penalty_cpu.inc"
#undef GF_ISA_LEVEL
GF_ISA_REGION_END
}  // namespace isa_avx2
#endif

namespace isa_base {
#define GF_ISA_LEVEL 0
#include "vec_cpu.inc"
#include "gradient_penalty_cpu.inc"
#undef GF_ISA_LEVEL
}  // namespace isa_base

namespace {
using RangeFn = void (*)(const GpCtx&, int64_t, int64_t);
struct GpKernels {
  RangeFn interpolate, backward, squares;
};
GpKernels kernels() {
#if GF_X86_DISPATCH
  if (cpu::isa_level() == cpu::kIsaAvx512)
    return {isa_avx512::interpolate_range_any, isa_avx512::backward_range_any, isa_avx512::squares_tiles_any};
  if (cpu::isa_level() == cpu::kIsaAvx2)
    return {isa_avx2::interpolate_range_any, isa_avx2::backward_range_any, isa_avx2::squares_tiles_any};
#endif
  return {isa_base::interpolate_range_any, isa_base::backward_range_any, isa_base::squares_tiles_any};
}
int64_t elem_bytes(int dtype) { return dtype == kFloat32 ? 4 : 2; }
}  // namespace

void gp_interpolate_cpu(uintptr_t real, uintptr_t fake, uintptr_t out, uintptr_t alpha, int alpha_dtype, int64_t batch,
                        int64_t row, int dtype, StreamArgs rng) {
  gp_check_common(batch, row, dtype, "real");
  if (alpha) check_dtype(alpha_dtype, "alpha");
  if (batch * row == 0) return;
  check_arg(real && fake && out, "real/fake/out: null data pointer");
  GpCtx ctx{};
  ctx.a = real;
  ctx.b = fake;
  ctx.out = out;
  ctx.dtype = dtype;
  ctx.row = row;
  ctx.alpha = alpha;
  ctx.alpha_dtype = alpha_dtype;
  ctx.seed = load_stream_value(rng.seed, rng.seed_ptr);
  ctx.offset = load_stream_value(rng.offset, rng.offset_ptr);
  const int64_t n = batch * row;
  ctx.streaming = cpu::use_streaming_stores(3 * n * elem_bytes(dtype));
  const RangeFn fn = kernels().interpolate;
  cpu::parallel_ranges(n, kMinPerThread, [&](int64_t begin, int64_t end) { fn(ctx, begin, end); });
}

void gp_norm_penalty_cpu(uintptr_t grad, uintptr_t norms, uintptr_t penalty, int64_t batch, int64_t row, int dtype,
                         float weight, float center, int mode) {
  gp_check_common(batch, row, dtype, "grad");
  gp_check_mode(mode);
  if (batch == 0) return;
  check_arg(norms && penalty && (row == 0 || grad), "grad/norms/penalty: null data pointer");
  GpCtx ctx{};
  ctx.a = grad;
  ctx.dtype = dtype;
  ctx.row = row;
  ctx.tile = std::max<int64_t>(std::min(kTile, row), 1);
  ctx.tiles_per_row = row == 0 ? 0 : (row + ctx.tile - 1) / ctx.tile;
  const int64_t tiles = batch * ctx.tiles_per_row;
  std::vector<float> partials(static_cast<size_t>(tiles));
  ctx.partials = partials.data();
  const RangeFn fn = kernels().squares;
  const int threads = cpu::threads_for(batch * row, kMinPerThread);
  cpu::parallel_tasks(tiles, threads, [&](int64_t first, int64_t last) { fn(ctx, first, last); });
  float* n = reinterpret_cast<float*>(norms);
  std::vector<float> terms(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t k = ctx.tiles_per_row;
    const float sq = k == 0 ? 0.0f : k == 1 ? partials[b] : cpu::tree_sum(partials.data() + b * k, k);
    n[b] = sqrtf(sq);
    terms[b] = gp_term(sq, center, mode);
  }
  const float total = cpu::tree_sum(terms.data(), batch);
  const float value = gp_penalty_scale(weight, mode) * (total / static_cast<float>(batch));
  switch (dtype) {
    case kFloat32: Convert<float>::store(reinterpret_cast<float*>(penalty), value); break;
    case kFloat16: Convert<Half>::store(reinterpret_cast<Half*>(penalty), value); break;
    case kBFloat16: Convert<BFloat16>::store(reinterpret_cast<BFloat16*>(penalty), value); break;
  }
}

void gp_norm_penalty_backward_cpu(uintptr_t grad_out, uintptr_t grad, uintptr_t norms, uintptr_t out, int64_t batch,
                                  int64_t row, int dtype, float weight, float center, int mode) {
  gp_check_common(batch, row, dtype, "grad");
  gp_check_mode(mode);
  if (batch * row == 0) return;
  check_arg(grad_out && grad && norms && out, "grad_out/grad/norms/out: null data pointer");
  float go = 0.0f;
  switch (dtype) {
    case kFloat32: go = Convert<float>::load(reinterpret_cast<const float*>(grad_out)); break;
    case kFloat16: go = Convert<Half>::load(reinterpret_cast<const Half*>(grad_out)); break;
    case kBFloat16: go = Convert<BFloat16>::load(reinterpret_cast<const BFloat16*>(grad_out)); break;
  }
  GpCtx ctx{};
  ctx.a = grad;
  ctx.out = out;
  ctx.dtype = dtype;
  ctx.row = row;
  ctx.norms = reinterpret_cast<const float*>(norms);
  ctx.go = go * weight / static_cast<float>(batch);
  ctx.center = center;
  ctx.mode = mode;
  const int64_t n = batch * row;
  ctx.streaming = cpu::use_streaming_stores(2 * n * elem_bytes(dtype));
  const RangeFn fn = kernels().backward;
  cpu::parallel_ranges(n, kMinPerThread, [&](int64_t begin, int64_t end) { fn(ctx, begin, end); });
}

}  // namespace genfast
