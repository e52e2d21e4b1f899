// Our own CUDA kernels (kernels.cu), the GPU twins of engine/kernels.h plus the ops cuDNN
// does not cover. Every function is a host-side launcher that enqueues on `s` and returns
// (errors of the launch are checked). All pointers are device pointers unless noted.
//
// Determinism: no kernel here uses atomics whose order changes a result; every reduction
// has a fixed shape (fixed grid, fixed per-thread ranges, a fixed tree), so a result depends
// only on the inputs and sizes, never on scheduling.
//
// Layouts: activations are NHWC; a (N, K) matrix is row-major. "rows" of an NHWC tensor are
// its N·H·W pixels, each holding C contiguous channels.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace halcdl::gpu::k {

// ---- layout --------------------------------------------------------------------------
void nchw_to_nhwc(const float* src, float* dst, int64_t n, int64_t c, int64_t hw, cudaStream_t s);
void nhwc_to_nchw(const float* src, float* dst, int64_t n, int64_t c, int64_t hw, cudaStream_t s);
void f32_to_bf16(const float* src, uint16_t* dst, size_t n, cudaStream_t s);
void bf16_to_f32(const uint16_t* src, float* dst, size_t n, cudaStream_t s);

// ---- elementwise ---------------------------------------------------------------------
void relu_forward(const float* x, float* y, size_t n, cudaStream_t s);
// dx = dy · [y > 0]
void relu_backward(const float* y, const float* dy, float* dx, size_t n, cudaStream_t s);
void relu6_forward(const float* x, float* y, size_t n, cudaStream_t s);
// dx = dy · [0 < x < 6]   (x: the input, as PyTorch's hardtanh_backward)
void relu6_backward(const float* x, const float* dy, float* dx, size_t n, cudaStream_t s);
void add(const float* a, const float* b, float* y, size_t n, cudaStream_t s);
void accumulate(float* dst, const float* src, size_t n, cudaStream_t s);   // dst += src
void mul(const float* a, const float* b, float* y, size_t n, cudaStream_t s);
void scale(float* x, float a, size_t n, cudaStream_t s);                   // x *= a
// Inverted dropout, the CPU twin's rule: mask[i] = splitmix64(seed + i) >= threshold ?
// 1/(1−p) : 0, y = x · mask. `seed` is already mixed by the caller, threshold = p·2^64.
void dropout_forward(const float* x, float* y, float* mask, size_t n, uint64_t seed, uint64_t threshold,
                     float keep, cudaStream_t s);

// ---- channel-wise (NHWC: rows × c) ---------------------------------------------------
void bias_add(float* y, const float* bias, int64_t rows, int64_t c, cudaStream_t s);      // y[r, j] += b[j]
// db[j] = Σ_r dy[r, j], written (not accumulated); deterministic two-pass column sums.
// `scratch` holds at least bias_grad_scratch_floats(rows, c) floats.
size_t bias_grad_scratch_floats(int64_t rows, int64_t c);
void bias_grad(const float* dy, float* db, int64_t rows, int64_t c, float* scratch, cudaStream_t s);
// Global average pooling: y[n, j] = mean over the hw rows of image n; dx = dy / hw.
void gap_forward(const float* x, float* y, int64_t n, int64_t hw, int64_t c, cudaStream_t s);
void gap_backward(const float* dy, float* dx, int64_t n, int64_t hw, int64_t c, cudaStream_t s);
// Concatenation along channels: input i has ci[i] channels and lands at channel offset
// off[i] of the output's ctot. Forward copies one input; backward extracts its gradient.
void concat_forward(const float* x, float* y, int64_t rows, int64_t ci, int64_t off, int64_t ctot, cudaStream_t s);
void concat_backward(const float* dy, float* dx, int64_t rows, int64_t ci, int64_t off, int64_t ctot,
                     cudaStream_t s);
// Upsampling by an integer factor `f` (NHWC, c channels): nearest (PyTorch 'nearest') and
// bilinear with align_corners=False. Backward in gather form (each input pixel sums the
// output pixels that read it), no atomics.
void upsample_nearest_forward(const float* x, float* y, int64_t n, int64_t h, int64_t w, int64_t c, int f,
                              cudaStream_t s);
void upsample_nearest_backward(const float* dy, float* dx, int64_t n, int64_t h, int64_t w, int64_t c, int f,
                               cudaStream_t s);
void upsample_bilinear_forward(const float* x, float* y, int64_t n, int64_t h, int64_t w, int64_t c, int f,
                               cudaStream_t s);
void upsample_bilinear_backward(const float* dy, float* dx, int64_t n, int64_t h, int64_t w, int64_t c, int f,
                                cudaStream_t s);
// Row-wise softmax of (rows, k); backward dx = y ⊙ (dy − Σ_j dy·y).
void softmax_rows(const float* x, float* y, int64_t rows, int64_t k, cudaStream_t s);
void softmax_rows_backward(const float* y, const float* dy, float* dx, int64_t rows, int64_t k, cudaStream_t s);

// ---- losses (engine/kernels.h semantics) ---------------------------------------------
// Scratch for the loss reductions: at least loss_scratch_doubles(rows) doubles.
size_t loss_scratch_doubles(int64_t rows);
// Classification: logits (n, k); labels n ints (device); class_w k floats or null.
// loss[0] ← Σ w[y]·(−log softmax[y]) / Σ w[y]  (double, device); dlogits written, scaled by
// `scale`. Σ w = 0 → loss 0, dlogits 0.
void softmax_xent(const float* logits, const int* labels, const float* class_w, int64_t n, int64_t k, float scale,
                  float* dlogits, double* loss, double* scratch, cudaStream_t s);
// Segmentation: logits NHWC (n·hw rows of k); labels n·hw ints, −1 = ignored; pixel_w
// n·hw floats or null. loss = Σ w[y]·pw·l / Σ w[y]·pw over pixels not ignored.
void softmax_xent_pixels(const float* logits, const int* labels, const float* class_w, const float* pixel_w,
                         int64_t rows, int64_t k, float scale, float* dlogits, double* loss, double* scratch,
                         cudaStream_t s);
// Per row of (rows, k) logits: the winning channel (first on ties) and its probability.
void softmax_argmax_rows(const float* logits, int64_t rows, int64_t k, int* index, float* confidence,
                         cudaStream_t s);

// ---- optimizer -----------------------------------------------------------------------
// out[0] ← Σ x² over [0, n) as double, deterministic. scratch: loss_scratch_doubles(n).
void sum_squares(const float* x, size_t n, double* out, double* scratch, cudaStream_t s);
// flag[0] ← 0 if any x[i] is NaN/Inf (only ever stores 0, so order-independent); the caller
// sets flag[0] = 1 first.
void check_finite(const float* x, size_t n, int* flag, cudaStream_t s);
void sgd_update(float* w, const float* grad, float* v, size_t n_weight, size_t n, float lr, float momentum,
                float weight_prior, cudaStream_t s);
// flag[0] ← 0 if the update sgd_update / adam_update would make (same arguments, same float
// expressions) leaves a weight or optimizer-state value NaN/Inf; reads only.
void sgd_update_finite(const float* w, const float* grad, const float* v, size_t n_weight, size_t n, float lr,
                       float momentum, float weight_prior, int* flag, cudaStream_t s);
void adam_update_finite(const float* w, const float* grad, const float* m, const float* v, size_t n_weight, size_t n,
                        float lr, float beta1, float beta2, float eps, float weight_prior, int64_t t, int* flag,
                        cudaStream_t s);
void adam_update(float* w, const float* grad, float* m, float* v, size_t n_weight, size_t n, float lr, float beta1,
                 float beta2, float eps, float weight_prior, int64_t t, cudaStream_t s);

// ---- bfloat16 (precision 'bfloat16') ------------------------------------------------------
// Activations and activation gradients as bf16 bits (uint16_t, the upper half of an fp32);
// computed in fp32, rounded once on the store to nearest even (f32_to_bf16's rule; NaN stays
// NaN). Parameters, statistics, masks and parameter gradients are fp32; reductions add in
// double over a fixed grid (deterministic, as above).
void relu_forward_bf16(const uint16_t* x, uint16_t* y, size_t n, cudaStream_t s);
void relu_backward_bf16(const uint16_t* y, const uint16_t* dy, uint16_t* dx, size_t n, cudaStream_t s);
void relu6_forward_bf16(const uint16_t* x, uint16_t* y, size_t n, cudaStream_t s);
void relu6_backward_bf16(const uint16_t* x, const uint16_t* dy, uint16_t* dx, size_t n, cudaStream_t s);
void add_bf16(const uint16_t* a, const uint16_t* b, uint16_t* y, size_t n, cudaStream_t s);
void accumulate_bf16(uint16_t* dst, const uint16_t* src, size_t n, cudaStream_t s);  // dst = bf16(dst + src)
void mul_mask_bf16(const uint16_t* a, const float* mask, uint16_t* y, size_t n, cudaStream_t s);  // y = a · mask
void dropout_forward_bf16(const uint16_t* x, uint16_t* y, float* mask, size_t n, uint64_t seed, uint64_t threshold,
                          float keep, cudaStream_t s);
void bias_add_bf16(uint16_t* y, const float* bias, int64_t rows, int64_t c, cudaStream_t s);
// Scratch (doubles) of bias_grad_bf16 and the bn kernels below.
size_t bf16_colsum_scratch_doubles(int64_t rows, int64_t c);
void bias_grad_bf16(const uint16_t* dy, float* db, int64_t rows, int64_t c, double* scratch, cudaStream_t s);
// Batch normalisation over NHWC rows × c (spatial, cuDNN's semantics; cuDNN's legacy batch
// norm takes no bf16). Training: batch mean and biased variance (two passes), y = x̂·scale +
// shift, save_mean / save_inv_std = 1/sqrt(var + eps) (as cuDNN saves them), and when
// running_mean is not null the running statistics with PyTorch's momentum and the unbiased
// variance (one value per channel: the biased one, as the CPU twin).
void bn_forward_training_bf16(const uint16_t* x, uint16_t* y, const float* scale, const float* shift, int64_t rows,
                              int64_t c, float eps, float momentum, float* running_mean, float* running_var,
                              float* save_mean, float* save_inv_std, double* scratch, cudaStream_t s);
void bn_forward_inference_bf16(const uint16_t* x, uint16_t* y, const float* scale, const float* shift,
                               const float* mean, const float* var, int64_t rows, int64_t c, float eps,
                               cudaStream_t s);
// dshift = Σ dy, dscale = Σ dy·x̂ (written), dx = scale·inv·(dy − dshift/rows − x̂·dscale/rows)
// (dx may be null: parameter gradients only).
void bn_backward_bf16(const uint16_t* x, const uint16_t* dy, const float* scale, const float* save_mean,
                      const float* save_inv_std, int64_t rows, int64_t c, uint16_t* dx, float* dscale, float* dshift,
                      double* scratch, cudaStream_t s);

// GAP (y = bf16 mean over the hw rows of each image; dx = bf16(dy / hw)), channel concat
// (exact copies), and the bf16 plan's input upload: fp32 NCHW → bf16 NHWC, rounded once.
void gap_forward_bf16(const uint16_t* x, uint16_t* y, int64_t n, int64_t hw, int64_t c, cudaStream_t s);
void gap_backward_bf16(const uint16_t* dy, uint16_t* dx, int64_t n, int64_t hw, int64_t c, cudaStream_t s);
void concat_forward_bf16(const uint16_t* x, uint16_t* y, int64_t rows, int64_t ci, int64_t off, int64_t ctot,
                         cudaStream_t s);
void concat_backward_bf16(const uint16_t* dy, uint16_t* dx, int64_t rows, int64_t ci, int64_t off, int64_t ctot,
                          cudaStream_t s);
void nchw_f32_to_nhwc_bf16(const float* src, uint16_t* dst, int64_t n, int64_t c, int64_t hw, cudaStream_t s);

// ---- layer-API ops (cuda/ops_extra.cpp) ------------------------------------------------
// sigmoid: y = 1/(1 + e^−x), dx = dy·y·(1 − y);  tanh: y = tanh x, dx = dy·(1 − y²)  (y: the output)
void sigmoid_forward(const float* x, float* y, size_t n, cudaStream_t s);
void sigmoid_backward(const float* y, const float* dy, float* dx, size_t n, cudaStream_t s);
void tanh_forward(const float* x, float* y, size_t n, cudaStream_t s);
void tanh_backward(const float* y, const float* dy, float* dx, size_t n, cudaStream_t s);
// Resize NHWC (n, h, w, c) → (n, oh, ow, c), half-pixel centres: nearest (src = ⌊(o+½)·in/out⌋,
// PyTorch 'nearest-exact') or bilinear (align_corners=False); backward in gather form, no atomics.
void resize_forward(const float* x, float* y, int64_t n, int64_t h, int64_t w, int64_t c, int64_t oh, int64_t ow,
                    int bilinear, cudaStream_t s);
void resize_backward(const float* dy, float* dx, int64_t n, int64_t h, int64_t w, int64_t c, int64_t oh, int64_t ow,
                     int bilinear, cudaStream_t s);
// depth_to_space NHWC: x (n, h, w, co·b²) → y (n, h·b, w·b, co); crd: PyTorch's pixel_shuffle
// order (k = c·b² + i·b + j), else DCR (k = (i·b + j)·co + c). Backward: the inverse permutation.
void depth_to_space_forward(const float* x, float* y, int64_t n, int64_t h, int64_t w, int64_t co, int block,
                            int crd, cudaStream_t s);
void depth_to_space_backward(const float* dy, float* dx, int64_t n, int64_t h, int64_t w, int64_t co, int block,
                             int crd, cudaStream_t s);
// reshape: dst (n, oh, ow, oc) holds src (n, h, w, c)'s values in the same per-sample NCHW
// order (both NHWC); its backward is reshape_nhwc with the two shapes swapped.
void reshape_nhwc(const float* src, float* dst, int64_t n, int64_t h, int64_t w, int64_t c, int64_t oh, int64_t ow,
                  int64_t oc, cudaStream_t s);
// permute: dst = numpy transpose of src's (C, H, W) axes by (p0, p1, p2), both NHWC; src has
// logical dims (n, c, h, w). The backward is permute_nhwc of dy with the inverse permutation.
void permute_nhwc(const float* src, float* dst, int64_t n, int64_t c, int64_t h, int64_t w, int p0, int p1, int p2,
                  cudaStream_t s);

// depth_max over the channels of NHWC (pixels = n·h·w): y (pixels) the maximum or (argmax) the
// first index reaching it; backward writes all of dx (dy at that index for the value, else 0).
void depth_max_forward(const float* x, float* y, int64_t pixels, int64_t c, int argmax, cudaStream_t s);
void depth_max_backward(const float* x, const float* dy, float* dx, int64_t pixels, int64_t c, int argmax,
                        cudaStream_t s);

// lrn across the channels of NHWC (n elements, c channels, odd size): y = x / (k + alpha/size ·
// Σ_window x²)^beta; backward recomputes the scales from x.
void lrn_forward(const float* x, float* y, size_t n, int64_t c, int size, float alpha, float beta, float k,
                 cudaStream_t s);
void lrn_backward(const float* x, const float* dy, float* dx, size_t n, int64_t c, int size, float alpha, float beta,
                  float k, cudaStream_t s);

// reduce over the flagged axes of NHWC x (n, h, w, c) into y (reduced axes of size 1): mode 0
// sum, 1 mean, 2 L2 norm; backward writes all of dx (the L2 norm's reads x and y).
void reduce_forward(const float* x, float* y, int64_t n, int64_t h, int64_t w, int64_t c, int rh, int rw, int rc,
                    int mode, cudaStream_t s);
void reduce_backward(const float* x, const float* y, const float* dy, float* dx, int64_t n, int64_t h, int64_t w,
                     int64_t c, int rh, int rw, int rc, int mode, cudaStream_t s);

// out (n, rows, cols, c) NHWC = op(L) · op(R) per sample and channel; L is stored NHWC
// (n, lh, lw, c), R (n, rh, rw, c); op transposes the stored matrix when *trans is set.
void matmul_nhwc(const float* l, int ltrans, int64_t lh, int64_t lw, const float* r, int rtrans, int64_t rh,
                 int64_t rw, float* out, int64_t n, int64_t c, cudaStream_t s);

}  // namespace halcdl::gpu::k
