// Transposed convolution (PyTorch's ConvTranspose2d, groups 1) on oneDNN deconvolution.
//   forward:  y = conv_transpose(x, W) + b, W in PyTorch's (I, O, kh, kw) layout
//             (oneDNN's {O, I, kh, kw} dims with the iohw tag: the same bytes)
//   backward: dW, db into the gradient arena; dx into gin[0]
#include "cpu/node.h"

namespace halcdl::cpu {
namespace {

class Deconv : public CpuNode {
 public:
  using CpuNode::CpuNode;

  void create(Build& b) override {
    const Slot& x = in(b, 0);
    const Dims& yd = b.slots[idx].dims;
    const Node& n = node;
    memory::dims wdims{n.channels, x.dims[1], n.kh, n.kw};
    wplain_ = memory::desc(wdims, dt::f32, tag::iohw);
    memory::dims strides{n.sh, n.sw}, dil{n.dh - 1, n.dw - 1}, pl{n.ph, n.pw};
    // oneDNN relates the sizes as a convolution from y to x
    memory::dims pr{pad_right(yd[2], x.dims[2], n.kh, n.sh, n.ph, n.dh),
                    pad_right(yd[3], x.dims[3], n.kw, n.sw, n.pw, n.dw)};
    memory::desc src_any(to_dims(x.dims), b.adt, tag::any), dst_any(to_dims(yd), b.adt, tag::any);
    memory::desc w_any(wdims, b.adt, tag::any), dw_any(wdims, dt::f32, tag::any);
    bias_md_ = n.bias ? memory::desc({n.channels}, dt::f32, tag::x) : memory::desc();
    const auto alg = dnnl::algorithm::deconvolution_direct;
    auto prop = b.training ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
    fwd_pd_ = dnnl::deconvolution_forward::primitive_desc(b.eng, prop, alg, src_any, w_any, bias_md_, dst_any, strides,
                                                          dil, pl, pr);
    src_md_ = fwd_pd_.src_desc();
    out(b).md = fwd_pd_.dst_desc();
    if (src_md_ != x.md) src_buf_ = b.request(src_md_, b.tf(idx), b.training ? b.tb(idx) : b.tf(idx));
    // training changes the weights every step: the mirrors are transient, refreshed per use
    if (fwd_pd_.weights_desc() != wplain_)
      w_buf_ = b.training ? b.request(fwd_pd_.weights_desc(), b.tf(idx), b.tf(idx))
                          : b.request(fwd_pd_.weights_desc(), 0, b.t_end());
    if (!b.training) return;
    bwdw_pd_ = dnnl::deconvolution_backward_weights::primitive_desc(b.eng, alg, src_md_, dw_any, bias_md_, out(b).md,
                                                                    strides, dil, pl, pr, fwd_pd_);
    if (bwdw_pd_.diff_weights_desc() != wplain_)
      dw_buf_ = b.request(bwdw_pd_.diff_weights_desc(), b.tb(idx), b.tb(idx));
    if (x.need_grad) {
      bwdd_pd_ = dnnl::deconvolution_backward_data::primitive_desc(b.eng, alg, src_md_, w_any, out(b).md, strides,
                                                                   dil, pl, pr, fwd_pd_);
      if (bwdd_pd_.weights_desc() != wplain_) wb_buf_ = b.request(bwdd_pd_.weights_desc(), b.tb(idx), b.tb(idx));
      if (src_md_ != x.md) dsrc_buf_ = b.request(src_md_, b.tb(idx), b.tb(idx));
    }
  }

  void bind(Build& b) override {
    const Slot& x = in(b, 0);
    memory src = x.data;
    if (src_buf_ >= 0) {
      src = b.mem(src_md_, src_buf_);
      src_cvt_ = Reorder(x.data, src);
    }
    w_ = weight_mirror(b, node.p_weight, wplain_, fwd_pd_.weights_desc(), w_buf_);
    fwd_ = dnnl::deconvolution_forward(fwd_pd_);
    fwd_args_ = {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, w_.used}, {DNNL_ARG_DST, y}};
    if (node.bias)
      fwd_args_[DNNL_ARG_BIAS] = memory(bias_md_, b.eng, b.views.weights + b.g.params[node.p_bias].offset);
    if (!b.training) return;
    bwdw_ = dnnl::deconvolution_backward_weights(bwdw_pd_);
    dw_ = grad_target(b, node.p_weight, wplain_);
    memory dw = dw_.m;
    if (dw_buf_ >= 0) {
      dw = b.mem(bwdw_pd_.diff_weights_desc(), dw_buf_);
      dw_cvt_ = Reorder(dw, dw_.m);
    }
    bwdw_args_ = {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_DIFF_WEIGHTS, dw}};
    if (node.bias) {
      db_ = grad_target(b, node.p_bias, bias_md_);
      bwdw_args_[DNNL_ARG_DIFF_BIAS] = db_.m;
    }
    if (x.need_grad) {
      bwdd_ = dnnl::deconvolution_backward_data(bwdd_pd_);
      memory w = w_.plain;  // the layout backward-data wants is the arena's own, or:
      if (wb_buf_ >= 0) {
        wb_ = weight_mirror(b, node.p_weight, wplain_, bwdd_pd_.weights_desc(), wb_buf_);
        w = wb_.used;
      }
      memory dsrc = gin[0];
      if (dsrc_buf_ >= 0) {
        dsrc = b.mem(src_md_, dsrc_buf_);
        dsrc_cvt_ = Reorder(dsrc, gin[0]);
      }
      bwdd_args_ = {{DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DIFF_SRC, dsrc}};
    }
  }

  void forward(Exec& e) override {
    if (src_cvt_) src_cvt_.run(e.s);
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
      if (dsrc_cvt_) dsrc_cvt_.run(e.s);
    }
  }

 private:
  memory::desc wplain_, bias_md_, src_md_;
  dnnl::deconvolution_forward::primitive_desc fwd_pd_;
  dnnl::deconvolution_backward_weights::primitive_desc bwdw_pd_;
  dnnl::deconvolution_backward_data::primitive_desc bwdd_pd_;
  dnnl::deconvolution_forward fwd_;
  dnnl::deconvolution_backward_weights bwdw_;
  dnnl::deconvolution_backward_data bwdd_;
  int src_buf_ = -1, w_buf_ = -1, dw_buf_ = -1, wb_buf_ = -1, dsrc_buf_ = -1;
  Args fwd_args_, bwdw_args_, bwdd_args_;
  Reorder src_cvt_, dw_cvt_, dsrc_cvt_;
  WeightMirror w_, wb_;
  GradTarget dw_, db_;
};

// Nearest / bilinear upsampling by an integer factor on oneDNN resampling (bilinear with
// half-pixel centres: PyTorch's interpolate(align_corners=False)).
//   backward: dx = the adjoint (each input pixel sums the gradients it contributed to)
class Upsample : public CpuNode {
 public:
  using CpuNode::CpuNode;

  void create(Build& b) override {
    const Slot& x = in(b, 0);
    const Dims& yd = b.slots[idx].dims;
    auto alg = node.op == OpKind::UpNearest ? dnnl::algorithm::resampling_nearest : dnnl::algorithm::resampling_linear;
    std::vector<float> f{static_cast<float>(node.scale), static_cast<float>(node.scale)};
    memory::desc dst_any(to_dims(yd), x.md.get_data_type(), tag::any);
    auto prop = b.training ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
    fwd_pd_ = dnnl::resampling_forward::primitive_desc(b.eng, prop, alg, f, x.md, dst_any);
    out(b).md = fwd_pd_.dst_desc();
    if (b.training && x.need_grad)
      bwd_pd_ = dnnl::resampling_backward::primitive_desc(b.eng, alg, f, x.md, out(b).md, fwd_pd_);
  }

  void bind(Build& b) override {
    fwd_ = dnnl::resampling_forward(fwd_pd_);
    fwd_args_ = {{DNNL_ARG_SRC, in(b, 0).data}, {DNNL_ARG_DST, y}};
    if (gin.size() && gin[0]) {
      bwd_ = dnnl::resampling_backward(bwd_pd_);
      bwd_args_ = {{DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_DIFF_SRC, gin[0]}};
    }
  }

  void forward(Exec& e) override { fwd_.execute(e.s, fwd_args_); }
  void backward(Exec& e) override {
    if (bwd_) bwd_.execute(e.s, bwd_args_);
  }

 private:
  dnnl::resampling_forward::primitive_desc fwd_pd_;
  dnnl::resampling_backward::primitive_desc bwd_pd_;
  dnnl::resampling_forward fwd_;
  dnnl::resampling_backward bwd_;
  Args fwd_args_, bwd_args_;
};

}  // namespace

std::unique_ptr<CpuNode> make_deconv(const Node& n, int idx) { return std::make_unique<Deconv>(n, idx); }
std::unique_ptr<CpuNode> make_upsample(const Node& n, int idx) { return std::make_unique<Upsample>(n, idx); }

}  // namespace halcdl::cpu
