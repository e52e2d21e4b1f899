// The ops that are not cuDNN's: fc on cuBLAS, and relu, relu6, add, concat, dropout,
// softmax, gap and upsampling on our kernels (kernels.cuh). GPU twins of cpu/fc.cpp,
// cpu/eltwise.cpp, cpu/join.cpp, cpu/dropout.cpp, cpu/pool.cpp (gap), cpu/resample.cpp.
// Input nodes have no op: their slot is the plan's input buffer.
#include <cstring>

#include "cuda/gpu_node.h"
#include "cuda/kernels.cuh"

namespace halcdl::gpu {
namespace {

// ---- fc ------------------------------------------------------------------------------------
// Row-major x (N, F) (an NHWC input flattened in (H, W, C) order), W (K, F) in the same order,
// y (N, K):  y = x·Wᵀ + b,  dW = dyᵀ·x,  db = Σ_n dy,  dx = dy·W.
// cuBLAS is column-major: a row-major (R, C) matrix is its (C, R) transpose with ld = C.
class FC : public GpuNode {
 public:
  using GpuNode::GpuNode;

  void create(GBuild& b) override {
    const GSlot& x = in(b, 0);
    N_ = to_int(x.n, node, "batch size");
    const int64_t f = static_cast<int64_t>(x.count) / x.n;
    HALCDL_CHECK(f == node.in_features, kErrInvalidInputShape, "node '", node.name, "' (fully connected) takes ",
                 node.in_features, " input features but gets ", f);
    F_ = to_int(f, node, "input feature count");
    K_ = to_int(node.channels, node, "output feature count");
    w_off_ = poff(b, node.p_weight);
    if (node.bias) b_off_ = poff(b, node.p_bias);
    if (node.bias && b.training) b.need_scratch(k::bias_grad_scratch_floats(N_, K_) * sizeof(float));
  }

  void bind(GBuild& b) override { x_ = in(b, 0).data; }

  void forward(GExec& e) override {
    const float* w = e.p.weights + w_off_;
    // yᶜ (K, N) = Wᶜᵀ (K, F) · xᶜ (F, N)
    gemm(e, CUBLAS_OP_T, CUBLAS_OP_N, K_, N_, F_, w, F_, x_, F_, y, K_);
    if (node.bias) k::bias_add(y, e.p.weights + b_off_, N_, K_, e.ctx.stream);
  }

  void backward(GExec& e) override {
    const float* w = e.p.weights + w_off_;
    // dWᶜ (F, K) = xᶜ (F, N) · dyᶜᵀ (N, K)
    gemm(e, CUBLAS_OP_N, CUBLAS_OP_T, F_, K_, N_, x_, F_, dy, K_, e.pgrad + w_off_, F_);
    if (node.bias) k::bias_grad(dy, e.pgrad + b_off_, N_, K_, static_cast<float*>(e.scratch), e.ctx.stream);
    // dxᶜ (F, N) = Wᶜ (F, K) · dyᶜ (K, N)
    if (gin[0]) gemm(e, CUBLAS_OP_N, CUBLAS_OP_N, F_, N_, K_, w, F_, dy, K_, gin[0], F_);
  }

 private:
  // C = A·B (ops applied), beta = 0, fp32 in and out. Without TF32 the handle's math mode
  // (Context::apply_options) keeps CUBLAS_COMPUTE_32F on plain fp32 FMA.
  static void gemm(GExec& e, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int kk, const float* A,
                   int lda, const float* B, int ldb, float* C, int ldc) {
    const float one = 1.f, zero = 0.f;
    const cublasComputeType_t ct = e.ctx.opts.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    CUBLAS_CHECK(cublasGemmEx(e.ctx.blas, ta, tb, m, n, kk, &one, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, &zero, C,
                              CUDA_R_32F, ldc, ct, CUBLAS_GEMM_DEFAULT));
  }

  int N_ = 0, F_ = 0, K_ = 0;
  size_t w_off_ = 0, b_off_ = 0;
  const float* x_ = nullptr;
};

// ---- relu / relu6 --------------------------------------------------------------------------
//   relu:  y = max(x, 0),         dx = dy · [y > 0]
//   relu6: y = min(max(x, 0), 6), dx = dy · [0 < x < 6]
class Eltwise : public GpuNode {
 public:
  using GpuNode::GpuNode;
  void create(GBuild& b) override { n_ = out(b).count; }
  void bind(GBuild& b) override { x_ = in(b, 0).data; }
  void forward(GExec& e) override {
    if (node.op == OpKind::Relu6) k::relu6_forward(x_, y, n_, e.ctx.stream);
    else k::relu_forward(x_, y, n_, e.ctx.stream);
  }
  void backward(GExec& e) override {
    if (!gin[0]) return;
    if (node.op == OpKind::Relu6) k::relu6_backward(x_, dy, gin[0], n_, e.ctx.stream);
    else k::relu_backward(y, dy, gin[0], n_, e.ctx.stream);
  }

 private:
  size_t n_ = 0;
  const float* x_ = nullptr;
};

// ---- add / concat --------------------------------------------------------------------------
//   add:    y = a + b;            da = dy, db = dy
//   concat: y = [x_0, x_1, ...] along channels;  dx_k = dy[channels of k]
class Add : public GpuNode {
 public:
  using GpuNode::GpuNode;
  void create(GBuild& b) override {
    HALCDL_CHECK(in(b, 0).count == in(b, 1).count, kErrInvalidInputShape, "node '", node.name,
                 "': add needs equal shapes");
    n_ = out(b).count;
  }
  void bind(GBuild& b) override {
    a_ = in(b, 0).data;
    b_ = in(b, 1).data;
  }
  void forward(GExec& e) override { k::add(a_, b_, y, n_, e.ctx.stream); }
  void backward(GExec& e) override {
    for (float* g : gin)
      if (g) CUDA_CHECK(cudaMemcpyAsync(g, dy, n_ * sizeof(float), cudaMemcpyDeviceToDevice, e.ctx.stream));
  }

 private:
  size_t n_ = 0;
  const float *a_ = nullptr, *b_ = nullptr;
};

class Concat : public GpuNode {
 public:
  using GpuNode::GpuNode;
  void create(GBuild& b) override {
    const GSlot& yo = out(b);
    rows_ = yo.rows();
    ctot_ = yo.c;
    int64_t off = 0;
    for (size_t i = 0; i < node.inputs.size(); ++i) {
      const GSlot& x = in(b, static_cast<int>(i));
      HALCDL_CHECK(x.rows() == rows_, kErrInvalidInputShape, "node '", node.name, "': concat needs equal N, H, W");
      ci_.push_back(x.c);
      off_.push_back(off);
      off += x.c;
    }
    HALCDL_CHECK(off == ctot_, kErrInvalidInputShape, "node '", node.name, "': concat channels do not add up");
  }
  void bind(GBuild& b) override {
    for (size_t i = 0; i < node.inputs.size(); ++i) x_.push_back(in(b, static_cast<int>(i)).data);
  }
  void forward(GExec& e) override {
    for (size_t i = 0; i < x_.size(); ++i) k::concat_forward(x_[i], y, rows_, ci_[i], off_[i], ctot_, e.ctx.stream);
  }
  void backward(GExec& e) override {
    for (size_t i = 0; i < x_.size(); ++i)
      if (gin[i]) k::concat_backward(dy, gin[i], rows_, ci_[i], off_[i], ctot_, e.ctx.stream);
  }

 private:
  int64_t rows_ = 0, ctot_ = 0;
  std::vector<int64_t> ci_, off_;
  std::vector<const float*> x_;
};

// ---- dropout -------------------------------------------------------------------------------
// Inverted dropout with the CPU twin's mask: m[i] = [splitmix64(seed + i) >= p·2^64] / (1 − p),
// seed = splitmix64(rng ^ (node << 32)); y = x · m, dx = dy · m. Inference: y = x.
inline uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

class Dropout : public GpuNode {
 public:
  using GpuNode::GpuNode;
  void create(GBuild& b) override {
    n_ = out(b).count;
    training_ = b.training;
    // kept to the end: read by tests after the step
    if (training_) mask_buf_ = b.request(n_ * sizeof(float), b.tf(idx), b.t_end());
  }
  void bind(GBuild& b) override {
    x_ = in(b, 0).data;
    if (training_) mask_ = b.ws.f(mask_buf_);
  }
  void forward(GExec& e) override {
    if (!training_) {
      CUDA_CHECK(cudaMemcpyAsync(y, x_, n_ * sizeof(float), cudaMemcpyDeviceToDevice, e.ctx.stream));
      return;
    }
    const float keep = 1.f / (1.f - node.p);
    const uint64_t threshold = static_cast<uint64_t>(static_cast<double>(node.p) * 18446744073709551616.0);
    const uint64_t seed = splitmix64(e.rng ^ (static_cast<uint64_t>(idx) << 32));
    k::dropout_forward(x_, y, mask_, n_, seed, threshold, keep, e.ctx.stream);
  }
  void backward(GExec& e) override {
    if (gin[0]) k::mul(dy, mask_, gin[0], n_, e.ctx.stream);
  }
  const float* dropout_mask() const override { return training_ ? mask_ : nullptr; }

 private:
  size_t n_ = 0;
  bool training_ = false;
  int mask_buf_ = -1;
  float* mask_ = nullptr;
  const float* x_ = nullptr;
};

// ---- softmax -------------------------------------------------------------------------------
// Over channels: rows = N·H·W pixels of C.  dx = y ⊙ (dy − Σ_c dy·y).
class Softmax : public GpuNode {
 public:
  using GpuNode::GpuNode;
  void create(GBuild& b) override {
    rows_ = out(b).rows();
    c_ = out(b).c;
  }
  void bind(GBuild& b) override { x_ = in(b, 0).data; }
  void forward(GExec& e) override { k::softmax_rows(x_, y, rows_, c_, e.ctx.stream); }
  void backward(GExec& e) override {
    if (gin[0]) k::softmax_rows_backward(y, dy, gin[0], rows_, c_, e.ctx.stream);
  }

 private:
  int64_t rows_ = 0, c_ = 0;
  const float* x_ = nullptr;
};

// ---- gap -----------------------------------------------------------------------------------
// y[n, c] = mean over H·W;  dx = dy / (H·W).
class GAP : public GpuNode {
 public:
  using GpuNode::GpuNode;
  void create(GBuild& b) override {
    const GSlot& x = in(b, 0);
    HALCDL_CHECK(x.dims.size() == 4, kErrInvalidInputShape, "node '", node.name, "' needs a 4-D input");
    n_ = x.n;
    hw_ = x.h * x.w;
    c_ = x.c;
  }
  void bind(GBuild& b) override { x_ = in(b, 0).data; }
  void forward(GExec& e) override { k::gap_forward(x_, y, n_, hw_, c_, e.ctx.stream); }
  void backward(GExec& e) override {
    if (gin[0]) k::gap_backward(dy, gin[0], n_, hw_, c_, e.ctx.stream);
  }

 private:
  int64_t n_ = 0, hw_ = 0, c_ = 0;
  const float* x_ = nullptr;
};

// ---- upsampling ----------------------------------------------------------------------------
// Integer factor, nearest or bilinear (align_corners=False); backward is the adjoint. The
// launchers take the input's (small) n, h, w, c in both directions.
class Upsample : public GpuNode {
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
    if (node.op == OpKind::UpNearest) k::upsample_nearest_forward(x_, y, n_, h_, w_, c_, node.scale, e.ctx.stream);
    else k::upsample_bilinear_forward(x_, y, n_, h_, w_, c_, node.scale, e.ctx.stream);
  }
  void backward(GExec& e) override {
    if (!gin[0]) return;
    if (node.op == OpKind::UpNearest)
      k::upsample_nearest_backward(dy, gin[0], n_, h_, w_, c_, node.scale, e.ctx.stream);
    else
      k::upsample_bilinear_backward(dy, gin[0], n_, h_, w_, c_, node.scale, e.ctx.stream);
  }

 private:
  int64_t n_ = 0, h_ = 0, w_ = 0, c_ = 0;
  const float* x_ = nullptr;
};

}  // namespace

std::unique_ptr<GpuNode> make_fc(const Node& n, int idx) { return std::make_unique<FC>(n, idx); }
std::unique_ptr<GpuNode> make_eltwise(const Node& n, int idx) { return std::make_unique<Eltwise>(n, idx); }
std::unique_ptr<GpuNode> make_add(const Node& n, int idx) { return std::make_unique<Add>(n, idx); }
std::unique_ptr<GpuNode> make_concat(const Node& n, int idx) { return std::make_unique<Concat>(n, idx); }
std::unique_ptr<GpuNode> make_dropout(const Node& n, int idx) { return std::make_unique<Dropout>(n, idx); }
std::unique_ptr<GpuNode> make_softmax(const Node& n, int idx) { return std::make_unique<Softmax>(n, idx); }
std::unique_ptr<GpuNode> make_gap(const Node& n, int idx) { return std::make_unique<GAP>(n, idx); }
std::unique_ptr<GpuNode> make_upsample(const Node& n, int idx) { return std::make_unique<Upsample>(n, idx); }

}  // namespace halcdl::gpu
