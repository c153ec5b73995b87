// The CUDA execution layer for the host compiler: with it, kernels/*.cu compile as C++ (g++/clang++) and
// run on CPU memory, so the CUDA source itself executes where there is no GPU (genfast._C_emulated).
//
// What it provides, and how it differs from a GPU:
// - threadIdx/blockIdx/blockDim/gridDim, dim3, uint4 (the toolkit's vector_types.h), __half/__nv_bfloat16
//   (the toolkit's cuda_fp16.h / cuda_bf16.h, whose host paths give the device's rounding).
// - The threads of a block are cooperative fibers (emulator.cpp): __syncthreads is a real barrier, warp
//   collectives (__shfl_*_sync, __ballot_sync, __syncwarp) exchange values between the lanes of a mask.
//   Blocks run one after another, in an order that set_block_order_seed shuffles.
// - Checks a GPU only makes under compute-sanitizer, raised as a KernelFault exception from the launch
//   (never an abort, never a hang): a barrier not reached by every thread of the block (synccheck), a
//   warp collective whose mask names a lane that is absent, exited, or elsewhere, or whose source lane
//   is not in the mask, conflicting shared-memory accesses of two threads between the same two barriers
//   (racecheck; via the compiler's ThreadSanitizer instrumentation hooks, see emulator.cpp), and 16-byte
//   vector accesses at an address that is not 16-byte aligned (the helpers in kernels/cuda_utils.cuh).
//   Global-memory bounds are AddressSanitizer's job (the sanitizer build of this module).
// - Streams are accepted and ignored: a launch runs to completion before it returns.
// - __shared__ variables are static storage (blocks run one at a time; launches hold a process-wide lock).
//   Dynamic shared memory (extern __shared__) is not provided: no kernel uses it, and a launch asking
//   for it fails with cudaErrorInvalidConfiguration.
//
// This header is force-included (-include) before every kernels/*.cu of the emulated module; the
// include/ folder beside it shadows <cuda_runtime.h>. Kernel bodies need no #ifdef of their own.
#pragma once
#if defined(__CUDACC__)
#error "cuda_emulation.h is for the host compiler; nvcc compiles kernels/*.cu natively"
#endif

#include <cuda_runtime_api.h>  // the toolkit's types and declarations (cudaError_t, cudaStream_t, ...)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// Execution-space qualifiers: host code is all there is.
#undef __shared__
#define __shared__ static
#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __global__
#define __global__
#undef __device__
#define __device__
#undef __host__
#define __host__

namespace gf_emu {

// The state of the running thread (fiber) and block, read by the index built-ins below. Only valid
// inside a kernel.
struct ThreadState {
  uint3 thread_idx;
  int linear;  // thread index in the block
};
extern ThreadState* g_thread;  // current fiber
extern uint3 g_block_idx;
extern dim3 g_block_dim, g_grid_dim;

// Entry points of the emulator (emulator.cpp). Kernel-side calls switch fibers; faults never return.
void syncthreads(const char* file, int line);
void syncwarp_at(const char* file, int line, unsigned mask = 0xffffffffu);
enum ShuffleKind : int { kShflIdx = 0, kShflUp = 1, kShflDown = 2, kShflXor = 3, kBallot = 4, kAny = 5, kAll = 6 };
uint64_t warp_collective(int kind, unsigned mask, uint64_t value, int param, int width, const char* what);
void check_vector_access(const void* p, int bytes, const char* what);
[[noreturn]] void fault(const char* what);
void threadfence();

// Atomics: one fiber runs at a time, so a read-modify-write is atomic; they are out of line (in the
// uninstrumented emulator.cpp) so that the race check does not report them.
unsigned atomic_add_u32(unsigned* p, unsigned v);
int atomic_add_i32(int* p, int v);
unsigned long long atomic_add_u64(unsigned long long* p, unsigned long long v);
float atomic_add_f32(float* p, float v);
double atomic_add_f64(double* p, double v);
unsigned atomic_cas_u32(unsigned* p, unsigned compare, unsigned v);
unsigned atomic_exch_u32(unsigned* p, unsigned v);
int atomic_max_i32(int* p, int v);
int atomic_min_i32(int* p, int v);

// Runs `body(ctx)` as one CUDA launch of grid x block threads. Throws KernelFault on a check's failure;
// sets the last error (cudaErrorInvalidConfiguration) for an invalid configuration, as CUDA does.
void run_launch(const char* name, dim3 grid, dim3 block, size_t dynamic_smem, void (*body)(void*), void* ctx);

template <typename... P>
struct Launcher {
  const char* name;
  void (*kernel)(P...);
  dim3 grid, block;
  size_t smem;
  template <typename... A>
  void operator()(A&&... args) const {
    // The arguments become the kernel's parameter types once, as in a real launch; every thread then
    // gets its own by-value copy (kernels may modify their parameters).
    struct Ctx {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...> params;
    } ctx{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
    run_launch(name, grid, block, smem,
               [](void* c) {
                 auto* k = static_cast<Ctx*>(c);
                 std::apply([k](auto... copies) { k->kernel(copies...); }, k->params);
               },
               &ctx);
  }
};

template <typename... P>
Launcher<P...> make_launcher(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem,
                             cudaStream_t /*stream: launches are synchronous*/) {
  return Launcher<P...>{name, kernel, grid, block, smem};
}

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8, "warp collectives move at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

// Runtime API (the toolkit's declarations are left alone; these names are what the kernels call).
cudaError_t get_last_error();
cudaError_t peek_at_last_error();
const char* get_error_string(cudaError_t e);
cudaError_t get_device(int* d);
cudaError_t set_device(int d);
cudaError_t get_device_count(int* n);
cudaError_t device_get_attribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t runtime_get_version(int* v);
cudaError_t memset_async(void* p, int value, size_t bytes, cudaStream_t stream);
cudaError_t stream_synchronize(cudaStream_t stream);
cudaError_t device_synchronize();

}  // namespace gf_emu

#define threadIdx (::gf_emu::g_thread->thread_idx)
#define blockIdx (::gf_emu::g_block_idx)
#define blockDim (::gf_emu::g_block_dim)
#define gridDim (::gf_emu::g_grid_dim)
#define warpSize 32

#define __syncthreads() ::gf_emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::gf_emu::syncwarp_at(__FILE__, __LINE__, ##__VA_ARGS__)
#define __threadfence() ::gf_emu::threadfence()
#define __threadfence_block() ::gf_emu::threadfence()

#define cudaGetLastError ::gf_emu::get_last_error
#define cudaPeekAtLastError ::gf_emu::peek_at_last_error
#define cudaGetErrorString ::gf_emu::get_error_string
#define cudaGetDevice ::gf_emu::get_device
#define cudaSetDevice ::gf_emu::set_device
#define cudaGetDeviceCount ::gf_emu::get_device_count
#define cudaDeviceGetAttribute ::gf_emu::device_get_attribute
#define cudaRuntimeGetVersion ::gf_emu::runtime_get_version
#define cudaMemsetAsync ::gf_emu::memset_async
#define cudaStreamSynchronize ::gf_emu::stream_synchronize
#define cudaDeviceSynchronize ::gf_emu::device_synchronize

// The launch: `GF_LAUNCH_KERNEL((kernel<T>), grid, block, smem, stream)(args...)` (kernels/cuda_utils.cuh)
// expands here to a call of the emulator, under nvcc to kernel<T><<<grid, block, smem, stream>>>(args...).
#define GF_EMU_UNPAREN(...) __VA_ARGS__
#define GF_EMU_LAUNCH(kernel, grid, block, smem, stream) \
  ::gf_emu::make_launcher(#kernel, GF_EMU_UNPAREN kernel, grid, block, smem, stream)

// Device functions the kernels use that the host's <cmath> lacks.
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
template <typename T>
inline void __stcg(T* p, T v) {
  *p = v;
}
template <typename T>
inline void __stcs(T* p, T v) {
  *p = v;
}

template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(b) < static_cast<C>(a) ? static_cast<C>(b) : static_cast<C>(a);
}
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }

// Warp collectives with CUDA's signatures. `width` splits the warp into segments as on the device.
template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  return gf_emu::from_bits<T>(gf_emu::warp_collective(gf_emu::kShflIdx, mask, gf_emu::to_bits(var), src_lane, width, "__shfl_sync"));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return gf_emu::from_bits<T>(gf_emu::warp_collective(gf_emu::kShflUp, mask, gf_emu::to_bits(var), static_cast<int>(delta), width, "__shfl_up_sync"));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return gf_emu::from_bits<T>(gf_emu::warp_collective(gf_emu::kShflDown, mask, gf_emu::to_bits(var), static_cast<int>(delta), width, "__shfl_down_sync"));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  return gf_emu::from_bits<T>(gf_emu::warp_collective(gf_emu::kShflXor, mask, gf_emu::to_bits(var), lane_mask, width, "__shfl_xor_sync"));
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return static_cast<unsigned>(gf_emu::warp_collective(gf_emu::kBallot, mask, pred != 0, 0, 32, "__ballot_sync"));
}
inline int __any_sync(unsigned mask, int pred) {
  return static_cast<int>(gf_emu::warp_collective(gf_emu::kAny, mask, pred != 0, 0, 32, "__any_sync"));
}
inline int __all_sync(unsigned mask, int pred) {
  return static_cast<int>(gf_emu::warp_collective(gf_emu::kAll, mask, pred != 0, 0, 32, "__all_sync"));
}

inline unsigned atomicAdd(unsigned* p, unsigned v) { return gf_emu::atomic_add_u32(p, v); }
inline int atomicAdd(int* p, int v) { return gf_emu::atomic_add_i32(p, v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return gf_emu::atomic_add_u64(p, v); }
inline float atomicAdd(float* p, float v) { return gf_emu::atomic_add_f32(p, v); }
inline double atomicAdd(double* p, double v) { return gf_emu::atomic_add_f64(p, v); }
inline unsigned atomicCAS(unsigned* p, unsigned compare, unsigned v) { return gf_emu::atomic_cas_u32(p, compare, v); }
inline unsigned atomicExch(unsigned* p, unsigned v) { return gf_emu::atomic_exch_u32(p, v); }
inline int atomicMax(int* p, int v) { return gf_emu::atomic_max_i32(p, v); }
inline int atomicMin(int* p, int v) { return gf_emu::atomic_min_i32(p, v); }
