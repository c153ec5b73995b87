// Host-side API of genfast._C. Every function takes raw pointers and sizes as integers (no libtorch),
// validates what it relies on and throws std::invalid_argument / std::runtime_error, which pybind11
// turns into Python ValueError / RuntimeError: a bad call never aborts the process.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.cuh"

namespace genfast {

inline void check_arg(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("genfast._C: " + what);
}

inline void check_dtype(int dtype, const char* name) {
  check_arg(dtype == kFloat32 || dtype == kFloat16 || dtype == kBFloat16 || dtype == kFloat64,
            std::string(name) + ": unknown dtype code " + std::to_string(dtype));
}

inline void check_numel(int64_t n, uintptr_t ptr, const char* name) {
  check_arg(n >= 0, std::string(name) + ": negative number of elements " + std::to_string(n));
  check_arg(n == 0 || ptr != 0, std::string(name) + ": null data pointer");
}

// Seed and offset: the values given, unless a pointer to an int64 holding them is (device tensors,
// so that a replayed CUDA graph reads a new seed).
struct StreamArgs {
  uint64_t seed;
  uint64_t offset;
  uintptr_t seed_ptr;
  uintptr_t offset_ptr;
};

inline uint64_t load_stream_value(uint64_t value, uintptr_t host_ptr) {
  return host_ptr ? static_cast<uint64_t>(*reinterpret_cast<const int64_t*>(host_ptr)) : value;
}

#ifdef GENFAST_WITH_CUDA
int cuda_runtime_version();
int cuda_device_count();
#endif

}  // namespace genfast
