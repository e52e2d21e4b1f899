// Object detection kernels (det_kernels.cu): the GPU twins of cpu/detect.cpp (the
// detection_output permutation) and of the per-anchor loss of engine/detection.cpp
// (det::loss). Host-side launchers on `s`, device pointers. Layouts: a head's output is
// NHWC (N, H, W, A·C); detection_output is row-major (N, A_total, K + B), anchor-major
// (level, row, column, anchor), exactly as on the CPU (docs/detection.md).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace halcdl::gpu::k {

// One head of one level into / out of the detection_output rows:
//   rows[(n·NA + base + p·A + a)·R + off + j] ↔ head[(n·HW + p)·A·C + a·C + j]
// forward: rows ← head; backward (gradient): head ← rows (written, not accumulated).
void det_gather(const float* head, float* rows, int64_t n, int64_t hw, int a, int c, int64_t na, int r, int64_t base,
                int off, cudaStream_t s);
void det_scatter(const float* rows, float* head, int64_t n, int64_t hw, int a, int c, int64_t na, int r, int64_t base,
                 int off, cudaStream_t s);

// Focal loss (γ) over the K logits and Huber (smooth-L1, β) over the D box values (4:
// rectangle1, 5: rectangle2) of every row (= anchor of an image) of `out` (rows, K + D), as
// det::loss does per anchor:
//   target[row] = class index (foreground), -1 background, -2 ignored (no loss, zero gradient)
//   tbox (rows, D): the encoded box of a foreground row (not read otherwise); with D = 5 a
//     NaN angle value marks a class without orientation: 4 terms, the angle's gradient 0
//   class_w (K) or null
// Writes the gradient dout = gc · w_k · d focal / dz and gb · d huber / dx (gc, gb: the
// normalised, weighted, sub-batch-scaled factors) and the row's unweighted sums in double,
// row_cls[row] = Σ_k w_k (1 − p_t)^γ BCE, row_box[row] = Σ_D smooth_l1_β.
void det_focal_huber(const float* out, const int* target, const float* tbox, const float* class_w, int64_t rows,
                     int k, int nd, float gamma, float beta, float gc, float gb, float* dout, double* row_cls,
                     double* row_box, cudaStream_t s);

}  // namespace halcdl::gpu::k
