// Inverted dropout: training y = x · m, m = [u ≥ p] / (1 − p) with u uniform from a
// counter-based hash of (seed, element), so the mask does not depend on the thread count;
// dx = dy · m. Inference: y = x.
#include <omp.h>

#include <type_traits>

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
    bf16_ = x.md.get_data_type() == dt::bf16;
    n_ = x.md.get_size() / (bf16_ ? 2 : 4);
    training_ = b.training && !b.eval;  // eval_grads: the identity, with a backward
    grads_ = b.training;
    if (training_) mask_buf_ = b.request(x.md, b.tf(idx), b.tb(idx));
  }

  void bind(Build& b) override {
    const Slot& x = in(b, 0);
    x_ = x.data.get_data_handle();
    y_ = y.get_data_handle();
    if (training_) mask_ = b.mem(x.md, mask_buf_);
    if (grads_) {
      if (dy) dy_ = dy.get_data_handle();
      if (dy && gin[0]) dx_ = gin[0].get_data_handle();
    }
  }

  void forward(Exec& e) override {
    if (!training_) {
      std::memcpy(y_, x_, n_ * (bf16_ ? 2 : 4));
      return;
    }
    const float keep = 1.f / (1.f - node.p);
    const uint64_t threshold = static_cast<uint64_t>(static_cast<double>(node.p) * 18446744073709551616.0);
    const uint64_t seed = splitmix64(e.rng ^ (static_cast<uint64_t>(idx) << 32));
    if (bf16_) run<uint16_t>(seed, threshold, keep);
    else run<float>(seed, threshold, keep);
  }

  void backward(Exec&) override {
    if (!dx_) return;
    if (!training_) {
      std::memcpy(dx_, dy_, n_ * (bf16_ ? 2 : 4));
      return;
    }
    if (bf16_) mul<uint16_t>(dy_, mask_.get_data_handle(), dx_);
    else mul<float>(dy_, mask_.get_data_handle(), dx_);
  }

  const memory* dropout_mask() const override { return training_ ? &mask_ : nullptr; }

 private:
  static float ld(float v) { return v; }
  static float ld(uint16_t v) { return bf16_to_f32(v); }
  template <typename T> static T st(float v) {
    if constexpr (std::is_same_v<T, float>) return v; else return f32_to_bf16(v);
  }
  template <typename T>
  void run(uint64_t seed, uint64_t threshold, float keep) {
    const T* x = static_cast<const T*>(x_);
    T* y = static_cast<T*>(y_);
    T* m = static_cast<T*>(mask_.get_data_handle());
    const T k = st<T>(keep), z = st<T>(0.f);
    const int64_t n = static_cast<int64_t>(n_);
#pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) {
      m[i] = splitmix64(seed + static_cast<uint64_t>(i)) >= threshold ? k : z;
      y[i] = st<T>(ld(x[i]) * ld(m[i]));
    }
  }
  template <typename T>
  void mul(const void* a, const void* b, void* out) {
    const T* pa = static_cast<const T*>(a);
    const T* pb = static_cast<const T*>(b);
    T* po = static_cast<T*>(out);
    const int64_t n = static_cast<int64_t>(n_);
#pragma omp parallel for simd
    for (int64_t i = 0; i < n; ++i) po[i] = st<T>(ld(pa[i]) * ld(pb[i]));
  }

  size_t n_ = 0;
  bool training_ = false, grads_ = false, bf16_ = false;
  int mask_buf_ = -1;
  memory mask_;
  const void* x_ = nullptr;
  const void* dy_ = nullptr;
  void* y_ = nullptr;
  void* dx_ = nullptr;
};

}  // namespace

std::unique_ptr<CpuNode> make_dropout(const Node& n, int idx) { return std::make_unique<Dropout>(n, idx); }

}  // namespace halcdl::cpu
