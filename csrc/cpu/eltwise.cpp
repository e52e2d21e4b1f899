// ReLU and ReLU6 on oneDNN eltwise.
//   relu:  y = max(x, 0),        dx = dy · [x > 0]
//   relu6: y = min(max(x, 0), 6), dx = dy · [0 < x < 6] (clip_v2, as PyTorch's hardtanh_backward)
#include "cpu/node.h"

namespace halcdl::cpu {
namespace {

class Eltwise : public CpuNode {
 public:
  using CpuNode::CpuNode;

  void create(Build& b) override {
    const Slot& x = in(b, 0);
    out(b).md = x.md;
    const bool six = node.op == OpKind::Relu6;
    alg_ = six ? dnnl::algorithm::eltwise_clip_v2 : dnnl::algorithm::eltwise_relu;
    beta_ = six ? 6.f : 0.f;
    auto prop = b.training ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
    fwd_pd_ = dnnl::eltwise_forward::primitive_desc(b.eng, prop, alg_, x.md, x.md, 0.f, beta_);
    if (b.training && x.need_grad)
      bwd_pd_ = dnnl::eltwise_backward::primitive_desc(b.eng, alg_, x.md, x.md, x.md, 0.f, beta_, fwd_pd_);
  }

  void bind(Build& b) override {
    const Slot& x = in(b, 0);
    fwd_ = dnnl::eltwise_forward(fwd_pd_);
    fwd_args_ = {{DNNL_ARG_SRC, x.data}, {DNNL_ARG_DST, y}};
    if (gin.size() && gin[0]) {
      bwd_ = dnnl::eltwise_backward(bwd_pd_);
      bwd_args_ = {{DNNL_ARG_SRC, x.data}, {DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_DIFF_SRC, gin[0]}};
    }
  }

  void forward(Exec& e) override { fwd_.execute(e.s, fwd_args_); }
  void backward(Exec& e) override {
    if (bwd_) bwd_.execute(e.s, bwd_args_);
  }

 private:
  dnnl::algorithm alg_;
  float beta_ = 0;
  dnnl::eltwise_forward::primitive_desc fwd_pd_;
  dnnl::eltwise_backward::primitive_desc bwd_pd_;
  dnnl::eltwise_forward fwd_;
  dnnl::eltwise_backward bwd_;
  Args fwd_args_, bwd_args_;
};

// Softmax over channels: y = exp(x) / Σ_c exp(x); dx = y · (dy − Σ_c dy·y).
class Softmax : public CpuNode {
 public:
  using CpuNode::CpuNode;

  void create(Build& b) override {
    const Slot& x = in(b, 0);
    out(b).md = x.md;
    auto prop = b.training ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
    fwd_pd_ = dnnl::softmax_forward::primitive_desc(b.eng, prop, dnnl::algorithm::softmax_accurate, x.md, x.md, 1);
    if (b.training && x.need_grad)
      bwd_pd_ = dnnl::softmax_backward::primitive_desc(b.eng, dnnl::algorithm::softmax_accurate, x.md, x.md, x.md, 1,
                                                       fwd_pd_);
  }

  void bind(Build& b) override {
    fwd_ = dnnl::softmax_forward(fwd_pd_);
    fwd_args_ = {{DNNL_ARG_SRC, in(b, 0).data}, {DNNL_ARG_DST, y}};
    if (gin.size() && gin[0]) {
      bwd_ = dnnl::softmax_backward(bwd_pd_);
      bwd_args_ = {{DNNL_ARG_DST, y}, {DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_DIFF_SRC, gin[0]}};
    }
  }

  void forward(Exec& e) override { fwd_.execute(e.s, fwd_args_); }
  void backward(Exec& e) override {
    if (bwd_) bwd_.execute(e.s, bwd_args_);
  }

 private:
  dnnl::softmax_forward::primitive_desc fwd_pd_;
  dnnl::softmax_backward::primitive_desc bwd_pd_;
  dnnl::softmax_forward fwd_;
  dnnl::softmax_backward bwd_;
  Args fwd_args_, bwd_args_;
};

}  // namespace

std::unique_ptr<CpuNode> make_eltwise(const Node& n, int idx) { return std::make_unique<Eltwise>(n, idx); }
std::unique_ptr<CpuNode> make_softmax(const Node& n, int idx) { return std::make_unique<Softmax>(n, idx); }

}  // namespace halcdl::cpu
