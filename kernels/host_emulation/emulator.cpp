// The CUDA execution layer's runtime: fibers for the threads of a block, barriers, warp collectives,
// the shared-memory race check, launch bookkeeping and the few runtime-API calls the launchers make.
//
// Fibers. Each thread of a block runs on its own stack; a thread runs until it blocks (a barrier, a warp
// collective) or exits, then the scheduler resumes the next. On x86-64 the switch is a few instructions
// (callee-saved registers, the stack pointer, MXCSR and the x87 control word): ucontext's swapcontext
// makes a sigprocmask system call per switch, which would dominate a launch of thousands of threads. On
// other CPUs the layer falls back to ucontext. Under AddressSanitizer every switch is announced with
// __sanitizer_start/finish_switch_fiber, so ASan knows which stack is live.
//
// Faults. A check that fails inside a fiber records its message and switches back to the scheduler, which
// abandons the block's fibers (their stacks are reused; kernels hold no objects with destructors) and
// throws KernelFault from the launch, on the launching thread's own stack: no exception crosses a fiber.
//
// Race check. The kernel translation units are compiled with -fsanitize=thread but not linked with its
// runtime: GCC/Clang then call __tsan_readN/__tsan_writeN(addr) before every memory access of the kernel
// code, and this file defines those hooks. __shared__ variables are static storage (cuda_emulation.h), so
// an access to shared memory is an access to this module's writable data segment; the hook keeps, for
// each byte of it, the last writer and the readers of the current barrier interval ("epoch") and reports
// two different threads touching a byte, one of them writing, within one epoch. Accesses elsewhere
// (tensors, fiber stacks) cost one compare.
#include "cuda_emulation.h"

#include <link.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "emulator.h"

#if defined(__SANITIZE_ADDRESS__)
#define GF_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GF_EMU_ASAN 1
#endif
#endif
#ifdef GF_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace gf_emu {

ThreadState* g_thread = nullptr;
uint3 g_block_idx{0, 0, 0};
dim3 g_block_dim(1, 1, 1), g_grid_dim(1, 1, 1);

namespace {

// ---------------------------------------------------------------------------------------------------
// Context switch
// ---------------------------------------------------------------------------------------------------
#if defined(__x86_64__)
extern "C" void gf_emu_switch(void** save_sp, void* new_sp);
extern "C" void gf_emu_fiber_trampoline();
// gf_emu_switch(save_sp, new_sp): saves the callee-saved state on the current stack, stores the stack
// pointer in *save_sp, loads new_sp and restores the state saved there. A new fiber's stack is laid out
// by init_stack() so that the first switch "returns" into gf_emu_fiber_trampoline with the fiber in r12.
asm(R"(
  .text
  .p2align 4
  .globl gf_emu_switch
  .hidden gf_emu_switch
  .type gf_emu_switch,@function
gf_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size gf_emu_switch,.-gf_emu_switch

  .p2align 4
  .globl gf_emu_fiber_trampoline
  .hidden gf_emu_fiber_trampoline
  .type gf_emu_fiber_trampoline,@function
gf_emu_fiber_trampoline:
  movq %r12, %rdi
  call gf_emu_fiber_main
  ud2
  .size gf_emu_fiber_trampoline,.-gf_emu_fiber_trampoline
)");
#endif

}  // namespace

struct Fiber {
  ThreadState st;
  enum State : int { kReady, kBarrier, kWarp, kDone, kFaulted } state = kReady;
  char* stack_lo = nullptr;
  size_t stack_size = 0;
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t ctx;
#endif
  void* asan_fake_stack = nullptr;
  // where it waits: __syncthreads / warp-collective site
  const char* site_file = nullptr;
  int site_line = 0;
  // warp collective in flight
  int coll_kind = 0, coll_param = 0, coll_width = 32;
  unsigned coll_mask = 0;
  const char* coll_what = nullptr;
  uint64_t coll_value = 0, coll_result = 0;
};

}  // namespace gf_emu

extern "C" void gf_emu_fiber_main(gf_emu::Fiber* f);
#if !defined(__x86_64__)
extern "C" void gf_emu_fiber_start() { gf_emu_fiber_main(nullptr); }
#endif

namespace gf_emu {
namespace {

#ifdef GF_EMU_ASAN
constexpr size_t kStackSize = 1u << 20;  // ASan's redzones make frames larger
#else
constexpr size_t kStackSize = 256u << 10;
#endif
constexpr int kMaxThreads = 1024;

struct Launch {
  std::string name;
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
};

struct Emulator {
  std::mutex mutex;  // one launch at a time in the process: __shared__ is static storage
  std::map<std::string, uint64_t> launch_counts;
  uint64_t block_order_seed = 0;
  cudaError_t last_error = cudaSuccess;
  int device = 0;
  Stats stats;

  // current launch / block
  Launch launch;
  std::vector<Fiber> fibers;
  std::vector<char*> stacks;
  int n_threads = 0;
  Fiber* current = nullptr;
#if defined(__x86_64__)
  void* scheduler_sp = nullptr;
#else
  ucontext_t scheduler_ctx;
#endif
  const void* scheduler_stack_bottom = nullptr;
  size_t scheduler_stack_size = 0;
  bool in_kernel = false;
  std::string fault;
  // barrier interval bookkeeping for the race check and messages
  uint32_t epoch = 0;
  const char* last_barrier_file = nullptr;
  int last_barrier_line = 0;
};

Emulator& emu() {
  static Emulator* e = new Emulator();  // never destroyed: fibers may be parked at exit
  return *e;
}

// Writable data segment of this module (where __shared__ variables live) and its race-check shadow.
struct Shadow {
  uint32_t w_epoch, r_epoch;
  uint16_t writer, reader;  // reader kManyReaders: two or more threads read in r_epoch
};
constexpr uint16_t kManyReaders = 0xffff;
uintptr_t g_data_lo = 0, g_data_size = 0;
Shadow* g_shadow = nullptr;
bool g_race_check_on = false;  // true while a kernel runs in a race-instrumented build

int find_data_segment(dl_phdr_info* info, size_t, void* out) {
  const auto self = reinterpret_cast<uintptr_t>(&g_block_idx);
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD || !(ph.p_flags & PF_W)) continue;
    const uintptr_t lo = info->dlpi_addr + ph.p_vaddr, hi = lo + ph.p_memsz;
    if (self >= lo && self < hi) {
      auto* r = static_cast<std::pair<uintptr_t, uintptr_t>*>(out);
      *r = {lo, hi};
      return 1;
    }
  }
  return 0;
}

void init_shadow() {
  static bool done = false;
  if (done) return;
  done = true;
  std::pair<uintptr_t, uintptr_t> seg{0, 0};
  dl_iterate_phdr(find_data_segment, &seg);
  if (seg.second <= seg.first) return;
  g_data_lo = seg.first;
  g_data_size = seg.second - seg.first;
  g_shadow = static_cast<Shadow*>(calloc(g_data_size, sizeof(Shadow)));
  if (!g_shadow) g_data_size = 0;
}

std::string dims(const uint3& v) {
  return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}
std::string dims(const dim3& v) { return dims(uint3{v.x, v.y, v.z}); }

std::string where(const Emulator& e) {
  return "kernel " + e.launch.name + " (grid " + dims(g_grid_dim) + ", block " + dims(g_block_dim) + "), block " +
         dims(g_block_idx);
}

std::string thread_name(const Fiber& f) {
  return "thread " + std::to_string(f.st.linear) + " " + dims(f.st.thread_idx);
}

// "0-31, 64, 96-127"
std::string thread_list(const std::vector<int>& ids) {
  std::string s;
  size_t i = 0, shown = 0;
  while (i < ids.size()) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (!s.empty()) s += ", ";
    if (++shown > 12) {
      s += "...";
      break;
    }
    s += std::to_string(ids[i]);
    if (j > i) s += "-" + std::to_string(ids[j]);
    i = j + 1;
  }
  return s;
}

std::string site(const char* file, int line) {
  if (!file) return "?";
  const char* base = strrchr(file, '/');
  return std::string(base ? base + 1 : file) + ":" + std::to_string(line);
}

std::string hex(uint64_t v) {
  char buf[32];
  snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

// ---------------------------------------------------------------------------------------------------
// Switching
// ---------------------------------------------------------------------------------------------------
char* stack_for(Emulator& e, int t) {
  while (static_cast<int>(e.stacks.size()) <= t) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* m = mmap(nullptr, kStackSize + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED) throw std::runtime_error("genfast CUDA emulation: cannot map a fiber stack");
    mprotect(m, page, PROT_NONE);  // guard page: an overflow faults instead of corrupting a neighbour
    e.stacks.push_back(static_cast<char*>(m) + page);
  }
  return e.stacks[t];
}

void init_fiber(Emulator& e, Fiber& f) {
  f.stack_lo = stack_for(e, f.st.linear);
  f.stack_size = kStackSize;
#ifdef GF_EMU_ASAN
  __asan_unpoison_memory_region(f.stack_lo, f.stack_size);  // frames abandoned by a fault stay poisoned
#endif
#if defined(__x86_64__)
  auto top = reinterpret_cast<uintptr_t>(f.stack_lo + f.stack_size) & ~uintptr_t(15);
  auto* slot = reinterpret_cast<uint64_t*>(top - 16);  // the trampoline starts with rsp = top - 16
  *--slot = reinterpret_cast<uint64_t>(&gf_emu_fiber_trampoline);  // "return address"
  *--slot = 0;                                                     // rbp
  *--slot = 0;                                                     // rbx
  *--slot = reinterpret_cast<uint64_t>(&f);                        // r12: the fiber
  *--slot = 0;                                                     // r13
  *--slot = 0;                                                     // r14
  *--slot = 0;                                                     // r15
  uint32_t csr[2] = {0, 0};
  asm volatile("stmxcsr %0" : "=m"(csr[0]));
  asm volatile("fnstcw %0" : "=m"(csr[1]));
  *--slot = static_cast<uint64_t>(csr[0]) | (static_cast<uint64_t>(csr[1] & 0xffff) << 32);
  f.sp = slot;
#else
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack_lo;
  f.ctx.uc_stack.ss_size = f.stack_size;
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, reinterpret_cast<void (*)()>(&gf_emu_fiber_start), 0);
#endif
}

// scheduler -> fiber
void resume(Emulator& e, Fiber& f) {
  e.current = &f;
  g_thread = &f.st;
  ++e.stats.resumes;
#ifdef GF_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack_lo, f.stack_size);
#endif
#if defined(__x86_64__)
  gf_emu_switch(&e.scheduler_sp, f.sp);
#else
  swapcontext(&e.scheduler_ctx, &f.ctx);
#endif
#ifdef GF_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  e.current = nullptr;
  g_thread = nullptr;
}

// fiber -> scheduler (returns when the scheduler resumes this fiber; never for a finished one)
void yield_to_scheduler(Emulator& e, Fiber& f, bool finished) {
#ifdef GF_EMU_ASAN
  __sanitizer_start_switch_fiber(finished ? nullptr : &f.asan_fake_stack, e.scheduler_stack_bottom,
                                 e.scheduler_stack_size);
#else
  (void)finished;
#endif
#if defined(__x86_64__)
  gf_emu_switch(&f.sp, e.scheduler_sp);
#else
  swapcontext(&f.ctx, &e.scheduler_ctx);
#endif
#ifdef GF_EMU_ASAN
  __sanitizer_finish_switch_fiber(f.asan_fake_stack, nullptr, nullptr);
#endif
}

Fiber& current_fiber(const char* what) {
  Emulator& e = emu();
  if (!e.in_kernel || !e.current) throw std::logic_error(std::string("genfast CUDA emulation: ") + what + " called outside a kernel");
  return *e.current;
}

// Records the fault and leaves the fiber for good.
[[noreturn]] void fault_in_fiber(Emulator& e, Fiber& f, const std::string& msg) {
  if (e.fault.empty()) e.fault = msg;
  f.state = Fiber::kFaulted;
  yield_to_scheduler(e, f, true);
  __builtin_unreachable();
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Kernel-side API
// ---------------------------------------------------------------------------------------------------
void syncthreads(const char* file, int line) {
  Emulator& e = emu();
  Fiber& f = current_fiber("__syncthreads");
  f.state = Fiber::kBarrier;
  f.site_file = file;
  f.site_line = line;
  yield_to_scheduler(e, f, false);
}

void fault(const char* what) {
  Emulator& e = emu();
  Fiber& f = current_fiber("fault");
  fault_in_fiber(e, f, std::string(what) + " in " + where(e) + ", " + thread_name(f));
}

void threadfence() { std::atomic_signal_fence(std::memory_order_seq_cst); }

void check_vector_access(const void* p, int bytes, const char* what) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  if (a % static_cast<uintptr_t>(bytes) == 0) return;
  Emulator& e = emu();
  Fiber& f = current_fiber("check_vector_access");
  ++e.stats.vector_faults;
  fault_in_fiber(e, f,
                 "misaligned " + std::to_string(bytes) + "-byte vector " + what + " at " + hex(a) + " (address % " +
                     std::to_string(bytes) + " = " + std::to_string(a % bytes) + ") in " + where(e) + ", " +
                     thread_name(f));
}

namespace {

// Source lane of `lane` for a shuffle, or -1 when the lane keeps its own value (out of its segment).
int shuffle_source(int kind, int lane, int param, int width) {
  const int seg_lo = lane & ~(width - 1), seg_hi = seg_lo + width;  // width is a power of two <= 32
  switch (kind) {
    case kShflIdx: return seg_lo + (param & (width - 1));
    case kShflUp: return lane - param >= seg_lo ? lane - param : -1;
    case kShflDown: return lane + param < seg_hi ? lane + param : -1;
    case kShflXor: {
      const int src = lane ^ param;
      return src < seg_hi ? src : -1;
    }
    default: return -1;
  }
}

constexpr int kSyncwarp = 7;

uint64_t collective(int kind, unsigned mask, uint64_t value, int param, int width, const char* what, const char* file,
                    int line) {
  Emulator& e = emu();
  Fiber& f = current_fiber(what);
  const int lane = f.st.linear & 31, warp = f.st.linear >> 5;
  const int warp_first = warp * 32;
  const int lanes_here = std::min(32, e.n_threads - warp_first);
  const unsigned existing = lanes_here == 32 ? 0xffffffffu : ((1u << lanes_here) - 1u);
  auto lane_fault = [&](const std::string& msg) {
    ++e.stats.warp_faults;
    fault_in_fiber(e, f, std::string(what) + "(mask " + hex(mask) + ") " + msg + " in " + where(e) + ", " +
                             thread_name(f) + " (warp " + std::to_string(warp) + ", lane " + std::to_string(lane) + ")");
  };
  if (!(mask & (1u << lane))) lane_fault("called by a lane that is not in its mask");
  if (mask & ~existing)
    lane_fault("names lanes that do not exist (the block has " + std::to_string(e.n_threads) + " threads): " +
               hex(mask & ~existing));
  if (width <= 0 || width > 32 || (width & (width - 1))) lane_fault("width " + std::to_string(width) + " is not a power of two <= 32");
  // Lanes named by the mask that already exited can never arrive.
  unsigned exited = 0;
  for (int l = 0; l < lanes_here; ++l)
    if ((mask >> l & 1u) && e.fibers[warp_first + l].state == Fiber::kDone) exited |= 1u << l;
  if (exited) lane_fault("names lanes that have exited: " + hex(exited));
  if (kind <= kShflXor) {
    const int src = shuffle_source(kind, lane, param, width);
    if (src >= 0 && !(mask & (1u << src)))
      lane_fault("reads lane " + std::to_string(src) + ", which is not in the mask (an inactive lane: undefined value)");
  }
  // Arrive. Lanes of this warp already waiting must be in the same collective with the same mask.
  f.coll_kind = kind;
  f.coll_mask = mask;
  f.coll_param = param;
  f.coll_width = width;
  f.coll_value = value;
  f.coll_what = what;
  f.site_file = file;
  f.site_line = line;
  unsigned arrived = 1u << lane;
  for (int l = 0; l < lanes_here; ++l) {
    const Fiber& o = e.fibers[warp_first + l];
    if (l == lane || o.state != Fiber::kWarp) continue;
    if (o.coll_mask != mask || o.coll_kind != kind || o.coll_width != width)
      lane_fault("meets lane " + std::to_string(l) + " waiting in " + o.coll_what + "(mask " + hex(o.coll_mask) +
                 ", width " + std::to_string(o.coll_width) + "): the lanes of a mask must make the same call");
    if (mask >> l & 1u) arrived |= 1u << l;
  }
  if (arrived != mask) {  // wait for the others; the last to arrive completes the collective
    f.state = Fiber::kWarp;
    yield_to_scheduler(e, f, false);
    return f.coll_result;
  }
  // Complete: every lane of the mask gets its result and becomes runnable.
  unsigned ballot = 0;
  for (int l = 0; l < 32; ++l)
    if ((mask >> l & 1u) && e.fibers[warp_first + l].coll_value) ballot |= 1u << l;
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    Fiber& o = e.fibers[warp_first + l];
    switch (kind) {
      case kBallot: o.coll_result = ballot; break;
      case kAny: o.coll_result = ballot != 0; break;
      case kAll: o.coll_result = ballot == mask; break;
      case kSyncwarp: o.coll_result = 0; break;
      default: {
        const int src = shuffle_source(kind, l, o.coll_param, width);
        o.coll_result = src < 0 ? o.coll_value : e.fibers[warp_first + src].coll_value;
      }
    }
    if (&o != &f) o.state = Fiber::kReady;
  }
  ++e.stats.warp_collectives;
  return f.coll_result;
}

}  // namespace

uint64_t warp_collective(int kind, unsigned mask, uint64_t value, int param, int width, const char* what) {
  return collective(kind, mask, value, param, width, what, nullptr, 0);
}

void syncwarp_at(const char* file, int line, unsigned mask) {
  collective(kSyncwarp, mask, 0, 0, 32, "__syncwarp", file, line);
}

unsigned atomic_add_u32(unsigned* p, unsigned v) { unsigned o = *p; *p = o + v; return o; }
int atomic_add_i32(int* p, int v) { int o = *p; *p = static_cast<int>(static_cast<unsigned>(o) + static_cast<unsigned>(v)); return o; }
unsigned long long atomic_add_u64(unsigned long long* p, unsigned long long v) { auto o = *p; *p = o + v; return o; }
float atomic_add_f32(float* p, float v) { float o = *p; *p = o + v; return o; }
double atomic_add_f64(double* p, double v) { double o = *p; *p = o + v; return o; }
unsigned atomic_cas_u32(unsigned* p, unsigned compare, unsigned v) { unsigned o = *p; if (o == compare) *p = v; return o; }
unsigned atomic_exch_u32(unsigned* p, unsigned v) { unsigned o = *p; *p = v; return o; }
int atomic_max_i32(int* p, int v) { int o = *p; if (v > o) *p = v; return o; }
int atomic_min_i32(int* p, int v) { int o = *p; if (v < o) *p = v; return o; }

// ---------------------------------------------------------------------------------------------------
// Race-check hooks (called from the -fsanitize=thread kernel translation units)
// ---------------------------------------------------------------------------------------------------
namespace {

void shared_access(uintptr_t a, size_t n, bool write) {
  const uintptr_t off = a - g_data_lo;
  if (!g_race_check_on || off >= g_data_size) return;
  Emulator& e = emu();
  Fiber* f = e.current;
  if (!f) return;
  const auto me = static_cast<uint16_t>(f->st.linear);
  const uint32_t ep = e.epoch;
  const size_t end = std::min<size_t>(off + n, g_data_size);
  for (size_t i = off; i < end; ++i) {
    Shadow& s = g_shadow[i];
    int other = -1;
    const char* other_op = "";
    if (s.w_epoch == ep && s.writer != me) {
      other = s.writer;
      other_op = "wrote";
    } else if (write && s.r_epoch == ep && s.reader != me) {
      other = s.reader;  // kManyReaders: at least one other thread read
      other_op = "read";
    }
    if (other >= 0) {
      ++e.stats.race_faults;
      const std::string who = other == kManyReaders ? "other threads" : "thread " + std::to_string(other);
      const std::string since = e.last_barrier_file ? "the __syncthreads at " + site(e.last_barrier_file, e.last_barrier_line)
                                                    : "the start of the block";
      fault_in_fiber(e, *f,
                     "shared-memory race (racecheck): " + thread_name(*f) + (write ? " writes" : " reads") +
                         " shared byte " + hex(a) + " that " + who + " " + other_op + " since " + since +
                         ", with no __syncthreads between, in " + where(e));
    }
    if (write) {
      s.w_epoch = ep;
      s.writer = me;
    } else if (s.r_epoch != ep) {
      s.r_epoch = ep;
      s.reader = me;
    } else if (s.reader != me) {
      s.reader = kManyReaders;
    }
  }
}

}  // namespace
}  // namespace gf_emu

// Only the race-checked build instruments the kernels (the ASan build has GCC's own declarations).
#ifdef GENFAST_EMULATION_RACE_CHECK
#define GF_EMU_HOOKS(N)                                                                                  \
  extern "C" void __tsan_read##N(void* p) { gf_emu::shared_access(reinterpret_cast<uintptr_t>(p), N, false); } \
  extern "C" void __tsan_write##N(void* p) { gf_emu::shared_access(reinterpret_cast<uintptr_t>(p), N, true); } \
  extern "C" void __tsan_unaligned_read##N(void* p) { gf_emu::shared_access(reinterpret_cast<uintptr_t>(p), N, false); } \
  extern "C" void __tsan_unaligned_write##N(void* p) { gf_emu::shared_access(reinterpret_cast<uintptr_t>(p), N, true); } \
  extern "C" void __tsan_volatile_read##N(void* p) { gf_emu::shared_access(reinterpret_cast<uintptr_t>(p), N, false); } \
  extern "C" void __tsan_volatile_write##N(void* p) { gf_emu::shared_access(reinterpret_cast<uintptr_t>(p), N, true); }
GF_EMU_HOOKS(1)
GF_EMU_HOOKS(2)
GF_EMU_HOOKS(4)
GF_EMU_HOOKS(8)
GF_EMU_HOOKS(16)
#undef GF_EMU_HOOKS
extern "C" void __tsan_init() {}
extern "C" void __tsan_func_entry(void*) {}
extern "C" void __tsan_func_exit(void*) {}
extern "C" void __tsan_read_range(void* p, long n) {
  gf_emu::shared_access(reinterpret_cast<uintptr_t>(p), static_cast<size_t>(n), false);
}
extern "C" void __tsan_write_range(void* p, long n) {
  gf_emu::shared_access(reinterpret_cast<uintptr_t>(p), static_cast<size_t>(n), true);
}
extern "C" void __tsan_vptr_update(void*, void*) {}
extern "C" void __tsan_vptr_read(void*) {}
// Clang's instrumentation turns memcpy/memset/memmove into these (GCC's does not).
extern "C" void* __tsan_memcpy(void* d, const void* s, size_t n) {
  gf_emu::shared_access(reinterpret_cast<uintptr_t>(s), n, false);
  gf_emu::shared_access(reinterpret_cast<uintptr_t>(d), n, true);
  return memcpy(d, s, n);
}
extern "C" void* __tsan_memmove(void* d, const void* s, size_t n) {
  gf_emu::shared_access(reinterpret_cast<uintptr_t>(s), n, false);
  gf_emu::shared_access(reinterpret_cast<uintptr_t>(d), n, true);
  return memmove(d, s, n);
}
extern "C" void* __tsan_memset(void* d, int c, size_t n) {
  gf_emu::shared_access(reinterpret_cast<uintptr_t>(d), n, true);
  return memset(d, c, n);
}
#endif  // GENFAST_EMULATION_RACE_CHECK

// ---------------------------------------------------------------------------------------------------
// Fiber entry
// ---------------------------------------------------------------------------------------------------
extern "C" void gf_emu_fiber_main(gf_emu::Fiber*) {
  gf_emu::Emulator& e = gf_emu::emu();
  gf_emu::Fiber* f = e.current;  // resume() sets it before switching here
#ifdef GF_EMU_ASAN
  // Learn the scheduler's stack (the one we came from) for the switches back.
  __sanitizer_finish_switch_fiber(nullptr, &e.scheduler_stack_bottom, &e.scheduler_stack_size);
#endif
  e.launch.body(e.launch.ctx);
  f->state = gf_emu::Fiber::kDone;
  gf_emu::yield_to_scheduler(e, *f, true);
  __builtin_trap();  // a finished fiber is never resumed
}

namespace gf_emu {

KernelFault::KernelFault(const std::string& msg) : std::runtime_error(msg) {}

namespace {

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

template <typename V>
void shuffle(V& v, uint64_t& state) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[splitmix64(state) % i]);
}

std::string kernel_base_name(const char* expr) {
  std::string s(expr);
  std::string out;
  for (char c : s)
    if (c != '(' && c != ')' && c != ' ') out += c;
  const size_t lt = out.find('<');
  if (lt != std::string::npos) out.resize(lt);
  const size_t colon = out.rfind("::");
  if (colon != std::string::npos) out = out.substr(colon + 2);
  return out;
}

// Runs one block to completion (or to a fault: then e.fault is set).
void run_block(Emulator& e, const std::vector<int>& thread_order) {
  ++e.stats.blocks;
  ++e.epoch;
  e.last_barrier_file = nullptr;
  e.last_barrier_line = 0;
  const int n = e.n_threads;
  for (int t = 0; t < n; ++t) {
    Fiber& f = e.fibers[t];
    f.state = Fiber::kReady;
    f.st.linear = t;
    f.st.thread_idx = uint3{static_cast<unsigned>(t % g_block_dim.x), static_cast<unsigned>((t / g_block_dim.x) % g_block_dim.y),
                            static_cast<unsigned>(t / (g_block_dim.x * g_block_dim.y))};
    init_fiber(e, f);
  }
  e.in_kernel = true;
  g_race_check_on = g_shadow != nullptr && race_check_compiled();
  for (;;) {
    bool ran = false;
    for (int t : thread_order) {
      Fiber& f = e.fibers[t];
      if (f.state != Fiber::kReady) continue;
      ran = true;
      resume(e, f);
      if (f.state == Fiber::kFaulted) {
        e.in_kernel = false;
        g_race_check_on = false;
        return;
      }
    }
    if (ran) continue;
    // Nothing runnable: the block is done, at a barrier, or stuck.
    std::vector<int> done, at_barrier, in_warp;
    for (int t = 0; t < n; ++t) {
      switch (e.fibers[t].state) {
        case Fiber::kDone: done.push_back(t); break;
        case Fiber::kBarrier: at_barrier.push_back(t); break;
        case Fiber::kWarp: in_warp.push_back(t); break;
        default: break;
      }
    }
    if (static_cast<int>(done.size()) == n) break;
    std::string msg;
    if (!in_warp.empty()) {
      const Fiber& w = e.fibers[in_warp[0]];
      const int warp = in_warp[0] / 32;
      std::vector<int> missing;
      for (int l = 0; l < 32; ++l)
        if ((w.coll_mask >> l & 1u) && e.fibers[warp * 32 + l].state != Fiber::kWarp) missing.push_back(warp * 32 + l);
      msg = std::string("warp collective never completes (synccheck): threads ") + thread_list(in_warp) + " wait in " +
            w.coll_what + "(mask " + hex(w.coll_mask) + ") for threads " + thread_list(missing) +
            ", which exited or wait at a __syncthreads, in " + where(e);
      ++e.stats.warp_faults;
    } else {
      // All remaining threads are at barriers: it completes only if every thread of the block is there,
      // at the same __syncthreads.
      const Fiber& first = e.fibers[at_barrier[0]];
      std::vector<int> elsewhere;
      for (int t : at_barrier)
        if (e.fibers[t].site_line != first.site_line || strcmp(e.fibers[t].site_file, first.site_file) != 0)
          elsewhere.push_back(t);
      if (done.empty() && elsewhere.empty()) {
        ++e.epoch;
        ++e.stats.barriers;
        e.last_barrier_file = first.site_file;
        e.last_barrier_line = first.site_line;
        for (int t = 0; t < n; ++t) e.fibers[t].state = Fiber::kReady;
        continue;
      }
      ++e.stats.barrier_faults;
      if (!done.empty()) {
        msg = "divergent __syncthreads (synccheck): threads " + thread_list(at_barrier) + " wait at " +
              site(first.site_file, first.site_line) + " but threads " + thread_list(done) +
              " exited without reaching it, in " + where(e);
      } else {
        const Fiber& other = e.fibers[elsewhere[0]];
        msg = "divergent __syncthreads (synccheck): threads wait at two different barriers, " +
              site(first.site_file, first.site_line) + " and " + site(other.site_file, other.site_line) +
              " (threads " + thread_list(elsewhere) + "), in " + where(e);
      }
    }
    e.fault = msg;
    break;
  }
  e.in_kernel = false;
  g_race_check_on = false;
}

}  // namespace

void run_launch(const char* name, dim3 grid, dim3 block, size_t dynamic_smem, void (*body)(void*), void* ctx) {
  Emulator& e = emu();
  std::lock_guard<std::mutex> lock(e.mutex);
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  const bool valid = grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 0x7fffffffu && grid.y <= 65535 &&
                     grid.z <= 65535 && block.x >= 1 && block.y >= 1 && block.z >= 1 && block.x <= 1024 &&
                     block.y <= 1024 && block.z <= 64 && threads <= static_cast<uint64_t>(kMaxThreads) &&
                     dynamic_smem == 0;
  if (!valid) {
    e.last_error = cudaErrorInvalidConfiguration;
    return;
  }
  init_shadow();
  ++e.launch_counts[kernel_base_name(name)];
  ++e.stats.launches;
  e.launch.name = kernel_base_name(name);
  e.launch.body = body;
  e.launch.ctx = ctx;
  e.n_threads = static_cast<int>(threads);
  if (e.fibers.size() < threads) e.fibers.resize(threads);
  g_grid_dim = grid;
  g_block_dim = block;
  e.fault.clear();

  const uint64_t n_blocks = static_cast<uint64_t>(grid.x) * grid.y * grid.z;
  std::vector<int> thread_order(threads);
  for (uint64_t t = 0; t < threads; ++t) thread_order[t] = static_cast<int>(t);
  uint64_t rng = e.block_order_seed;
  std::vector<uint64_t> block_order;
  if (e.block_order_seed != 0) {  // any block order must give the same result; so must any thread order
    block_order.resize(n_blocks);
    for (uint64_t b = 0; b < n_blocks; ++b) block_order[b] = b;
    shuffle(block_order, rng);
    shuffle(thread_order, rng);
  }
  for (uint64_t i = 0; i < n_blocks; ++i) {
    const uint64_t b = block_order.empty() ? i : block_order[i];
    g_block_idx = uint3{static_cast<unsigned>(b % grid.x), static_cast<unsigned>((b / grid.x) % grid.y),
                        static_cast<unsigned>(b / (static_cast<uint64_t>(grid.x) * grid.y))};
    run_block(e, thread_order);
    if (!e.fault.empty()) {
      std::string msg = "genfast CUDA emulation: " + e.fault;
      e.fault.clear();
      throw KernelFault(msg);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Runtime API
// ---------------------------------------------------------------------------------------------------
cudaError_t get_last_error() {
  Emulator& e = emu();
  const cudaError_t r = e.last_error;
  e.last_error = cudaSuccess;
  return r;
}
cudaError_t peek_at_last_error() { return emu().last_error; }
const char* get_error_string(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument (emulated launch)";
    case cudaErrorInvalidDevice: return "invalid device ordinal (the emulation has one device, 0)";
    case cudaErrorInvalidValue: return "invalid argument";
    default: return "unknown error";
  }
}
cudaError_t get_device(int* d) {
  *d = emu().device;
  return cudaSuccess;
}
cudaError_t set_device(int d) {
  if (d != 0) return emu().last_error = cudaErrorInvalidDevice;
  emu().device = d;
  return cudaSuccess;
}
cudaError_t get_device_count(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t device_get_attribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return emu().last_error = cudaErrorInvalidDevice;
  switch (attr) {
    // Few SMs, so that the launchers' grids are small and their grid-stride loops take several steps
    // on the test sizes.
    case cudaDevAttrMultiProcessorCount: *value = kEmulatedSms; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock: *value = kMaxThreads; return cudaSuccess;
    case cudaDevAttrWarpSize: *value = 32; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 48 * 1024; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; return cudaSuccess;
    default: return emu().last_error = cudaErrorInvalidValue;
  }
}
cudaError_t runtime_get_version(int* v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t memset_async(void* p, int value, size_t bytes, cudaStream_t) {
  if (bytes && !p) return emu().last_error = cudaErrorInvalidValue;
  if (bytes) memset(p, value, bytes);
  ++emu().stats.memsets;
  return cudaSuccess;
}
cudaError_t stream_synchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t device_synchronize() { return cudaSuccess; }

// ---------------------------------------------------------------------------------------------------
// Control (bound as genfast._C_emulated functions)
// ---------------------------------------------------------------------------------------------------
std::map<std::string, uint64_t> launch_counts() {
  Emulator& e = emu();
  std::lock_guard<std::mutex> lock(e.mutex);
  return e.launch_counts;
}
void reset_launch_counts() {
  Emulator& e = emu();
  std::lock_guard<std::mutex> lock(e.mutex);
  e.launch_counts.clear();
}
void set_block_order_seed(uint64_t seed) {
  Emulator& e = emu();
  std::lock_guard<std::mutex> lock(e.mutex);
  e.block_order_seed = seed;
}
uint64_t block_order_seed() { return emu().block_order_seed; }
Stats stats() {
  Emulator& e = emu();
  std::lock_guard<std::mutex> lock(e.mutex);
  return e.stats;
}

}  // namespace gf_emu
