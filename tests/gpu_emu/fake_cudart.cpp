// A fake CUDA runtime for the emulated GPU backend (tests/gpu_emu): the runtime API functions
// csrc/cuda/*.cpp calls, defined against the REAL cuda_runtime_api.h, on host memory.
//
// One device, "halcdl CPU emulation", compute capability 9.0, whose memory is
// HALCDL_EMU_GPU_MEMORY bytes (a plain number, or with a K/M/G suffix; default 8G).
// cudaMalloc is an aligned host allocation that FAILS with cudaErrorMemoryAllocation once the
// live total would exceed that, so the out-of-memory paths (6021) run. Everything executes at
// once, on the calling thread: streams are handles that are checked (a destroyed or unknown
// stream is cudaErrorInvalidResourceHandle) and otherwise ignored.
//
// Checks a real GPU would not make (to catch host-code bugs that host memory would hide):
//   - cudaMemcpy(Async) / cudaMemset(Async): every device-side range must lie inside ONE live
//     cudaMalloc allocation (out of bounds, freed or host memory passed as device memory →
//     cudaErrorInvalidValue, with a note on stderr); a host-side pointer must not be device
//     memory (a mixed-up cudaMemcpyKind);
//   - cudaFree / cudaFreeHost of a pointer that is not a live allocation → cudaErrorInvalidValue;
//   - fresh cudaMalloc memory is 0xFF bytes (NaN floats), and freed device memory is poisoned
//     the same way and quarantined (not reused until 256 MiB more have been freed), so a
//     read of uninitialised or freed device memory shows up as NaN.
//
// HALCDL_EMU_NO_DRIVER=1: every call that needs the driver fails with
// cudaErrorInsufficientDriver (a machine whose NVIDIA driver is missing or too old).
// HALCDL_EMU_NO_DEVICE=1: a driver but no GPU (cudaGetDeviceCount → cudaErrorNoDevice, 0).
//
// Errors: every failing call records its error as the thread's last error; cudaGetLastError
// returns and clears it, cudaPeekAtLastError returns it (no error is sticky). A failed
// emulated kernel launch (tests/cuda_emu) reports through the same pair, via the weak hook
// halcdl_emu_kernel_error (tests/gpu_emu/bridge_emu.cpp).
//
// For tests (extern "C", exported): fake_cudart_malloc_count() (cudaMalloc calls so far,
// failed ones included), fake_cudart_live_bytes(), fake_cudart_live_allocations(),
// fake_cudart_peak_bytes(), fake_cudart_check_device_range(ptr, bytes) (1 when [ptr, ptr +
// bytes) lies inside one live device allocation: for the fake cuDNN / cuBLAS),
// fake_cudart_fail_malloc_after(n) (fault injection: the n-th next cudaMalloc fails),
// fake_cudart_device_alloc(bytes) / fake_cudart_device_free(ptr) (tests/gpu_emu/fake_cupy).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <string>

#define FAKE_EXPORT extern "C" __attribute__((visibility("default")))

// From bridge_emu.cpp (the emulated kernels' own last error), absent in a build without it.
extern "C" int halcdl_emu_kernel_error(int clear) __attribute__((weak));
extern "C" const char* halcdl_emu_kernel_message() __attribute__((weak));

namespace {

constexpr size_t kAlign = 256;  // cudaMalloc's alignment guarantee

size_t parse_bytes(const char* s, size_t dflt) {
  if (!s || !*s) return dflt;
  char* end = nullptr;
  const double v = std::strtod(s, &end);
  if (end == s || v < 0) return dflt;
  double mult = 1;
  switch (*end) {
    case 'k': case 'K': mult = 1024.0; break;
    case 'm': case 'M': mult = 1024.0 * 1024; break;
    case 'g': case 'G': mult = 1024.0 * 1024 * 1024; break;
    default: break;
  }
  return static_cast<size_t>(v * mult);
}

size_t memory_limit() {
  static const size_t limit = parse_bytes(std::getenv("HALCDL_EMU_GPU_MEMORY"), size_t{8} << 30);
  return limit;
}

bool env_flag(const char* name) {
  const char* s = std::getenv(name);
  return s && *s && std::strcmp(s, "0") != 0;
}
bool no_driver() { return env_flag("HALCDL_EMU_NO_DRIVER"); }
bool no_device() { return env_flag("HALCDL_EMU_NO_DEVICE"); }
int device_count() { return no_device() ? 0 : 1; }

struct State {
  std::mutex mu;
  std::map<uintptr_t, size_t> device;  // live cudaMalloc allocations: start → bytes
  std::map<uintptr_t, size_t> host;    // live cudaHostAlloc allocations
  std::set<uintptr_t> streams;         // live streams
  size_t live = 0, peak = 0;
  std::atomic<uint64_t> mallocs{0};
  long long fail_after = -1;  // fake_cudart_fail_malloc_after: >= 0 counts down to an injected failure
  // freed device blocks, poisoned and kept from reuse for a while (use after free → NaN)
  std::deque<std::pair<void*, size_t>> quarantine;
  size_t quarantine_bytes = 0;
};
constexpr size_t kQuarantineBytes = size_t{256} << 20;
constexpr size_t kQuarantineBlocks = 4096;
State& state() {
  static State* s = new State;  // never destroyed: frees from static destructors stay valid
  return *s;
}

thread_local cudaError_t t_last = cudaSuccess;
thread_local int t_device = 0;

cudaError_t fail(cudaError_t e) {
  t_last = e;
  return e;
}

// [p, p + bytes) inside one live allocation of `m`? (caller holds the lock)
bool inside(const std::map<uintptr_t, size_t>& m, const void* p, size_t bytes) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = m.upper_bound(a);
  if (it == m.begin()) return false;
  --it;
  return a >= it->first && a - it->first <= it->second && bytes <= it->second - (a - it->first);
}

bool is_device(const void* p, size_t bytes) {
  State& s = state();
  std::lock_guard<std::mutex> lk(s.mu);
  return inside(s.device, p, bytes);
}
bool touches_device(const void* p) {
  State& s = state();
  std::lock_guard<std::mutex> lk(s.mu);
  return inside(s.device, p, 1);
}

bool valid_stream(cudaStream_t st) {
  if (st == nullptr || st == cudaStreamLegacy || st == cudaStreamPerThread) return true;
  State& s = state();
  std::lock_guard<std::mutex> lk(s.mu);
  return s.streams.count(reinterpret_cast<uintptr_t>(st)) != 0;
}

cudaError_t bad(const char* call, const char* why, const void* p, size_t bytes) {
  std::fprintf(stderr, "fake_cudart: %s: %s (pointer %p, %zu bytes)\n", call, why, p, bytes);
  return fail(cudaErrorInvalidValue);
}

cudaError_t copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t st, const char* call) {
  if (no_driver()) return fail(cudaErrorInsufficientDriver);
  if (!valid_stream(st)) return fail(cudaErrorInvalidResourceHandle);
  if (bytes == 0) return cudaSuccess;
  if (!dst || !src) return bad(call, "null pointer", dst ? src : dst, bytes);
  const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (kind == cudaMemcpyDefault) {
    // Direction inferred from the pointers (unified addressing): any device part is checked.
    if (touches_device(dst) && !is_device(dst, bytes)) return bad(call, "destination out of bounds", dst, bytes);
    if (touches_device(src) && !is_device(src, bytes)) return bad(call, "source out of bounds", src, bytes);
  } else if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault) {
    return fail(cudaErrorInvalidMemcpyDirection);
  } else {
    if (dst_dev && !is_device(dst, bytes))
      return bad(call, "destination is not inside one device allocation", dst, bytes);
    if (src_dev && !is_device(src, bytes)) return bad(call, "source is not inside one device allocation", src, bytes);
    if (!dst_dev && touches_device(dst)) return bad(call, "host destination is device memory (kind mixed up)", dst, bytes);
    if (!src_dev && touches_device(src)) return bad(call, "host source is device memory (kind mixed up)", src, bytes);
  }
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t set(void* p, int v, size_t bytes, cudaStream_t st, const char* call) {
  if (no_driver()) return fail(cudaErrorInsufficientDriver);
  if (!valid_stream(st)) return fail(cudaErrorInvalidResourceHandle);
  if (bytes == 0) return cudaSuccess;
  if (!is_device(p, bytes)) return bad(call, "range is not inside one device allocation", p, bytes);
  std::memset(p, v, bytes);
  return cudaSuccess;
}

}  // namespace

// ---- test hooks ------------------------------------------------------------------------------
FAKE_EXPORT unsigned long long fake_cudart_malloc_count() { return state().mallocs.load(); }
FAKE_EXPORT unsigned long long fake_cudart_live_bytes() {
  std::lock_guard<std::mutex> lk(state().mu);
  return state().live;
}
FAKE_EXPORT unsigned long long fake_cudart_peak_bytes() {
  std::lock_guard<std::mutex> lk(state().mu);
  return state().peak;
}
FAKE_EXPORT unsigned long long fake_cudart_live_allocations() {
  std::lock_guard<std::mutex> lk(state().mu);
  return state().device.size();
}
// Fault injection: the n-th next cudaMalloc (0 = the very next) fails with
// cudaErrorMemoryAllocation, once; n < 0 disarms. Returns how many calls were still to go.
FAKE_EXPORT long long fake_cudart_fail_malloc_after(long long n) {
  std::lock_guard<std::mutex> lk(state().mu);
  const long long prev = state().fail_after;
  state().fail_after = n < 0 ? -1 : n;
  return prev;
}
FAKE_EXPORT int fake_cudart_check_device_range(const void* p, size_t bytes) { return is_device(p, bytes) ? 1 : 0; }

// Device memory for a test's own arrays (tests/gpu_emu/fake_cupy): cudaMalloc / cudaFree, so
// the engine's checks accept the pointers as device memory. Null when the allocation fails.
FAKE_EXPORT void* fake_cudart_device_alloc(size_t bytes) {
  void* p = nullptr;
  return cudaMalloc(&p, bytes ? bytes : 1) == cudaSuccess ? p : nullptr;
}
FAKE_EXPORT int fake_cudart_device_free(void* p) { return cudaFree(p) == cudaSuccess ? 0 : 1; }

// ---- errors ----------------------------------------------------------------------------------
extern "C" {

cudaError_t cudaGetLastError(void) {
  cudaError_t e = t_last;
  t_last = cudaSuccess;
  if (halcdl_emu_kernel_error) {
    const int k = halcdl_emu_kernel_error(1);
    if (e == cudaSuccess) e = static_cast<cudaError_t>(k);
  }
  return e;
}

cudaError_t cudaPeekAtLastError(void) {
  if (t_last == cudaSuccess && halcdl_emu_kernel_error) return static_cast<cudaError_t>(halcdl_emu_kernel_error(0));
  return t_last;
}

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
#define NAME(x) \
  case x:       \
    return #x;
    NAME(cudaSuccess)
    NAME(cudaErrorInvalidValue)
    NAME(cudaErrorMemoryAllocation)
    NAME(cudaErrorInitializationError)
    NAME(cudaErrorInvalidConfiguration)
    NAME(cudaErrorInvalidMemcpyDirection)
    NAME(cudaErrorStubLibrary)
    NAME(cudaErrorInsufficientDriver)
    NAME(cudaErrorCallRequiresNewerDriver)
    NAME(cudaErrorNoDevice)
    NAME(cudaErrorInvalidDevice)
    NAME(cudaErrorNoKernelImageForDevice)
    NAME(cudaErrorInvalidResourceHandle)
    NAME(cudaErrorLaunchFailure)
    NAME(cudaErrorSystemDriverMismatch)
    NAME(cudaErrorCompatNotSupportedOnDevice)
    NAME(cudaErrorIllegalAddress)
    NAME(cudaErrorUnknown)
#undef NAME
    default:
      return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure:
      // the emulator's diagnostic (which kernel, what misuse), when it has one
      if (halcdl_emu_kernel_message && *halcdl_emu_kernel_message()) return halcdl_emu_kernel_message();
      return "unspecified launch failure";
    default: return "unrecognized error code";
  }
}

// ---- devices ---------------------------------------------------------------------------------
cudaError_t cudaGetDeviceCount(int* count) {
  if (!count) return fail(cudaErrorInvalidValue);
  if (no_driver()) {
    *count = 0;
    return fail(cudaErrorInsufficientDriver);
  }
  if (no_device()) {
    *count = 0;
    return fail(cudaErrorNoDevice);  // as CUDA on a machine with a driver and no GPU
  }
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  if (!device) return fail(cudaErrorInvalidValue);
  if (no_driver()) return fail(cudaErrorInsufficientDriver);
  *device = t_device;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (no_driver()) return fail(cudaErrorInsufficientDriver);
  if (device < 0 || device >= device_count()) return fail(cudaErrorInvalidDevice);
  t_device = device;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (!prop) return fail(cudaErrorInvalidValue);
  if (no_driver()) return fail(cudaErrorInsufficientDriver);
  if (device < 0 || device >= device_count()) return fail(cudaErrorInvalidDevice);
  std::memset(prop, 0, sizeof(*prop));
  std::snprintf(prop->name, sizeof(prop->name), "%s", "halcdl CPU emulation");
  prop->totalGlobalMem = memory_limit();
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = 132;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->maxThreadsDim[0] = prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 2147483647;
  prop->maxGridSize[1] = prop->maxGridSize[2] = 65535;
  prop->sharedMemPerBlock = 48 * 1024;
  prop->regsPerBlock = 65536;
  prop->totalConstMem = 64 * 1024;
  prop->unifiedAddressing = 1;
  prop->pciBusID = 1;
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b) {
  if (no_driver()) return fail(cudaErrorInsufficientDriver);
  State& s = state();
  std::lock_guard<std::mutex> lk(s.mu);
  if (free_b) *free_b = memory_limit() - s.live;
  if (total_b) *total_b = memory_limit();
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) { return no_driver() ? fail(cudaErrorInsufficientDriver) : cudaSuccess; }

// ---- memory ----------------------------------------------------------------------------------
cudaError_t cudaMalloc(void** p, size_t bytes) {
  if (!p) return fail(cudaErrorInvalidValue);
  *p = nullptr;
  if (no_driver()) return fail(cudaErrorInsufficientDriver);
  State& s = state();
  s.mallocs.fetch_add(1);
  {
    std::lock_guard<std::mutex> lk(s.mu);
    if (s.fail_after >= 0 && s.fail_after-- == 0) return fail(cudaErrorMemoryAllocation);  // injected
  }
  if (bytes == 0) return cudaSuccess;  // as CUDA: a null pointer, no error
  const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  {
    std::lock_guard<std::mutex> lk(s.mu);
    if (rounded > memory_limit() || s.live > memory_limit() - rounded) return fail(cudaErrorMemoryAllocation);
    s.live += rounded;  // reserved before the (unlocked) allocation
  }
  void* q = std::aligned_alloc(kAlign, rounded);
  std::lock_guard<std::mutex> lk(s.mu);
  if (!q) {
    s.live -= rounded;
    return fail(cudaErrorMemoryAllocation);
  }
  s.device[reinterpret_cast<uintptr_t>(q)] = bytes;
  if (s.live > s.peak) s.peak = s.live;
  std::memset(q, 0xFF, rounded);  // fresh device memory is garbage: NaN here
  *p = q;
  return cudaSuccess;
}

cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  if (no_driver()) return fail(cudaErrorInsufficientDriver);
  State& s = state();
  {
    std::lock_guard<std::mutex> lk(s.mu);
    auto it = s.device.find(reinterpret_cast<uintptr_t>(p));
    if (it == s.device.end()) {
      std::fprintf(stderr, "fake_cudart: cudaFree(%p): not a live device allocation (double free?)\n", p);
      return fail(cudaErrorInvalidValue);
    }
    const size_t rounded = (it->second + kAlign - 1) / kAlign * kAlign;
    s.live -= rounded;
    s.device.erase(it);
    // Quarantine: poisoned (NaN) and not handed out again for a while, so a kernel or copy
    // that still uses a freed buffer reads NaN instead of the next allocation's data.
    std::memset(p, 0xFF, rounded);
    s.quarantine.emplace_back(p, rounded);
    s.quarantine_bytes += rounded;
    while (!s.quarantine.empty() &&
           (s.quarantine_bytes > kQuarantineBytes || s.quarantine.size() > kQuarantineBlocks)) {
      std::free(s.quarantine.front().first);
      s.quarantine_bytes -= s.quarantine.front().second;
      s.quarantine.pop_front();
    }
  }
  return cudaSuccess;
}

cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned int /*flags*/) {
  if (!p) return fail(cudaErrorInvalidValue);
  *p = nullptr;
  if (no_driver()) return fail(cudaErrorInsufficientDriver);
  void* q = std::aligned_alloc(kAlign, (std::max<size_t>(bytes, 1) + kAlign - 1) / kAlign * kAlign);
  if (!q) return fail(cudaErrorMemoryAllocation);
  State& s = state();
  std::lock_guard<std::mutex> lk(s.mu);
  s.host[reinterpret_cast<uintptr_t>(q)] = bytes;
  *p = q;
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** p, size_t bytes) { return cudaHostAlloc(p, bytes, 0); }

cudaError_t cudaFreeHost(void* p) {
  if (!p) return cudaSuccess;
  State& s = state();
  {
    std::lock_guard<std::mutex> lk(s.mu);
    auto it = s.host.find(reinterpret_cast<uintptr_t>(p));
    if (it == s.host.end()) {
      std::fprintf(stderr, "fake_cudart: cudaFreeHost(%p): not a live cudaHostAlloc allocation\n", p);
      return fail(cudaErrorInvalidValue);
    }
    s.host.erase(it);
  }
  std::free(p);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  return copy(dst, src, bytes, kind, nullptr, "cudaMemcpy");
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t st) {
  return copy(dst, src, bytes, kind, st, "cudaMemcpyAsync");
}
cudaError_t cudaMemset(void* p, int v, size_t bytes) { return set(p, v, bytes, nullptr, "cudaMemset"); }
cudaError_t cudaMemsetAsync(void* p, int v, size_t bytes, cudaStream_t st) {
  return set(p, v, bytes, st, "cudaMemsetAsync");
}

// ---- streams ---------------------------------------------------------------------------------
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* st, unsigned int /*flags*/) {
  if (!st) return fail(cudaErrorInvalidValue);
  if (no_driver()) return fail(cudaErrorInsufficientDriver);
  auto* h = new char[16];  // a unique address per stream
  State& s = state();
  std::lock_guard<std::mutex> lk(s.mu);
  s.streams.insert(reinterpret_cast<uintptr_t>(h));
  *st = reinterpret_cast<cudaStream_t>(h);
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* st) { return cudaStreamCreateWithFlags(st, cudaStreamDefault); }

cudaError_t cudaStreamDestroy(cudaStream_t st) {
  if (st == nullptr || st == cudaStreamLegacy || st == cudaStreamPerThread) return fail(cudaErrorInvalidResourceHandle);
  State& s = state();
  {
    std::lock_guard<std::mutex> lk(s.mu);
    if (!s.streams.erase(reinterpret_cast<uintptr_t>(st))) return fail(cudaErrorInvalidResourceHandle);
  }
  delete[] reinterpret_cast<char*>(st);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t st) {
  if (no_driver()) return fail(cudaErrorInsufficientDriver);
  if (!valid_stream(st)) return fail(cudaErrorInvalidResourceHandle);
  return cudaSuccess;
}

}  // extern "C"
