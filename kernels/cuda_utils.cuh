// Launch helpers shared by the CUDA kernels: error checks that throw (never abort), the device
// guard, a grid size for grid-stride loops, the launch macro and the 16-byte global access helpers.
// The same source compiles with nvcc and, for genfast._C_emulated, with the host compiler against
// kernels/host_emulation/ (which shadows <cuda_runtime.h>); the two differ only in the macros below.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common.cuh"

#include <stdexcept>
#include <string>

namespace genfast {

inline void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    // A failed runtime call also becomes the thread's last error: clear it, or the next launch's
    // check_launch would report this failure again (found by the emulated tests).
    cudaGetLastError();
    throw std::runtime_error(std::string("genfast CUDA error in ") + what + ": " + cudaGetErrorString(err));
  }
}

// Makes `device` current for this thread while a launcher runs.
struct DeviceGuard {
  int previous = -1;
  explicit DeviceGuard(int device) {
    cuda_check(cudaGetDevice(&previous), "cudaGetDevice");
    if (previous != device) cuda_check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous && previous >= 0) cudaSetDevice(previous);
  }
};

// Enough blocks to fill the device (a few waves), never more than the work needs.
inline unsigned grid_for(int64_t work_items, int threads, int device) {
  static int sm_count[64] = {0};
  int& sms = sm_count[device & 63];
  if (sms == 0) cuda_check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  int64_t needed = (work_items + threads - 1) / threads;
  int64_t cap = static_cast<int64_t>(sms) * 16;
  int64_t g = needed < cap ? needed : cap;
  return static_cast<unsigned>(g < 1 ? 1 : g);
}

inline void check_launch(const char* kernel) { cuda_check(cudaGetLastError(), kernel); }

// Every launcher launches through this: GF_LAUNCH_KERNEL((kernel<T>), grid, block, smem, stream)(args...).
// The kernel is parenthesized so that template arguments may contain commas.
#if defined(GENFAST_CUDA_EMULATION)
#define GF_LAUNCH_KERNEL(kernel, grid, block, smem, stream) GF_EMU_LAUNCH(kernel, grid, block, smem, stream)
#define GF_CHECK_VECTOR_ACCESS(ptr, what) ::gf_emu::check_vector_access(ptr, 16, what)
#else
#define GF_UNPAREN(...) __VA_ARGS__
#define GF_LAUNCH_KERNEL(kernel, grid, block, smem, stream) GF_UNPAREN kernel<<<grid, block, smem, stream>>>
#define GF_CHECK_VECTOR_ACCESS(ptr, what) ((void)0)
#endif

// 16-byte global accesses. The pointer must be 16-byte aligned (a misaligned vector access faults on a
// GPU); the emulation layer checks it on every call. Both go through intrinsics (ld.global.nc.v4,
// st.global.cg.v4) rather than plain dereferences: the optimizer may split a plain 16-byte store into
// four when a scalar tail path next to it stores the same addresses (it did, in the gradient-penalty
// kernels); an intrinsic stays one 128-bit access. .cg caches the store in L2 only, as a plain store does.
__device__ __forceinline__ uint4 load_global16(const void* p) {
  GF_CHECK_VECTOR_ACCESS(p, "load");
  return __ldg(reinterpret_cast<const uint4*>(p));
}
__device__ __forceinline__ void store_global16(void* p, uint4 v) {
  GF_CHECK_VECTOR_ACCESS(p, "store");
  __stcg(reinterpret_cast<uint4*>(p), v);
}

// fp32 <-> storage type conversions of the CUDA kernels (round to nearest even, like torch's .to()).
template <typename T> __device__ __forceinline__ float to_f32(T v);
template <> __device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f32<double>(double v) { return static_cast<float>(v); }
template <> __device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_f32<double>(float v) { return static_cast<double>(v); }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Element i of a tensor given by its address and DType code (common.cuh), as fp32: a noise tensor whose
// dtype may differ from the data's.
__device__ __forceinline__ float load_any(uintptr_t base, int dtype, int64_t i) {
  switch (dtype) {
    case kFloat32: return reinterpret_cast<const float*>(base)[i];
    case kFloat16: return __half2float(reinterpret_cast<const __half*>(base)[i]);
    case kBFloat16: return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(base)[i]);
    default: return static_cast<float>(reinterpret_cast<const double*>(base)[i]);
  }
}

// kG elements at ptr + i as fp32: kG * sizeof(T) / 16 16-byte loads when `vec` (ptr + i 16-byte aligned,
// all kG valid), else one element at a time (n_valid of them, the rest 0).
template <typename T, int kG>
__device__ __forceinline__ void load_group(const T* __restrict__ ptr, int64_t i, int64_t n_valid, bool vec, float* dst) {
  static_assert(kG * sizeof(T) % 16 == 0, "a group is a whole number of 16-byte words");
  if (vec) {
    alignas(16) T buf[kG];
#pragma unroll
    for (int k = 0; k < kG * static_cast<int>(sizeof(T)) / 16; ++k)
      reinterpret_cast<uint4*>(buf)[k] = load_global16(reinterpret_cast<const uint4*>(ptr + i) + k);
#pragma unroll
    for (int k = 0; k < kG; ++k) dst[k] = to_f32<T>(buf[k]);
  } else {
#pragma unroll
    for (int k = 0; k < kG; ++k) dst[k] = k < n_valid ? to_f32<T>(ptr[i + k]) : 0.0f;
  }
}

// ptr[i + k] = scale * src[k] for the group (16-byte stores when `vec`, else the n_valid first); a scale
// of 1 is exact (and folded away).
template <typename T, int kG>
__device__ __forceinline__ void store_group(T* __restrict__ ptr, int64_t i, int64_t n_valid, bool vec, const float* src,
                                            float scale = 1.0f) {
  if (vec) {
    alignas(16) T buf[kG];
#pragma unroll
    for (int k = 0; k < kG; ++k) buf[k] = from_f32<T>(scale * src[k]);
#pragma unroll
    for (int k = 0; k < kG * static_cast<int>(sizeof(T)) / 16; ++k)
      store_global16(reinterpret_cast<uint4*>(ptr + i) + k, reinterpret_cast<const uint4*>(buf)[k]);
  } else {
#pragma unroll
    for (int k = 0; k < kG; ++k)
      if (k < n_valid) ptr[i + k] = from_f32<T>(scale * src[k]);
  }
}

}  // namespace genfast
