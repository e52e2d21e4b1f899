// A fake cuBLAS for the emulated GPU backend (tests/gpu_emu): the handle functions and
// cublasGemmEx that csrc/cuda uses, defined against the REAL cublas_v2.h / cublas_api.h, on
// host memory (pointers from tests/gpu_emu/fake_cudart.cpp's cudaMalloc).
//
// cublasGemmEx: column-major C = alpha·op(A)·op(B) + beta·C with op ∈ {N, T}, A/B/C CUDA_R_32F,
// compute types 32F, 32F_PEDANTIC and 32F_FAST_TF32, host-pointer alpha/beta; or A/B
// CUDA_R_16BF with C CUDA_R_16BF or CUDA_R_32F and compute 32F / 32F_PEDANTIC (bf16 products
// accumulated at least in fp32, the result rounded once to bf16 to nearest even). Products are
// accumulated in double (a reference, more exact than any GPU). TF32 is emulated: with
// CUBLAS_COMPUTE_32F_FAST_TF32, or CUBLAS_COMPUTE_32F on a handle in
// CUBLAS_TF32_TENSOR_OP_MATH, the inputs are first rounded to TF32 (10 mantissa bits, round to
// nearest), as the tensor cores do — so a path that forgets to switch TF32 off shows up as a
// float32 tolerance failure, as it would on a GPU. beta = 0 never reads C (cuBLAS semantics:
// NaNs in an uninitialised C do not propagate).
//
// Argument checks as cuBLAS documents them (dims ≥ 0, leading dimensions ≥ the stored rows,
// supported types and ops → CUBLAS_STATUS_INVALID_VALUE / NOT_SUPPORTED; a destroyed or null
// handle → NOT_INITIALIZED), plus what a GPU would fault on: every matrix's accessed extent
// must lie inside one live cudaMalloc allocation (fake_cudart_check_device_range), else
// CUBLAS_STATUS_EXECUTION_FAILED with a note on stderr. Streams are recorded, not used
// (everything runs synchronously).
#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <set>
#include <vector>

// fake_cudart.cpp (weak: the fake links without it, unchecked)
extern "C" int fake_cudart_check_device_range(const void* p, size_t bytes) __attribute__((weak));

struct cublasContext {
  cudaStream_t stream = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
  cublasAtomicsMode_t atomics = CUBLAS_ATOMICS_NOT_ALLOWED;
  cublasPointerMode_t pointer_mode = CUBLAS_POINTER_MODE_HOST;
};

namespace {

std::mutex g_mu;
std::set<cublasHandle_t>& handles() {
  static auto* s = new std::set<cublasHandle_t>;
  return *s;
}

bool valid(cublasHandle_t h) {
  std::lock_guard<std::mutex> lk(g_mu);
  return h && handles().count(h);
}

bool on_device(const void* p, size_t bytes) {
  return !fake_cudart_check_device_range || fake_cudart_check_device_range(p, bytes);
}

float tf32(float x) {
  if (!std::isfinite(x)) return x;
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u = (u + 0x0FFFu + ((u >> 13) & 1u)) & ~0x1FFFu;  // round to nearest even on 13 low bits
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

// Bytes spanned by a column-major rows × cols matrix with leading dimension ld.
size_t extent(int rows, int cols, int ld, size_t elem = sizeof(float)) {
  if (rows <= 0 || cols <= 0) return 0;
  return (static_cast<size_t>(cols - 1) * static_cast<size_t>(ld) + static_cast<size_t>(rows)) * elem;
}

// bfloat16 (CUDA_R_16BF) elements: the upper half of an fp32; stores round to nearest even.
float bf16_load(const void* p, size_t i) {
  uint32_t u = static_cast<uint32_t>(static_cast<const uint16_t*>(p)[i]) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
uint16_t bf16_round(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

}  // namespace

extern "C" {

cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
  auto* h = new cublasContext;
  std::lock_guard<std::mutex> lk(g_mu);
  handles().insert(h);
  *handle = h;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  {
    std::lock_guard<std::mutex> lk(g_mu);
    if (!handle || !handles().erase(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetVersion_v2(cublasHandle_t handle, int* version) {
  if (!valid(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!version) return CUBLAS_STATUS_INVALID_VALUE;
  *version = CUBLAS_VERSION;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  if (!valid(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  // as cuBLAS: setting a stream resets the workspace to cuBLAS' own pool
  handle->workspace = nullptr;
  handle->workspace_bytes = 0;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream_v2(cublasHandle_t handle, cudaStream_t* stream) {
  if (!valid(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!stream) return CUBLAS_STATUS_INVALID_VALUE;
  *stream = handle->stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void* workspace, size_t bytes) {
  if (!valid(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  // cuBLAS requires 256-byte alignment; the memory must be device memory of that size
  if ((reinterpret_cast<uintptr_t>(workspace) & 255u) != 0) return CUBLAS_STATUS_INVALID_VALUE;
  if (bytes && !on_device(workspace, bytes)) {
    std::fprintf(stderr, "fake_cublas: cublasSetWorkspace: %zu bytes at %p are not device memory\n", bytes, workspace);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  handle->workspace = workspace;
  handle->workspace_bytes = bytes;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (!valid(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t* mode) {
  if (!valid(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
  *mode = handle->math;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetAtomicsMode(cublasHandle_t handle, cublasAtomicsMode_t mode) {
  if (!valid(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->atomics = mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetAtomicsMode(cublasHandle_t handle, cublasAtomicsMode_t* mode) {
  if (!valid(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
  *mode = handle->atomics;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetPointerMode_v2(cublasHandle_t handle, cublasPointerMode_t mode) {
  if (!valid(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->pointer_mode = mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetPointerMode_v2(cublasHandle_t handle, cublasPointerMode_t* mode) {
  if (!valid(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
  *mode = handle->pointer_mode;
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasGetStatusName(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

const char* cublasGetStatusString(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR: return "error detected trying to check the license";
  }
  return "unknown error";
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void* alpha, const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
  (void)algo;
  if (!valid(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  // fp32 (A, B, C 32F) or bf16 inputs (A, B 16BF; C 16BF or 32F) with fp32 compute and scale,
  // the combinations cuBLAS's GemmEx table lists for CUBLAS_COMPUTE_32F
  const bool in_bf16 = Atype == CUDA_R_16BF;
  if (Atype != Btype || (Atype != CUDA_R_32F && Atype != CUDA_R_16BF)) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (!in_bf16 && Ctype != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (in_bf16 && Ctype != CUDA_R_32F && Ctype != CUDA_R_16BF) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (computeType != CUBLAS_COMPUTE_32F && computeType != CUBLAS_COMPUTE_32F_PEDANTIC &&
      (computeType != CUBLAS_COMPUTE_32F_FAST_TF32 || in_bf16))
    return CUBLAS_STATUS_NOT_SUPPORTED;
  const bool out_bf16 = Ctype == CUDA_R_16BF;
  const size_t ie = in_bf16 ? 2 : sizeof(float), oe = out_bf16 ? 2 : sizeof(float);
  if ((transa != CUBLAS_OP_N && transa != CUBLAS_OP_T) || (transb != CUBLAS_OP_N && transb != CUBLAS_OP_T))
    return CUBLAS_STATUS_NOT_SUPPORTED;  // C/H are the same as T for real types; not used here
  if (m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
  // stored shapes: op(A) is m×k, so A is m×k (N) or k×m (T); op(B) is k×n
  const int a_rows = transa == CUBLAS_OP_N ? m : k, a_cols = transa == CUBLAS_OP_N ? k : m;
  const int b_rows = transb == CUBLAS_OP_N ? k : n, b_cols = transb == CUBLAS_OP_N ? n : k;
  if (lda < std::max(1, a_rows) || ldb < std::max(1, b_rows) || ldc < std::max(1, m))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
  if (handle->pointer_mode != CUBLAS_POINTER_MODE_HOST) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  const bool use_k = k > 0 && al != 0.f;
  if ((use_k && (!on_device(A, extent(a_rows, a_cols, lda, ie)) || !on_device(B, extent(b_rows, b_cols, ldb, ie)))) ||
      !on_device(C, extent(m, n, ldc, oe))) {
    std::fprintf(stderr,
                 "fake_cublas: cublasGemmEx(%c%c, m=%d n=%d k=%d, lda=%d ldb=%d ldc=%d): a matrix is not inside one "
                 "device allocation (A %p, B %p, C %p)\n",
                 transa == CUBLAS_OP_N ? 'N' : 'T', transb == CUBLAS_OP_N ? 'N' : 'T', m, n, k, lda, ldb, ldc, A, B, C);
    return CUBLAS_STATUS_EXECUTION_FAILED;
  }
  // (bf16 inputs: already narrower than TF32)
  const bool tf = !in_bf16 && (computeType == CUBLAS_COMPUTE_32F_FAST_TF32 ||
                               (computeType == CUBLAS_COMPUTE_32F && (handle->math & 0xF) == CUBLAS_TF32_TENSOR_OP_MATH));
  const float* a = static_cast<const float*>(A);
  const float* b = static_cast<const float*>(B);
  float* c = static_cast<float*>(C);
  // op(A) as rows (m × k, row i contiguous) and op(B) as columns (n × k, column j contiguous)
  std::vector<float> ar, bc;
  if (use_k) {
    ar.resize(static_cast<size_t>(m) * k);
    bc.resize(static_cast<size_t>(n) * k);
    for (int i = 0; i < m; ++i)
      for (int l = 0; l < k; ++l) {
        const size_t at = transa == CUBLAS_OP_N ? i + static_cast<size_t>(l) * lda : l + static_cast<size_t>(i) * lda;
        const float v = in_bf16 ? bf16_load(A, at) : a[at];
        ar[static_cast<size_t>(i) * k + l] = tf ? tf32(v) : v;
      }
    for (int j = 0; j < n; ++j)
      for (int l = 0; l < k; ++l) {
        const size_t bt = transb == CUBLAS_OP_N ? l + static_cast<size_t>(j) * ldb : j + static_cast<size_t>(l) * ldb;
        const float v = in_bf16 ? bf16_load(B, bt) : b[bt];
        bc[static_cast<size_t>(j) * k + l] = tf ? tf32(v) : v;
      }
  }
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      double acc = 0;
      if (use_k) {
        const float* x = ar.data() + static_cast<size_t>(i) * k;
        const float* y = bc.data() + static_cast<size_t>(j) * k;
        for (int l = 0; l < k; ++l) acc += static_cast<double>(x[l]) * y[l];
      }
      const size_t ct = i + static_cast<size_t>(j) * ldc;
      const float old = be != 0.f ? (out_bf16 ? bf16_load(C, ct) : c[ct]) : 0.f;
      const double prev = be != 0.f ? static_cast<double>(be) * old : 0.0;
      const float r = static_cast<float>(static_cast<double>(al) * acc + prev);
      if (out_bf16) static_cast<uint16_t*>(C)[ct] = bf16_round(r);
      else c[ct] = r;
    }
  return CUBLAS_STATUS_SUCCESS;
}

// For tests (tests/test_gpu_bf16_fakes.py): one cublasGemmEx on a fresh handle, device pointers
// from fake_cudart_device_alloc; returns the cuBLAS status.
__attribute__((visibility("default"))) int fake_cublas_test_gemm(int transa, int transb, int m, int n, int k,
                                                                  float alpha, const void* A, int atype, int lda,
                                                                  const void* B, int btype, int ldb, float beta,
                                                                  void* C, int ctype, int ldc, int compute) {
  cublasHandle_t h = nullptr;
  cublasStatus_t st = cublasCreate(&h);
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  st = cublasGemmEx(h, cublasOperation_t(transa), cublasOperation_t(transb), m, n, k, &alpha, A, cudaDataType(atype),
                    lda, B, cudaDataType(btype), ldb, &beta, C, cudaDataType(ctype), ldc, cublasComputeType_t(compute),
                    CUBLAS_GEMM_DEFAULT);
  cublasDestroy(h);
  return st;
}

}  // extern "C"
