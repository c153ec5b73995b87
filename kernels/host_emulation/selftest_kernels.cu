// Small kernels that exercise the CUDA execution layer itself (tests/test_cuda_emulation_layer.py):
// correct uses whose results the tests check, and planted bugs that each check of the layer must report.
// Compiled only into genfast._C_emulated, with the same flags as kernels/*.cu.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda_utils.cuh"

namespace genfast {
namespace selftest {
namespace {

// out[i] = linear block index * 1e6 + linear thread index * 1e3 + linear index of the launch (3D grid
// and block): checks threadIdx/blockIdx/blockDim/gridDim.
__global__ void indices_kernel(float* out) {
  const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned nt = blockDim.x * blockDim.y * blockDim.z;
  out[b * nt + t] = static_cast<float>(b) * 1e6f + static_cast<float>(t) * 1e3f + static_cast<float>(b * nt + t);
}

// Block sum through warp shuffles and shared memory, as the op kernels do (correct: barriers in place).
__global__ void block_sum_kernel(const float* in, float* out, int n) {
  __shared__ float warp_sums[32];
  float v = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) v += in[blockIdx.x * n + i];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0.f;
    for (unsigned w = 0; w < (blockDim.x + 31) / 32; ++w) t += warp_sums[w];
    out[blockIdx.x] = t;
  }
}

// The same without the barrier between the warps' writes and thread 0's reads: a shared-memory race.
__global__ void block_sum_race_kernel(const float* in, float* out, int n) {
  __shared__ float warp_sums[32];
  float v = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) v += in[blockIdx.x * n + i];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = v;
  if (threadIdx.x == 0) {
    float t = 0.f;
    for (unsigned w = 0; w < (blockDim.x + 31) / 32; ++w) t += warp_sums[w];
    out[blockIdx.x] = t;
  }
}

// Write-after-read race: every thread reads its neighbour's slot, then overwrites its own, no barrier.
__global__ void neighbour_race_kernel(float* out) {
  __shared__ float s[256];
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  const float left = s[(threadIdx.x + blockDim.x - 1) % blockDim.x];
  s[threadIdx.x] = left * 2.f;
  out[threadIdx.x] = left;
}

// Some threads leave before a barrier the others wait at.
__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x >= 40) return;
  __syncthreads();
  out[threadIdx.x] = 1.f;
}

// Two halves of the block wait at two different __syncthreads.
__global__ void split_barrier_kernel(float* out) {
  if (threadIdx.x & 1) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

// Warp shuffles: an xor butterfly (all lanes end with the warp's sum) and shfl_up/idx with widths.
__global__ void shuffle_kernel(const float* in, float* out) {
  const unsigned t = threadIdx.x;
  float v = in[t];
  float s = v;
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  const float up = __shfl_up_sync(0xffffffffu, v, 3, 16);      // lane - 3 within segments of 16
  const float idx = __shfl_sync(0xffffffffu, v, 5, 8);         // lane 5 of each segment of 8
  const unsigned ballot = __ballot_sync(0xffffffffu, v > 0.f);
  out[4 * t + 0] = s;
  out[4 * t + 1] = up;
  out[4 * t + 2] = idx;
  out[4 * t + 3] = static_cast<float>(__popc(ballot));
}

// Lanes 0-15 shuffle with mask 0xffff, but lanes 8-15 read lanes 16-23, which are not in the mask.
__global__ void shuffle_inactive_source_kernel(const float* in, float* out) {
  const unsigned t = threadIdx.x;
  float v = in[t];
  if ((t & 31) < 16) v = __shfl_down_sync(0x0000ffffu, v, 8);
  out[t] = v;
}

// The mask names all 32 lanes, but lanes 16-31 have exited.
__global__ void shuffle_exited_lane_kernel(const float* in, float* out) {
  const unsigned t = threadIdx.x;
  if ((t & 31) >= 16) return;
  out[t] = __shfl_xor_sync(0xffffffffu, in[t], 1);
}

// 16-byte vector accesses at an offset given by the caller (0: aligned, 1: misaligned by 4 bytes).
__global__ void vector_copy_kernel(const float* in, float* out, int offset) {
  const int i = 4 * static_cast<int>(threadIdx.x) + offset;
  store_global16(out + i, load_global16(in + i));
}

// Thread t copies in[t]: launched with one thread more than the caller's buffer holds, the last one reads
// past its end (what AddressSanitizer, in the sanitizer build, must report).
__global__ void copy_kernel(const float* in, float* out) { out[threadIdx.x] = in[threadIdx.x]; }

// Each block's thread 0 takes a ticket: out[ticket] = block index, i.e. the order blocks ran in.
__global__ void block_order_kernel(float* out, unsigned* counter) {
  if (threadIdx.x == 0) out[atomicAdd(counter, 1u)] = static_cast<float>(blockIdx.x);
}

}  // namespace

// Runs one case; pointers are host addresses of float32 buffers the test sized.
void run_case(const std::string& name, uintptr_t in_ptr, uintptr_t out_ptr, int n, uintptr_t aux) {
  auto* in = reinterpret_cast<const float*>(in_ptr);
  auto* out = reinterpret_cast<float*>(out_ptr);
  cudaStream_t s = nullptr;
  if (name == "indices") {
    GF_LAUNCH_KERNEL((indices_kernel), dim3(3, 2, 2), dim3(4, 3, 2), 0, s)(out);
  } else if (name == "block_sum") {
    GF_LAUNCH_KERNEL((block_sum_kernel), 3, 96, 0, s)(in, out, n);
  } else if (name == "block_sum_race") {
    GF_LAUNCH_KERNEL((block_sum_race_kernel), 3, 96, 0, s)(in, out, n);
  } else if (name == "neighbour_race") {
    GF_LAUNCH_KERNEL((neighbour_race_kernel), 1, 64, 0, s)(out);
  } else if (name == "divergent_barrier") {
    GF_LAUNCH_KERNEL((divergent_barrier_kernel), 1, 64, 0, s)(out);
  } else if (name == "split_barrier") {
    GF_LAUNCH_KERNEL((split_barrier_kernel), 1, 64, 0, s)(out);
  } else if (name == "shuffle") {
    GF_LAUNCH_KERNEL((shuffle_kernel), 1, 64, 0, s)(in, out);
  } else if (name == "shuffle_inactive_source") {
    GF_LAUNCH_KERNEL((shuffle_inactive_source_kernel), 1, 32, 0, s)(in, out);
  } else if (name == "shuffle_exited_lane") {
    GF_LAUNCH_KERNEL((shuffle_exited_lane_kernel), 1, 32, 0, s)(in, out);
  } else if (name == "vector_copy") {
    GF_LAUNCH_KERNEL((vector_copy_kernel), 1, 8, 0, s)(in, out, n);
  } else if (name == "copy") {
    GF_LAUNCH_KERNEL((copy_kernel), 1, static_cast<unsigned>(n), 0, s)(in, out);
  } else if (name == "block_order") {
    GF_LAUNCH_KERNEL((block_order_kernel), static_cast<unsigned>(n), 32, 0, s)(out, reinterpret_cast<unsigned*>(aux));
  } else if (name == "too_many_threads") {
    GF_LAUNCH_KERNEL((divergent_barrier_kernel), 1, 2048, 0, s)(out);
  } else {
    throw std::invalid_argument("genfast._C_emulated._selftest: unknown case " + name);
  }
  check_launch(name.c_str());
}

}  // namespace selftest
}  // namespace genfast
