// Stub for the CUDA emulation (tests/cuda_emu): just what cuda/common.h declares with.
#pragma once
typedef struct cublasContext* cublasHandle_t;
enum cublasStatus_t {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_ALLOC_FAILED = 3,
};
