// Convolution and transposed convolution on oneDNN (one template: they differ in the weight
// layout, the padding relation and the primitive types).
//   forward:  y = conv(x, W) + b   (transposed: PyTorch's ConvTranspose2d, W as (I, O, kh, kw),
//             oneDNN's {O, I, kh, kw} dims with the iohw tag over the same bytes)
//   backward: dW = conv_bwd_weights(x, dy), db = sum dy  (written into the gradient arena)
//             dx = conv_bwd_data(dy, W)                    (written into gin[0])
// Layouts: src/weights/dst are `any`; oneDNN picks blocked formats. The input is reordered
// only if its layout differs from the one the primitive wants (rare: consecutive convolutions
// agree). Weights stay plain (OIHW / GOIHW) in the arena and are mirrored once per version.
// Inference with a folded bn (the plan's conv → bn [→ relu|relu6] fusion):
//   s = scale / sqrt(running_var + eps),  W' = W·s (per output channel),
//   b' = (b − running_mean)·s + shift,   y = act(conv(x, W') + b')  (act as a post-op);
// W' and b' are recomputed whenever the arena's version changes.
#include <cmath>

#include "cpu/node.h"

namespace halcdl::cpu {
namespace {

template <bool Transposed>
struct Prims {
  using Fwd = dnnl::convolution_forward;
  using BwdD = dnnl::convolution_backward_data;
  using BwdW = dnnl::convolution_backward_weights;
  static constexpr auto alg = dnnl::algorithm::convolution_direct;
};
template <>
struct Prims<true> {
  using Fwd = dnnl::deconvolution_forward;
  using BwdD = dnnl::deconvolution_backward_data;
  using BwdW = dnnl::deconvolution_backward_weights;
  static constexpr auto alg = dnnl::algorithm::deconvolution_direct;
};

template <bool Transposed>
class ConvT : public CpuNode {
  using P = Prims<Transposed>;

 public:
  using CpuNode::CpuNode;

  void create(Build& b) override {
    const Slot& x = in(b, 0);
    const Dims& yd = b.slots[idx].dims;
    const Node& n = node;
    const int64_t G = n.groups, O = n.channels, I = x.dims[1];
    memory::dims wdims = G > 1 ? memory::dims{G, O / G, I / G, n.kh, n.kw} : memory::dims{O, I, n.kh, n.kw};
    wplain_ = memory::desc(wdims, dt::f32, Transposed ? tag::iohw : G > 1 ? tag::goihw : tag::oihw);
    memory::dims strides{n.sh, n.sw}, dil{n.dh - 1, n.dw - 1}, pl{n.ph, n.pw};
    // a transposed convolution relates the sizes as a convolution from y to x
    const Dims& from = Transposed ? yd : x.dims;
    const Dims& to = Transposed ? x.dims : yd;
    memory::dims pr{pad_right(from[2], to[2], n.kh, n.sh, n.ph, n.dh), pad_right(from[3], to[3], n.kw, n.sw, n.pw, n.dw)};
    HALCDL_CHECK(!Transposed || (fused_bn < 0 && fused_act == OpKind::Input), kErrInvalidInputShape,
                 "internal: fusion into a transposed convolution");
    memory::desc src_any(to_dims(x.dims), b.adt, tag::any), dst_any(to_dims(yd), b.adt, tag::any);
    // weights in the compute type; weight gradients always fp32 (master weights are fp32)
    memory::desc w_any(wdims, b.adt, tag::any), dw_any(wdims, dt::f32, tag::any);
    const bool fold = fused_bn >= 0;
    bias_md_ = n.bias || fold ? memory::desc({O}, dt::f32, tag::x) : memory::desc();
    const auto alg = P::alg;
    auto prop = b.training ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
    dnnl::primitive_attr attr;
    dnnl::post_ops po;
    if (fused_act != OpKind::Input) {
      if (fused_act == OpKind::Relu) po.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
      else po.append_eltwise(dnnl::algorithm::eltwise_clip_v2, 0.f, 6.f);
    }
    if (fused_sum >= 0) {
      // residual add in place: dst (= the other operand's buffer, in its layout) += conv
      HALCDL_CHECK(!Transposed && !b.training, kErrInvalidInputShape, "internal: sum fusion");
      po.append_sum(1.f);
      if (fused_post_act == OpKind::Relu) po.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
      dst_any = b.slots[fused_sum].md;
    }
    if (po.len() > 0) attr.set_post_ops(po);
    fwd_pd_ = typename P::Fwd::primitive_desc(b.eng, prop, alg, src_any, w_any, bias_md_, dst_any, strides, dil, pl,
                                              pr, attr);
    if (fold) {
      fold_w_buf_ = b.request(wplain_, 0, b.t_end());
      fold_b_buf_ = b.ws.request(O * sizeof(float), 0, b.t_end());
    }
    src_md_ = fwd_pd_.src_desc();
    out(b).md = fwd_pd_.dst_desc();
    const int keep = b.training ? b.tb(idx) : b.tf(idx);
    if (src_md_ != x.md) src_buf_ = b.request(src_md_, b.tf(idx), keep);
    // training changes the weights every step: the mirrors are transient, refreshed per use
    if (fwd_pd_.weights_desc() != wplain_)
      w_buf_ = b.training ? b.request(fwd_pd_.weights_desc(), b.tf(idx), b.tf(idx))
                          : b.request(fwd_pd_.weights_desc(), 0, b.t_end());
    if (!b.training) return;
    bwdw_pd_ = typename P::BwdW::primitive_desc(b.eng, alg, src_md_, dw_any, bias_md_, out(b).md, strides, dil, pl,
                                                pr, fwd_pd_);
    if (bwdw_pd_.diff_weights_desc() != wplain_)
      dw_buf_ = b.request(bwdw_pd_.diff_weights_desc(), b.tb(idx), b.tb(idx));
    if (x.need_grad) {
      bwdd_pd_ = typename P::BwdD::primitive_desc(b.eng, alg, src_md_, w_any, out(b).md, strides, dil, pl, pr,
                                                  fwd_pd_);
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
    fwd_ = typename P::Fwd(fwd_pd_);
    if (fused_bn >= 0) {
      const Node& bn = b.g.nodes[fused_bn];
      const auto& P = b.g.params;
      fold_ = {b.views.weights + P[node.p_weight].offset,
               node.bias ? b.views.weights + P[node.p_bias].offset : nullptr,
               b.views.weights + P[bn.p_weight].offset,
               b.views.weights + P[bn.p_bias].offset,
               b.views.state + P[bn.p_mean].offset,
               b.views.state + P[bn.p_var].offset,
               static_cast<float*>(b.ws.ptr(fold_w_buf_)),
               static_cast<float*>(b.ws.ptr(fold_b_buf_)),
               bn.eps,
               node.channels,
               static_cast<int64_t>(P[node.p_weight].size / node.channels)};
      memory plain(wplain_, b.eng, fold_.w_out);
      w_.plain = plain;
      if (w_buf_ >= 0) {
        w_.used = b.mem(fwd_pd_.weights_desc(), w_buf_);
        w_.r = Reorder(plain, w_.used);
      } else {
        w_.used = plain;
      }
      fwd_args_ = {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, w_.used}, {DNNL_ARG_DST, y},
                   {DNNL_ARG_BIAS, memory(bias_md_, b.eng, fold_.b_out)}};
      return;  // inference only
    }
    w_ = weight_mirror(b, node.p_weight, wplain_, fwd_pd_.weights_desc(), w_buf_);
    fwd_args_ = {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, w_.used}, {DNNL_ARG_DST, y}};
    if (node.bias)
      fwd_args_[DNNL_ARG_BIAS] = memory(bias_md_, b.eng, b.views.weights + b.g.params[node.p_bias].offset);
    if (!b.training) return;

    bwdw_ = typename P::BwdW(bwdw_pd_);
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
      bwdd_ = typename P::BwdD(bwdd_pd_);
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
    if (fused_bn >= 0 && fold_seen_ != e.version) {
      fold_.run();
      fold_seen_ = e.version;
    }
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
  typename P::Fwd::primitive_desc fwd_pd_;
  typename P::BwdW::primitive_desc bwdw_pd_;
  typename P::BwdD::primitive_desc bwdd_pd_;
  typename P::Fwd fwd_;
  typename P::BwdW bwdw_;
  typename P::BwdD bwdd_;
  struct Fold {
    const float *w, *b, *scale, *shift, *mean, *var;
    float *w_out, *b_out;
    float eps;
    int64_t channels, per_channel;
    void run() const {
      for (int64_t o = 0; o < channels; ++o) {
        const float s = scale[o] / std::sqrt(var[o] + eps);
        for (int64_t i = 0; i < per_channel; ++i) w_out[o * per_channel + i] = w[o * per_channel + i] * s;
        b_out[o] = ((b ? b[o] : 0.f) - mean[o]) * s + shift[o];
      }
    }
  };
  Fold fold_{};
  uint64_t fold_seen_ = ~0ull;
  int src_buf_ = -1, w_buf_ = -1, dw_buf_ = -1, wb_buf_ = -1, dsrc_buf_ = -1, fold_w_buf_ = -1, fold_b_buf_ = -1;
  Args fwd_args_, bwdw_args_, bwdd_args_;
  Reorder src_cvt_, dw_cvt_, dsrc_cvt_;
  WeightMirror w_, wb_;
  GradTarget dw_, db_;
};

}  // namespace

std::unique_ptr<CpuNode> make_conv(const Node& n, int idx) { return std::make_unique<ConvT<false>>(n, idx); }
std::unique_ptr<CpuNode> make_deconv(const Node& n, int idx) { return std::make_unique<ConvT<true>>(n, idx); }

}  // namespace halcdl::cpu
