// CPU twins of engine/kernels.h: plain loops, vectorised by the compiler, OpenMP across cores.
#include "engine/kernels.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace halcdl::kern {

double softmax_xent(const float* logits, const int* labels, const float* class_w, int n, int k, float scale,
                    float* dlogits) {
  double wsum = 0;
  for (int i = 0; i < n; ++i) wsum += class_w ? class_w[labels[i]] : 1.0;
  double loss = 0;
  for (int i = 0; i < n; ++i) {
    const float* z = logits + static_cast<size_t>(i) * k;
    float* dz = dlogits + static_cast<size_t>(i) * k;
    double mx = z[0];
    for (int j = 1; j < k; ++j) mx = std::max(mx, static_cast<double>(z[j]));
    double se = 0;
    for (int j = 0; j < k; ++j) se += std::exp(z[j] - mx);
    const double lse = mx + std::log(se);
    const double wi = class_w ? class_w[labels[i]] : 1.0;
    loss += wi * (lse - z[labels[i]]);
    const double f = wsum > 0 ? scale * wi / wsum : 0.0;
    for (int j = 0; j < k; ++j) {
      double p = std::exp(z[j] - lse);
      dz[j] = static_cast<float>(f * (p - (j == labels[i] ? 1.0 : 0.0)));
    }
  }
  return wsum > 0 ? loss / wsum : 0.0;
}

void softmax_rows(const float* logits, int n, int k, float* probs) {
#pragma omp parallel for if (n > 64)
  for (int i = 0; i < n; ++i) {
    const float* z = logits + static_cast<size_t>(i) * k;
    float* p = probs + static_cast<size_t>(i) * k;
    float mx = *std::max_element(z, z + k);
    double se = 0;
    for (int j = 0; j < k; ++j) se += std::exp(static_cast<double>(z[j] - mx));
    for (int j = 0; j < k; ++j) p[j] = static_cast<float>(std::exp(static_cast<double>(z[j] - mx)) / se);
  }
}

double softmax_xent_pixels(const float* logits, const int* labels, const float* class_w, const float* pixel_w, int n,
                           int k, int64_t hw, float scale, float* dlogits) {
  const int64_t np = static_cast<int64_t>(n) * hw;
  auto weight = [&](int64_t q) -> double {
    const int y = labels[q];
    if (y < 0) return 0.0;
    return (class_w ? class_w[y] : 1.0) * (pixel_w ? pixel_w[q] : 1.0);
  };
  double wsum = 0;
#pragma omp parallel for reduction(+ : wsum)
  for (int64_t q = 0; q < np; ++q) wsum += weight(q);
  double loss = 0;
#pragma omp parallel for reduction(+ : loss)
  for (int64_t q = 0; q < np; ++q) {
    const int64_t b = q / hw, p = q % hw;
    const float* z = logits + b * k * hw + p;
    float* dz = dlogits + b * k * hw + p;
    const double wq = weight(q);
    if (wq == 0.0) {
      for (int j = 0; j < k; ++j) dz[j * hw] = 0.f;
      continue;
    }
    double mx = z[0];
    for (int j = 1; j < k; ++j) mx = std::max(mx, static_cast<double>(z[j * hw]));
    double se = 0;
    for (int j = 0; j < k; ++j) se += std::exp(z[j * hw] - mx);
    const double lse = mx + std::log(se);
    const int y = labels[q];
    loss += wq * (lse - z[y * hw]);
    const double f = scale * wq / wsum;
    for (int j = 0; j < k; ++j) dz[j * hw] = static_cast<float>(f * (std::exp(z[j * hw] - lse) - (j == y ? 1.0 : 0.0)));
  }
  return wsum > 0 ? loss / wsum : 0.0;
}

void softmax_argmax_pixels(const float* logits, int n, int k, int64_t hw, int* index, float* confidence) {
  const int64_t np = static_cast<int64_t>(n) * hw;
#pragma omp parallel for
  for (int64_t q = 0; q < np; ++q) {
    const int64_t b = q / hw, p = q % hw;
    const float* z = logits + b * k * hw + p;
    int best = 0;
    for (int j = 1; j < k; ++j)
      if (z[j * hw] > z[best * hw]) best = j;
    double se = 0;
    for (int j = 0; j < k; ++j) se += std::exp(static_cast<double>(z[j * hw] - z[best * hw]));
    index[q] = best;
    confidence[q] = static_cast<float>(1.0 / se);
  }
}

double sum_squares(const float* w, size_t n) {
  double s = 0;
  const int64_t m = static_cast<int64_t>(n);
#pragma omp parallel for reduction(+ : s) if (m > (1 << 16))
  for (int64_t i = 0; i < m; ++i) s += static_cast<double>(w[i]) * w[i];
  return s;
}

void accumulate(float* dst, const float* src, size_t n) {
  const int64_t m = static_cast<int64_t>(n);
#pragma omp parallel for simd
  for (int64_t i = 0; i < m; ++i) dst[i] += src[i];
}

bool all_finite(const float* x, size_t n) {
  const int64_t m = static_cast<int64_t>(n);
  int bad = 0;
#pragma omp parallel for reduction(| : bad) if (m > (1 << 16))
  for (int64_t i = 0; i < m; ++i) bad |= !std::isfinite(x[i]);
  return !bad;
}

double max_abs(const float* x, size_t n, bool* all_finite) {
  const int64_t m = static_cast<int64_t>(n);
  float mx = 0.f;
  int bad = 0;
#pragma omp parallel for simd reduction(max : mx) reduction(| : bad) if (m > (1 << 16))
  for (int64_t i = 0; i < m; ++i) {
    const float a = std::fabs(x[i]);
    bad |= !(a <= std::numeric_limits<float>::max());  // NaN and Inf
    mx = a > mx ? a : mx;
  }
  if (all_finite) *all_finite = !bad;
  return bad ? std::numeric_limits<double>::infinity() : mx;
}

void sgd_update(float* w, const float* grad, float* v, size_t n_weight, size_t n, float lr, float momentum,
                float weight_prior, UpdateMax* out) {
  const int64_t nw = static_cast<int64_t>(n_weight), m = static_cast<int64_t>(n);
  if (!out) {
#pragma omp parallel for simd
    for (int64_t i = 0; i < m; ++i) {
      float g = grad[i] + (i < nw ? weight_prior * w[i] : 0.f);
      v[i] = momentum * v[i] - lr * g;
      w[i] += v[i];
    }
    return;
  }
  float mw = 0.f, mv = 0.f;  // the maxima of the new values, fused (no extra pass)
#pragma omp parallel for simd reduction(max : mw, mv)
  for (int64_t i = 0; i < m; ++i) {
    float g = grad[i] + (i < nw ? weight_prior * w[i] : 0.f);
    v[i] = momentum * v[i] - lr * g;
    w[i] += v[i];
    const float aw = std::fabs(w[i]), av = std::fabs(v[i]);
    mw = aw > mw ? aw : mw;
    mv = av > mv ? av : mv;
  }
  out->w = mw;
  out->m1 = mv;
  out->m2 = 0;
}

void adam_update(float* w, const float* grad, float* m1, float* m2, size_t n_weight, size_t n, float lr, float beta1,
                 float beta2, float eps, float weight_prior, int64_t t, UpdateMax* out) {
  const int64_t nw = static_cast<int64_t>(n_weight), m = static_cast<int64_t>(n);
  const float c1 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(t)));
  const float c2 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(t)));
  if (!out) {
#pragma omp parallel for simd
    for (int64_t i = 0; i < m; ++i) {
      float g = grad[i] + (i < nw ? weight_prior * w[i] : 0.f);
      m1[i] = beta1 * m1[i] + (1.f - beta1) * g;
      m2[i] = beta2 * m2[i] + (1.f - beta2) * g * g;
      w[i] -= lr * (m1[i] / c1) / (std::sqrt(m2[i] / c2) + eps);
    }
    return;
  }
  float mw = 0.f, ma = 0.f, mb = 0.f;
#pragma omp parallel for simd reduction(max : mw, ma, mb)
  for (int64_t i = 0; i < m; ++i) {
    float g = grad[i] + (i < nw ? weight_prior * w[i] : 0.f);
    m1[i] = beta1 * m1[i] + (1.f - beta1) * g;
    m2[i] = beta2 * m2[i] + (1.f - beta2) * g * g;
    w[i] -= lr * (m1[i] / c1) / (std::sqrt(m2[i] / c2) + eps);
    const float aw = std::fabs(w[i]), aa = std::fabs(m1[i]), ab = m2[i];
    mw = aw > mw ? aw : mw;
    ma = aa > ma ? aa : ma;
    mb = ab > mb ? ab : mb;
  }
  out->w = mw;
  out->m1 = ma;
  out->m2 = mb;
}

double sgd_update_bound(const UpdateMax& in, double gmax, float lr, float momentum, float weight_prior) {
  const double g = gmax + std::fabs(weight_prior) * in.w;
  const double v = std::fabs(momentum) * in.m1 + std::fabs(lr) * g;
  return std::max({g, v, in.w + v, std::fabs(lr) * g});
}

double adam_update_bound(const UpdateMax& in, double gmax, float lr, float beta1, float beta2, float eps,
                         float weight_prior, int64_t t) {
  const double c1 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(t)));
  const double c2 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(t)));
  if (!(c1 > 0) || !(c2 > 0) || !(eps > 0)) return std::numeric_limits<double>::infinity();
  const double g = gmax + std::fabs(weight_prior) * in.w;
  const double a = std::fabs(beta1) * in.m1 + std::fabs(1.0 - beta1) * g;
  const double b = std::fabs(beta2) * in.m2 + std::fabs(1.0 - beta2) * g * g;
  const double step = std::fabs(lr) * (a / c1) / eps;  // the denominator is at least eps
  return std::max({g, g * g, a, b, a / c1, b / c2, std::sqrt(b / c2) + eps, std::fabs(lr) * a / c1, step, in.w + step});
}

bool sgd_update_finite(const float* w, const float* grad, const float* v, size_t n_weight, size_t n, float lr,
                       float momentum, float weight_prior) {
  const int64_t nw = static_cast<int64_t>(n_weight), m = static_cast<int64_t>(n);
  int bad = 0;
#pragma omp parallel for simd reduction(| : bad)
  for (int64_t i = 0; i < m; ++i) {
    float g = grad[i] + (i < nw ? weight_prior * w[i] : 0.f);
    float vi = momentum * v[i] - lr * g;
    float wi = w[i] + vi;
    bad |= !(std::isfinite(vi) && std::isfinite(wi));
  }
  return !bad;
}

bool adam_update_finite(const float* w, const float* grad, const float* m1, const float* m2, size_t n_weight, size_t n,
                        float lr, float beta1, float beta2, float eps, float weight_prior, int64_t t) {
  const int64_t nw = static_cast<int64_t>(n_weight), m = static_cast<int64_t>(n);
  const float c1 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(t)));
  const float c2 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(t)));
  int bad = 0;
#pragma omp parallel for simd reduction(| : bad)
  for (int64_t i = 0; i < m; ++i) {
    float g = grad[i] + (i < nw ? weight_prior * w[i] : 0.f);
    float a = beta1 * m1[i] + (1.f - beta1) * g;
    float b = beta2 * m2[i] + (1.f - beta2) * g * g;
    float wi = w[i] - lr * (a / c1) / (std::sqrt(b / c2) + eps);
    bad |= !(std::isfinite(a) && std::isfinite(b) && std::isfinite(wi));
  }
  return !bad;
}

void bn_running_update(float* mean, float* var, const float* bmean, const float* bvar, int c, int64_t count,
                       float momentum) {
  const double unbias = count > 1 ? static_cast<double>(count) / (count - 1) : 1.0;
  for (int i = 0; i < c; ++i) {
    mean[i] = (1.f - momentum) * mean[i] + momentum * bmean[i];
    var[i] = static_cast<float>((1.0 - momentum) * var[i] + momentum * bvar[i] * unbias);
  }
}

bool hwc_to_chw(const float* src, float* dst, int64_t h, int64_t w, int64_t c) {
  const int64_t hw = h * w;
  int bad = 0;
  if (c == 1) {
    for (int64_t i = 0; i < hw; ++i) {
      dst[i] = src[i];
      bad |= !std::isfinite(src[i]);
    }
  } else {
    for (int64_t i = 0; i < hw; ++i)
      for (int64_t k = 0; k < c; ++k) {
        float v = src[i * c + k];
        dst[k * hw + i] = v;
        bad |= !std::isfinite(v);
      }
  }
  return !bad;
}

}  // namespace halcdl::kern
