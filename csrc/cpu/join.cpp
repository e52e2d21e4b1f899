// Element-wise add (residuals) and channel concat.
//   add:    y = a + b;            da = dy, db = dy
//   concat: y = [x_0, x_1, ...];  dx_k = dy[channels of k]
// add keeps the first input's layout (the second is reordered if it differs); concat writes a
// plain NCHW output through sub-memory views, so the backward is a set of reorders.
#include "cpu/node.h"

namespace halcdl::cpu {
namespace {

class Add : public CpuNode {
 public:
  using CpuNode::CpuNode;

  // fuse_relu (the plan's add → relu fusion): y = relu(a + b) as a post-op of the binary;
  // backward: g = dy · [y > 0] (relu_use_dst_for_bwd: y > 0 exactly where a + b > 0, so the
  // gradient equals the separate relu's bit for bit), da = g, db = g.
  void create(Build& b) override {
    const Slot &a = in(b, 0), &c = in(b, 1);
    out(b).md = a.md;
    dnnl::primitive_attr attr;
    if (fuse_relu) {
      dnnl::post_ops po;
      po.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
      attr.set_post_ops(po);
    }
    pd_ = dnnl::binary::primitive_desc(b.eng, dnnl::algorithm::binary_add, a.md, a.md, a.md, attr);
    if (c.md != a.md) cvt_buf_ = b.request(a.md, b.tf(idx), b.tf(idx));
    if (fuse_relu && b.training && (a.need_grad || c.need_grad)) {
      const auto alg = dnnl::algorithm::eltwise_relu_use_dst_for_bwd;
      auto hint = dnnl::eltwise_forward::primitive_desc(b.eng, dnnl::prop_kind::forward_training, alg, a.md, a.md,
                                                        0.f, 0.f);
      relu_bwd_pd_ = dnnl::eltwise_backward::primitive_desc(b.eng, alg, a.md, a.md, a.md, 0.f, 0.f, hint);
      if (!a.need_grad && c.md != a.md) g_buf_ = b.request(a.md, b.tb(idx), b.tb(idx));
    }
  }

  void bind(Build& b) override {
    const Slot &a = in(b, 0), &c = in(b, 1);
    memory src1 = c.data;
    if (cvt_buf_ >= 0) {
      src1 = b.mem(a.md, cvt_buf_);
      cvt_ = Reorder(c.data, src1);
    }
    prim_ = dnnl::binary(pd_);
    args_ = {{DNNL_ARG_SRC_0, a.data}, {DNNL_ARG_SRC_1, src1}, {DNNL_ARG_DST, y}};
    if (relu_bwd_pd_) {
      // g goes straight into the first gradient target in the output's layout, is copied to the
      // other; where the plan shares a target with dy's buffer, g is computed in place there
      memory g = gin[0] ? gin[0] : g_buf_ >= 0 ? b.mem(a.md, g_buf_) : gin[1];
      relu_bwd_ = dnnl::eltwise_backward(relu_bwd_pd_);
      relu_args_ = {{DNNL_ARG_DST, y}, {DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_DIFF_SRC, g}};
      for (size_t k = 0; k < 2; ++k)
        if (gin[k] && gin[k].get_data_handle() != g.get_data_handle()) back_[k] = Reorder(g, gin[k]);
      return;
    }
    // an input gradient the plan placed in dy's own buffer (shared in place) needs no copy
    for (size_t k = 0; k < 2; ++k)
      if (gin[k] && gin[k].get_data_handle() != dy.get_data_handle()) back_[k] = Reorder(dy, gin[k]);
  }

  void forward(Exec& e) override {
    if (cvt_) cvt_.run(e.s);
    prim_.execute(e.s, args_);
  }
  void backward(Exec& e) override {
    if (relu_bwd_) relu_bwd_.execute(e.s, relu_args_);
    for (auto& r : back_)
      if (r) r.run(e.s);
  }

 private:
  dnnl::binary::primitive_desc pd_;
  dnnl::binary prim_;
  dnnl::eltwise_backward::primitive_desc relu_bwd_pd_;
  dnnl::eltwise_backward relu_bwd_;
  Args args_, relu_args_;
  int cvt_buf_ = -1, g_buf_ = -1;
  Reorder cvt_, back_[2];
};

class Concat : public CpuNode {
 public:
  using CpuNode::CpuNode;

  void create(Build& b) override { out(b).md = plain_desc(b.slots[idx].dims, b.adt); }

  void bind(Build& b) override {
    const Dims& yd = b.slots[idx].dims;
    int64_t off = 0;
    for (size_t k = 0; k < node.inputs.size(); ++k) {
      const Slot& x = in(b, static_cast<int>(k));
      memory::desc sub = out(b).md.submemory_desc({yd[0], x.dims[1], yd[2], yd[3]}, {0, off, 0, 0});
      fwd_.emplace_back(x.data, memory(sub, b.eng, y.get_data_handle()));
      if (gin[k]) bwd_.emplace_back(memory(sub, b.eng, dy.get_data_handle()), gin[k]);
      off += x.dims[1];
    }
  }

  void forward(Exec& e) override {
    for (auto& r : fwd_) r.run(e.s);
  }
  void backward(Exec& e) override {
    for (auto& r : bwd_) r.run(e.s);
  }

 private:
  std::vector<Reorder> fwd_, bwd_;
};

}  // namespace

std::unique_ptr<CpuNode> make_add(const Node& n, int idx) { return std::make_unique<Add>(n, idx); }
std::unique_ptr<CpuNode> make_concat(const Node& n, int idx) { return std::make_unique<Concat>(n, idx); }

}  // namespace halcdl::cpu
