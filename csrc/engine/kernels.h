// Losses, regulariser and optimizer updates over the flat arenas. The CPU twins live in
// cpu/kernels.cpp (a CUDA twin implements the same signatures on device pointers).
#pragma once
#include <cstddef>
#include <cstdint>

namespace halcdl::kern {

// Multinomial logistic loss with class weights (PyTorch's cross_entropy(weight=w)):
//   loss = Σ_n w[y_n]·(−log softmax(z_n)[y_n]) / Σ_n w[y_n]
//   dz_n = scale · w[y_n]·(softmax(z_n) − onehot(y_n)) / Σ_n w[y_n]
// `class_w` may be null (uniform). A batch whose weights sum to 0 has loss 0 and gradient 0.
double softmax_xent(const float* logits, const int* labels, const float* class_w, int n, int k, float scale,
                    float* dlogits);
void softmax_rows(const float* logits, int n, int k, float* probs);
// The same per pixel for (N, K, HW) logits: label −1 = ignored pixel; `pixel_w` (N, HW) may
// be null. loss = Σ w[y]·pw·l / Σ w[y]·pw over the pixels not ignored.
double softmax_xent_pixels(const float* logits, const int* labels, const float* class_w, const float* pixel_w, int n,
                           int k, int64_t hw, float scale, float* dlogits);
// Per pixel of (N, K, HW) logits: the winning channel and its softmax probability.
void softmax_argmax_pixels(const float* logits, int n, int k, int64_t hw, int* index, float* confidence);
// Σ w² over [0, n)
double sum_squares(const float* w, size_t n);
void accumulate(float* dst, const float* src, size_t n);
bool all_finite(const float* x, size_t n);
// HALCON's SGD: g ← ∇L + λw (λ = weight_prior, only on [0, n_weight)); v ← μv − lr·g; w ← w + v.
// max |x[i]| over [0, n) (NaN ignored) and, in the same pass, whether every x[i] is finite.
double max_abs(const float* x, size_t n, bool* all_finite);
// The largest magnitudes an update left in the arenas, computed by the update itself (no
// extra pass): the divergence check bounds the next update's values from them.
struct UpdateMax {
  double w = 0, m1 = 0, m2 = 0;
};
void sgd_update(float* w, const float* grad, float* v, size_t n_weight, size_t n, float lr, float momentum,
                float weight_prior, UpdateMax* out = nullptr);
// Adam with L2 through the gradient: g ← ∇L + λw; m ← β1 m + (1−β1) g; v ← β2 v + (1−β2) g²;
// w ← w − lr · (m / (1−β1^t)) / (sqrt(v / (1−β2^t)) + ε).
void adam_update(float* w, const float* grad, float* m, float* v, size_t n_weight, size_t n, float lr, float beta1,
                 float beta2, float eps, float weight_prior, int64_t t, UpdateMax* out = nullptr);
// Upper bounds (double) of |w'|, |v'| (sgd) or |w'|, |m'|, |v'| and the intermediate v'/c2
// (adam) of the next update from the maxima of its inputs; the largest of them. Below
// FLT_MAX / 2 every value the update computes is finite (float32 rounding included), so the
// exact per-element check (sgd/adam_update_finite) is needed only above.
double sgd_update_bound(const UpdateMax& in, double gmax, float lr, float momentum, float weight_prior);
double adam_update_bound(const UpdateMax& in, double gmax, float lr, float beta1, float beta2, float eps,
                         float weight_prior, int64_t t);
// The divergence check before a commit: true when the update sgd_update / adam_update would
// make (same arguments, same float expressions) leaves every weight and every optimizer-state
// value finite. Reads the arenas once and writes nothing, so a failing step keeps the model
// bit-identical; it also covers a non-finite gradient (which makes the update non-finite).
bool sgd_update_finite(const float* w, const float* grad, const float* v, size_t n_weight, size_t n, float lr,
                       float momentum, float weight_prior);
bool adam_update_finite(const float* w, const float* grad, const float* m, const float* v, size_t n_weight, size_t n,
                        float lr, float beta1, float beta2, float eps, float weight_prior, int64_t t);
// Running statistics, PyTorch's convention: r ← (1−μ)·r + μ·batch (variance unbiased).
void bn_running_update(float* mean, float* var, const float* bmean, const float* bvar, int c, int64_t count,
                       float momentum);
// (H, W, C) or (H, W) float image → (C, H, W); returns false if it holds NaN or Inf.
bool hwc_to_chw(const float* src, float* dst, int64_t h, int64_t w, int64_t c);

}  // namespace halcdl::kern
