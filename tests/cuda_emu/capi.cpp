// C ABI over csrc/cuda/kernels.cuh for the CUDA emulation, loaded with ctypes by
// tests/cuda_emu/emu.py. Every launcher is wrapped as `int emu_<name>(...)` on raw host
// pointers: 0 on success, 1 when it threw (the message: emu_error_message()). The stream
// argument is a dummy (the emulation runs each launch to completion before returning).
#include <exception>
#include <string>

#include "cuda/common.h"
#include "cuda/kernels.cuh"
#include "cuda_emu.h"

// cuda/common.h's error entry points (common.cpp needs the real libraries): the same error
// codes, with the emulator's diagnostic appended.
namespace halcdl::gpu {
void throw_cuda(cudaError_t e, const char* call, const char* file, int line) {
  (void)cudaGetLastError();
  std::string what = std::string(cudaGetErrorName(e)) + " in " + call + " at " + file + ":" + std::to_string(line);
  if (!emu::last_message().empty()) what += " [" + emu::last_message() + "]";
  throw Error(e == cudaErrorMemoryAllocation ? kErrNoGpuMemory : kErrCuda, "CUDA error " + what);
}
void throw_cudnn(cudnnStatus_t s, const char* call, const char*, int) {
  throw Error(kErrCudnn, std::string("cuDNN error ") + std::to_string(static_cast<int>(s)) + " in " + call);
}
void throw_cublas(cublasStatus_t s, const char* call, const char*, int) {
  throw Error(kErrCublas, std::string("cuBLAS error ") + std::to_string(static_cast<int>(s)) + " in " + call);
}
}  // namespace halcdl::gpu

namespace {
std::string g_error;
const cudaStream_t kStream = nullptr;
}  // namespace

namespace k = halcdl::gpu::k;

#define EMU_CALL(body)                     \
  try {                                    \
    emu::st().message.clear();             \
    body;                                  \
    return 0;                              \
  } catch (const std::exception& e) {      \
    g_error = e.what();                    \
    return 1;                              \
  } catch (...) {                          \
    g_error = "unknown exception";         \
    return 1;                              \
  }

extern "C" {

// ---- emulator control ------------------------------------------------------------------
const char* emu_error_message() { return g_error.c_str(); }
void emu_set_schedule(int mode, uint64_t seed) { emu::set_schedule(mode, seed); }
// launches, blocks, threads, barriers, warp_ops, switches
void emu_stats(uint64_t* out) {
  const emu::Stats& s = emu::st().stats;
  out[0] = s.launches;
  out[1] = s.blocks;
  out[2] = s.threads;
  out[3] = s.barriers;
  out[4] = s.warp_ops;
  out[5] = s.switches;
}
void emu_reset() {
  emu::st().stats = emu::Stats{};
  emu::st().log.clear();
  emu::st().last_error = cudaSuccess;
  emu::st().message.clear();
}
int emu_log_size() { return static_cast<int>(emu::st().log.size()); }
// name of launch i; grid and block dims into dims[0..6), shmem into dims[6]
const char* emu_log_entry(int i, uint64_t* dims) {
  const emu::LogEntry& e = emu::st().log.at(static_cast<size_t>(i));
  dims[0] = e.grid.x, dims[1] = e.grid.y, dims[2] = e.grid.z;
  dims[3] = e.block.x, dims[4] = e.block.y, dims[5] = e.block.z;
  dims[6] = e.shmem;
  return e.name.c_str();
}

// ---- layout ----------------------------------------------------------------------------
int emu_nchw_to_nhwc(const float* src, float* dst, int64_t n, int64_t c, int64_t hw) {
  EMU_CALL(k::nchw_to_nhwc(src, dst, n, c, hw, kStream))
}
int emu_nhwc_to_nchw(const float* src, float* dst, int64_t n, int64_t c, int64_t hw) {
  EMU_CALL(k::nhwc_to_nchw(src, dst, n, c, hw, kStream))
}
int emu_f32_to_bf16(const float* src, uint16_t* dst, size_t n) { EMU_CALL(k::f32_to_bf16(src, dst, n, kStream)) }
int emu_bf16_to_f32(const uint16_t* src, float* dst, size_t n) { EMU_CALL(k::bf16_to_f32(src, dst, n, kStream)) }

// ---- elementwise -----------------------------------------------------------------------
int emu_relu_forward(const float* x, float* y, size_t n) { EMU_CALL(k::relu_forward(x, y, n, kStream)) }
int emu_relu_backward(const float* y, const float* dy, float* dx, size_t n) {
  EMU_CALL(k::relu_backward(y, dy, dx, n, kStream))
}
int emu_relu6_forward(const float* x, float* y, size_t n) { EMU_CALL(k::relu6_forward(x, y, n, kStream)) }
int emu_relu6_backward(const float* x, const float* dy, float* dx, size_t n) {
  EMU_CALL(k::relu6_backward(x, dy, dx, n, kStream))
}
int emu_add(const float* a, const float* b, float* y, size_t n) { EMU_CALL(k::add(a, b, y, n, kStream)) }
int emu_accumulate(float* dst, const float* src, size_t n) { EMU_CALL(k::accumulate(dst, src, n, kStream)) }
int emu_mul(const float* a, const float* b, float* y, size_t n) { EMU_CALL(k::mul(a, b, y, n, kStream)) }
int emu_scale(float* x, float a, size_t n) { EMU_CALL(k::scale(x, a, n, kStream)) }
int emu_dropout_forward(const float* x, float* y, float* mask, size_t n, uint64_t seed, uint64_t threshold,
                        float keep) {
  EMU_CALL(k::dropout_forward(x, y, mask, n, seed, threshold, keep, kStream))
}

// ---- channel-wise ----------------------------------------------------------------------
int emu_bias_add(float* y, const float* bias, int64_t rows, int64_t c) { EMU_CALL(k::bias_add(y, bias, rows, c, kStream)) }
size_t emu_bias_grad_scratch_floats(int64_t rows, int64_t c) { return k::bias_grad_scratch_floats(rows, c); }
int emu_bias_grad(const float* dy, float* db, int64_t rows, int64_t c, float* scratch) {
  EMU_CALL(k::bias_grad(dy, db, rows, c, scratch, kStream))
}
int emu_gap_forward(const float* x, float* y, int64_t n, int64_t hw, int64_t c) {
  EMU_CALL(k::gap_forward(x, y, n, hw, c, kStream))
}
int emu_gap_backward(const float* dy, float* dx, int64_t n, int64_t hw, int64_t c) {
  EMU_CALL(k::gap_backward(dy, dx, n, hw, c, kStream))
}
int emu_concat_forward(const float* x, float* y, int64_t rows, int64_t ci, int64_t off, int64_t ctot) {
  EMU_CALL(k::concat_forward(x, y, rows, ci, off, ctot, kStream))
}
int emu_concat_backward(const float* dy, float* dx, int64_t rows, int64_t ci, int64_t off, int64_t ctot) {
  EMU_CALL(k::concat_backward(dy, dx, rows, ci, off, ctot, kStream))
}
int emu_upsample_nearest_forward(const float* x, float* y, int64_t n, int64_t h, int64_t w, int64_t c, int f) {
  EMU_CALL(k::upsample_nearest_forward(x, y, n, h, w, c, f, kStream))
}
int emu_upsample_nearest_backward(const float* dy, float* dx, int64_t n, int64_t h, int64_t w, int64_t c, int f) {
  EMU_CALL(k::upsample_nearest_backward(dy, dx, n, h, w, c, f, kStream))
}
int emu_upsample_bilinear_forward(const float* x, float* y, int64_t n, int64_t h, int64_t w, int64_t c, int f) {
  EMU_CALL(k::upsample_bilinear_forward(x, y, n, h, w, c, f, kStream))
}
int emu_upsample_bilinear_backward(const float* dy, float* dx, int64_t n, int64_t h, int64_t w, int64_t c, int f) {
  EMU_CALL(k::upsample_bilinear_backward(dy, dx, n, h, w, c, f, kStream))
}
int emu_softmax_rows(const float* x, float* y, int64_t rows, int64_t k) { EMU_CALL(k::softmax_rows(x, y, rows, k, kStream)) }
int emu_softmax_rows_backward(const float* y, const float* dy, float* dx, int64_t rows, int64_t k) {
  EMU_CALL(k::softmax_rows_backward(y, dy, dx, rows, k, kStream))
}

// ---- losses ----------------------------------------------------------------------------
size_t emu_loss_scratch_doubles(int64_t rows) { return k::loss_scratch_doubles(rows); }
int emu_softmax_xent(const float* logits, const int* labels, const float* class_w, int64_t n, int64_t kk, float scale,
                     float* dlogits, double* loss, double* scratch) {
  EMU_CALL(k::softmax_xent(logits, labels, class_w, n, kk, scale, dlogits, loss, scratch, kStream))
}
int emu_softmax_xent_pixels(const float* logits, const int* labels, const float* class_w, const float* pixel_w,
                            int64_t rows, int64_t kk, float scale, float* dlogits, double* loss, double* scratch) {
  EMU_CALL(k::softmax_xent_pixels(logits, labels, class_w, pixel_w, rows, kk, scale, dlogits, loss, scratch, kStream))
}
int emu_softmax_argmax_rows(const float* logits, int64_t rows, int64_t kk, int* index, float* confidence) {
  EMU_CALL(k::softmax_argmax_rows(logits, rows, kk, index, confidence, kStream))
}

// ---- optimizer -------------------------------------------------------------------------
int emu_sum_squares(const float* x, size_t n, double* out, double* scratch) {
  EMU_CALL(k::sum_squares(x, n, out, scratch, kStream))
}
int emu_check_finite(const float* x, size_t n, int* flag) { EMU_CALL(k::check_finite(x, n, flag, kStream)) }
int emu_sgd_update(float* w, const float* grad, float* v, size_t n_weight, size_t n, float lr, float momentum,
                   float weight_prior) {
  EMU_CALL(k::sgd_update(w, grad, v, n_weight, n, lr, momentum, weight_prior, kStream))
}
int emu_adam_update(float* w, const float* grad, float* m, float* v, size_t n_weight, size_t n, float lr, float beta1,
                    float beta2, float eps, float weight_prior, int64_t t) {
  EMU_CALL(k::adam_update(w, grad, m, v, n_weight, n, lr, beta1, beta2, eps, weight_prior, t, kStream))
}
int emu_sgd_update_finite(const float* w, const float* grad, const float* v, size_t n_weight, size_t n, float lr,
                          float momentum, float weight_prior, int* flag) {
  EMU_CALL(k::sgd_update_finite(w, grad, v, n_weight, n, lr, momentum, weight_prior, flag, kStream))
}
int emu_adam_update_finite(const float* w, const float* grad, const float* m, const float* v, size_t n_weight,
                           size_t n, float lr, float beta1, float beta2, float eps, float weight_prior, int64_t t,
                           int* flag) {
  EMU_CALL(k::adam_update_finite(w, grad, m, v, n_weight, n, lr, beta1, beta2, eps, weight_prior, t, flag, kStream))
}

// ---- bfloat16 --------------------------------------------------------------------------
int emu_relu_forward_bf16(const uint16_t* x, uint16_t* y, size_t n) { EMU_CALL(k::relu_forward_bf16(x, y, n, kStream)) }
int emu_relu_backward_bf16(const uint16_t* y, const uint16_t* dy, uint16_t* dx, size_t n) {
  EMU_CALL(k::relu_backward_bf16(y, dy, dx, n, kStream))
}
int emu_relu6_forward_bf16(const uint16_t* x, uint16_t* y, size_t n) { EMU_CALL(k::relu6_forward_bf16(x, y, n, kStream)) }
int emu_relu6_backward_bf16(const uint16_t* x, const uint16_t* dy, uint16_t* dx, size_t n) {
  EMU_CALL(k::relu6_backward_bf16(x, dy, dx, n, kStream))
}
int emu_add_bf16(const uint16_t* a, const uint16_t* b, uint16_t* y, size_t n) { EMU_CALL(k::add_bf16(a, b, y, n, kStream)) }
int emu_accumulate_bf16(uint16_t* dst, const uint16_t* src, size_t n) { EMU_CALL(k::accumulate_bf16(dst, src, n, kStream)) }
int emu_mul_mask_bf16(const uint16_t* a, const float* m, uint16_t* y, size_t n) {
  EMU_CALL(k::mul_mask_bf16(a, m, y, n, kStream))
}
int emu_dropout_forward_bf16(const uint16_t* x, uint16_t* y, float* mask, size_t n, uint64_t seed, uint64_t threshold,
                             float keep) {
  EMU_CALL(k::dropout_forward_bf16(x, y, mask, n, seed, threshold, keep, kStream))
}
int emu_bias_add_bf16(uint16_t* y, const float* b, int64_t rows, int64_t c) { EMU_CALL(k::bias_add_bf16(y, b, rows, c, kStream)) }
size_t emu_bf16_colsum_scratch_doubles(int64_t rows, int64_t c) { return k::bf16_colsum_scratch_doubles(rows, c); }
int emu_bias_grad_bf16(const uint16_t* dy, float* db, int64_t rows, int64_t c, double* scratch) {
  EMU_CALL(k::bias_grad_bf16(dy, db, rows, c, scratch, kStream))
}
int emu_bn_forward_training_bf16(const uint16_t* x, uint16_t* y, const float* scale, const float* shift, int64_t rows,
                                 int64_t c, float eps, float momentum, float* rmean, float* rvar, float* save_mean,
                                 float* save_inv, double* scratch) {
  EMU_CALL(k::bn_forward_training_bf16(x, y, scale, shift, rows, c, eps, momentum, rmean, rvar, save_mean, save_inv,
                                       scratch, kStream))
}
int emu_bn_forward_inference_bf16(const uint16_t* x, uint16_t* y, const float* scale, const float* shift,
                                  const float* mean, const float* var, int64_t rows, int64_t c, float eps) {
  EMU_CALL(k::bn_forward_inference_bf16(x, y, scale, shift, mean, var, rows, c, eps, kStream))
}
int emu_bn_backward_bf16(const uint16_t* x, const uint16_t* dy, const float* scale, const float* save_mean,
                         const float* save_inv, int64_t rows, int64_t c, uint16_t* dx, float* dscale, float* dshift,
                         double* scratch) {
  EMU_CALL(k::bn_backward_bf16(x, dy, scale, save_mean, save_inv, rows, c, dx, dscale, dshift, scratch, kStream))
}

int emu_gap_forward_bf16(const uint16_t* x, uint16_t* y, int64_t n, int64_t hw, int64_t c) {
  EMU_CALL(k::gap_forward_bf16(x, y, n, hw, c, kStream))
}
int emu_gap_backward_bf16(const uint16_t* dy, uint16_t* dx, int64_t n, int64_t hw, int64_t c) {
  EMU_CALL(k::gap_backward_bf16(dy, dx, n, hw, c, kStream))
}
int emu_concat_forward_bf16(const uint16_t* x, uint16_t* y, int64_t rows, int64_t ci, int64_t off, int64_t ctot) {
  EMU_CALL(k::concat_forward_bf16(x, y, rows, ci, off, ctot, kStream))
}
int emu_concat_backward_bf16(const uint16_t* dy, uint16_t* dx, int64_t rows, int64_t ci, int64_t off, int64_t ctot) {
  EMU_CALL(k::concat_backward_bf16(dy, dx, rows, ci, off, ctot, kStream))
}
int emu_nchw_f32_to_nhwc_bf16(const float* src, uint16_t* dst, int64_t n, int64_t c, int64_t hw) {
  EMU_CALL(k::nchw_f32_to_nhwc_bf16(src, dst, n, c, hw, kStream))
}

// ---- layer-API ops -----------------------------------------------------------------------
int emu_sigmoid_forward(const float* x, float* y, size_t n) { EMU_CALL(k::sigmoid_forward(x, y, n, kStream)) }
int emu_sigmoid_backward(const float* y, const float* dy, float* dx, size_t n) {
  EMU_CALL(k::sigmoid_backward(y, dy, dx, n, kStream))
}
int emu_tanh_forward(const float* x, float* y, size_t n) { EMU_CALL(k::tanh_forward(x, y, n, kStream)) }
int emu_tanh_backward(const float* y, const float* dy, float* dx, size_t n) {
  EMU_CALL(k::tanh_backward(y, dy, dx, n, kStream))
}
int emu_resize_forward(const float* x, float* y, int64_t n, int64_t h, int64_t w, int64_t c, int64_t oh, int64_t ow,
                       int bilinear) {
  EMU_CALL(k::resize_forward(x, y, n, h, w, c, oh, ow, bilinear, kStream))
}
int emu_resize_backward(const float* dy, float* dx, int64_t n, int64_t h, int64_t w, int64_t c, int64_t oh,
                        int64_t ow, int bilinear) {
  EMU_CALL(k::resize_backward(dy, dx, n, h, w, c, oh, ow, bilinear, kStream))
}
int emu_depth_to_space_forward(const float* x, float* y, int64_t n, int64_t h, int64_t w, int64_t co, int block,
                               int crd) {
  EMU_CALL(k::depth_to_space_forward(x, y, n, h, w, co, block, crd, kStream))
}
int emu_depth_to_space_backward(const float* dy, float* dx, int64_t n, int64_t h, int64_t w, int64_t co, int block,
                                int crd) {
  EMU_CALL(k::depth_to_space_backward(dy, dx, n, h, w, co, block, crd, kStream))
}
int emu_reshape_nhwc(const float* src, float* dst, int64_t n, int64_t h, int64_t w, int64_t c, int64_t oh, int64_t ow,
                     int64_t oc) {
  EMU_CALL(k::reshape_nhwc(src, dst, n, h, w, c, oh, ow, oc, kStream))
}
int emu_permute_nhwc(const float* src, float* dst, int64_t n, int64_t c, int64_t h, int64_t w, int p0, int p1,
                     int p2) {
  EMU_CALL(k::permute_nhwc(src, dst, n, c, h, w, p0, p1, p2, kStream))
}
int emu_depth_max_forward(const float* x, float* y, int64_t pixels, int64_t c, int argmax) {
  EMU_CALL(k::depth_max_forward(x, y, pixels, c, argmax, kStream))
}
int emu_depth_max_backward(const float* x, const float* dy, float* dx, int64_t pixels, int64_t c, int argmax) {
  EMU_CALL(k::depth_max_backward(x, dy, dx, pixels, c, argmax, kStream))
}
int emu_lrn_forward(const float* x, float* y, size_t n, int64_t c, int size, float alpha, float beta, float k) {
  EMU_CALL(k::lrn_forward(x, y, n, c, size, alpha, beta, k, kStream))
}
int emu_lrn_backward(const float* x, const float* dy, float* dx, size_t n, int64_t c, int size, float alpha, float beta,
                     float k) {
  EMU_CALL(k::lrn_backward(x, dy, dx, n, c, size, alpha, beta, k, kStream))
}
int emu_reduce_forward(const float* x, float* y, int64_t n, int64_t h, int64_t w, int64_t c, int rh, int rw, int rc,
                       int mode) {
  EMU_CALL(k::reduce_forward(x, y, n, h, w, c, rh, rw, rc, mode, kStream))
}
int emu_reduce_backward(const float* x, const float* y, const float* dy, float* dx, int64_t n, int64_t h, int64_t w,
                        int64_t c, int rh, int rw, int rc, int mode) {
  EMU_CALL(k::reduce_backward(x, y, dy, dx, n, h, w, c, rh, rw, rc, mode, kStream))
}
int emu_matmul_nhwc(const float* l, int ltrans, int64_t lh, int64_t lw, const float* r, int rtrans, int64_t rh,
                    int64_t rw, float* out, int64_t n, int64_t c) {
  EMU_CALL(k::matmul_nhwc(l, ltrans, lh, lw, r, rtrans, rh, rw, out, n, c, kStream))
}

}  // extern "C"
