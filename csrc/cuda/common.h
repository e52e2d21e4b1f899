// Infrastructure of the CUDA backend: error checks that turn CUDA / cuDNN / cuBLAS failures
// into halcdl::Error (never an abort), RAII device and pinned buffers, and the per-engine
// context (device, stream, handles, options).
//
// Error mapping: cudaErrorMemoryAllocation (and cuDNN/cuBLAS allocation failures) → 6021;
// other CUDA errors → 7709; cuBLAS → 7717; cuDNN → 7718. The message names the call.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "engine/device.h"

namespace halcdl::gpu {

[[noreturn]] void throw_cuda(cudaError_t e, const char* call, const char* file, int line);
[[noreturn]] void throw_cudnn(cudnnStatus_t s, const char* call, const char* file, int line);
[[noreturn]] void throw_cublas(cublasStatus_t s, const char* call, const char* file, int line);

}  // namespace halcdl::gpu

#define CUDA_CHECK(x)                                                           \
  do {                                                                          \
    cudaError_t e_ = (x);                                                       \
    if (e_ != cudaSuccess) ::halcdl::gpu::throw_cuda(e_, #x, __FILE__, __LINE__); \
  } while (0)
#define CUDNN_CHECK(x)                                                                      \
  do {                                                                                      \
    cudnnStatus_t s_ = (x);                                                                 \
    if (s_ != CUDNN_STATUS_SUCCESS) ::halcdl::gpu::throw_cudnn(s_, #x, __FILE__, __LINE__); \
  } while (0)
#define CUBLAS_CHECK(x)                                                                        \
  do {                                                                                         \
    cublasStatus_t s_ = (x);                                                                   \
    if (s_ != CUBLAS_STATUS_SUCCESS) ::halcdl::gpu::throw_cublas(s_, #x, __FILE__, __LINE__); \
  } while (0)
// After a kernel launch: launch-configuration errors surface here, not at the next sync.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

namespace halcdl::gpu {

// Device memory (cudaMalloc). resize() discards the contents; 6021 when the GPU is full.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) { resize(bytes); }
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr; o.bytes_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  void resize(size_t bytes);   // zero-filled
  void reset();
  float* f() const { return static_cast<float*>(p_); }
  int* i() const { return static_cast<int*>(p_); }
  char* c() const { return static_cast<char*>(p_); }
  void* v() const { return p_; }
  size_t bytes() const { return bytes_; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// Page-locked host memory (cudaHostAlloc), for one-transfer batch uploads.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer() { reset(); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  void ensure(size_t bytes);   // grows (contents lost), never shrinks
  void reset();
  float* f() const { return static_cast<float*>(p_); }
  int* i() const { return static_cast<int*>(p_); }
  size_t bytes() const { return bytes_; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// Makes `device` current for the scope, restoring the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();

 private:
  int prev_ = -1;
};

// One engine's CUDA objects. Everything runs on `stream`; the handles are bound to it.
struct Context {
  int device = 0;
  GpuOptions opts;
  cudaStream_t stream = nullptr;
  cudnnHandle_t dnn = nullptr;
  cublasHandle_t blas = nullptr;
  DeviceBuffer blas_ws;        // fixed cuBLAS workspace: no allocation inside a step
  Context(int device, const GpuOptions& opts);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  void apply_options();        // cuBLAS math mode from opts.tf32
  void sync();                 // cudaStreamSynchronize, errors checked
};

}  // namespace halcdl::gpu
