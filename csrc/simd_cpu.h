// Infrastructure of the CPU kernels (csrc/*_cpu.cpp): the instruction-set level picked at run time, the
// threading and streaming-store policies, and the fixed summation order every CPU reduction uses.
//
// Runtime dispatch: each kernel file compiles its element loops three times, inside
// `#pragma GCC target` regions (GF_ISA_REGION_BEGIN_*), into the namespaces isa_base (x86-64 / SSE2 or
// any other architecture), isa_avx2 (x86-64-v3: AVX2, FMA, F16C) and isa_avx512 (x86-64-v4), and calls
// the one isa_level() names. Only code defined inside a region gets its instruction set, so headers
// included before it (the standard library, kernels/*.cuh) stay baseline code and a build made here runs
// on a machine without AVX-512. No FMA contraction (-ffp-contract=off in CMakeLists.txt): the results
// are bit-identical across the three levels and to the scalar formulas of kernels/*.cuh.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(__x86_64__) || defined(__SSE2__)
// GCC 12 warns that the intrinsics' own "undefined" vectors are used uninitialized (a false positive)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define GF_X86_DISPATCH 1
#define GF_ISA_REGION_BEGIN_AVX2 \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,f16c,bmi,bmi2,lzcnt,movbe,popcnt\")")
#define GF_ISA_REGION_BEGIN_AVX512                                                                  \
  _Pragma("GCC push_options")                                                                       \
      _Pragma("GCC target(\"avx2,fma,f16c,bmi,bmi2,lzcnt,movbe,popcnt,avx512f,avx512bw,avx512cd,avx512dq,avx512vl\")")
#define GF_ISA_REGION_END _Pragma("GCC pop_options")
#endif

#define GF_AI __attribute__((always_inline)) inline

namespace genfast {
namespace cpu {

enum IsaLevel : int { kIsaBase = 0, kIsaAvx2 = 1, kIsaAvx512 = 2 };

inline const char* isa_name(int level) {
  return level == kIsaAvx512 ? "avx512" : level == kIsaAvx2 ? "avx2" : "base";
}

// The highest level this CPU (and its OS) supports, lowered by GENFAST_CPU_ISA=base|avx2|avx512 (for
// tests and comparisons; a level above the CPU's is ignored). Decided once per process.
inline int isa_level() {
  static const int level = [] {
    int hw = kIsaBase;
#if defined(GF_X86_DISPATCH)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v3")) hw = kIsaAvx2;
    if (hw == kIsaAvx2 && __builtin_cpu_supports("x86-64-v4")) hw = kIsaAvx512;
#endif
    const char* env = std::getenv("GENFAST_CPU_ISA");
    if (env != nullptr) {
      int want = hw;
      if (std::strcmp(env, "base") == 0) want = kIsaBase;
      else if (std::strcmp(env, "avx2") == 0) want = kIsaAvx2;
      else if (std::strcmp(env, "avx512") == 0) want = kIsaAvx512;
      hw = std::min(hw, want);
    }
    return hw;
  }();
  return level;
}

// Bytes of the last-level cache (Linux sysfs; 32 MiB when it cannot be read).
inline int64_t llc_bytes() {
  static const int64_t bytes = [] {
    int64_t best = 0;
    for (int index = 0; index < 8; ++index) {
      char path[96];
      std::snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", index);
      std::FILE* f = std::fopen(path, "r");
      if (f == nullptr) break;
      long long value = 0;
      char unit = 0;
      if (std::fscanf(f, "%lld%c", &value, &unit) >= 1) {
        int64_t b = value;
        if (unit == 'K') b <<= 10;
        else if (unit == 'M') b <<= 20;
        best = std::max(best, b);
      }
      std::fclose(f);
    }
    return best > 0 ? best : int64_t(32) << 20;
  }();
  return bytes;
}

// Streaming (non-temporal) stores for outputs of a call whose bytes read and written exceed the
// last-level cache: the output is evicted before anything reads it again, so skipping the read for
// ownership saves a third of a copy's traffic. Smaller calls keep their output in cache for the next op.
// GENFAST_CPU_STREAMING=0 / 1 turns them off / on whatever the size (tests of both paths, A/B timings); read
// at each call (a getenv), so a process can switch.
inline bool use_streaming_stores(int64_t footprint_bytes) {
  const char* env = std::getenv("GENFAST_CPU_STREAMING");
  if (env != nullptr && (env[0] == '0' || env[0] == '1') && env[1] == 0) return env[0] == '1';
  return footprint_bytes > llc_bytes();
}

inline int max_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();  // torch.set_num_threads sets it (one OpenMP runtime in the process)
#else
  return 1;
#endif
}

// Threads for `work` units of which one thread should get at least `min_per_thread`: a small call
// runs on the calling thread alone (waking the pool costs more than it saves), a large one on all.
inline int threads_for(int64_t work, int64_t min_per_thread) {
  const int64_t by_work = work / std::max<int64_t>(min_per_thread, 1);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(max_threads(), by_work)));
}

// [begin, end) of part `k` of `parts` of [0, n), boundaries on multiples of `align`.
inline void split_range(int64_t n, int parts, int k, int64_t align, int64_t& begin, int64_t& end) {
  const int64_t units = (n + align - 1) / align;
  const int64_t lo = units * k / parts, hi = units * (k + 1) / parts;
  begin = std::min(n, lo * align);
  end = std::min(n, hi * align);
}

// Pieces handed out per thread of a parallel call. Threads take pieces in order from a shared counter
// instead of one fixed share each: on a busy machine a thread that the OS leaves waiting does not hold
// up the call (the others take its pieces); on an idle one the extra hand-outs cost ~100 ns each.
constexpr int kPiecesPerThread = 4;

// fn(begin, end) on contiguous pieces of [0, n) (boundaries on multiples of 64 elements, so that every
// piece starts on a cache line and a Philox counter), on as many threads as threads_for allows: all of
// [0, n) on the calling thread when n < 2 * min_per_thread. Pieces are disjoint and cover [0, n).
template <class Fn>
void parallel_ranges(int64_t n, int64_t min_per_thread, Fn&& fn) {
  const int threads = threads_for(n, min_per_thread);
  if (threads <= 1) {
    if (n > 0) fn(int64_t(0), n);
    return;
  }
#if defined(_OPENMP)
  const int pieces = threads * kPiecesPerThread;
  std::atomic<int> next{0};
#pragma omp parallel num_threads(threads)
  {
    for (int k = next.fetch_add(1, std::memory_order_relaxed); k < pieces;
         k = next.fetch_add(1, std::memory_order_relaxed)) {
      int64_t begin, end;
      split_range(n, pieces, k, 64, begin, end);
      if (begin < end) fn(begin, end);
    }
  }
#endif
}

// fn(first, last) on contiguous pieces of the task indices [0, tasks) on up to `threads` threads, handed
// out as in parallel_ranges.
template <class Fn>
void parallel_tasks(int64_t tasks, int threads, Fn&& fn) {
  threads = static_cast<int>(std::min<int64_t>(threads, tasks));
  if (threads <= 1) {
    if (tasks > 0) fn(int64_t(0), tasks);
    return;
  }
#if defined(_OPENMP)
  const int pieces = static_cast<int>(std::min<int64_t>(tasks, threads * kPiecesPerThread));
  std::atomic<int> next{0};
#pragma omp parallel num_threads(threads)
  {
    for (int k = next.fetch_add(1, std::memory_order_relaxed); k < pieces;
         k = next.fetch_add(1, std::memory_order_relaxed)) {
      int64_t first, last;
      split_range(tasks, pieces, k, 1, first, last);
      if (first < last) fn(first, last);
    }
  }
#endif
}

// ---------------------------------------------------------------------------------------------
// Summation order of every CPU reduction (fp32, the same whatever the instruction set and thread count):
// the values of a run go to kSumLanes = 16 interleaved lanes (lane k takes values k, k + 16, ...); in
// each lane, blocks of 8 consecutive lane values (kSumBlock = 128 values of the run) are summed in
// order, and the block sums are combined pairwise by a binary-counter cascade (LaneCascade); at the
// end the lanes are folded by halving (lane k += lane k + 8, then + 4, + 2, + 1). The error grows with
// log2(n) instead of n (a running fp32 sum of 10^6 terms loses ~1e-4 relative; this, ~1e-7).
// csrc/vec_cpu.inc's VecCascade is the same order on vectors.
// ---------------------------------------------------------------------------------------------
constexpr int kSumLanes = 16;
constexpr int64_t kSumBlock = 128;

inline float fold_lanes(float* lanes) {  // lanes[kSumLanes], destroyed
  for (int half = kSumLanes / 2; half >= 1; half /= 2)
    for (int k = 0; k < half; ++k) lanes[k] += lanes[k + half];
  return lanes[0];
}

// Pairwise combination of the block sums of 16 lanes, in the order they arrive: after 2^k blocks each
// lane holds one balanced tree; finish() adds the pending partial trees, smallest first, then folds.
struct LaneCascade {
  float level[64][kSumLanes];
  uint64_t count = 0;
  void add(float* v) {  // v[kSumLanes], destroyed
    int k = 0;
    for (uint64_t c = count; c & 1u; c >>= 1, ++k)
      for (int l = 0; l < kSumLanes; ++l) v[l] = level[k][l] + v[l];
    std::memcpy(level[k], v, sizeof level[k]);
    ++count;
  }
  float finish() const {
    float total[kSumLanes] = {};
    bool any = false;
    for (int k = 0; k < 64 && (count >> k) != 0; ++k)
      if ((count >> k) & 1u) {
        for (int l = 0; l < kSumLanes; ++l) total[l] = any ? level[k][l] + total[l] : level[k][l];
        any = true;
      }
    return fold_lanes(total);
  }
};

// Sum of x[0], x[stride], ..., x[(n - 1) * stride] in the order above.
inline float tree_sum_strided(const float* x, int64_t n, int64_t stride) {
  LaneCascade cascade;
  for (int64_t start = 0; start < n; start += kSumBlock) {
    float lanes[kSumLanes] = {};
    const int64_t len = std::min(kSumBlock, n - start);
    for (int64_t j = 0; j < len; ++j) lanes[j % kSumLanes] += x[(start + j) * stride];
    cascade.add(lanes);
  }
  return cascade.finish();
}
inline float tree_sum(const float* x, int64_t n) { return tree_sum_strided(x, n, 1); }

}  // namespace cpu
}  // namespace genfast
