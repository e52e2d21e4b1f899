// Max / average pooling and global average pooling on oneDNN.
//   max: y = max over the window (padding counts as −inf); dx routes dy to the argmax
//        (oneDNN keeps the argmax in a workspace between forward and backward).
//   avg: y = mean over the window, padding excluded; dx spreads dy evenly.
//   gap: avg over the whole H×W.
#include "cpu/node.h"

namespace halcdl::cpu {
namespace {

class Pool : public CpuNode {
 public:
  using CpuNode::CpuNode;

  void create(Build& b) override {
    const Slot& x = in(b, 0);
    const Dims& yd = b.slots[idx].dims;
    const Node& n = node;
    memory::dims kernel, strides, pl, pr;
    if (n.op == OpKind::GAP) {
      kernel = {x.dims[2], x.dims[3]};
      strides = {1, 1};
      pl = pr = {0, 0};
    } else {
      kernel = {n.kh, n.kw};
      strides = {n.sh, n.sw};
      pl = {n.ph, n.pw};
      pr = {pad_right(x.dims[2], yd[2], n.kh, n.sh, n.ph, 1), pad_right(x.dims[3], yd[3], n.kw, n.sw, n.pw, 1)};
    }
    memory::dims dil{0, 0};
    auto alg = n.op == OpKind::MaxPool ? dnnl::algorithm::pooling_max : dnnl::algorithm::pooling_avg_exclude_padding;
    auto prop = b.training ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
    memory::desc dst_any(to_dims(yd), x.md.get_data_type(), tag::any);
    fwd_pd_ = dnnl::pooling_forward::primitive_desc(b.eng, prop, alg, x.md, dst_any, strides, kernel, dil, pl, pr);
    out(b).md = fwd_pd_.dst_desc();
    if (!b.training) return;
    if (alg == dnnl::algorithm::pooling_max) ws_buf_ = b.request(fwd_pd_.workspace_desc(), b.tf(idx), b.tb(idx));
    if (x.need_grad)
      bwd_pd_ = dnnl::pooling_backward::primitive_desc(b.eng, alg, x.md, out(b).md, strides, kernel, dil, pl, pr,
                                                       fwd_pd_);
  }

  void bind(Build& b) override {
    fwd_ = dnnl::pooling_forward(fwd_pd_);
    fwd_args_ = {{DNNL_ARG_SRC, in(b, 0).data}, {DNNL_ARG_DST, y}};
    memory ws;
    if (ws_buf_ >= 0) {
      ws = b.mem(fwd_pd_.workspace_desc(), ws_buf_);
      fwd_args_[DNNL_ARG_WORKSPACE] = ws;
    }
    if (gin.size() && gin[0]) {
      bwd_ = dnnl::pooling_backward(bwd_pd_);
      bwd_args_ = {{DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_DIFF_SRC, gin[0]}};
      if (ws) bwd_args_[DNNL_ARG_WORKSPACE] = ws;
    }
  }

  void forward(Exec& e) override { fwd_.execute(e.s, fwd_args_); }
  void backward(Exec& e) override {
    if (bwd_) bwd_.execute(e.s, bwd_args_);
  }

 private:
  dnnl::pooling_forward::primitive_desc fwd_pd_;
  dnnl::pooling_backward::primitive_desc bwd_pd_;
  dnnl::pooling_forward fwd_;
  dnnl::pooling_backward bwd_;
  int ws_buf_ = -1;
  Args fwd_args_, bwd_args_;
};

}  // namespace

std::unique_ptr<CpuNode> make_pool(const Node& n, int idx) { return std::make_unique<Pool>(n, idx); }

}  // namespace halcdl::cpu
