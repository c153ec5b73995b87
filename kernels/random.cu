// CUDA kernel of genfast.ops.rand / randn. One Philox4x32-10 call gives four consecutive elements;
// each thread writes 16 bytes per step (one counter for fp32, two for fp16/bf16), grid-stride,
// int64 indices.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_utils.cuh"
#include "random.h"
#include "philox.cuh"

namespace genfast {
namespace {


template <typename T, int kCounters>  // counters per thread step: 4 * kCounters * sizeof(T) >= 16 bytes
__global__ void random_fill_kernel(T* __restrict__ out, int64_t n, uint64_t seed, uint64_t offset,
                                   const int64_t* seed_ptr, const int64_t* offset_ptr, bool normal, bool aligned) {
  if (seed_ptr) seed = static_cast<uint64_t>(*seed_ptr);
  if (offset_ptr) offset = static_cast<uint64_t>(*offset_ptr);
  constexpr int kElems = 4 * kCounters;
  const int64_t n_groups = (n + kElems - 1) / kElems;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < n_groups; g += stride) {
    alignas(16) T vals[kElems];
#pragma unroll
    for (int c = 0; c < kCounters; ++c) {
      const U32x4 r = philox_block(seed, offset, static_cast<uint64_t>(g * kCounters + c));
      const F32x4 v = normal ? normal4(r) : uniform4(r);
      vals[4 * c + 0] = from_f32<T>(v.x);
      vals[4 * c + 1] = from_f32<T>(v.y);
      vals[4 * c + 2] = from_f32<T>(v.z);
      vals[4 * c + 3] = from_f32<T>(v.w);
    }
    const int64_t base = g * kElems;
    if (aligned && base + kElems <= n) {
      constexpr int kVec = kElems * sizeof(T) / 16;
#pragma unroll
      for (int k = 0; k < kVec; ++k)
        store_global16(reinterpret_cast<uint4*>(out + base) + k, reinterpret_cast<const uint4*>(vals)[k]);
    } else {
      for (int k = 0; k < kElems && base + k < n; ++k) out[base + k] = vals[k];
    }
  }
}

template <typename T, int kCounters>
void launch(uintptr_t out, int64_t n, StreamArgs rng, bool normal, cudaStream_t stream, int device) {
  constexpr int kThreads = 256;
  const int64_t groups = (n + 4 * kCounters - 1) / (4 * kCounters);
  const bool aligned = (out % 16) == 0;
  GF_LAUNCH_KERNEL((random_fill_kernel<T, kCounters>), grid_for(groups, kThreads, device), kThreads, 0, stream)(
      reinterpret_cast<T*>(out), n, rng.seed, rng.offset, reinterpret_cast<const int64_t*>(rng.seed_ptr),
      reinterpret_cast<const int64_t*>(rng.offset_ptr), normal, aligned);
  check_launch("random_fill_kernel");
}

}  // namespace

void random_fill_cuda(uintptr_t out, int64_t n, int dtype, StreamArgs rng, bool normal, uintptr_t stream, int device) {
  check_numel(n, out, "out");
  check_dtype(dtype, "out");
  if (n == 0) return;
  DeviceGuard guard(device);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kFloat32: launch<float, 1>(out, n, rng, normal, s, device); break;
    case kFloat16: launch<__half, 2>(out, n, rng, normal, s, device); break;
    case kBFloat16: launch<__nv_bfloat16, 2>(out, n, rng, normal, s, device); break;
    case kFloat64: launch<double, 1>(out, n, rng, normal, s, device); break;
  }
}

}  // namespace genfast
