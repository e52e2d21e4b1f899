// Object detection kernels; declarations and layouts in det_kernels.cuh. The reference
// semantics are cpu/detect.cpp (the permutation) and det::loss in engine/detection.cpp (the
// per-anchor focal and Huber terms and their gradients, the same float expressions; the
// row's sums in double). One thread per row for the loss: rows are independent, and the
// per-row sums are added per level on the host in the CPU's order (no reduction here, so no
// scheduling can change a result).
#include <cmath>

#include "cuda/common.h"
#include "cuda/det_kernels.cuh"

namespace halcdl::gpu::k {
namespace {

constexpr int kDetBlock = 256;
constexpr size_t kDetMaxGrid = size_t{1} << 16;

inline unsigned det_grid(size_t n) {
  size_t g = (n + kDetBlock - 1) / kDetBlock;
  if (g < 1) g = 1;
  return static_cast<unsigned>(g < kDetMaxGrid ? g : kDetMaxGrid);
}

__device__ __forceinline__ size_t det_tid() { return static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ size_t det_stride() { return static_cast<size_t>(gridDim.x) * blockDim.x; }

// element i of a head (NHWC, channel = a·C + j) → its place in the rows
__device__ __forceinline__ size_t det_row_index(size_t i, int64_t hw, int a, int c, int64_t na, int r, int64_t base,
                                                int off) {
  const int64_t j = static_cast<int64_t>(i % c);
  const int64_t q = static_cast<int64_t>(i / c);
  const int64_t an = q % a;
  const int64_t np = q / a;
  const int64_t n = np / hw, p = np % hw;
  return static_cast<size_t>((n * na + base + p * a + an) * r + off + j);
}

__global__ void det_gather_kernel(const float* __restrict__ head, float* __restrict__ rows, size_t total, int64_t hw,
                                  int a, int c, int64_t na, int r, int64_t base, int off) {
  for (size_t i = det_tid(); i < total; i += det_stride()) rows[det_row_index(i, hw, a, c, na, r, base, off)] = head[i];
}

__global__ void det_scatter_kernel(const float* __restrict__ rows, float* __restrict__ head, size_t total, int64_t hw,
                                   int a, int c, int64_t na, int r, int64_t base, int off) {
  for (size_t i = det_tid(); i < total; i += det_stride()) head[i] = rows[det_row_index(i, hw, a, c, na, r, base, off)];
}

__device__ __forceinline__ float det_sigmoid(float z) {
  if (z >= 0) return 1.f / (1.f + expf(-z));
  const float e = expf(z);
  return e / (1.f + e);
}

__global__ void det_focal_huber_kernel(const float* __restrict__ out, const int* __restrict__ target,
                                       const float* __restrict__ tbox, const float* __restrict__ class_w,
                                       int64_t rows, int k, int nd, float gamma, float beta, float gc,
                                       float gb, float* __restrict__ dout, double* __restrict__ row_cls,
                                       double* __restrict__ row_box) {
  const int64_t stride = k + nd;
  for (size_t ia = det_tid(); ia < static_cast<size_t>(rows); ia += det_stride()) {
    const float* z = out + ia * stride;
    float* d = dout + ia * stride;
    const int mt = target[ia];
    double sc = 0, sb = 0;
    if (mt == -2) {  // ignored
      for (int64_t j = 0; j < stride; ++j) d[j] = 0.f;
    } else {
      for (int j = 0; j < k; ++j) {
        const float x = z[j], t = j == mt ? 1.f : 0.f, w = class_w ? class_w[j] : 1.f;
        const float p = det_sigmoid(x);
        const float ce = fmaxf(x, 0.f) - x * t + log1pf(expf(-fabsf(x)));
        const float pt = p * t + (1.f - p) * (1.f - t);
        const float q = 1.f - pt;
        const float mod = gamma == 2.f ? q * q : powf(q, gamma);
        sc += static_cast<double>(w) * mod * ce;
        const float dmod = gamma == 2.f ? 2.f * q : gamma * powf(q, gamma - 1.f);
        const float g = (p - t) * mod - dmod * p * (1.f - p) * (2.f * t - 1.f) * ce;
        d[j] = gc * w * g;
      }
      if (mt >= 0) {
        const float* tg = tbox + ia * nd;
        // rectangle2, a class without orientation: no angle term (NaN marks it)
        const int nt = nd == 5 && isnan(tg[4]) ? 4 : nd;
        for (int j = 0; j < nt; ++j) {
          const float x = z[k + j] - tg[j], ax = fabsf(x);
          sb += ax < beta ? 0.5 * x * x / beta : ax - 0.5 * beta;
          d[k + j] = gb * (ax < beta ? x / beta : (x > 0 ? 1.f : x < 0 ? -1.f : 0.f));
        }
        for (int j = nt; j < nd; ++j) d[k + j] = 0.f;
      } else {
        for (int j = 0; j < nd; ++j) d[k + j] = 0.f;
      }
    }
    row_cls[ia] = sc;
    row_box[ia] = sb;
  }
}

}  // namespace

void det_gather(const float* head, float* rows, int64_t n, int64_t hw, int a, int c, int64_t na, int r, int64_t base,
                int off, cudaStream_t s) {
  const size_t total = static_cast<size_t>(n * hw) * a * c;
  if (total == 0) return;
  det_gather_kernel<<<det_grid(total), kDetBlock, 0, s>>>(head, rows, total, hw, a, c, na, r, base, off);
  CUDA_CHECK_LAUNCH();
}

void det_scatter(const float* rows, float* head, int64_t n, int64_t hw, int a, int c, int64_t na, int r, int64_t base,
                 int off, cudaStream_t s) {
  const size_t total = static_cast<size_t>(n * hw) * a * c;
  if (total == 0) return;
  det_scatter_kernel<<<det_grid(total), kDetBlock, 0, s>>>(rows, head, total, hw, a, c, na, r, base, off);
  CUDA_CHECK_LAUNCH();
}

void det_focal_huber(const float* out, const int* target, const float* tbox, const float* class_w, int64_t rows,
                     int k, int nd, float gamma, float beta, float gc, float gb, float* dout, double* row_cls,
                     double* row_box, cudaStream_t s) {
  if (rows <= 0) return;
  det_focal_huber_kernel<<<det_grid(static_cast<size_t>(rows)), kDetBlock, 0, s>>>(
      out, target, tbox, class_w, rows, k, nd, gamma, beta, gc, gb, dout, row_cls, row_box);
  CUDA_CHECK_LAUNCH();
}

}  // namespace halcdl::gpu::k
