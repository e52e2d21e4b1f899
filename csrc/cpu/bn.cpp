// Batch normalisation on oneDNN.
//   training:  y = scale * (x - mean_B) / sqrt(var_B + eps) + shift, batch statistics over N,H,W
//              (biased variance; the model turns them into running statistics after the step)
//   inference: the running statistics replace the batch statistics.
//   backward:  dx (into gin[0]), dscale, dshift (into the gradient arena).
//   fused relu (the plan's bn → relu fusion): y = max(bn(x), 0); oneDNN keeps the relu mask
//   in a workspace and its backward applies it to dy first.
#include "cpu/node.h"

namespace halcdl::cpu {
namespace {

class BatchNorm : public CpuNode {
 public:
  using CpuNode::CpuNode;

  void create(Build& b) override {
    const Slot& x = in(b, 0);
    md_ = x.md;
    out(b).md = md_;
    auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
    global_ = !b.training || b.eval;
    if (global_) flags = flags | dnnl::normalization_flags::use_global_stats;
    if (fuse_relu) flags = flags | dnnl::normalization_flags::fuse_norm_relu;
    auto prop = b.training ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
    fwd_pd_ = dnnl::batch_normalization_forward::primitive_desc(b.eng, prop, md_, md_, node.eps, flags);
    if (!b.training) return;
    stat_md_ = fwd_pd_.mean_desc();
    // read by the model's running-statistics update after the whole backward
    if (!global_) {
      mean_buf_ = b.request(stat_md_, b.tf(idx), b.t_end());
      var_buf_ = b.request(stat_md_, b.tf(idx), b.t_end());
    }
    if (fuse_relu) ws_buf_ = b.request(fwd_pd_.workspace_desc(), b.tf(idx), b.tb(idx));
    bwd_pd_ = dnnl::batch_normalization_backward::primitive_desc(b.eng, dnnl::prop_kind::backward, md_, md_, md_,
                                                                 node.eps, flags, fwd_pd_);
    if (!x.need_grad) dsrc_buf_ = b.request(md_, b.tb(idx), b.tb(idx));
    const Dims& d = x.dims;
    stats_.node = idx;
    stats_.count = d[0];  // N·H·W; a bn after an fc sees (N, C)
    for (size_t k = 2; k < d.size(); ++k) stats_.count *= d[k];
  }

  void bind(Build& b) override {
    const Slot& x = in(b, 0);
    const auto& P = b.g.params;
    memory::desc c_md({node.channels}, dt::f32, tag::x);
    memory scale(c_md, b.eng, b.views.weights + P[node.p_weight].offset);
    memory shift(c_md, b.eng, b.views.weights + P[node.p_bias].offset);
    fwd_ = dnnl::batch_normalization_forward(fwd_pd_);
    fwd_args_ = {{DNNL_ARG_SRC, x.data}, {DNNL_ARG_DST, y}, {DNNL_ARG_SCALE, scale}, {DNNL_ARG_SHIFT, shift}};
    if (global_) {
      fwd_args_[DNNL_ARG_MEAN] = memory(c_md, b.eng, b.views.state + P[node.p_mean].offset);
      fwd_args_[DNNL_ARG_VARIANCE] = memory(c_md, b.eng, b.views.state + P[node.p_var].offset);
      if (!b.training) return;
    }
    memory mean = global_ ? fwd_args_[DNNL_ARG_MEAN] : b.mem(stat_md_, mean_buf_);
    memory var = global_ ? fwd_args_[DNNL_ARG_VARIANCE] : b.mem(stat_md_, var_buf_);
    stats_.mean = static_cast<const float*>(mean.get_data_handle());
    stats_.var = static_cast<const float*>(var.get_data_handle());
    fwd_args_[DNNL_ARG_MEAN] = mean;
    fwd_args_[DNNL_ARG_VARIANCE] = var;
    dscale_ = grad_target(b, node.p_weight, c_md);
    dshift_ = grad_target(b, node.p_bias, c_md);
    if (ws_buf_ >= 0) fwd_args_[DNNL_ARG_WORKSPACE] = b.mem(fwd_pd_.workspace_desc(), ws_buf_);
    bwd_ = dnnl::batch_normalization_backward(bwd_pd_);
    bwd_args_ = {{DNNL_ARG_SRC, x.data},          {DNNL_ARG_MEAN, mean},
                 {DNNL_ARG_VARIANCE, var},        {DNNL_ARG_DIFF_DST, dy},
                 {DNNL_ARG_SCALE, scale},         {DNNL_ARG_DIFF_SRC, gin[0] ? gin[0] : b.mem(md_, dsrc_buf_)},
                 {DNNL_ARG_DIFF_SCALE, dscale_.m}, {DNNL_ARG_DIFF_SHIFT, dshift_.m}};
    if (ws_buf_ >= 0) bwd_args_[DNNL_ARG_WORKSPACE] = fwd_args_[DNNL_ARG_WORKSPACE];
  }

  void forward(Exec& e) override { fwd_.execute(e.s, fwd_args_); }

  void backward(Exec& e) override {
    dscale_.point(e);
    dshift_.point(e);
    bwd_.execute(e.s, bwd_args_);
  }

  const BNStats* bn_stats() const override { return global_ ? nullptr : &stats_; }

 private:
  memory::desc md_, stat_md_;
  dnnl::batch_normalization_forward::primitive_desc fwd_pd_;
  dnnl::batch_normalization_backward::primitive_desc bwd_pd_;
  dnnl::batch_normalization_forward fwd_;
  dnnl::batch_normalization_backward bwd_;
  bool global_ = false;  // running statistics (inference, or eval_grads) instead of batch statistics
  int mean_buf_ = -1, var_buf_ = -1, dsrc_buf_ = -1, ws_buf_ = -1;
  Args fwd_args_, bwd_args_;
  GradTarget dscale_, dshift_;
  BNStats stats_{};
};

}  // namespace

std::unique_ptr<CpuNode> make_bn(const Node& n, int idx) { return std::make_unique<BatchNorm>(n, idx); }

}  // namespace halcdl::cpu
