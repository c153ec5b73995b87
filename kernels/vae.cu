// CUDA kernels of genfast.ops.reparameterize_kl: one forward kernel (z + KL partial sums), one backward
// kernel (grad_mu, grad_logvar). The data are a contiguous (B, D) matrix. A block of 256 threads is a
// (ROWS x TPR) grid of threads over rows x columns; each thread owns G = 16 / sizeof(T) consecutive
// columns (one 16-byte access per tensor when D % G == 0 and the pointers are 16-byte aligned) and the
// block loops over the rows of its row group. Per block the forward writes one KL partial per
// (column chunk, row) and, with free bits, one per (row group, column); the caller sums those (a few
// floats per sample): no second pass over the data, no atomics, deterministic.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_utils.cuh"
#include "philox.cuh"
#include "vae.cuh"
#include "vae.h"

namespace genfast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGroupsNoCols = 65535;
constexpr int64_t kMaxGroupsCols = 8;


struct Geometry {
  int g;      // columns per thread
  int tpr;    // threads per row
  int rows;   // rows per block step
  int64_t chunks, groups, rows_per_group;
};

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

Geometry geometry(int64_t B, int64_t D, int dtype, bool col_sums) {
  Geometry geo;
  geo.g = dtype == kFloat32 ? 4 : 8;
  const int64_t need = cdiv(D, geo.g);
  int tpr = 1;
  while (tpr < kThreads && tpr < need) tpr *= 2;
  geo.tpr = tpr;
  geo.rows = kThreads / tpr;
  geo.chunks = cdiv(D, static_cast<int64_t>(tpr) * geo.g);
  const int64_t row_tiles = cdiv(B, geo.rows);
  const int64_t max_groups = col_sums ? kMaxGroupsCols : kMaxGroupsNoCols;
  const int64_t groups = row_tiles < max_groups ? row_tiles : max_groups;
  geo.rows_per_group = groups > 0 ? geo.rows * cdiv(row_tiles, groups) : geo.rows;
  geo.groups = B > 0 ? cdiv(B, geo.rows_per_group) : 0;
  return geo;
}

// The G values of element range [i, i + G) of stream (seed, offset), i = b * D + j.
template <int G>
__device__ __forceinline__ void draw(float (&eps)[G], int64_t i, uint64_t seed, uint64_t offset, bool aligned4) {
  if (aligned4) {  // i % 4 == 0: G / 4 whole counters
#pragma unroll
    for (int c = 0; c < G / 4; ++c) {
      const F32x4 v = normal4(philox_block(seed, offset, static_cast<uint64_t>(i / 4 + c)));
      eps[4 * c] = v.x; eps[4 * c + 1] = v.y; eps[4 * c + 2] = v.z; eps[4 * c + 3] = v.w;
    }
  } else {
    // The range starts r0 = i % 4 words into counter i / 4 and spans G / 4 + 1 counters: draw them all,
    // then shift the G + 4 values left by r0 in two selects per value (a shift by r0 & 1, then r0 & 2),
    // so every index stays static: registers, no local memory, one copy of the Philox code per counter.
    const int r0 = static_cast<int>(i & 3);
    float flat[G + 4];
#pragma unroll
    for (int c = 0; c < G / 4 + 1; ++c) {
      const F32x4 v = normal4(philox_block(seed, offset, static_cast<uint64_t>(i / 4 + c)));
      flat[4 * c] = v.x; flat[4 * c + 1] = v.y; flat[4 * c + 2] = v.z; flat[4 * c + 3] = v.w;
    }
    float half_shifted[G + 2];
#pragma unroll
    for (int k = 0; k < G + 2; ++k) half_shifted[k] = (r0 & 1) ? flat[k + 1] : flat[k];
#pragma unroll
    for (int k = 0; k < G; ++k) eps[k] = (r0 & 2) ? half_shifted[k + 2] : half_shifted[k];
  }
}

// Loads G elements at p[0..G) (valid: the first `n` of them), as fp32.
template <typename T, int G>
__device__ __forceinline__ void load_g(float (&out)[G], const T* p, int n, bool vec) {
  if (vec) {
    alignas(16) T tmp[G];
    *reinterpret_cast<uint4*>(tmp) = load_global16(p);
#pragma unroll
    for (int k = 0; k < G; ++k) out[k] = to_f32<T>(tmp[k]);
  } else {
#pragma unroll
    for (int k = 0; k < G; ++k) out[k] = k < n ? to_f32<T>(p[k]) : 0.0f;
  }
}

template <typename T, int G>
__device__ __forceinline__ void store_g(T* p, const float (&v)[G], int n, bool vec) {
  if (vec) {
    alignas(16) T tmp[G];
#pragma unroll
    for (int k = 0; k < G; ++k) tmp[k] = from_f32<T>(v[k]);
    store_global16(p, *reinterpret_cast<const uint4*>(tmp));
  } else {
#pragma unroll
    for (int k = 0; k < G; ++k) if (k < n) p[k] = from_f32<T>(v[k]);
  }
}

template <typename T, int G>
__global__ void __launch_bounds__(kThreads) vae_forward_kernel(
    const T* __restrict__ mu, const T* __restrict__ lv, const T* __restrict__ noise, T* __restrict__ z,
    float* __restrict__ row_part, float* __restrict__ col_part, int64_t B, int64_t D, int tpr, int64_t rows_per_group,
    uint64_t seed, uint64_t offset, const int64_t* seed_ptr, const int64_t* offset_ptr, LogvarClamp clamp, bool vec) {
  __shared__ float warp_sums[kThreads / 32];
  __shared__ float col_smem[kThreads * G];
  if (seed_ptr) seed = static_cast<uint64_t>(*seed_ptr);
  if (offset_ptr) offset = static_cast<uint64_t>(*offset_ptr);
  const int rows = kThreads / tpr;
  const int r = threadIdx.x / tpr, t = threadIdx.x % tpr;
  const int64_t j = (static_cast<int64_t>(blockIdx.x) * tpr + t) * G;
  const int n = j < D ? static_cast<int>(D - j < G ? D - j : G) : 0;
  const bool aligned4 = (D % 4) == 0;
  float col_acc[G];
#pragma unroll
  for (int k = 0; k < G; ++k) col_acc[k] = 0.0f;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * rows_per_group;
  for (int64_t step = 0; step < rows_per_group; step += rows) {
    const int64_t b = row0 + step + r;
    const bool row_ok = b < B && step + r < rows_per_group;
    float kl_sum = 0.0f;
    if (row_ok && n > 0) {
      const int64_t i = b * D + j;
      const bool v = vec && n == G;
      float m[G], l[G], e[G], zv[G];
      load_g<T, G>(m, mu + i, n, v);
      load_g<T, G>(l, lv + i, n, v);
      if (noise) load_g<T, G>(e, noise + i, n, v);
      else draw<G>(e, i, seed, offset, aligned4);
#pragma unroll
      for (int k = 0; k < G; ++k) {
        float kl;
        vae_forward_element(m[k], clamped_logvar(l[k], clamp), e[k], zv[k], kl);
        if (k < n) { kl_sum += kl; col_acc[k] += kl; }
      }
      store_g<T, G>(z + i, zv, n, v);
    }
    if (row_part) {
      // Sum the row's TPR threads: within the warp, then across the row's warps.
      const int width = tpr < 32 ? tpr : 32;
      for (int s = width / 2; s > 0; s /= 2) kl_sum += __shfl_xor_sync(0xffffffffu, kl_sum, s, width);
      if (tpr > 32) {
        __syncthreads();
        if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = kl_sum;
        __syncthreads();
        if (t == 0) { kl_sum = 0.0f; for (int w = 0; w < tpr / 32; ++w) kl_sum += warp_sums[threadIdx.x / 32 + w]; }
      }
      if (t == 0 && row_ok) row_part[static_cast<int64_t>(blockIdx.x) * B + b] = kl_sum;
    }
  }
  if (col_part) {
#pragma unroll
    for (int k = 0; k < G; ++k) col_smem[threadIdx.x * G + k] = col_acc[k];
    __syncthreads();
    if (r == 0) {
      for (int k = 0; k < n; ++k) {
        float s = 0.0f;
        for (int rr = 0; rr < rows; ++rr) s += col_smem[(rr * tpr + t) * G + k];
        col_part[static_cast<int64_t>(blockIdx.y) * D + j + k] = s;
      }
    }
  }
}

template <typename T, int G>
__global__ void __launch_bounds__(kThreads) vae_backward_kernel(
    const T* __restrict__ gz, const float* __restrict__ grow, const float* __restrict__ gcol, const T* __restrict__ mu,
    const T* __restrict__ lv, const T* __restrict__ noise, T* __restrict__ gmu, T* __restrict__ glv, int64_t B,
    int64_t D, int tpr, int64_t rows_per_group, uint64_t seed, uint64_t offset, const int64_t* seed_ptr,
    const int64_t* offset_ptr, LogvarClamp clamp, bool vec) {
  if (seed_ptr) seed = static_cast<uint64_t>(*seed_ptr);
  if (offset_ptr) offset = static_cast<uint64_t>(*offset_ptr);
  const int rows = kThreads / tpr;
  const int r = threadIdx.x / tpr, t = threadIdx.x % tpr;
  const int64_t j = (static_cast<int64_t>(blockIdx.x) * tpr + t) * G;
  if (j >= D) return;
  const int n = static_cast<int>(D - j < G ? D - j : G);
  const bool aligned4 = (D % 4) == 0;
  float cc[G];
#pragma unroll
  for (int k = 0; k < G; ++k) cc[k] = (gcol && k < n) ? gcol[j + k] : 0.0f;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * rows_per_group;
  for (int64_t step = r; step < rows_per_group; step += rows) {
    const int64_t b = row0 + step;
    if (b >= B) break;
    const int64_t i = b * D + j;
    const bool v = vec && n == G;
    float m[G], l[G], g[G], e[G], om[G], ol[G];
    load_g<T, G>(m, mu + i, n, v);
    load_g<T, G>(l, lv + i, n, v);
    if (gz) {
      load_g<T, G>(g, gz + i, n, v);
      if (noise) load_g<T, G>(e, noise + i, n, v);
      else draw<G>(e, i, seed, offset, aligned4);
    } else {
#pragma unroll
      for (int k = 0; k < G; ++k) { g[k] = 0.0f; e[k] = 0.0f; }
    }
    const float rc = grow ? grow[b] : 0.0f;
#pragma unroll
    for (int k = 0; k < G; ++k) vae_backward_element(g[k], rc + cc[k], m[k], l[k], e[k], clamp, om[k], ol[k]);
    store_g<T, G>(gmu + i, om, n, v);
    store_g<T, G>(glv + i, ol, n, v);
  }
}

bool aligned16(std::initializer_list<uintptr_t> ptrs) {
  for (uintptr_t p : ptrs)
    if (p % 16 != 0) return false;
  return true;
}

}  // namespace

void vae_partials_shape_cuda(int64_t B, int64_t D, int dtype, bool col_sums, int64_t& n_chunks, int64_t& n_groups) {
  check_arg(B >= 0 && D >= 0, "mu: negative size");
  const Geometry geo = geometry(B, D, dtype, col_sums);
  n_chunks = geo.chunks;
  n_groups = geo.groups;
}

void vae_forward_cuda(uintptr_t mu, uintptr_t logvar, uintptr_t noise, uintptr_t z, uintptr_t row_part,
                      uintptr_t col_part, int64_t B, int64_t D, int dtype, StreamArgs rng, VaeClampArgs clamp,
                      bool col_sums, uintptr_t stream, int device) {
  vae_check_args(B, D, dtype, clamp);
  check_numel(B * D, mu, "mu");
  check_numel(B * D, logvar, "logvar");
  check_numel(B * D, z, "z");
  check_arg(!col_sums || col_part != 0 || B * D == 0, "free_bits: null column partial buffer");
  if (B * D == 0) return;
  const Geometry geo = geometry(B, D, dtype, col_sums);
  DeviceGuard guard(device);
  const bool vec = (D % geo.g) == 0 && aligned16({mu, logvar, z}) && (noise == 0 || noise % 16 == 0);
  const dim3 grid(static_cast<unsigned>(geo.chunks), static_cast<unsigned>(geo.groups));
  const LogvarClamp c{clamp.on, clamp.lo, clamp.hi};
  auto s = reinterpret_cast<cudaStream_t>(stream);
  auto sp = reinterpret_cast<const int64_t*>(rng.seed_ptr);
  auto op = reinterpret_cast<const int64_t*>(rng.offset_ptr);
  float* cp = col_sums ? reinterpret_cast<float*>(col_part) : nullptr;
  switch (dtype) {
#define GF_LAUNCH(T, G)                                                                                          \
  GF_LAUNCH_KERNEL((vae_forward_kernel<T, G>), grid, kThreads, 0, s)(                                             \
      reinterpret_cast<const T*>(mu), reinterpret_cast<const T*>(logvar), reinterpret_cast<const T*>(noise),       \
      reinterpret_cast<T*>(z), reinterpret_cast<float*>(row_part), cp, B, D, geo.tpr, geo.rows_per_group, rng.seed, \
      rng.offset, sp, op, c, vec)
    case kFloat32: GF_LAUNCH(float, 4); break;
    case kFloat16: GF_LAUNCH(__half, 8); break;
    case kBFloat16: GF_LAUNCH(__nv_bfloat16, 8); break;
#undef GF_LAUNCH
  }
  check_launch("vae_forward_kernel");
}

void vae_backward_cuda(uintptr_t grad_z, uintptr_t grad_rows, uintptr_t grad_cols, uintptr_t mu, uintptr_t logvar,
                       uintptr_t noise, uintptr_t grad_mu, uintptr_t grad_logvar, int64_t B, int64_t D, int dtype,
                       StreamArgs rng, VaeClampArgs clamp, uintptr_t stream, int device) {
  vae_check_args(B, D, dtype, clamp);
  check_numel(B * D, mu, "mu");
  check_numel(B * D, logvar, "logvar");
  check_numel(B * D, grad_mu, "grad_mu");
  check_numel(B * D, grad_logvar, "grad_logvar");
  if (B * D == 0) return;
  const Geometry geo = geometry(B, D, dtype, false);
  DeviceGuard guard(device);
  const bool vec = (D % geo.g) == 0 && aligned16({mu, logvar, grad_mu, grad_logvar}) && grad_z % 16 == 0 &&
                   noise % 16 == 0;
  const dim3 grid(static_cast<unsigned>(geo.chunks), static_cast<unsigned>(geo.groups));
  const LogvarClamp c{clamp.on, clamp.lo, clamp.hi};
  auto s = reinterpret_cast<cudaStream_t>(stream);
  auto sp = reinterpret_cast<const int64_t*>(rng.seed_ptr);
  auto op = reinterpret_cast<const int64_t*>(rng.offset_ptr);
  switch (dtype) {
#define GF_LAUNCH(T, G)                                                                                             \
  GF_LAUNCH_KERNEL((vae_backward_kernel<T, G>), grid, kThreads, 0, s)(                                             \
      reinterpret_cast<const T*>(grad_z), reinterpret_cast<const float*>(grad_rows),                                \
      reinterpret_cast<const float*>(grad_cols), reinterpret_cast<const T*>(mu), reinterpret_cast<const T*>(logvar), \
      reinterpret_cast<const T*>(noise), reinterpret_cast<T*>(grad_mu), reinterpret_cast<T*>(grad_logvar), B, D,    \
      geo.tpr, geo.rows_per_group, rng.seed, rng.offset, sp, op, c, vec)
    case kFloat32: GF_LAUNCH(float, 4); break;
    case kFloat16: GF_LAUNCH(__half, 8); break;
    case kBFloat16: GF_LAUNCH(__nv_bfloat16, 8); break;
#undef GF_LAUNCH
  }
  check_launch("vae_backward_kernel");
}

}  // namespace genfast
