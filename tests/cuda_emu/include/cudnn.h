// Stub for the CUDA emulation (tests/cuda_emu): just what cuda/common.h declares with.
#pragma once
#include <cstddef>
typedef struct cudnnContext* cudnnHandle_t;
enum cudnnStatus_t {
  CUDNN_STATUS_SUCCESS = 0,
  CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED = 4001,
  CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED = 4002,
};
