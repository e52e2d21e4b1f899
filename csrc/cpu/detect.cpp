// detection_output: gathers the per-level class and box heads into one (N, A_total, K + B)
// tensor, anchor-major (level, row, column, anchor), so that the loss and the decoding see one
// row per anchor. A pure permutation: the backward scatters the rows back.
//   y[n, base_l + (r·W + c)·A + a, j]     = cls_l[n, a·K + j, r, c]   (j < K)
//   y[n, base_l + (r·W + c)·A + a, K + j] = box_l[n, a·B + j, r, c]   (j < B)
#include "cpu/node.h"

namespace halcdl::cpu {
namespace {

class DetOut : public CpuNode {
 public:
  using CpuNode::CpuNode;

  void create(Build& b) override {
    out(b).md = plain_desc(b.slots[idx].dims, dt::f32);
    const size_t n = node.inputs.size();
    in_buf_.assign(n, -1);
    grad_buf_.assign(n, -1);
    for (size_t k = 0; k < n; ++k) {
      const Slot& x = in(b, static_cast<int>(k));
      memory::desc p = plain_desc(x.dims, dt::f32);
      if (x.md != p) in_buf_[k] = b.request(p, b.tf(idx), b.tf(idx));
      if (b.training && x.need_grad && x.md != p) grad_buf_[k] = b.request(p, b.tb(idx), b.tb(idx));
    }
  }

  void bind(Build& b) override {
    const size_t n = node.inputs.size();
    src_.resize(n);
    gsrc_.resize(n);
    fwd_.resize(n);
    bwd_.resize(n);
    dims_.clear();
    for (size_t k = 0; k < n; ++k) {
      const Slot& x = in(b, static_cast<int>(k));
      dims_.push_back(x.dims);
      memory::desc p = plain_desc(x.dims, dt::f32);
      if (in_buf_[k] >= 0) {
        memory m = b.mem(p, in_buf_[k]);
        fwd_[k] = Reorder(x.data, m);
        src_[k] = static_cast<float*>(m.get_data_handle());
      } else {
        src_[k] = static_cast<float*>(x.data.get_data_handle());
      }
      if (k < gin.size() && gin[k]) {
        if (grad_buf_[k] >= 0) {
          memory m = b.mem(p, grad_buf_[k]);
          bwd_[k] = Reorder(m, gin[k]);
          gsrc_[k] = static_cast<float*>(m.get_data_handle());
        } else {
          gsrc_[k] = static_cast<float*>(gin[k].get_data_handle());
        }
      } else {
        gsrc_[k] = nullptr;
      }
    }
    yd_ = b.slots[idx].dims;
  }

  // dir = +1: inputs → output; −1: output gradient → input gradients
  void permute(float* const* ins, float* outp, bool forward) {
    const int64_t N = yd_[0], NA = yd_[1], R = yd_[2];
    const int K = node.channels, B = node.det_box, A = node.det_anchors;
    int64_t base = 0;
    for (size_t l = 0; l + 1 < dims_.size(); l += 2) {
      const int64_t H = dims_[l][2], W = dims_[l][3], HW = H * W;
      for (int part = 0; part < 2; ++part) {
        float* t = ins[l + part];
        if (!t) continue;
        const int C = part == 0 ? K : B, off = part == 0 ? 0 : K;
#pragma omp parallel for collapse(2) schedule(static)
        for (int64_t n = 0; n < N; ++n)
          for (int64_t p = 0; p < HW; ++p)
            for (int a = 0; a < A; ++a)
              for (int j = 0; j < C; ++j) {
                float* yv = outp + (n * NA + base + p * A + a) * R + off + j;
                float* xv = t + (n * A * C + a * C + j) * HW + p;
                if (forward) *yv = *xv; else *xv = *yv;
              }
      }
      base += HW * A;
    }
  }

  void forward(Exec& e) override {
    for (auto& r : fwd_)
      if (r) r.run(e.s);
    e.s.wait();
    permute(src_.data(), static_cast<float*>(y.get_data_handle()), true);
  }

  void backward(Exec& e) override {
    e.s.wait();
    permute(gsrc_.data(), static_cast<float*>(dy.get_data_handle()), false);
    for (auto& r : bwd_)
      if (r) r.run(e.s);
  }

 private:
  std::vector<int> in_buf_, grad_buf_;
  std::vector<float*> src_, gsrc_;
  std::vector<Reorder> fwd_, bwd_;
  std::vector<Dims> dims_;
  Dims yd_;
};

}  // namespace

std::unique_ptr<CpuNode> make_detout(const Node& n, int idx) { return std::make_unique<DetOut>(n, idx); }

}  // namespace halcdl::cpu
