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

  void create(Build& b) override {
    const Slot &a = in(b, 0), &c = in(b, 1);
    out(b).md = a.md;
    pd_ = dnnl::binary::primitive_desc(b.eng, dnnl::algorithm::binary_add, a.md, a.md, a.md);
    if (c.md != a.md) cvt_buf_ = b.request(a.md, b.tf(idx), b.tf(idx));
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
    for (size_t k = 0; k < 2; ++k)
      if (gin[k]) back_[k] = Reorder(dy, gin[k]);
  }

  void forward(Exec& e) override {
    if (cvt_) cvt_.run(e.s);
    prim_.execute(e.s, args_);
  }
  void backward(Exec& e) override {
    for (auto& r : back_)
      if (r) r.run(e.s);
  }

 private:
  dnnl::binary::primitive_desc pd_;
  dnnl::binary prim_;
  Args args_;
  int cvt_buf_ = -1;
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
