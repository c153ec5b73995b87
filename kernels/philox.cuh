// genfast's random stream (design.md): Philox4x32-10 with key = (lo32(seed), hi32(seed)) and
// counter = (lo32(q), hi32(q), lo32(offset), hi32(offset)), q = element index / 4.
// The same code runs on the host (CPU backend) and the device (CUDA backend), so both draw the
// same bits; the Triton and reference backends implement the identical recipe.
#pragma once
#include <cmath>
#include <cstdint>

#include "common.cuh"

namespace genfast {

struct U32x4 {
  uint32_t x, y, z, w;
};

GF_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  lo = a * b;
  hi = __umulhi(a, b);
#else
  uint64_t p = static_cast<uint64_t>(a) * b;
  lo = static_cast<uint32_t>(p);
  hi = static_cast<uint32_t>(p >> 32);
#endif
}

GF_HD U32x4 philox4x32_10(U32x4 c, uint32_t k0, uint32_t k1) {
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(0xD2511F53u, c.x, hi0, lo0);
    mulhilo32(0xCD9E8D57u, c.z, hi1, lo1);
    c = U32x4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c;
}

// The four words of counter q of stream (seed, offset).
GF_HD U32x4 philox_block(uint64_t seed, uint64_t offset, uint64_t q) {
  U32x4 c{static_cast<uint32_t>(q), static_cast<uint32_t>(q >> 32), static_cast<uint32_t>(offset),
          static_cast<uint32_t>(offset >> 32)};
  return philox4x32_10(c, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// ((r >> 9) + 0.5) * 2^-23: in (0, 1), exact in fp32, so identical on every backend.
GF_HD float word_to_uniform(uint32_t r) {
  return (static_cast<float>(r >> 9) + 0.5f) * 1.1920928955078125e-07f;
}

struct F32x4 {
  float x, y, z, w;
};

GF_HD F32x4 uniform4(U32x4 r) {
  return F32x4{word_to_uniform(r.x), word_to_uniform(r.y), word_to_uniform(r.z), word_to_uniform(r.w)};
}

// Box-Muller on (u0, u1) -> (n0, n1) and (u2, u3) -> (n2, n3).
GF_HD void box_muller(float u0, float u1, float& n0, float& n1) {
  float radius = sqrtf(-2.0f * logf(u0));
  // The angle is the fp32 product fl(2*pi) * u1 on every backend, so they agree to a few ulps.
  const float angle = 6.28318548202514648438f * u1;
  float s, c;
#if defined(__CUDA_ARCH__)
  sincosf(angle, &s, &c);
#else
  s = std::sin(angle);
  c = std::cos(angle);
#endif
  n0 = radius * c;
  n1 = radius * s;
}

GF_HD F32x4 normal4(U32x4 r) {
  F32x4 u = uniform4(r), n;
  box_muller(u.x, u.y, n.x, n.y);
  box_muller(u.z, u.w, n.z, n.w);
  return n;
}

GF_HD float component(const F32x4& v, int k) { return k == 0 ? v.x : k == 1 ? v.y : k == 2 ? v.z : v.w; }

}  // namespace genfast
