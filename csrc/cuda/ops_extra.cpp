// GPU twins of cpu/shape_ops.cpp (the layer API's ops): sigmoid, tanh, resize_nearest /
// resize_bilinear to a fixed size, depth_to_space — all on our kernels (kernels.cuh), NHWC.
#include "cuda/gpu_node.h"
#include "cuda/kernels.cuh"

namespace halcdl::gpu {
namespace {

// sigmoid / tanh: backward from the output y (as the CPU twin's *_use_dst_for_bwd).
class Act : public GpuNode {
 public:
  using GpuNode::GpuNode;
  void create(GBuild& b) override { n_ = out(b).count; }
  void bind(GBuild& b) override { x_ = in(b, 0).data; }
  void forward(GExec& e) override {
    if (node.op == OpKind::Sigmoid) k::sigmoid_forward(x_, y, n_, e.ctx.stream);
    else k::tanh_forward(x_, y, n_, e.ctx.stream);
  }
  void backward(GExec& e) override {
    if (!gin[0]) return;
    if (node.op == OpKind::Sigmoid) k::sigmoid_backward(y, dy, gin[0], n_, e.ctx.stream);
    else k::tanh_backward(y, dy, gin[0], n_, e.ctx.stream);
  }

 private:
  size_t n_ = 0;
  const float* x_ = nullptr;
};

class Resize : public GpuNode {
 public:
  using GpuNode::GpuNode;
  void create(GBuild& b) override {
    const GSlot& x = in(b, 0);
    HALCDL_CHECK(x.dims.size() == 4, kErrInvalidInputShape, "node '", node.name, "' needs a 4-D input");
    n_ = x.n;
    h_ = x.h;
    w_ = x.w;
    c_ = x.c;
  }
  void bind(GBuild& b) override { x_ = in(b, 0).data; }
  void forward(GExec& e) override {
    k::resize_forward(x_, y, n_, h_, w_, c_, node.out_h, node.out_w, bilinear(), e.ctx.stream);
  }
  void backward(GExec& e) override {
    if (gin[0]) k::resize_backward(dy, gin[0], n_, h_, w_, c_, node.out_h, node.out_w, bilinear(), e.ctx.stream);
  }

 private:
  int bilinear() const { return node.op == OpKind::ResizeBilinear ? 1 : 0; }
  int64_t n_ = 0, h_ = 0, w_ = 0, c_ = 0;
  const float* x_ = nullptr;
};

class DepthToSpace : public GpuNode {
 public:
  using GpuNode::GpuNode;
  void create(GBuild& b) override {
    const GSlot& x = in(b, 0);
    HALCDL_CHECK(x.dims.size() == 4, kErrInvalidInputShape, "node '", node.name, "' needs a 4-D input");
    n_ = x.n;
    h_ = x.h;
    w_ = x.w;
    co_ = out(b).c;
  }
  void bind(GBuild& b) override { x_ = in(b, 0).data; }
  void forward(GExec& e) override {
    k::depth_to_space_forward(x_, y, n_, h_, w_, co_, node.block, node.crd ? 1 : 0, e.ctx.stream);
  }
  void backward(GExec& e) override {
    if (gin[0]) k::depth_to_space_backward(dy, gin[0], n_, h_, w_, co_, node.block, node.crd ? 1 : 0, e.ctx.stream);
  }

 private:
  int64_t n_ = 0, h_ = 0, w_ = 0, co_ = 0;
  const float* x_ = nullptr;
};

}  // namespace

std::unique_ptr<GpuNode> make_act(const Node& n, int idx) { return std::make_unique<Act>(n, idx); }
std::unique_ptr<GpuNode> make_resize(const Node& n, int idx) { return std::make_unique<Resize>(n, idx); }
std::unique_ptr<GpuNode> make_depth_to_space(const Node& n, int idx) { return std::make_unique<DepthToSpace>(n, idx); }

}  // namespace halcdl::gpu
