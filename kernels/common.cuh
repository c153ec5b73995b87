// Definitions shared by the C++ (csrc/) and CUDA (kernels/) code: dtype codes, the host/device
// qualifier, and float <-> fp16/bf16 conversions that give the same bits on both sides.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define GF_HD __host__ __device__ __forceinline__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#else
#define GF_HD inline
#endif

namespace genfast {

// Must match genfast/_ext.py DTYPE_CODES.
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

GF_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}
GF_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// Host conversions, round-to-nearest-even like torch's .to(half/bfloat16); NaN stays NaN.
inline uint16_t float_to_bf16_bits(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_bits_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

inline uint16_t float_to_half_bits(float f) {
  uint32_t x = float_bits(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow (after rounding) -> inf
  if (ax < 0x38800000u) {  // subnormal half (or zero): value = m * 2^-24
    if (ax < 0x33000000u) return static_cast<uint16_t>(sign);  // < 2^-25 rounds to zero
    int e = static_cast<int>(ax >> 23);
    uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    int shift = 126 - e;  // bits to drop so that the unit is 2^-24
    uint32_t kept = m >> shift;
    uint32_t rest = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1);
    if (rest > half || (rest == half && (kept & 1u))) kept += 1;
    return static_cast<uint16_t>(sign | kept);
  }
  uint32_t e = (ax >> 23) - 112u;  // rebias 127 -> 15
  uint32_t m = ax & 0x7fffffu;
  uint32_t h = (e << 10) | (m >> 13);
  uint32_t rest = m & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h += 1;  // may carry into the exponent: correct
  return static_cast<uint16_t>(sign | h);
}
inline float half_bits_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return bits_float(sign | 0x7f800000u | (m << 13));
  if (e == 0) {
    if (m == 0) return bits_float(sign);
    float v = static_cast<float>(m) * (1.0f / 16777216.0f);  // m * 2^-24, exact
    return sign ? -v : v;
  }
  return bits_float(sign | ((e + 112u) << 23) | (m << 13));
}

// Typed load/store of one element as fp32, used by the CPU kernels; CUDA code uses the intrinsics.
struct Half { uint16_t bits; };
struct BFloat16 { uint16_t bits; };

template <typename T> struct Convert;
template <> struct Convert<float> {
  static inline float load(const float* p) { return *p; }
  static inline void store(float* p, float v) { *p = v; }
};
template <> struct Convert<double> {
  static inline float load(const double* p) { return static_cast<float>(*p); }
  static inline void store(double* p, float v) { *p = static_cast<double>(v); }
};
template <> struct Convert<Half> {
  static inline float load(const Half* p) { return half_bits_to_float(p->bits); }
  static inline void store(Half* p, float v) { p->bits = float_to_half_bits(v); }
};
template <> struct Convert<BFloat16> {
  static inline float load(const BFloat16* p) { return bf16_bits_to_float(p->bits); }
  static inline void store(BFloat16* p, float v) { p->bits = float_to_bf16_bits(v); }
};

// A run of elements converted to / from fp32 (the CPU kernels' scalar paths; csrc/vec_cpu.inc has the
// vector ones).
template <typename T>
inline void to_float_array(const T* src, float* dst, int64_t len) {
  for (int64_t j = 0; j < len; ++j) dst[j] = Convert<T>::load(src + j);
}
template <typename T>
inline void from_float_array(T* dst, const float* src, int64_t len) {
  for (int64_t j = 0; j < len; ++j) Convert<T>::store(dst + j, src[j]);
}

// Element i of a tensor given by its address and DType code, as fp32 (a CPU kernel's noise tensor, whose
// dtype may differ from the data's).
inline float load_as_float(uintptr_t base, int dtype, int64_t i) {
  switch (dtype) {
    case kFloat32: return reinterpret_cast<const float*>(base)[i];
    case kFloat16: return half_bits_to_float(reinterpret_cast<const uint16_t*>(base)[i]);
    case kBFloat16: return bf16_bits_to_float(reinterpret_cast<const uint16_t*>(base)[i]);
    default: return static_cast<float>(reinterpret_cast<const double*>(base)[i]);
  }
}

}  // namespace genfast
