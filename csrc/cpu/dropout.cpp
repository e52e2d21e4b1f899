// Inverted dropout: training y = x · m, m = [u ≥ p] / (1 − p) with u uniform from a
// counter-based hash of (seed, element), so the mask does not depend on the thread count;
// dx = dy · m. Inference: y = x.
#include <omp.h>

#include "cpu/node.h"

namespace halcdl::cpu {
namespace {

inline uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

class Dropout : public CpuNode {
 public:
  using CpuNode::CpuNode;

  void create(Build& b) override {
    const Slot& x = in(b, 0);
    out(b).md = x.md;
    n_ = x.md.get_size() / sizeof(float);
    training_ = b.training;
    if (training_) mask_buf_ = b.request(x.md, b.tf(idx), b.tb(idx));
  }

  void bind(Build& b) override {
    const Slot& x = in(b, 0);
    x_ = static_cast<const float*>(x.data.get_data_handle());
    y_ = static_cast<float*>(y.get_data_handle());
    if (training_) {
      mask_ = b.mem(x.md, mask_buf_);
      if (dy) dy_ = static_cast<const float*>(dy.get_data_handle());
      if (dy && gin[0]) dx_ = static_cast<float*>(gin[0].get_data_handle());
    }
  }

  void forward(Exec& e) override {
    const int64_t n = static_cast<int64_t>(n_);
    if (!training_) {
#pragma omp parallel for simd
      for (int64_t i = 0; i < n; ++i) y_[i] = x_[i];
      return;
    }
    float* m = static_cast<float*>(mask_.get_data_handle());
    const float keep = 1.f / (1.f - node.p);
    const uint64_t threshold = static_cast<uint64_t>(static_cast<double>(node.p) * 18446744073709551616.0);
    const uint64_t seed = splitmix64(e.rng ^ (static_cast<uint64_t>(idx) << 32));
#pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) {
      m[i] = splitmix64(seed + static_cast<uint64_t>(i)) >= threshold ? keep : 0.f;
      y_[i] = x_[i] * m[i];
    }
  }

  void backward(Exec&) override {
    if (!dx_) return;
    const float* m = static_cast<const float*>(mask_.get_data_handle());
    const int64_t n = static_cast<int64_t>(n_);
#pragma omp parallel for simd
    for (int64_t i = 0; i < n; ++i) dx_[i] = dy_[i] * m[i];
  }

  const memory* dropout_mask() const override { return training_ ? &mask_ : nullptr; }

 private:
  size_t n_ = 0;
  bool training_ = false;
  int mask_buf_ = -1;
  memory mask_;
  const float* x_ = nullptr;
  const float* dy_ = nullptr;
  float* y_ = nullptr;
  float* dx_ = nullptr;
};

}  // namespace

std::unique_ptr<CpuNode> make_dropout(const Node& n, int idx) { return std::make_unique<Dropout>(n, idx); }

}  // namespace halcdl::cpu
