// GPU twins of cpu/shape_ops.cpp (the layer API's ops): sigmoid, tanh, resize_nearest /
// resize_bilinear to a fixed size, depth_to_space, reshape, permute, depth_max, lrn, reduce, matmul — all on our kernels (kernels.cuh), NHWC.
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

class Reshape : public GpuNode {
 public:
  using GpuNode::GpuNode;
  void create(GBuild& b) override {
    const GSlot& x = in(b, 0);
    const GSlot& o = out(b);
    HALCDL_CHECK(x.dims.size() == 4 && o.dims.size() == 4, kErrInvalidInputShape, "node '", node.name,
                 "' needs a 4-D input");
    n_ = x.n; h_ = x.h; w_ = x.w; c_ = x.c;
    oh_ = o.h; ow_ = o.w; oc_ = o.c;
  }
  void bind(GBuild& b) override { x_ = in(b, 0).data; }
  void forward(GExec& e) override { k::reshape_nhwc(x_, y, n_, h_, w_, c_, oh_, ow_, oc_, e.ctx.stream); }
  void backward(GExec& e) override {
    if (gin[0]) k::reshape_nhwc(dy, gin[0], n_, oh_, ow_, oc_, h_, w_, c_, e.ctx.stream);
  }

 private:
  int64_t n_ = 0, h_ = 0, w_ = 0, c_ = 0, oh_ = 0, ow_ = 0, oc_ = 0;
  const float* x_ = nullptr;
};

class Permute : public GpuNode {
 public:
  using GpuNode::GpuNode;
  void create(GBuild& b) override {
    const GSlot& x = in(b, 0);
    HALCDL_CHECK(x.dims.size() == 4, kErrInvalidInputShape, "node '", node.name, "' needs a 4-D input");
    n_ = x.n; c_ = x.c; h_ = x.h; w_ = x.w;
    const GSlot& o = out(b);
    oc_ = o.c; oh_ = o.h; ow_ = o.w;
    for (int k = 0; k < 3; ++k) inv_[node.perm[k]] = k;
  }
  void bind(GBuild& b) override { x_ = in(b, 0).data; }
  void forward(GExec& e) override {
    k::permute_nhwc(x_, y, n_, c_, h_, w_, node.perm[0], node.perm[1], node.perm[2], e.ctx.stream);
  }
  void backward(GExec& e) override {
    if (gin[0]) k::permute_nhwc(dy, gin[0], n_, oc_, oh_, ow_, inv_[0], inv_[1], inv_[2], e.ctx.stream);
  }

 private:
  int64_t n_ = 0, c_ = 0, h_ = 0, w_ = 0, oc_ = 0, oh_ = 0, ow_ = 0;
  int inv_[3] = {0, 1, 2};
  const float* x_ = nullptr;
};

// depth_max: the maximum over the channels (or its first index); backward to that index.
class DepthMax : public GpuNode {
 public:
  using GpuNode::GpuNode;
  void create(GBuild& b) override {
    const GSlot& x = in(b, 0);
    HALCDL_CHECK(x.dims.size() == 4, kErrInvalidInputShape, "node '", node.name, "' needs a 4-D input");
    pixels_ = x.n * x.h * x.w;
    c_ = x.c;
  }
  void bind(GBuild& b) override { x_ = in(b, 0).data; }
  void forward(GExec& e) override { k::depth_max_forward(x_, y, pixels_, c_, node.argmax ? 1 : 0, e.ctx.stream); }
  void backward(GExec& e) override {
    if (gin[0]) k::depth_max_backward(x_, dy, gin[0], pixels_, c_, node.argmax ? 1 : 0, e.ctx.stream);
  }

 private:
  int64_t pixels_ = 0, c_ = 0;
  const float* x_ = nullptr;
};

// lrn across channels: our kernels (cuDNN's LRN would need NCHW; the activations are NHWC).
class Lrn : public GpuNode {
 public:
  using GpuNode::GpuNode;
  void create(GBuild& b) override {
    const GSlot& x = in(b, 0);
    HALCDL_CHECK(x.dims.size() == 4, kErrInvalidInputShape, "node '", node.name, "' needs a 4-D input");
    n_ = x.count;
    c_ = x.c;
  }
  void bind(GBuild& b) override { x_ = in(b, 0).data; }
  void forward(GExec& e) override {
    k::lrn_forward(x_, y, n_, c_, node.lrn_size, node.lrn_alpha, node.lrn_beta, node.lrn_k, e.ctx.stream);
  }
  void backward(GExec& e) override {
    if (gin[0])
      k::lrn_backward(x_, dy, gin[0], n_, c_, node.lrn_size, node.lrn_alpha, node.lrn_beta, node.lrn_k, e.ctx.stream);
  }

 private:
  size_t n_ = 0;
  int64_t c_ = 0;
  const float* x_ = nullptr;
};

// reduce: sum / mean / L2 norm over some of C, H, W (our kernels, deterministic).
class Reduce : public GpuNode {
 public:
  using GpuNode::GpuNode;
  void create(GBuild& b) override {
    const GSlot& x = in(b, 0);
    HALCDL_CHECK(x.dims.size() == 4, kErrInvalidInputShape, "node '", node.name, "' needs a 4-D input");
    n_ = x.n; h_ = x.h; w_ = x.w; c_ = x.c;
  }
  void bind(GBuild& b) override { x_ = in(b, 0).data; }
  void forward(GExec& e) override {
    k::reduce_forward(x_, y, n_, h_, w_, c_, rh(), rw(), rc(), node.reduce_mode, e.ctx.stream);
  }
  void backward(GExec& e) override {
    if (gin[0]) k::reduce_backward(x_, y, dy, gin[0], n_, h_, w_, c_, rh(), rw(), rc(), node.reduce_mode, e.ctx.stream);
  }

 private:
  int rc() const { return node.reduce_axis[0] ? 1 : 0; }
  int rh() const { return node.reduce_axis[1] ? 1 : 0; }
  int rw() const { return node.reduce_axis[2] ? 1 : 0; }
  int64_t n_ = 0, h_ = 0, w_ = 0, c_ = 0;
  const float* x_ = nullptr;
};

// matmul per (n, c) on our strided kernel (cuBLAS's batched gemm needs a unit stride in each
// matrix, NHWC's is c): Y = op(A)·op(B); dA = dY·op(B)ᵀ or op(B)·dYᵀ; dB = op(A)ᵀ·dY or dYᵀ·op(A).
class MatMul : public GpuNode {
 public:
  using GpuNode::GpuNode;
  void create(GBuild& b) override {
    const GSlot& a = in(b, 0);
    const GSlot& z = in(b, 1);
    HALCDL_CHECK(a.dims.size() == 4 && z.dims.size() == 4, kErrInvalidInputShape, "node '", node.name,
                 "' needs 4-D inputs");
    n_ = a.n; c_ = a.c; ah_ = a.h; aw_ = a.w; bh_ = z.h; bw_ = z.w;
    yh_ = out(b).h; yw_ = out(b).w;
  }
  void bind(GBuild& b) override {
    a_ = in(b, 0).data;
    b_ = in(b, 1).data;
  }
  void forward(GExec& e) override {
    k::matmul_nhwc(a_, ta(), ah_, aw_, b_, tb(), bh_, bw_, y, n_, c_, e.ctx.stream);
  }
  void backward(GExec& e) override {
    if (gin[0]) {
      if (ta()) k::matmul_nhwc(b_, tb(), bh_, bw_, dy, 1, yh_, yw_, gin[0], n_, c_, e.ctx.stream);
      else k::matmul_nhwc(dy, 0, yh_, yw_, b_, 1 - tb(), bh_, bw_, gin[0], n_, c_, e.ctx.stream);
    }
    if (gin[1]) {
      if (tb()) k::matmul_nhwc(dy, 1, yh_, yw_, a_, ta(), ah_, aw_, gin[1], n_, c_, e.ctx.stream);
      else k::matmul_nhwc(a_, 1 - ta(), ah_, aw_, dy, 0, yh_, yw_, gin[1], n_, c_, e.ctx.stream);
    }
  }

 private:
  int ta() const { return node.trans_a ? 1 : 0; }
  int tb() const { return node.trans_b ? 1 : 0; }
  int64_t n_ = 0, c_ = 0, ah_ = 0, aw_ = 0, bh_ = 0, bw_ = 0, yh_ = 0, yw_ = 0;
  const float* a_ = nullptr;
  const float* b_ = nullptr;
};

}  // namespace

std::unique_ptr<GpuNode> make_matmul(const Node& n, int idx) { return std::make_unique<MatMul>(n, idx); }
std::unique_ptr<GpuNode> make_reduce(const Node& n, int idx) { return std::make_unique<Reduce>(n, idx); }
std::unique_ptr<GpuNode> make_lrn(const Node& n, int idx) { return std::make_unique<Lrn>(n, idx); }
std::unique_ptr<GpuNode> make_depth_max(const Node& n, int idx) { return std::make_unique<DepthMax>(n, idx); }
std::unique_ptr<GpuNode> make_reshape(const Node& n, int idx) { return std::make_unique<Reshape>(n, idx); }
std::unique_ptr<GpuNode> make_permute(const Node& n, int idx) { return std::make_unique<Permute>(n, idx); }
std::unique_ptr<GpuNode> make_act(const Node& n, int idx) { return std::make_unique<Act>(n, idx); }
std::unique_ptr<GpuNode> make_resize(const Node& n, int idx) { return std::make_unique<Resize>(n, idx); }
std::unique_ptr<GpuNode> make_depth_to_space(const Node& n, int idx) { return std::make_unique<DepthToSpace>(n, idx); }

}  // namespace halcdl::gpu
