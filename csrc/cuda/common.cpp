#include "cuda/common.h"

#include <cstring>
#include <string>

namespace halcdl::gpu {

namespace {

const char* base_name(const char* file) {
  const char* slash = std::strrchr(file, '/');
  return slash ? slash + 1 : file;
}

std::string where(const char* call, const char* file, int line) {
  return detail::cat(call, " at ", base_name(file), ":", line);
}

bool driver_error(cudaError_t e) {
  return e == cudaErrorInsufficientDriver || e == cudaErrorStubLibrary || e == cudaErrorCallRequiresNewerDriver ||
         e == cudaErrorSystemDriverMismatch || e == cudaErrorCompatNotSupportedOnDevice;
}

constexpr size_t kBlasWorkspace = size_t(32) << 20;  // cuBLAS' recommendation for Hopper

}  // namespace

void throw_cuda(cudaError_t e, const char* call, const char* file, int line) {
  // Clears a non-sticky error so that later calls do not report it again.
  (void)cudaGetLastError();
  const std::string what =
      detail::cat(cudaGetErrorName(e), " (", cudaGetErrorString(e), ") in ", where(call, file, line));
  if (e == cudaErrorMemoryAllocation)
    HALCDL_THROW(kErrNoGpuMemory, "GPU out of memory: ", what, " (lower the batch size)");
  if (e == cudaErrorNoDevice) HALCDL_THROW(kErrGpuRequired, "no CUDA GPU found: ", what);
  if (e == cudaErrorInvalidDevice) HALCDL_THROW(kErrGpuRequired, "invalid GPU: ", what);
  if (driver_error(e)) HALCDL_THROW(kErrCuda, "CUDA error ", what, ": the NVIDIA driver is missing or too old");
  if (e == cudaErrorNoKernelImageForDevice)
    HALCDL_THROW(kErrCuda, "CUDA error ", what, ": this build of halcdl has no kernels for this GPU");
  HALCDL_THROW(kErrCuda, "CUDA error ", what);
}

void throw_cudnn(cudnnStatus_t s, const char* call, const char* file, int line) {
  (void)cudaGetLastError();
  char last[256] = {0};
  cudnnGetLastErrorString(last, sizeof(last));
  std::string what = detail::cat(cudnnGetErrorString(s), " in ", where(call, file, line));
  if (last[0]) what += detail::cat(" [", last, "]");
  if (s == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED || s == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED)
    HALCDL_THROW(kErrNoGpuMemory, "GPU out of memory: cuDNN ", what, " (lower the batch size)");
  HALCDL_THROW(kErrCudnn, "cuDNN error ", what);
}

void throw_cublas(cublasStatus_t s, const char* call, const char* file, int line) {
  (void)cudaGetLastError();
  const std::string what =
      detail::cat(cublasGetStatusName(s), " (", cublasGetStatusString(s), ") in ", where(call, file, line));
  if (s == CUBLAS_STATUS_ALLOC_FAILED)
    HALCDL_THROW(kErrNoGpuMemory, "GPU out of memory: cuBLAS ", what, " (lower the batch size)");
  HALCDL_THROW(kErrCublas, "cuBLAS error ", what);
}

// ---- DeviceBuffer ------------------------------------------------------------------------

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    reset();
    p_ = o.p_;
    bytes_ = o.bytes_;
    o.p_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

void DeviceBuffer::resize(size_t bytes) {
  reset();
  if (bytes == 0) return;
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, bytes);
  if (e == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    HALCDL_THROW(kErrNoGpuMemory, "GPU out of memory: could not allocate ", (bytes + (1 << 20) - 1) >> 20,
                 " MiB (lower the batch size)");
  }
  if (e != cudaSuccess) throw_cuda(e, "cudaMalloc", __FILE__, __LINE__);
  // cudaMemset runs on the legacy stream, which does not order with the engines'
  // non-blocking streams: wait for it so the zeros are there before any use.
  e = cudaMemset(p, 0, bytes);
  if (e == cudaSuccess) e = cudaStreamSynchronize(cudaStreamLegacy);
  if (e != cudaSuccess) {
    cudaFree(p);
    throw_cuda(e, "cudaMemset", __FILE__, __LINE__);
  }
  p_ = p;
  bytes_ = bytes;
}

void DeviceBuffer::reset() {
  // Never throws; a non-sticky error is cleared so no later check reports it.
  if (p_ && cudaFree(p_) != cudaSuccess) (void)cudaGetLastError();
  p_ = nullptr;
  bytes_ = 0;
}

// ---- PinnedBuffer ------------------------------------------------------------------------

void PinnedBuffer::ensure(size_t bytes) {
  if (bytes <= bytes_) return;
  reset();
  void* p = nullptr;
  cudaError_t e = cudaHostAlloc(&p, bytes, cudaHostAllocPortable);
  if (e == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    HALCDL_THROW(kErrNoMemory, "not enough memory: could not allocate ", bytes, " bytes of page-locked host memory");
  }
  if (e != cudaSuccess) throw_cuda(e, "cudaHostAlloc", __FILE__, __LINE__);
  p_ = p;
  bytes_ = bytes;
}

void PinnedBuffer::reset() {
  if (p_ && cudaFreeHost(p_) != cudaSuccess) (void)cudaGetLastError();
  p_ = nullptr;
  bytes_ = 0;
}

// ---- DeviceGuard -------------------------------------------------------------------------

DeviceGuard::DeviceGuard(int device) {
  int cur = -1;
  CUDA_CHECK(cudaGetDevice(&cur));
  if (cur != device) {
    CUDA_CHECK(cudaSetDevice(device));
    prev_ = cur;
  }
}

DeviceGuard::~DeviceGuard() {
  if (prev_ >= 0) cudaSetDevice(prev_);
}

// ---- Context -----------------------------------------------------------------------------

namespace {
// Frees what a Context holds; never throws (destructor and failed-constructor path).
void release(Context& c) noexcept {
  if (c.stream) cudaStreamSynchronize(c.stream);
  if (c.blas) cublasDestroy(c.blas);
  if (c.dnn) cudnnDestroy(c.dnn);
  c.blas_ws.reset();
  if (c.stream) cudaStreamDestroy(c.stream);
  c.blas = nullptr;
  c.dnn = nullptr;
  c.stream = nullptr;
  (void)cudaGetLastError();
}
}  // namespace

Context::Context(int dev, const GpuOptions& o) : device(dev), opts(o) {
  DeviceGuard guard(device);
  try {
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    CUDNN_CHECK(cudnnCreate(&dnn));
    CUDNN_CHECK(cudnnSetStream(dnn, stream));
    CUBLAS_CHECK(cublasCreate(&blas));
    // cublasSetStream resets the workspace to cuBLAS' own pool: set the fixed one after it.
    CUBLAS_CHECK(cublasSetStream(blas, stream));
    blas_ws.resize(kBlasWorkspace);
    CUBLAS_CHECK(cublasSetWorkspace(blas, blas_ws.v(), blas_ws.bytes()));
    CUBLAS_CHECK(cublasSetAtomicsMode(blas, CUBLAS_ATOMICS_NOT_ALLOWED));
    apply_options();
  } catch (...) {
    release(*this);
    throw;
  }
}

Context::~Context() {
  int prev = -1;
  const bool switched = cudaGetDevice(&prev) == cudaSuccess && prev != device && cudaSetDevice(device) == cudaSuccess;
  release(*this);
  if (switched) cudaSetDevice(prev);
  (void)cudaGetLastError();
}

void Context::apply_options() {
  // Off: strict fp32 (pedantic also ignores NVIDIA_TF32_OVERRIDE).
  CUBLAS_CHECK(cublasSetMathMode(blas, opts.tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_PEDANTIC_MATH));
}

void Context::sync() { CUDA_CHECK(cudaStreamSynchronize(stream)); }

}  // namespace halcdl::gpu
