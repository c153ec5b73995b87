// CPU kernels of genfast.ops.reparameterize_kl. One pass each way. The forward cuts the (B, D) matrix
// into tasks of (row group, column chunk): per row of its group a task draws the noise of its chunk into
// an L1 buffer, writes z and sums the chunk's KL terms; with column sums (free bits) it also sums each
// column over its rows. Every sum is in a fixed pairwise order (csrc/simd_cpu.h; columns: blocks of
// kColBlock rows, block sums combined pairwise), and the few partials per row / column are combined the
// same way at the end, so results do not depend on the thread count and lose O(log n) ulps, not O(n).
// The backward is elementwise over contiguous element ranges, the noise drawn again from the stream.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "simd_cpu.h"
#include "stream_cpu.h"
#include "vae.cuh"
#include "vae.h"

namespace genfast {
namespace {

constexpr int64_t kChunk = 2048;          // columns per task (a multiple of 4 and of kSumBlock)
constexpr int64_t kRowGroups = 8;         // row groups of the forward (bounds the column partials to 8 * D)
constexpr int64_t kColBlock = 8;          // rows summed in order per column before the pairwise cascade
constexpr int kColLevels = 58;            // cascade levels of the column sums (2^58 row blocks)
constexpr int64_t kMinPerThread = 32768;  // elements; below 2x this a call runs on the calling thread

struct VaeCtx {
  uintptr_t mu, logvar, noise, z, grad_z, grad_mu, grad_logvar;
  int dtype;
  int64_t B, D, n_chunks, rows_per_group;
  uint64_t seed, offset;
  float lo, hi;  // logvar clamp; +-inf without one (the branch-free clamp is then the identity, NaN kept)
  bool clamp_on, streaming;
  float *row_part, *col_part;              // forward partials
  const float *grad_rows, *grad_cols;      // backward KL coefficients
};

}  // namespace

#if GF_X86_DISPATCH
namespace isa_avx512 {
GF_ISA_REGION_BEGIN_AVX512
#define GF_ISA_LEVEL 2
#include "vec_cpu.inc"
#include "vae_cpu.inc"
#undef GF_ISA_LEVEL
GF_ISA_REGION_END
}  // namespace isa_avx512

namespace isa_avx2 {
GF_ISA_REGION_BEGIN_AVX2
#define GF_ISA_LEVEL 1
#include "vec_cpu.inc"
#include "vae_cpu.inc"
#undef GF_ISA_LEVEL
GF_ISA_REGION_END
}  // namespace isa_avx2
#endif

namespace isa_base {
#define GF_ISA_LEVEL 0
#include "vec_cpu.inc"
#include "vae_cpu.inc"
#undef GF_ISA_LEVEL
}  // namespace isa_base

namespace {
using TasksFn = void (*)(const VaeCtx&, int64_t, int64_t);

TasksFn pick(bool forward) {
#if GF_X86_DISPATCH
  if (cpu::isa_level() == cpu::kIsaAvx512) return forward ? isa_avx512::forward_tasks : isa_avx512::backward_range_any;
  if (cpu::isa_level() == cpu::kIsaAvx2) return forward ? isa_avx2::forward_tasks : isa_avx2::backward_range_any;
#endif
  return forward ? isa_base::forward_tasks : isa_base::backward_range_any;
}

VaeCtx make_ctx(uintptr_t mu, uintptr_t logvar, uintptr_t noise, int64_t B, int64_t D, int dtype, StreamArgs rng,
                VaeClampArgs clamp) {
  VaeCtx ctx{};
  ctx.mu = mu;
  ctx.logvar = logvar;
  ctx.noise = noise;
  ctx.dtype = dtype;
  ctx.B = B;
  ctx.D = D;
  ctx.n_chunks = (D + kChunk - 1) / kChunk;
  ctx.seed = noise ? 0 : load_stream_value(rng.seed, rng.seed_ptr);
  ctx.offset = noise ? 0 : load_stream_value(rng.offset, rng.offset_ptr);
  ctx.clamp_on = clamp.on;
  ctx.lo = clamp.on ? clamp.lo : -INFINITY;
  ctx.hi = clamp.on ? clamp.hi : INFINITY;
  return ctx;
}

int64_t elem_bytes(int dtype) { return dtype == kFloat32 ? 4 : 2; }

template <typename T>
const T* cptr(uintptr_t p) { return reinterpret_cast<const T*>(p); }
template <typename T>
T* mptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

}  // namespace

void vae_forward_cpu(uintptr_t mu, uintptr_t logvar, uintptr_t noise, uintptr_t z, uintptr_t kl_rows,
                     uintptr_t kl_cols, int64_t B, int64_t D, int dtype, StreamArgs rng, VaeClampArgs clamp) {
  vae_check_args(B, D, dtype, clamp);
  const int64_t n = B * D;
  check_numel(n, mu, "mu");
  check_numel(n, logvar, "logvar");
  check_numel(n, z, "z");
  if (n == 0) {
    if (kl_rows) for (int64_t b = 0; b < B; ++b) mptr<float>(kl_rows)[b] = 0.0f;
    if (kl_cols) for (int64_t j = 0; j < D; ++j) mptr<float>(kl_cols)[j] = 0.0f;
    return;
  }
  VaeCtx ctx = make_ctx(mu, logvar, noise, B, D, dtype, rng, clamp);
  ctx.z = z;
  const int64_t n_groups = std::min<int64_t>(B, kRowGroups);
  ctx.rows_per_group = (B + n_groups - 1) / n_groups;
  std::vector<float> row_part(kl_rows ? static_cast<size_t>(ctx.n_chunks * B) : 0);
  std::vector<float> col_part(kl_cols ? static_cast<size_t>(n_groups * D) : 0);
  ctx.row_part = kl_rows ? row_part.data() : nullptr;
  ctx.col_part = kl_cols ? col_part.data() : nullptr;
  ctx.streaming = cpu::use_streaming_stores(n * elem_bytes(dtype) * (noise ? 4 : 3));
  const TasksFn fn = pick(true);
  cpu::parallel_tasks(n_groups * ctx.n_chunks, cpu::threads_for(n, kMinPerThread),
                      [&](int64_t first, int64_t last) { fn(ctx, first, last); });
  if (kl_rows) {
    float* rows = mptr<float>(kl_rows);
    if (ctx.n_chunks == 1) std::copy(row_part.begin(), row_part.end(), rows);  // the sum of one partial is itself
    else for (int64_t b = 0; b < B; ++b) rows[b] = cpu::tree_sum_strided(row_part.data() + b, ctx.n_chunks, B);
  }
  if (kl_cols)
    for (int64_t j = 0; j < D; ++j) mptr<float>(kl_cols)[j] = cpu::tree_sum_strided(col_part.data() + j, n_groups, D);
}

void vae_backward_cpu(uintptr_t grad_z, uintptr_t grad_rows, uintptr_t grad_cols, uintptr_t mu, uintptr_t logvar,
                      uintptr_t noise, uintptr_t grad_mu, uintptr_t grad_logvar, int64_t B, int64_t D, int dtype,
                      StreamArgs rng, VaeClampArgs clamp) {
  vae_check_args(B, D, dtype, clamp);
  const int64_t n = B * D;
  check_numel(n, mu, "mu");
  check_numel(n, logvar, "logvar");
  check_numel(n, grad_mu, "grad_mu");
  check_numel(n, grad_logvar, "grad_logvar");
  if (n == 0) return;
  VaeCtx ctx = make_ctx(mu, logvar, noise, B, D, dtype, rng, clamp);
  ctx.grad_z = grad_z;
  ctx.grad_mu = grad_mu;
  ctx.grad_logvar = grad_logvar;
  ctx.grad_rows = cptr<float>(grad_rows);
  ctx.grad_cols = cptr<float>(grad_cols);
  ctx.streaming = cpu::use_streaming_stores(n * elem_bytes(dtype) * (4 + (grad_z ? 1 : 0) + (noise ? 1 : 0)));
  const TasksFn fn = pick(false);
  cpu::parallel_ranges(n, kMinPerThread, [&](int64_t begin, int64_t end) { fn(ctx, begin, end); });
}

}  // namespace genfast
