// The ops that are not cuDNN's: fc on cuBLAS, and relu, relu6, add, concat, dropout,
// softmax, gap and upsampling on our kernels (kernels.cuh). GPU twins of cpu/fc.cpp,
// cpu/eltwise.cpp, cpu/join.cpp, cpu/dropout.cpp, cpu/pool.cpp (gap), cpu/resample.cpp.
// Input nodes have no op: their slot is the plan's input buffer.
//
// bfloat16 plans (GBuild::bf16): fc with cublasGemmEx on bf16 operands (x, the bf16 weight
// mirror, dy) with CUBLAS_COMPUTE_32F; y and dx bf16, dW straight into the fp32 gradient arena
// (C CUDA_R_32F); relu, relu6, add, concat, dropout (fp32 mask) and gap on the _bf16 kernels.
// softmax and upsampling run their fp32 kernels between casts in bf16 plans (as autocast runs
// softmax in fp32): bf16 → fp32 into the shared scratch, the fp32 kernel, one rounding back.
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
    bf16_ = b.bf16;
    w_off_ = poff(b, node.p_weight);
    if (node.bias) b_off_ = poff(b, node.p_bias);
    if (node.bias && b.training)
      b.need_scratch(bf16_ ? k::bf16_colsum_scratch_doubles(N_, K_) * sizeof(double)
                           : k::bias_grad_scratch_floats(N_, K_) * sizeof(float));
  }

  void bind(GBuild& b) override { x_ = in(b, 0).data; }
  bool has_bf16() const override { return true; }

  void forward(GExec& e) override {
    // yᶜ (K, N) = Wᶜᵀ (K, F) · xᶜ (F, N)
    gemm(e, CUBLAS_OP_T, CUBLAS_OP_N, K_, N_, F_, weight(e), F_, x_, F_, y, act(), K_);
    if (!node.bias) return;
    if (bf16_) k::bias_add_bf16(bf(y), e.p.weights + b_off_, N_, K_, e.ctx.stream);
    else k::bias_add(y, e.p.weights + b_off_, N_, K_, e.ctx.stream);
  }

  void backward(GExec& e) override {
    // dWᶜ (F, K) = xᶜ (F, N) · dyᶜᵀ (N, K), fp32 in both precisions
    gemm(e, CUBLAS_OP_N, CUBLAS_OP_T, F_, K_, N_, x_, F_, dy, K_, e.pgrad + w_off_, CUDA_R_32F, F_);
    if (node.bias && bf16_)
      k::bias_grad_bf16(bf(dy), e.pgrad + b_off_, N_, K_, static_cast<double*>(e.scratch), e.ctx.stream);
    else if (node.bias)
      k::bias_grad(dy, e.pgrad + b_off_, N_, K_, static_cast<float*>(e.scratch), e.ctx.stream);
    // dxᶜ (F, N) = Wᶜ (F, K) · dyᶜ (K, N)
    if (gin[0]) gemm(e, CUBLAS_OP_N, CUBLAS_OP_N, F_, N_, K_, weight(e), F_, dy, K_, gin[0], act(), F_);
  }

 private:
  cudaDataType_t act() const { return bf16_ ? CUDA_R_16BF : CUDA_R_32F; }
  const void* weight(const GExec& e) const {
    return bf16_ ? static_cast<const void*>(e.p.weights_bf16 + w_off_) : static_cast<const void*>(e.p.weights + w_off_);
  }

  // C = A·B (ops applied), beta = 0. A and B are the plan's type (fp32, or bf16 with fp32
  // accumulation: CUBLAS_COMPUTE_32F, cuBLAS's GemmEx table), C of type `ct_c`. Without TF32
  // the handle's math mode (Context::apply_options) keeps fp32 data on plain fp32 FMA.
  void gemm(GExec& e, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int kk, const void* A, int lda,
            const void* B, int ldb, void* C, cudaDataType_t ct_c, int ldc) const {
    const float one = 1.f, zero = 0.f;
    const cublasComputeType_t ct =
        bf16_ ? CUBLAS_COMPUTE_32F : e.ctx.opts.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    CUBLAS_CHECK(cublasGemmEx(e.ctx.blas, ta, tb, m, n, kk, &one, A, act(), lda, B, act(), ldb, &zero, C, ct_c, ldc,
                              ct, CUBLAS_GEMM_DEFAULT));
  }

  int N_ = 0, F_ = 0, K_ = 0;
  bool bf16_ = false;
  size_t w_off_ = 0, b_off_ = 0;
  const float* x_ = nullptr;
};

// ---- relu / relu6 --------------------------------------------------------------------------
//   relu:  y = max(x, 0),         dx = dy · [y > 0]
//   relu6: y = min(max(x, 0), 6), dx = dy · [0 < x < 6]
class Eltwise : public GpuNode {
 public:
  using GpuNode::GpuNode;
  void create(GBuild& b) override {
    n_ = out(b).count;
    bf16_ = b.bf16;
  }
  void bind(GBuild& b) override { x_ = in(b, 0).data; }
  bool has_bf16() const override { return true; }
  void forward(GExec& e) override {
    const bool r6 = node.op == OpKind::Relu6;
    if (bf16_ && r6) k::relu6_forward_bf16(bf(x_), bf(y), n_, e.ctx.stream);
    else if (bf16_) k::relu_forward_bf16(bf(x_), bf(y), n_, e.ctx.stream);
    else if (r6) k::relu6_forward(x_, y, n_, e.ctx.stream);
    else k::relu_forward(x_, y, n_, e.ctx.stream);
  }
  void backward(GExec& e) override {
    if (!gin[0]) return;
    const bool r6 = node.op == OpKind::Relu6;
    if (bf16_ && r6) k::relu6_backward_bf16(bf(x_), bf(dy), bf(gin[0]), n_, e.ctx.stream);
    else if (bf16_) k::relu_backward_bf16(bf(y), bf(dy), bf(gin[0]), n_, e.ctx.stream);
    else if (r6) k::relu6_backward(x_, dy, gin[0], n_, e.ctx.stream);
    else k::relu_backward(y, dy, gin[0], n_, e.ctx.stream);
  }

 private:
  size_t n_ = 0;
  bool bf16_ = false;
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
    bf16_ = b.bf16;
  }
  void bind(GBuild& b) override {
    a_ = in(b, 0).data;
    b_ = in(b, 1).data;
  }
  bool has_bf16() const override { return true; }
  void forward(GExec& e) override {
    if (bf16_) k::add_bf16(bf(a_), bf(b_), bf(y), n_, e.ctx.stream);
    else k::add(a_, b_, y, n_, e.ctx.stream);
  }
  void backward(GExec& e) override {
    const size_t bytes = n_ * (bf16_ ? 2 : sizeof(float));
    for (float* g : gin)
      if (g) CUDA_CHECK(cudaMemcpyAsync(g, dy, bytes, cudaMemcpyDeviceToDevice, e.ctx.stream));
  }

 private:
  size_t n_ = 0;
  bool bf16_ = false;
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
    bf16_ = b.bf16;
  }
  void bind(GBuild& b) override {
    for (size_t i = 0; i < node.inputs.size(); ++i) x_.push_back(in(b, static_cast<int>(i)).data);
  }
  bool has_bf16() const override { return true; }
  void forward(GExec& e) override {
    for (size_t i = 0; i < x_.size(); ++i) {
      if (bf16_) k::concat_forward_bf16(bf(x_[i]), bf(y), rows_, ci_[i], off_[i], ctot_, e.ctx.stream);
      else k::concat_forward(x_[i], y, rows_, ci_[i], off_[i], ctot_, e.ctx.stream);
    }
  }
  void backward(GExec& e) override {
    for (size_t i = 0; i < x_.size(); ++i) {
      if (!gin[i]) continue;
      if (bf16_) k::concat_backward_bf16(bf(dy), bf(gin[i]), rows_, ci_[i], off_[i], ctot_, e.ctx.stream);
      else k::concat_backward(dy, gin[i], rows_, ci_[i], off_[i], ctot_, e.ctx.stream);
    }
  }

 private:
  bool bf16_ = false;
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
    bf16_ = b.bf16;
    // fp32 in both precisions; kept to the end: read by tests after the step
    if (training_) mask_buf_ = b.request(n_ * sizeof(float), b.tf(idx), b.t_end());
  }
  void bind(GBuild& b) override {
    x_ = in(b, 0).data;
    if (training_) mask_ = b.ws.f(mask_buf_);
  }
  bool has_bf16() const override { return true; }
  void forward(GExec& e) override {
    if (!training_) {
      CUDA_CHECK(cudaMemcpyAsync(y, x_, n_ * (bf16_ ? 2 : sizeof(float)), cudaMemcpyDeviceToDevice, e.ctx.stream));
      return;
    }
    const float keep = 1.f / (1.f - node.p);
    const uint64_t threshold = static_cast<uint64_t>(static_cast<double>(node.p) * 18446744073709551616.0);
    const uint64_t seed = splitmix64(e.rng ^ (static_cast<uint64_t>(idx) << 32));
    if (bf16_) k::dropout_forward_bf16(bf(x_), bf(y), mask_, n_, seed, threshold, keep, e.ctx.stream);
    else k::dropout_forward(x_, y, mask_, n_, seed, threshold, keep, e.ctx.stream);
  }
  void backward(GExec& e) override {
    if (!gin[0]) return;
    if (bf16_) k::mul_mask_bf16(bf(dy), mask_, bf(gin[0]), n_, e.ctx.stream);
    else k::mul(dy, mask_, gin[0], n_, e.ctx.stream);
  }
  const float* dropout_mask() const override { return training_ ? mask_ : nullptr; }

 private:
  size_t n_ = 0;
  bool training_ = false, bf16_ = false;
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
    n_ = out(b).count;
    bf16_ = b.bf16;
    if (bf16_) b.need_scratch(3 * n_ * sizeof(float));  // bf16: x or y, dy, dx widened
  }
  void bind(GBuild& b) override { x_ = in(b, 0).data; }
  bool has_bf16() const override { return true; }
  void forward(GExec& e) override {
    if (!bf16_) return k::softmax_rows(x_, y, rows_, c_, e.ctx.stream);
    float* s0 = static_cast<float*>(e.scratch);
    float* s1 = s0 + n_;
    k::bf16_to_f32(bf(x_), s0, n_, e.ctx.stream);
    k::softmax_rows(s0, s1, rows_, c_, e.ctx.stream);
    k::f32_to_bf16(s1, bf(y), n_, e.ctx.stream);
  }
  void backward(GExec& e) override {
    if (!gin[0]) return;
    if (!bf16_) return k::softmax_rows_backward(y, dy, gin[0], rows_, c_, e.ctx.stream);
    float* s0 = static_cast<float*>(e.scratch);
    float *s1 = s0 + n_, *s2 = s1 + n_;
    k::bf16_to_f32(bf(y), s0, n_, e.ctx.stream);
    k::bf16_to_f32(bf(dy), s1, n_, e.ctx.stream);
    k::softmax_rows_backward(s0, s1, s2, rows_, c_, e.ctx.stream);
    k::f32_to_bf16(s2, bf(gin[0]), n_, e.ctx.stream);
  }

 private:
  int64_t rows_ = 0, c_ = 0;
  size_t n_ = 0;
  bool bf16_ = false;
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
    bf16_ = b.bf16;
  }
  void bind(GBuild& b) override { x_ = in(b, 0).data; }
  bool has_bf16() const override { return true; }
  void forward(GExec& e) override {
    if (bf16_) k::gap_forward_bf16(bf(x_), bf(y), n_, hw_, c_, e.ctx.stream);
    else k::gap_forward(x_, y, n_, hw_, c_, e.ctx.stream);
  }
  void backward(GExec& e) override {
    if (!gin[0]) return;
    if (bf16_) k::gap_backward_bf16(bf(dy), bf(gin[0]), n_, hw_, c_, e.ctx.stream);
    else k::gap_backward(dy, gin[0], n_, hw_, c_, e.ctx.stream);
  }

 private:
  bool bf16_ = false;
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
    nin_ = x.count;
    nout_ = out(b).count;
    bf16_ = b.bf16;
    if (bf16_) b.need_scratch((nin_ + nout_) * sizeof(float));  // bf16: input and output widened
  }
  void bind(GBuild& b) override { x_ = in(b, 0).data; }
  bool has_bf16() const override { return true; }
  void forward(GExec& e) override {
    const float* src = x_;
    float* dst = y;
    if (bf16_) {
      float* s0 = static_cast<float*>(e.scratch);
      k::bf16_to_f32(bf(x_), s0, nin_, e.ctx.stream);
      src = s0;
      dst = s0 + nin_;
    }
    if (node.op == OpKind::UpNearest) k::upsample_nearest_forward(src, dst, n_, h_, w_, c_, node.scale, e.ctx.stream);
    else k::upsample_bilinear_forward(src, dst, n_, h_, w_, c_, node.scale, e.ctx.stream);
    if (bf16_) k::f32_to_bf16(dst, bf(y), nout_, e.ctx.stream);
  }
  void backward(GExec& e) override {
    if (!gin[0]) return;
    const float* src = dy;
    float* dst = gin[0];
    if (bf16_) {
      float* s0 = static_cast<float*>(e.scratch);
      k::bf16_to_f32(bf(dy), s0 + nin_, nout_, e.ctx.stream);
      src = s0 + nin_;
      dst = s0;
    }
    if (node.op == OpKind::UpNearest)
      k::upsample_nearest_backward(src, dst, n_, h_, w_, c_, node.scale, e.ctx.stream);
    else
      k::upsample_bilinear_backward(src, dst, n_, h_, w_, c_, node.scale, e.ctx.stream);
    if (bf16_) k::f32_to_bf16(dst, bf(gin[0]), nin_, e.ctx.stream);
  }

 private:
  int64_t n_ = 0, h_ = 0, w_ = 0, c_ = 0;
  size_t nin_ = 0, nout_ = 0;
  bool bf16_ = false;
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
