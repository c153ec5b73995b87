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

// sin and cos of the Box-Muller angle a = fl(fl(2 pi) * u), u in (0, 1]: a in [0, 2 pi]. Not sincosf: for
// a bounded angle a short exact reduction suffices, while sincosf carries a general one (Payne-Hanek for
// huge arguments) that on the GPU costs a stack frame, local-memory traffic and registers in every
// kernel that draws normals. Quadrant k = rint(a * 2/pi) in 0..4; r = a - k pi/2 with pi/2 split in three
// floats (k C1 - a is exact in the FMA: k has 3 bits); Taylor polynomials on |r| <= pi/4 (truncation
// below 2^-28 relative): within 2 ulps of sin/cos of the same fp32 angle.
GF_HD void sincos_box_muller(float a, float& s, float& c) {
  const float k = rintf(a * 0.636619746685028076171875f);
  float r = fmaf(-k, 1.57079637050628662109375f, a);
  r = fmaf(-k, -4.37113882867379300296306610107421875e-08f, r);
  r = fmaf(-k, -1.71512451000588189e-15f, r);
  const float r2 = r * r;
  const float sp = r + r * r2 * (-1.0f / 6.0f + r2 * (1.0f / 120.0f + r2 * (-1.0f / 5040.0f + r2 * (1.0f / 362880.0f))));
  const float cp = 1.0f + r2 * (-0.5f + r2 * (1.0f / 24.0f + r2 * (-1.0f / 720.0f + r2 * (1.0f / 40320.0f + r2 * (-1.0f / 3628800.0f)))));
  const int q = static_cast<int>(k) & 3;
  s = (q & 1) ? cp : sp;
  c = (q & 1) ? sp : cp;
  if (q == 1 || q == 2) c = -c;
  if (q >= 2) s = -s;
}

// Box-Muller on (u0, u1) -> (n0, n1) and (u2, u3) -> (n2, n3).
GF_HD void box_muller(float u0, float u1, float& n0, float& n1) {
  const float t = -2.0f * logf(u0);  // > 0: u0 < 1 always
#if defined(__CUDA_ARCH__)
  const float radius = t * rsqrtf(t);  // within 2 ulps of sqrtf, without its range check and slow path
#else
  const float radius = sqrtf(t);
#endif
  // The angle is the fp32 product fl(2*pi) * u1 on every backend, so they agree to a few ulps.
  const float angle = 6.28318548202514648438f * u1;
  float s, c;
  sincos_box_muller(angle, s, c);
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
