// Fully connected layer on oneDNN inner product. A 4-D input is flattened in PyTorch's
// (C, H, W) order: the weight (O, C·H·W) is viewed as OIHW over the same bytes.
//   forward:  y = x W^T + b
//   backward: dW = dy^T x, db = Σ_n dy (gradient arena), dx = dy W (gin[0])
#include "cpu/node.h"

namespace halcdl::cpu {
namespace {

class FC : public CpuNode {
 public:
  using CpuNode::CpuNode;

  void create(Build& b) override {
    const Slot& x = in(b, 0);
    const int64_t O = node.channels;
    memory::dims wd{O};
    for (size_t k = 1; k < x.dims.size(); ++k) wd.push_back(x.dims[k]);
    wplain_ = memory::desc(wd, dt::f32, wd.size() == 4 ? tag::oihw : wd.size() == 3 ? tag::oiw : tag::oi);
    memory::desc w_any(wd, b.adt, tag::any), dw_any(wd, dt::f32, tag::any), dst_any({x.dims[0], O}, b.adt, tag::any);
    bias_md_ = node.bias ? memory::desc({O}, dt::f32, tag::x) : memory::desc();
    auto prop = b.training ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
    fwd_pd_ = dnnl::inner_product_forward::primitive_desc(b.eng, prop, x.md, w_any, bias_md_, dst_any);
    out(b).md = fwd_pd_.dst_desc();
    // training changes the weights every step: the mirrors are transient, refreshed per use
    if (fwd_pd_.weights_desc() != wplain_)
      w_buf_ = b.training ? b.request(fwd_pd_.weights_desc(), b.tf(idx), b.tf(idx))
                          : b.request(fwd_pd_.weights_desc(), 0, b.t_end());
    if (!b.training) return;
    bwdw_pd_ = dnnl::inner_product_backward_weights::primitive_desc(b.eng, x.md, dw_any, bias_md_, out(b).md, fwd_pd_);
    if (bwdw_pd_.diff_weights_desc() != wplain_)
      dw_buf_ = b.request(bwdw_pd_.diff_weights_desc(), b.tb(idx), b.tb(idx));
    if (x.need_grad) {
      bwdd_pd_ = dnnl::inner_product_backward_data::primitive_desc(b.eng, x.md, w_any, out(b).md, fwd_pd_);
      if (bwdd_pd_.weights_desc() != wplain_) wb_buf_ = b.request(bwdd_pd_.weights_desc(), b.tb(idx), b.tb(idx));
    }
  }

  void bind(Build& b) override {
    const Slot& x = in(b, 0);
    w_ = weight_mirror(b, node.p_weight, wplain_, fwd_pd_.weights_desc(), w_buf_);
    fwd_ = dnnl::inner_product_forward(fwd_pd_);
    fwd_args_ = {{DNNL_ARG_SRC, x.data}, {DNNL_ARG_WEIGHTS, w_.used}, {DNNL_ARG_DST, y}};
    if (node.bias)
      fwd_args_[DNNL_ARG_BIAS] = memory(bias_md_, b.eng, b.views.weights + b.g.params[node.p_bias].offset);
    if (!b.training) return;
    bwdw_ = dnnl::inner_product_backward_weights(bwdw_pd_);
    dw_ = grad_target(b, node.p_weight, wplain_);
    memory dw = dw_.m;
    if (dw_buf_ >= 0) {
      dw = b.mem(bwdw_pd_.diff_weights_desc(), dw_buf_);
      dw_cvt_ = Reorder(dw, dw_.m);
    }
    bwdw_args_ = {{DNNL_ARG_SRC, x.data}, {DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_DIFF_WEIGHTS, dw}};
    if (node.bias) {
      db_ = grad_target(b, node.p_bias, bias_md_);
      bwdw_args_[DNNL_ARG_DIFF_BIAS] = db_.m;
    }
    if (x.need_grad) {
      bwdd_ = dnnl::inner_product_backward_data(bwdd_pd_);
      memory w = w_.plain;  // the layout backward-data wants is the arena's own, or:
      if (wb_buf_ >= 0) {
        wb_ = weight_mirror(b, node.p_weight, wplain_, bwdd_pd_.weights_desc(), wb_buf_);
        w = wb_.used;
      }
      bwdd_args_ = {{DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DIFF_SRC, gin[0]}};
    }
  }

  void forward(Exec& e) override {
    w_.refresh(e);
    fwd_.execute(e.s, fwd_args_);
  }

  void backward(Exec& e) override {
    dw_.point(e);
    if (node.bias) db_.point(e);
    bwdw_.execute(e.s, bwdw_args_);
    if (dw_cvt_) dw_cvt_.run(e.s);
    if (bwdd_) {
      if (wb_buf_ >= 0) wb_.refresh(e);
      bwdd_.execute(e.s, bwdd_args_);
    }
  }

 private:
  memory::desc wplain_, bias_md_;
  dnnl::inner_product_forward::primitive_desc fwd_pd_;
  dnnl::inner_product_backward_weights::primitive_desc bwdw_pd_;
  dnnl::inner_product_backward_data::primitive_desc bwdd_pd_;
  dnnl::inner_product_forward fwd_;
  dnnl::inner_product_backward_weights bwdw_;
  dnnl::inner_product_backward_data bwdd_;
  int w_buf_ = -1, dw_buf_ = -1, wb_buf_ = -1;
  Args fwd_args_, bwdw_args_, bwdd_args_;
  Reorder dw_cvt_;
  WeightMirror w_, wb_;
  GradTarget dw_, db_;
};

}  // namespace

std::unique_ptr<CpuNode> make_fc(const Node& n, int idx) { return std::make_unique<FC>(n, idx); }

}  // namespace halcdl::cpu
