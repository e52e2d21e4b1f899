// Nearest / bilinear upsampling by an integer factor on oneDNN resampling.
#include "cpu/node.h"

namespace halcdl::cpu {
namespace {

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

std::unique_ptr<CpuNode> make_upsample(const Node& n, int idx) { return std::make_unique<Upsample>(n, idx); }

}  // namespace halcdl::cpu
