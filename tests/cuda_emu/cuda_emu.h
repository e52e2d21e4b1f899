// A CPU emulation of the small part of the CUDA runtime and device language that
// csrc/cuda/kernels.cu uses, so that the unmodified kernels compile as host C++ (after
// translate.py rewrites the <<<...>>> launches) and run in tests without a GPU.
//
// Execution model. A launch runs its blocks one after another (in order, reversed, or in a
// seeded random order). The threads of a block are fibers (ucontext) on the calling OS
// thread: a fiber runs until it reaches a synchronisation point (__syncthreads, a warp
// shuffle/vote) or returns, then the scheduler resumes the next runnable fiber (again in
// order, reversed, or in a seeded random order per round). Synchronisation is therefore
// exact, and a result that depends on the interleaving (a missing barrier, a race on
// shared or global memory between sync points) changes with the schedule: tests run the
// same launch under several schedules and require bit-identical results.
//
// Misuse is reported as a failed launch (cudaGetLastError → cudaErrorLaunchFailure, the
// message in emu::last_message()): a barrier or shuffle that not every expected thread/lane
// reaches (divergent __syncthreads, a shuffle with exited or inactive lanes: deadlock), a
// shuffle whose mask names lanes that do not exist or omits the caller, lanes of one
// shuffle disagreeing on width or type, an invalid launch configuration
// (cudaErrorInvalidConfiguration, as CUDA).
//
// __shared__ variables are function-local statics: one instance per kernel/function, which
// is exact because blocks of a launch never run concurrently. Memory is host memory:
// cudaMemcpyAsync / cudaMemsetAsync are memmove / memset, executed at once; streams are
// ignored (every launch completes before it returns).
#pragma once

#include <math.h>  // the C++ wrapper: isfinite, fmaxf, expf, ... in the global namespace
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---- language ---------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __constant__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// __restrict__ is a GNU C++ keyword already.

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

// Built-in variables: set by the scheduler before it resumes a fiber.
inline uint3 threadIdx{0, 0, 0};
inline uint3 blockIdx{0, 0, 0};
inline dim3 blockDim{1, 1, 1};
inline dim3 gridDim{1, 1, 1};
constexpr int warpSize = 32;

// ---- runtime types ----------------------------------------------------------------------
typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorNoKernelImageForDevice = 209,
  cudaErrorLaunchFailure = 719,
  cudaErrorStubLibrary = 34,
  cudaErrorCallRequiresNewerDriver = 36,
  cudaErrorSystemDriverMismatch = 803,
  cudaErrorCompatNotSupportedOnDevice = 804,
};
typedef cudaError_t cudaError;
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

namespace emu {

// ---- state ------------------------------------------------------------------------------
enum Schedule { kInOrder = 0, kReverse = 1, kRandom = 2 };

struct Barrier {
  int expected = 0, arrived = 0;
  uint64_t generation = 0;
  // warp barriers: the first arrival's shape, which later lanes must match
  int width = 0, size = 0;
  unsigned mask = 0;
};

struct Fiber {
  ucontext_t ctx;   // the portable switch
  void* sp = nullptr;  // the x86-64 switch: saved stack pointer
  char* stack = nullptr;
  uint3 tid{0, 0, 0};
  bool done = false;
  const Barrier* wait_on = nullptr;  // blocked until wait_on->generation != wait_gen
  uint64_t wait_gen = 0;
};

struct Stats {
  uint64_t launches = 0, blocks = 0, threads = 0, barriers = 0, warp_ops = 0, switches = 0;
};

struct LogEntry {
  std::string name;
  dim3 grid, block;
  size_t shmem;
};

constexpr size_t kStackBytes = size_t{128} << 10;

struct State {
  Schedule schedule = kRandom;
  std::mt19937_64 rng{12345};
  cudaError_t last_error = cudaSuccess;
  std::string message;  // of the last failed launch
  Stats stats;
  std::vector<LogEntry> log;
  bool log_enabled = true;
  // the running launch
  std::vector<Fiber> fibers;
  ucontext_t sched;
  void* sched_sp = nullptr;
  int cur = -1;
  int nthreads = 0;
  Barrier block_bar;
  std::vector<Barrier> warp_bar;
  std::vector<unsigned char> slots;  // [warp][lane][8] shuffle exchange
  uint64_t events = 0;
  bool failed = false;
  std::string fail_msg;
  uint64_t block_serial = 0;                 // counts blocks run, for poison_shared
  std::vector<std::pair<void*, uint64_t>> shared_seen;  // __shared__ variable → last block poisoned
  std::vector<double> dyn_shared;            // extern __shared__: 48 KiB, the launch uses shmem bytes
  size_t dyn_bytes = 0;
  void (*body)(void*) = nullptr;
  void* body_arg = nullptr;
  bool in_launch = false;
};
inline State& st() {
  static State s;
  return s;
}

// ---- context switch ------------------------------------------------------------------------
// x86-64: a minimal switch (callee-saved registers, MXCSR and the x87 control word, as the
// SysV ABI requires across calls) — swapcontext also saves the signal mask with a system
// call on every switch, which makes it ~20x slower. Elsewhere (or with -DCUDA_EMU_UCONTEXT):
// ucontext. The assembly and emu_fiber_main are defined once, in emu_runtime.cpp (which
// defines CUDA_EMU_MAIN before including this header).
#if defined(__x86_64__) && !defined(CUDA_EMU_UCONTEXT)
#define CUDA_EMU_ASM_SWITCH 1
extern "C" __attribute__((visibility("hidden"))) void emu_ctx_switch(void** save_sp, void* load_sp);
extern "C" __attribute__((visibility("hidden"))) void emu_fiber_tramp();
#else
#define CUDA_EMU_ASM_SWITCH 0
#endif

inline void to_scheduler(Fiber& f) {
#if CUDA_EMU_ASM_SWITCH
  emu_ctx_switch(&f.sp, st().sched_sp);
#else
  swapcontext(&f.ctx, &st().sched);
#endif
}
inline void to_fiber(Fiber& f) {
#if CUDA_EMU_ASM_SWITCH
  emu_ctx_switch(&st().sched_sp, f.sp);
#else
  swapcontext(&st().sched, &f.ctx);
#endif
}

inline const std::string& last_message() { return st().message; }
inline void set_schedule(int mode, uint64_t seed) {
  st().schedule = static_cast<Schedule>(mode);
  st().rng.seed(seed);
}

inline char* alloc_stack() {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  mprotect(p, page, PROT_NONE);  // guard page: an overflow faults instead of corrupting
  return static_cast<char*>(p) + page;
}

inline int linear_tid(const uint3& t) {
  return static_cast<int>(t.x + blockDim.x * (t.y + blockDim.y * t.z));
}

// Fails the running launch from inside a fiber: back to the scheduler, never resumed.
[[noreturn]] inline void fail(const std::string& msg) {
  State& s = st();
  if (!s.failed) {
    s.failed = true;
    s.fail_msg = msg;
  }
  to_scheduler(s.fibers[static_cast<size_t>(s.cur)]);
  std::fprintf(stderr, "cuda_emu: a failed fiber was resumed\n");
  std::abort();
}

// Blocks the current fiber until `b` completes a generation (the last arrival releases it).
inline void arrive_and_wait(Barrier& b) {
  State& s = st();
  ++s.events;
  if (++b.arrived == b.expected) {
    b.arrived = 0;
    b.width = b.size = 0;
    ++b.generation;
    return;
  }
  Fiber& f = s.fibers[static_cast<size_t>(s.cur)];
  f.wait_on = &b;
  f.wait_gen = b.generation;
  to_scheduler(f);  // resumed only once the generation has moved on
  f.wait_on = nullptr;
}

inline void fiber_entry() {
  State& s = st();
  s.body(s.body_arg);
  Fiber& f = s.fibers[static_cast<size_t>(s.cur)];
  f.done = true;
  ++s.events;
  to_scheduler(f);
  std::fprintf(stderr, "cuda_emu: a finished fiber was resumed\n");
  std::abort();
}

inline void init_fiber(Fiber& f) {
#if CUDA_EMU_ASM_SWITCH
  // The frame emu_ctx_switch pops: control words, r15..r12, rbx, rbp, return address.
  uintptr_t top = reinterpret_cast<uintptr_t>(f.stack + kStackBytes) & ~uintptr_t{15};
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;  // alignment slot
  *--sp = reinterpret_cast<void*>(&emu_fiber_tramp);
  for (int i = 0; i < 6; ++i) *--sp = nullptr;
  uint32_t csr[2] = {0, 0};
  __asm__ volatile("stmxcsr %0" : "=m"(csr[0]));
  __asm__ volatile("fnstcw %0" : "=m"(*reinterpret_cast<uint16_t*>(&csr[1])));
  *--sp = nullptr;
  std::memcpy(static_cast<void*>(sp), csr, 8);
  f.sp = sp;
#else
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack;
  f.ctx.uc_stack.ss_size = kStackBytes;
  f.ctx.uc_link = &st().sched;
  makecontext(&f.ctx, fiber_entry, 0);
#endif
}

inline std::vector<int> order(int n) {
  State& s = st();
  std::vector<int> o(static_cast<size_t>(n));
  std::iota(o.begin(), o.end(), 0);
  if (s.schedule == kReverse) std::reverse(o.begin(), o.end());
  else if (s.schedule == kRandom) std::shuffle(o.begin(), o.end(), s.rng);
  return o;
}

inline std::string describe_blocked() {
  State& s = st();
  int at_block = 0, at_warp = 0, done = 0;
  for (int t = 0; t < s.nthreads; ++t) {
    const Fiber& f = s.fibers[static_cast<size_t>(t)];
    if (f.done) ++done;
    else if (f.wait_on == &s.block_bar) ++at_block;
    else if (f.wait_on) ++at_warp;
  }
  return "deadlock in block (" + std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) + "," +
         std::to_string(blockIdx.z) + "): " + std::to_string(at_block) + " threads wait at __syncthreads, " +
         std::to_string(at_warp) + " at a warp shuffle/vote, " + std::to_string(done) +
         " have exited (a barrier or shuffle not reached by every thread/lane it names)";
}

// Runs one block to completion; false (s.failed) on misuse.
inline bool run_block() {
  State& s = st();
  const int n = s.nthreads;
  for (int t = 0; t < n; ++t) {
    Fiber& f = s.fibers[static_cast<size_t>(t)];
    init_fiber(f);
    f.done = false;
    f.wait_on = nullptr;
    const unsigned bx = blockDim.x, by = blockDim.y;
    f.tid = uint3{static_cast<unsigned>(t) % bx, (static_cast<unsigned>(t) / bx) % by,
                  static_cast<unsigned>(t) / (bx * by)};
  }
  s.block_bar = Barrier{};
  s.block_bar.expected = n;
  const int warps = (n + 31) / 32;
  s.warp_bar.assign(static_cast<size_t>(warps), Barrier{});
  s.slots.assign(static_cast<size_t>(warps) * 32 * 8, 0);
  int live = n;
  while (live > 0) {
    const uint64_t ev0 = s.events;
    for (int t : order(n)) {
      Fiber& f = s.fibers[static_cast<size_t>(t)];
      if (f.done || (f.wait_on && f.wait_on->generation == f.wait_gen)) continue;
      s.cur = t;
      threadIdx = f.tid;
      ++s.stats.switches;
      to_fiber(f);
      if (s.failed) return false;
      if (f.done) {
        --live;
        ++s.stats.threads;
      }
    }
    if (live > 0 && s.events == ev0) {
      s.failed = true;
      s.fail_msg = describe_blocked();
      return false;
    }
  }
  return true;
}

inline bool valid_config(dim3 g, dim3 b) {
  const uint64_t nb = uint64_t{b.x} * b.y * b.z;
  return g.x >= 1 && g.y >= 1 && g.z >= 1 && b.x >= 1 && b.y >= 1 && b.z >= 1 && nb <= 1024 && b.x <= 1024 &&
         b.y <= 1024 && b.z <= 64 && g.x <= 2147483647u && g.y <= 65535 && g.z <= 65535;
}

struct LaunchConfig {
  dim3 grid, block;
  size_t shmem;
  cudaStream_t stream;
  LaunchConfig(dim3 g, dim3 b, size_t sh = 0, cudaStream_t s = nullptr) : grid(g), block(b), shmem(sh), stream(s) {}
};

template <class Tuple, class... P>
void invoke_body(void* arg) {
  auto* pack = static_cast<std::pair<void (*)(P...), Tuple>*>(arg);
  std::apply(pack->first, pack->second);
}

// Serialises launches from several OS threads (recursive: a launch from inside a kernel is on
// the same OS thread and is refused below, not deadlocked).
inline std::recursive_mutex& launch_mutex() {
  static std::recursive_mutex m;
  return m;
}

// kernel<<<cfg>>>(args...): arguments are converted to the kernel's parameter types and
// copied once (as CUDA does), then every block runs, the launch completing before return.

template <class... P, class... A>
void launch(const char* name, void (*kernel)(P...), const LaunchConfig& cfg, A&&... args) {
  std::lock_guard<std::recursive_mutex> lock(launch_mutex());
  State& s = st();
  if (s.log_enabled) s.log.push_back(LogEntry{name, cfg.grid, cfg.block, cfg.shmem});
  if (s.in_launch) {  // dynamic parallelism is not emulated
    s.last_error = cudaErrorLaunchFailure;
    s.message = std::string("cuda_emu: nested launch of ") + name;
    return;
  }
  if (!valid_config(cfg.grid, cfg.block) || cfg.shmem > 48 * 1024) {
    s.last_error = cudaErrorInvalidConfiguration;
    s.message = std::string("cuda_emu: invalid launch configuration for ") + name + ": grid (" +
                std::to_string(cfg.grid.x) + "," + std::to_string(cfg.grid.y) + "," + std::to_string(cfg.grid.z) +
                ") block (" + std::to_string(cfg.block.x) + "," + std::to_string(cfg.block.y) + "," +
                std::to_string(cfg.block.z) + ") shmem " + std::to_string(cfg.shmem);
    return;
  }
  using Tuple = std::tuple<std::decay_t<P>...>;
  std::pair<void (*)(P...), Tuple> pack{kernel, Tuple(static_cast<std::decay_t<P>>(std::forward<A>(args))...)};
  const int n = static_cast<int>(cfg.block.x * cfg.block.y * cfg.block.z);
  if (s.fibers.size() < static_cast<size_t>(n)) s.fibers.resize(static_cast<size_t>(n));
  for (int t = 0; t < n; ++t)
    if (!s.fibers[static_cast<size_t>(t)].stack) {
      s.fibers[static_cast<size_t>(t)].stack = alloc_stack();
      if (!s.fibers[static_cast<size_t>(t)].stack) {
        s.last_error = cudaErrorMemoryAllocation;
        s.message = "cuda_emu: cannot allocate fiber stacks";
        return;
      }
    }
  s.nthreads = n;
  if (s.dyn_shared.empty()) s.dyn_shared.resize(48 * 1024 / 8);  // fixed: one address for poison_shared
  s.dyn_bytes = cfg.shmem;
  s.body = &invoke_body<Tuple, P...>;
  s.body_arg = &pack;
  s.failed = false;
  s.in_launch = true;
  ++s.stats.launches;
  blockDim = cfg.block;
  gridDim = cfg.grid;
  const uint64_t nblocks = uint64_t{cfg.grid.x} * cfg.grid.y * cfg.grid.z;
  std::vector<uint64_t> blocks(nblocks);
  std::iota(blocks.begin(), blocks.end(), uint64_t{0});
  if (s.schedule == kReverse) std::reverse(blocks.begin(), blocks.end());
  else if (s.schedule == kRandom) std::shuffle(blocks.begin(), blocks.end(), s.rng);
  for (uint64_t b : blocks) {
    blockIdx = uint3{static_cast<unsigned>(b % cfg.grid.x), static_cast<unsigned>((b / cfg.grid.x) % cfg.grid.y),
                     static_cast<unsigned>(b / (uint64_t{cfg.grid.x} * cfg.grid.y))};
    ++s.stats.blocks;
    ++s.block_serial;
    if (!run_block()) {
      s.last_error = cudaErrorLaunchFailure;
      s.message = std::string("cuda_emu: ") + name + ": " + s.fail_msg;
      break;
    }
  }
  s.in_launch = false;
  s.cur = -1;
}

// ---- warp-level exchange ------------------------------------------------------------------
// Every lane named in `mask` must call the same intrinsic: each publishes its value, waits
// for all of them, reads, and waits again (so no slot is overwritten before it is read).
template <class T>
struct WarpCtx {
  int warp, lane;
  Barrier* bar;
  unsigned char* slots;
};

template <class T>
WarpCtx<T> warp_enter(unsigned mask, int width, const char* what) {
  State& s = st();
  if (!s.in_launch || s.cur < 0) {
    std::fprintf(stderr, "cuda_emu: %s outside a kernel\n", what);
    std::abort();
  }
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  const int lt = linear_tid(threadIdx);
  const int warp = lt / 32, lane = lt % 32;
  const int warp_threads = std::min(32, s.nthreads - warp * 32);
  const unsigned exist = warp_threads == 32 ? 0xffffffffu : ((1u << warp_threads) - 1u);
  if (!(mask >> lane & 1u)) fail(std::string(what) + ": the calling lane " + std::to_string(lane) + " is not in mask");
  if (mask & ~exist) fail(std::string(what) + ": mask names lanes beyond the block's last thread");
  if (width < 1 || width > 32 || (width & (width - 1)))
    fail(std::string(what) + ": width " + std::to_string(width) + " is not a power of two in [1, 32]");
  Barrier& b = s.warp_bar[static_cast<size_t>(warp)];
  if (b.arrived == 0) {
    b.expected = __builtin_popcount(mask);
    b.mask = mask;
    b.width = width;
    b.size = static_cast<int>(sizeof(T));
  } else if (b.mask != mask || b.width != width || b.size != static_cast<int>(sizeof(T))) {
    fail(std::string(what) + ": lanes of warp " + std::to_string(warp) +
         " disagree on mask/width/type (different shuffles reached concurrently)");
  }
  ++s.stats.warp_ops;
  return WarpCtx<T>{warp, lane, &b, s.slots.data() + static_cast<size_t>(warp) * 32 * 8};
}

template <class T>
T warp_exchange(unsigned mask, T var, int width, const char* what, int (*src_of)(int lane, int arg, int width),
                int arg) {
  WarpCtx<T> w = warp_enter<T>(mask, width, what);
  std::memcpy(w.slots + w.lane * 8, &var, sizeof(T));
  const unsigned m = w.bar->mask;
  arrive_and_wait(*w.bar);
  const int src = src_of(w.lane, arg, width);
  T out = var;
  if (src != w.lane) {
    if (!(m >> src & 1u)) fail(std::string(what) + ": lane " + std::to_string(w.lane) + " reads lane " +
                               std::to_string(src) + ", which is not in mask (undefined)");
    std::memcpy(&out, w.slots + src * 8, sizeof(T));
  }
  // second barrier: the slots may be reused only once every lane has read
  Barrier& b = *w.bar;
  if (b.arrived == 0) {
    b.expected = __builtin_popcount(m);
    b.mask = m;
    b.width = width;
    b.size = static_cast<int>(sizeof(T));
  }
  arrive_and_wait(b);
  return out;
}

// The source lane of PTX shfl.sync (ISA manual, pseudo-code of shfl.sync; CUDA passes
// c = ((32 − width) << 8) | 31, and 0 for up): a source beyond the lane's segment of
// `width` lanes yields the lane's own value; xor may read an earlier segment (as the
// Programming Guide says).
inline int src_xor(int lane, int m, int width) {
  const int lo = lane & ~(width - 1), j = lane ^ m;
  return j <= lo + width - 1 ? j : lane;
}
inline int src_down(int lane, int d, int width) {
  const int lo = lane & ~(width - 1), j = lane + d;
  return j < lo + width ? j : lane;
}
inline int src_up(int lane, int d, int width) {
  const int lo = lane & ~(width - 1), j = lane - d;
  return j >= lo ? j : lane;
}
inline int src_idx(int lane, int l, int width) {
  const int lo = lane & ~(width - 1);
  return lo + (l & (width - 1));
}

inline unsigned warp_vote(unsigned mask, bool pred, const char* what) {
  WarpCtx<int> w = warp_enter<int>(mask, 32, what);
  const int v = pred ? 1 : 0;
  std::memcpy(w.slots + w.lane * 8, &v, sizeof(int));
  const unsigned m = w.bar->mask;
  arrive_and_wait(*w.bar);
  unsigned bits = 0;
  for (int l = 0; l < 32; ++l) {
    int x = 0;
    std::memcpy(&x, w.slots + l * 8, sizeof(int));
    if ((m >> l & 1u) && x) bits |= 1u << l;
  }
  Barrier& b = *w.bar;
  if (b.arrived == 0) {
    b.expected = __builtin_popcount(m);
    b.mask = m;
    b.width = 32;
    b.size = static_cast<int>(sizeof(int));
  }
  arrive_and_wait(b);
  return bits;
}

inline cudaError_t& last_error() { return st().last_error; }

// Called (by translate.py's instrumentation) right after each __shared__ declaration: the
// first thread of a block to reach it fills the variable with 0xFF bytes (NaN for floats,
// -1 for integers), so that no block sees what an earlier block left there.
inline void poison_shared(void* p, size_t bytes);

// extern __shared__ (translate.py): the launch's dynamic shared memory, `shmem` bytes.
inline void* dynamic_shared() {
  State& s = st();
  void* p = s.dyn_shared.data();
  poison_shared(p, s.dyn_bytes);
  return p;
}

inline void poison_shared(void* p, size_t bytes) {
  State& s = st();
  for (auto& e : s.shared_seen)
    if (e.first == p) {
      if (e.second != s.block_serial) {
        std::memset(p, 0xff, bytes);
        e.second = s.block_serial;
      }
      return;
    }
  std::memset(p, 0xff, bytes);
  s.shared_seen.emplace_back(p, s.block_serial);
}

}  // namespace emu

// ---- device intrinsics ------------------------------------------------------------------
inline void __syncthreads() {
  emu::State& s = emu::st();
  if (!s.in_launch || s.cur < 0) {
    std::fprintf(stderr, "cuda_emu: __syncthreads outside a kernel\n");
    std::abort();
  }
  ++s.stats.barriers;
  emu::arrive_and_wait(s.block_bar);
}
inline void __syncwarp(unsigned mask = 0xffffffffu) { (void)emu::warp_vote(mask, true, "__syncwarp"); }
inline void __threadfence() {}
inline void __threadfence_block() {}

template <class T>
T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = 32) {
  return emu::warp_exchange<T>(mask, var, width, "__shfl_xor_sync", emu::src_xor, laneMask);
}
template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return emu::warp_exchange<T>(mask, var, width, "__shfl_down_sync", emu::src_down, static_cast<int>(delta));
}
template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return emu::warp_exchange<T>(mask, var, width, "__shfl_up_sync", emu::src_up, static_cast<int>(delta));
}
template <class T>
T __shfl_sync(unsigned mask, T var, int srcLane, int width = 32) {
  return emu::warp_exchange<T>(mask, var, width, "__shfl_sync", emu::src_idx, srcLane);
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return emu::warp_vote(mask, pred != 0, "__ballot_sync"); }
inline int __any_sync(unsigned mask, int pred) { return emu::warp_vote(mask, pred != 0, "__any_sync") != 0; }
inline int __all_sync(unsigned mask, int pred) {
  return emu::warp_vote(mask, pred != 0, "__all_sync") == mask;
}
inline unsigned __activemask() { return 0xffffffffu; }

// Round-to-nearest single operations: plain IEEE float arithmetic (the build uses
// -ffp-contract=off, so nothing is fused; x86-64 float math is SSE, not x87).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __frcp_rn(float a) { return 1.f / a; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline int __float2int_rn(float x) { return static_cast<int>(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline unsigned __float_as_uint(float x) {
  unsigned u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
inline int __float_as_int(float x) {
  int u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float __int_as_float(int u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
inline long long __double_as_longlong(double x) {
  long long u;
  std::memcpy(&u, &x, 8);
  return u;
}
inline double __longlong_as_double(long long u) {
  double x;
  std::memcpy(&x, &u, 8);
  return x;
}
template <class T>
T __ldg(const T* p) {
  return *p;
}
// Atomics: sequential between sync points, hence atomic as emulated (they are reported in
// stats so a test can see a kernel use them).
template <class T>
T atomicAdd(T* p, T v) {
  T old = *p;
  *p = old + v;
  return old;
}
template <class T>
T atomicMax(T* p, T v) {
  T old = *p;
  *p = old > v ? old : v;
  return old;
}
template <class T>
T atomicMin(T* p, T v) {
  T old = *p;
  *p = old < v ? old : v;
  return old;
}
template <class T>
T atomicExch(T* p, T v) {
  T old = *p;
  *p = v;
  return old;
}
template <class T>
T atomicCAS(T* p, T cmp, T v) {
  T old = *p;
  if (old == cmp) *p = v;
  return old;
}

// ---- runtime API ------------------------------------------------------------------------
inline cudaError_t cudaGetLastError() {
  cudaError_t e = emu::last_error();
  emu::last_error() = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return emu::last_error(); }
inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    default: return "cudaError";
  }
}
inline const char* cudaGetErrorString(cudaError_t e) { return cudaGetErrorName(e); }
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t bytes, cudaStream_t = nullptr) {
  if (bytes && !p) return cudaErrorInvalidValue;
  if (bytes) std::memset(p, v, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemset(void* p, int v, size_t bytes) { return cudaMemsetAsync(p, v, bytes); }
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t = nullptr) {
  if (bytes && (!dst || !src)) return cudaErrorInvalidValue;
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind k) {
  return cudaMemcpyAsync(dst, src, bytes, k);
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

// ---- the one definition of the switch (see above) ------------------------------------------
#if defined(CUDA_EMU_MAIN) && CUDA_EMU_ASM_SWITCH
extern "C" __attribute__((visibility("hidden"))) void emu_fiber_main() { emu::fiber_entry(); }
// emu_ctx_switch(save_sp, load_sp): push the callee-saved state, store rsp in *save_sp,
// switch to load_sp, pop the state saved there, return into that context.
// emu_fiber_tramp: the first "return" of a new fiber; aligns the stack and enters it.
__asm__(
    ".text\n"
    ".globl emu_ctx_switch\n"
    ".hidden emu_ctx_switch\n"
    ".type emu_ctx_switch,@function\n"
    "emu_ctx_switch:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  subq $8, %rsp\n"
    "  stmxcsr (%rsp)\n"
    "  fnstcw 4(%rsp)\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n"
    "  fldcw 4(%rsp)\n"
    "  addq $8, %rsp\n"
    "  popq %r15\n"
    "  popq %r14\n"
    "  popq %r13\n"
    "  popq %r12\n"
    "  popq %rbx\n"
    "  popq %rbp\n"
    "  ret\n"
    ".size emu_ctx_switch, .-emu_ctx_switch\n"
    ".globl emu_fiber_tramp\n"
    ".hidden emu_fiber_tramp\n"
    ".type emu_fiber_tramp,@function\n"
    "emu_fiber_tramp:\n"
    "  andq $-16, %rsp\n"
    "  call emu_fiber_main\n"
    "  ud2\n"
    ".size emu_fiber_tramp, .-emu_fiber_tramp\n");
#endif
