// CUDA kernels of genfast.ops.gradient_penalty. A block owns one (sample, chunk) tile of a contiguous
// [B, row] tensor, so alpha / the norm are per-block scalars and row accesses are 16-byte vectors
// when row and the pointers allow. int64 indices throughout.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_utils.cuh"
#include "gradient_penalty.cuh"
#include "gradient_penalty.h"

namespace genfast {
namespace {

constexpr int kThreads = 256;


// 16 bytes of T. alignas(16): with only alignof(T), nvcc cannot prove the 16-byte alignment and splits
// every access into 2- or 4-byte ones.
template <typename T> struct alignas(16) Pack {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};

// Loads N elements at p + j (j < row) as fp32; 16-byte access when `vec` (aligned, row % N == 0).
template <typename T>
__device__ __forceinline__ void load_pack(const T* p, int64_t j, int64_t row, bool vec, float (&x)[Pack<T>::N]) {
  constexpr int N = Pack<T>::N;
  if (vec && j + N <= row) {
    Pack<T> pk;
    *reinterpret_cast<uint4*>(&pk) = load_global16(p + j);
#pragma unroll
    for (int k = 0; k < N; ++k) x[k] = to_f32(pk.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) x[k] = j + k < row ? to_f32(p[j + k]) : 0.f;
  }
}

template <typename T>
__device__ __forceinline__ void store_pack(T* p, int64_t j, int64_t row, bool vec, const float (&x)[Pack<T>::N]) {
  constexpr int N = Pack<T>::N;
  if (vec && j + N <= row) {
    alignas(16) T buf[N];
#pragma unroll
    for (int k = 0; k < N; ++k) buf[k] = from_f32<T>(x[k]);
    store_global16(p + j, *reinterpret_cast<const uint4*>(buf));
  } else {
    for (int k = 0; k < N && j + k < row; ++k) p[j + k] = from_f32<T>(x[k]);
  }
}

__device__ __forceinline__ float load_alpha(const void* alpha, int dtype, int64_t b) {
  switch (dtype) {
    case kFloat16: return __half2float(static_cast<const __half*>(alpha)[b]);
    case kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(alpha)[b]);
    case kFloat64: return static_cast<float>(static_cast<const double*>(alpha)[b]);
    default: return static_cast<const float*>(alpha)[b];
  }
}

template <typename T>
__global__ void interpolate_kernel(const T* __restrict__ real, const T* __restrict__ fake, T* __restrict__ out,
                                   const void* alpha, int alpha_dtype, int64_t row, int64_t chunks, uint64_t seed,
                                   uint64_t offset, const int64_t* seed_ptr, const int64_t* offset_ptr, bool vec) {
  constexpr int N = Pack<T>::N;
  const int64_t b = blockIdx.x / chunks, c = blockIdx.x - b * chunks;
  float a;
  if (alpha) {
    a = load_alpha(alpha, alpha_dtype, b);
  } else {
    if (seed_ptr) seed = static_cast<uint64_t>(*seed_ptr);
    if (offset_ptr) offset = static_cast<uint64_t>(*offset_ptr);
    a = gp_alpha(seed, offset, b);  // every thread draws the same block: 10 rounds, cheaper than a broadcast
  }
  const int64_t j = (c * kThreads + threadIdx.x) * N;
  if (j >= row) return;
  float r[N], f[N], x[N];
  load_pack(real + b * row, j, row, vec, r);
  load_pack(fake + b * row, j, row, vec, f);
#pragma unroll
  for (int k = 0; k < N; ++k) x[k] = a * r[k] + (1.f - a) * f[k];
  store_pack(out + b * row, j, row, vec, x);
}

__device__ __forceinline__ float block_sum(float v, float* shared) {  // fixed order: deterministic
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float t = 0.f;
  if (threadIdx.x == 0)
    for (int w = 0; w < (blockDim.x + 31) / 32; ++w) t += shared[w];
  return t;  // valid in thread 0
}

// One launch: each block sums squares of its (sample, chunk) tile into partials[block]; the last
// block to take a ticket adds each sample's partials in chunk order, writes norms and the penalty
// and resets the ticket counter to zero (the threadFenceReduction pattern of the CUDA samples).
template <typename T>
__global__ void norm_penalty_kernel(const T* __restrict__ grad, float* partials, unsigned int* counter,
                                    float* __restrict__ norms, T* __restrict__ penalty, int64_t batch, int64_t row,
                                    int64_t chunks, int64_t chunk_len, float weight, float center, int mode, bool vec) {
  constexpr int N = Pack<T>::N;
  __shared__ float shared[32];
  __shared__ bool is_last;
  const int64_t b = blockIdx.x / chunks, c = blockIdx.x - b * chunks;
  const int64_t start = c * chunk_len, stop = min(start + chunk_len, row);
  float acc = 0.f;
  for (int64_t j = start + static_cast<int64_t>(threadIdx.x) * N; j < stop; j += static_cast<int64_t>(kThreads) * N) {
    float x[N];
    load_pack(grad + b * row, j, stop, vec, x);
#pragma unroll
    for (int k = 0; k < N; ++k) acc += x[k] * x[k];
  }
  const float partial = block_sum(acc, shared);
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = partial;
    __threadfence();
    const unsigned int ticket = atomicAdd(counter, 1u);
    is_last = ticket == gridDim.x - 1;
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  float total = 0.f;
  for (int64_t s = threadIdx.x; s < batch; s += blockDim.x) {
    float sq = 0.f;
    for (int64_t k = 0; k < chunks; ++k) sq += static_cast<volatile float*>(partials)[s * chunks + k];
    norms[s] = sqrtf(sq);
    total += gp_term(sq, center, mode);
  }
  total = block_sum(total, shared);
  if (threadIdx.x == 0) {
    penalty[0] = from_f32<T>(gp_penalty_scale(weight, mode) * (total / static_cast<float>(batch)));
    *counter = 0u;
  }
}

template <typename T>
__global__ void norm_penalty_backward_kernel(const T* __restrict__ grad_out, const T* __restrict__ grad,
                                             const float* __restrict__ norms, T* __restrict__ out, int64_t row,
                                             int64_t chunks, float weight_over_b, float center, int mode, bool vec) {
  constexpr int N = Pack<T>::N;
  const int64_t b = blockIdx.x / chunks, c = blockIdx.x - b * chunks;
  const int64_t j = (c * kThreads + threadIdx.x) * N;
  if (j >= row) return;
  const float scale = to_f32(grad_out[0]) * weight_over_b * gp_backward_factor(norms[b], center, mode);
  float x[N];
  load_pack(grad + b * row, j, row, vec, x);
#pragma unroll
  for (int k = 0; k < N; ++k) x[k] *= scale;
  store_pack(out + b * row, j, row, vec, x);
}

template <typename T>
bool vectorizable(int64_t row, std::initializer_list<uintptr_t> ptrs) {
  if (row % Pack<T>::N) return false;
  for (uintptr_t p : ptrs)
    if (p % 16) return false;
  return true;
}

int64_t tile_chunks(int64_t row, int n) { return (row + static_cast<int64_t>(kThreads) * n - 1) / (static_cast<int64_t>(kThreads) * n); }

void check_grid(int64_t blocks) {
  check_arg(blocks <= 0x7fffffffLL, "tensor too large for one launch (more than 2^31 - 1 blocks)");
}

template <typename T>
void launch_interpolate(uintptr_t real, uintptr_t fake, uintptr_t out, uintptr_t alpha, int alpha_dtype, int64_t batch,
                        int64_t row, StreamArgs rng, cudaStream_t s) {
  const int64_t chunks = tile_chunks(row, Pack<T>::N);
  check_grid(batch * chunks);
  GF_LAUNCH_KERNEL((interpolate_kernel<T>), static_cast<unsigned>(batch * chunks), kThreads, 0, s)(
      reinterpret_cast<const T*>(real), reinterpret_cast<const T*>(fake), reinterpret_cast<T*>(out),
      reinterpret_cast<const void*>(alpha), alpha_dtype, row, chunks, rng.seed, rng.offset,
      reinterpret_cast<const int64_t*>(rng.seed_ptr), reinterpret_cast<const int64_t*>(rng.offset_ptr),
      vectorizable<T>(row, {real, fake, out}));
  check_launch("gp interpolate_kernel");
}

template <typename T>
void launch_norm_penalty(uintptr_t grad, uintptr_t norms, uintptr_t penalty, uintptr_t partials, int64_t capacity,
                         uintptr_t counter, int64_t batch, int64_t row, float weight, float center, int mode,
                         cudaStream_t s) {
  // ~1024 blocks whatever B and row are (chunks of whole tiles), as the Triton launcher does.
  const int64_t tile = static_cast<int64_t>(kThreads) * Pack<T>::N;
  const int64_t per_sample = batch >= 1024 ? 1 : 1024 / batch;
  const int64_t r = row > 0 ? row : 1;
  const int64_t chunk_len = (((r + per_sample - 1) / per_sample + tile - 1) / tile) * tile;
  const int64_t chunks = (r + chunk_len - 1) / chunk_len;
  check_grid(batch * chunks);
  // partials: batch * chunks <= max(batch, 1024) floats, allocated by the caller (torch's allocator)
  check_arg(batch * chunks <= capacity, "partials: buffer too small (needs max(B, 1024) floats)");
  // The ticket counter is zeroed on the stream before every launch, so each launch owns a fresh count
  // (the caller passes a per-call counter; the last block still resets it, for callers that reuse one).
  cuda_check(cudaMemsetAsync(reinterpret_cast<void*>(counter), 0, sizeof(unsigned int), s), "cudaMemsetAsync (gp ticket counter)");
  GF_LAUNCH_KERNEL((norm_penalty_kernel<T>), static_cast<unsigned>(batch * chunks), kThreads, 0, s)(
      reinterpret_cast<const T*>(grad), reinterpret_cast<float*>(partials), reinterpret_cast<unsigned int*>(counter),
      reinterpret_cast<float*>(norms),
      reinterpret_cast<T*>(penalty), batch, row, chunks, chunk_len, weight, center, mode, vectorizable<T>(row, {grad}));
  check_launch("gp norm_penalty_kernel");
}

template <typename T>
void launch_backward(uintptr_t grad_out, uintptr_t grad, uintptr_t norms, uintptr_t out, int64_t batch, int64_t row,
                     float weight, float center, int mode, cudaStream_t s) {
  const int64_t chunks = tile_chunks(row, Pack<T>::N);
  check_grid(batch * chunks);
  GF_LAUNCH_KERNEL((norm_penalty_backward_kernel<T>), static_cast<unsigned>(batch * chunks), kThreads, 0, s)(
      reinterpret_cast<const T*>(grad_out), reinterpret_cast<const T*>(grad), reinterpret_cast<const float*>(norms),
      reinterpret_cast<T*>(out), row, chunks, weight / static_cast<float>(batch), center, mode,
      vectorizable<T>(row, {grad, out}));
  check_launch("gp norm_penalty_backward_kernel");
}

}  // namespace

void gp_interpolate_cuda(uintptr_t real, uintptr_t fake, uintptr_t out, uintptr_t alpha, int alpha_dtype, int64_t batch,
                         int64_t row, int dtype, StreamArgs rng, uintptr_t stream, int device) {
  gp_check_common(batch, row, dtype, "real");
  if (alpha) check_dtype(alpha_dtype, "alpha");
  if (batch * row == 0) return;
  check_arg(real && fake && out, "real/fake/out: null data pointer");
  DeviceGuard guard(device);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kFloat32: launch_interpolate<float>(real, fake, out, alpha, alpha_dtype, batch, row, rng, s); break;
    case kFloat16: launch_interpolate<__half>(real, fake, out, alpha, alpha_dtype, batch, row, rng, s); break;
    case kBFloat16: launch_interpolate<__nv_bfloat16>(real, fake, out, alpha, alpha_dtype, batch, row, rng, s); break;
  }
}

void gp_norm_penalty_cuda(uintptr_t grad, uintptr_t norms, uintptr_t penalty, uintptr_t partials, int64_t capacity,
                          uintptr_t counter, int64_t batch, int64_t row, int dtype, float weight, float center, int mode,
                          uintptr_t stream, int device) {
  gp_check_common(batch, row, dtype, "grad");
  gp_check_mode(mode);
  if (batch == 0) return;
  check_arg(norms && penalty && counter && partials && (row == 0 || grad), "grad/norms/penalty/partials/counter: null data pointer");
  DeviceGuard guard(device);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kFloat32: launch_norm_penalty<float>(grad, norms, penalty, partials, capacity, counter, batch, row, weight, center, mode, s); break;
    case kFloat16: launch_norm_penalty<__half>(grad, norms, penalty, partials, capacity, counter, batch, row, weight, center, mode, s); break;
    case kBFloat16:
      launch_norm_penalty<__nv_bfloat16>(grad, norms, penalty, partials, capacity, counter, batch, row, weight, center, mode, s);
      break;
  }
}

void gp_norm_penalty_backward_cuda(uintptr_t grad_out, uintptr_t grad, uintptr_t norms, uintptr_t out, int64_t batch,
                                   int64_t row, int dtype, float weight, float center, int mode, uintptr_t stream,
                                   int device) {
  gp_check_common(batch, row, dtype, "grad");
  gp_check_mode(mode);
  if (batch * row == 0) return;
  check_arg(grad_out && grad && norms && out, "grad_out/grad/norms/out: null data pointer");
  DeviceGuard guard(device);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kFloat32: launch_backward<float>(grad_out, grad, norms, out, batch, row, weight, center, mode, s); break;
    case kFloat16: launch_backward<__half>(grad_out, grad, norms, out, batch, row, weight, center, mode, s); break;
    case kBFloat16: launch_backward<__nv_bfloat16>(grad_out, grad, norms, out, batch, row, weight, center, mode, s); break;
  }
}

}  // namespace genfast
