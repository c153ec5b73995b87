// Host-side interface of the CUDA execution layer (emulator.cpp), for the module's bindings and tests.
#pragma once
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>

namespace gf_emu {

// A check of the layer failed during a launch (divergent barrier, bad warp collective, shared-memory
// race, misaligned vector access). pybind11 raises it as genfast._C_emulated.KernelFault (a RuntimeError).
struct KernelFault : std::runtime_error {
  explicit KernelFault(const std::string& msg);
};

// Multiprocessors the emulated device reports (grid_for() sizes grids from it).
constexpr int kEmulatedSms = 2;

struct Stats {
  uint64_t launches = 0, blocks = 0, resumes = 0, barriers = 0, warp_collectives = 0, memsets = 0;
  uint64_t barrier_faults = 0, warp_faults = 0, race_faults = 0, vector_faults = 0;
};

std::map<std::string, uint64_t> launch_counts();
void reset_launch_counts();
void set_block_order_seed(uint64_t seed);
uint64_t block_order_seed();
Stats stats();

// Whether the kernel translation units carry the race-check instrumentation (-fsanitize=thread hooks);
// the AddressSanitizer build cannot (the two sanitizers exclude each other).
constexpr bool race_check_compiled() {
#ifdef GENFAST_EMULATION_RACE_CHECK
  return true;
#else
  return false;
#endif
}

}  // namespace gf_emu
