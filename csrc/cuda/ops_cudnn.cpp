// Convolution, transposed convolution, batch normalisation and max / avg pooling on cuDNN's
// legacy API, NHWC fp32 (the GPU twins of cpu/conv.cpp, cpu/bn.cpp, cpu/pool.cpp).
//
// conv:   y = conv(x, W) + b with W as KRSC (O, kh, kw, I/g);  dW = BackwardFilter(x, dy),
//         db = Σ dy (k::bias_grad, deterministic), dx = BackwardData(W, dy).
// deconv: the transpose of the conv from y to x whose filter is (K = I, kh, kw, C = O/g):
//         y = BackwardData(W, x) + b, dx = Forward(dy, W), dW = BackwardFilter(dy, x). The
//         output padding is implied by y's larger dims (cuDNN derives nothing from them).
// bn:     spatial; training uses the batch statistics and updates the running ones in
//         p.state_out (cuDNN's exponential average, unbiased variance); inference uses p.state.
// pool:   max (padding never wins) / avg excluding padding, floor mode.
//
// bfloat16 plans (GBuild::bf16): conv / deconv with bf16 x, filter and y descriptors and FLOAT
// compute (cuDNN's PSEUDO_BFLOAT16_CONFIG, fp32 accumulation; tensor-op math whatever 'tf32'
// says), the filter from the bf16 weight mirror; dW comes out of cuDNN as bf16 (the filter's
// type) into a per-node buffer and is widened into the fp32 gradient arena; bias with the
// _bf16 kernels (fp32 bias, fp32 gradient). bn on our NHWC kernels (bn_*_bf16: cuDNN's legacy
// batch norm has no bf16 path), statistics fp32. Pooling on cuDNN with bf16 descriptors.
#include <algorithm>
#include <vector>

#include "cuda/gpu_node.h"
#include "cuda/kernels.cuh"

namespace halcdl::gpu {
namespace {

const float kOne = 1.f, kZero = 0.f;

// Per-algorithm workspace cap: algorithms that need more are skipped.
constexpr size_t kMaxAlgoWorkspace = size_t(1) << 30;

// The three directions of a convolution (named by the cuDNN call, not by the node's use).
enum Dir { kFwd = 0, kBwdData = 1, kBwdFilter = 2 };

struct Algo {
  int algo = -1;
  size_t ws = 0;
};

// Picks an algorithm from cuDNN's list (heuristics in deterministic mode, timing otherwise):
// the first with status success, deterministic if asked, and a workspace within the cap. The
// math type the result was obtained with is set on `cd` (never a tensor-op one without TF32;
// a second, relaxed pass keeps CUDNN_FMA_MATH on the descriptor if no result reports it).
// bf16 data: tensor-op math is always allowed (what 'tf32' restricts is fp32 data).
template <typename Perf, typename List, typename WsOf>
Algo choose(Context& ctx, cudnnConvolutionDescriptor_t cd, int max_count, List list, WsOf ws_of, const Node& n,
            const char* what, bool bf16) {
  std::vector<Perf> res(static_cast<size_t>(std::max(1, max_count)));
  int got = 0;
  CUDNN_CHECK(list(static_cast<int>(res.size()), &got, res.data()));
  const bool tf32 = ctx.opts.tf32 || bf16, det = ctx.opts.deterministic;
  bool alloc_failed = false;  // cudnnFind* could not allocate its trial buffers
  for (int pass = 0; pass < (tf32 ? 1 : 2); ++pass) {
    for (int i = 0; i < got; ++i) {
      const Perf& r = res[i];
      alloc_failed = alloc_failed || r.status == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED ||
                     r.status == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED;
      if (r.status != CUDNN_STATUS_SUCCESS) continue;
      if (det && r.determinism != CUDNN_DETERMINISTIC) continue;
      cudnnMathType_t m = r.mathType;
      // never a down-conversion of fp32 data to fp16
      if (m == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION) continue;
      if (!tf32) {
        if (pass == 0 && m != CUDNN_FMA_MATH) continue;
        m = CUDNN_FMA_MATH;
      }
      CUDNN_CHECK(cudnnSetConvolutionMathType(cd, m));
      size_t bytes = 0;
      if (ws_of(r.algo, &bytes) != CUDNN_STATUS_SUCCESS || bytes > kMaxAlgoWorkspace) continue;
      return {static_cast<int>(r.algo), bytes};
    }
  }
  HALCDL_CHECK(!alloc_failed, kErrNoGpuMemory, "node '", n.name, "': out of GPU memory choosing a ", what,
               " algorithm (lower the batch size)");
  HALCDL_THROW(kErrCudnn, "node '", n.name, "': cuDNN offers no usable ", what, " algorithm",
               det ? " (deterministic)" : "", " for this shape");
}

template <bool Transposed>
class ConvT : public GpuNode {
 public:
  using GpuNode::GpuNode;

  void create(GBuild& b) override {
    const GSlot& x = in(b, 0);
    const GSlot& yo = out(b);
    const Node& n = node;
    const int64_t G = n.groups;
    // the cuDNN convolution: from cx to cy (a deconv runs it backwards, from its y to its x)
    const GSlot& cx = Transposed ? yo : x;
    const GSlot& cy = Transposed ? x : yo;
    HALCDL_CHECK(x.dims.size() == 4 && yo.dims.size() == 4 && cx.c % G == 0, kErrInvalidInputShape, "node '",
                 n.name, "': invalid convolution shapes");
    bf16_ = b.bf16;
    set_nhwc(cxd_, cx, n);
    set_nhwc(cyd_, cy, n);
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(wd_, bf16_ ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC,
                                           to_int(cy.c, n, "channel count"), to_int(cx.c / G, n, "channel count"),
                                           n.kh, n.kw));
    const cudnnMathType_t math = bf16_ ? CUDNN_TENSOR_OP_MATH : b.ctx.opts.tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH;
    for (auto& cd : cd_) {
      CUDNN_CHECK(cudnnSetConvolution2dDescriptor(cd, n.ph, n.pw, n.sh, n.sw, n.dh, n.dw, CUDNN_CROSS_CORRELATION,
                                                  CUDNN_DATA_FLOAT));
      CUDNN_CHECK(cudnnSetConvolutionGroupCount(cd, n.groups));
      CUDNN_CHECK(cudnnSetConvolutionMathType(cd, math));
    }
    int on = 0, oc = 0, oh = 0, ow = 0;
    CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(cd_[kFwd], cxd_, wd_, &on, &oc, &oh, &ow));
    if (on != cy.n || oc != cy.c || oh != cy.h || ow != cy.w) {
      // a deconv's output padding >= stride (allowed when dilation > stride) makes the
      // reversed convolution's output larger than the deconv's input
      HALCDL_CHECK(!Transposed, kErrRuntimeUnsupported, "node '", n.name,
                   "': transposed convolution with output_padding >= stride is not supported on the GPU");
      HALCDL_THROW(kErrInvalidInputShape, "node '", n.name, "': cuDNN computes a ", oh, "x", ow,
                   " output, the graph expects ", cy.h, "x", cy.w);
    }
    const bool dx = b.training && x.need_grad;
    need_[kFwd] = Transposed ? dx : true;
    need_[kBwdData] = Transposed ? true : dx;
    need_[kBwdFilter] = b.training;
    cudnnHandle_t h = b.ctx.dnn;
    const bool det = b.ctx.opts.deterministic;
    if (need_[kFwd]) {
      int cnt = 0;
      CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(h, &cnt));
      auto list = [&](int req, int* got, cudnnConvolutionFwdAlgoPerf_t* r) {
        return det ? cudnnGetConvolutionForwardAlgorithm_v7(h, cxd_, wd_, cd_[kFwd], cyd_, req, got, r)
                   : cudnnFindConvolutionForwardAlgorithm(h, cxd_, wd_, cd_[kFwd], cyd_, req, got, r);
      };
      auto ws = [&](cudnnConvolutionFwdAlgo_t a, size_t* s) {
        return cudnnGetConvolutionForwardWorkspaceSize(h, cxd_, wd_, cd_[kFwd], cyd_, a, s);
      };
      algo_[kFwd] = choose<cudnnConvolutionFwdAlgoPerf_t>(b.ctx, cd_[kFwd], cnt, list, ws, n, "forward convolution",
                                                         bf16_);
    }
    if (need_[kBwdData]) {
      int cnt = 0;
      CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(h, &cnt));
      auto list = [&](int req, int* got, cudnnConvolutionBwdDataAlgoPerf_t* r) {
        return det ? cudnnGetConvolutionBackwardDataAlgorithm_v7(h, wd_, cyd_, cd_[kBwdData], cxd_, req, got, r)
                   : cudnnFindConvolutionBackwardDataAlgorithm(h, wd_, cyd_, cd_[kBwdData], cxd_, req, got, r);
      };
      auto ws = [&](cudnnConvolutionBwdDataAlgo_t a, size_t* s) {
        return cudnnGetConvolutionBackwardDataWorkspaceSize(h, wd_, cyd_, cd_[kBwdData], cxd_, a, s);
      };
      algo_[kBwdData] = choose<cudnnConvolutionBwdDataAlgoPerf_t>(b.ctx, cd_[kBwdData], cnt, list, ws, n,
                                                                  "backward-data convolution", bf16_);
    }
    if (need_[kBwdFilter]) {
      int cnt = 0;
      CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(h, &cnt));
      auto list = [&](int req, int* got, cudnnConvolutionBwdFilterAlgoPerf_t* r) {
        return det ? cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, cxd_, cyd_, cd_[kBwdFilter], wd_, req, got, r)
                   : cudnnFindConvolutionBackwardFilterAlgorithm(h, cxd_, cyd_, cd_[kBwdFilter], wd_, req, got, r);
      };
      auto ws = [&](cudnnConvolutionBwdFilterAlgo_t a, size_t* s) {
        return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, cxd_, cyd_, cd_[kBwdFilter], wd_, a, s);
      };
      algo_[kBwdFilter] = choose<cudnnConvolutionBwdFilterAlgoPerf_t>(b.ctx, cd_[kBwdFilter], cnt, list, ws, n,
                                                                      "backward-filter convolution", bf16_);
    }
    for (int d = 0; d < 3; ++d)
      if (need_[d]) b.need_scratch(algo_[d].ws);
    rows_ = yo.rows();
    if (n.bias && b.training)
      b.need_scratch(bf16_ ? k::bf16_colsum_scratch_doubles(rows_, n.channels) * sizeof(double)
                           : k::bias_grad_scratch_floats(rows_, n.channels) * sizeof(float));
    w_off_ = poff(b, n.p_weight);
    w_count_ = b.g.params[n.p_weight].size;
    if (n.bias) b_off_ = poff(b, n.p_bias);
    // bf16 dW (cuDNN writes the filter's type), widened into the fp32 gradient arena
    if (bf16_ && b.training) dw_buf_ = b.request(w_count_ * 2, b.tb(idx), b.tb(idx));
  }

  void bind(GBuild& b) override {
    x_ = in(b, 0).data;
    if (dw_buf_ >= 0) dw_ = b.ws.ptr(dw_buf_);
  }

  bool has_bf16() const override { return true; }

  // The filter operand: the bf16 mirror in a bf16 plan.
  const void* filter(const GExec& e) const {
    return bf16_ ? static_cast<const void*>(e.p.weights_bf16 + w_off_) : static_cast<const void*>(e.p.weights + w_off_);
  }
  void add_bias(GExec& e) {
    if (!node.bias) return;
    if (bf16_) k::bias_add_bf16(bf(y), e.p.weights + b_off_, rows_, node.channels, e.ctx.stream);
    else k::bias_add(y, e.p.weights + b_off_, rows_, node.channels, e.ctx.stream);
  }

  void forward(GExec& e) override {
    cudnnHandle_t h = e.ctx.dnn;
    const void* w = filter(e);
    if (!Transposed) {
      CUDNN_CHECK(cudnnConvolutionForward(h, &kOne, cxd_, x_, wd_, w, cd_[kFwd],
                                          static_cast<cudnnConvolutionFwdAlgo_t>(algo_[kFwd].algo), e.scratch,
                                          algo_[kFwd].ws, &kZero, cyd_, y));
    } else {
      CUDNN_CHECK(cudnnConvolutionBackwardData(h, &kOne, wd_, w, cyd_, x_, cd_[kBwdData],
                                               static_cast<cudnnConvolutionBwdDataAlgo_t>(algo_[kBwdData].algo),
                                               e.scratch, algo_[kBwdData].ws, &kZero, cxd_, y));
    }
    add_bias(e);
  }

  void backward(GExec& e) override {
    cudnnHandle_t h = e.ctx.dnn;
    const void* w = filter(e);
    // the cuDNN convolution's x and dy: (x, dy) for a conv, (dy, x) for a deconv
    const float* cx = Transposed ? dy : x_;
    const float* cdy = Transposed ? x_ : dy;
    CUDNN_CHECK(cudnnConvolutionBackwardFilter(h, &kOne, cxd_, cx, cyd_, cdy, cd_[kBwdFilter],
                                               static_cast<cudnnConvolutionBwdFilterAlgo_t>(algo_[kBwdFilter].algo),
                                               e.scratch, algo_[kBwdFilter].ws, &kZero, wd_,
                                               bf16_ ? dw_ : static_cast<void*>(e.pgrad + w_off_)));
    if (bf16_) k::bf16_to_f32(static_cast<const uint16_t*>(dw_), e.pgrad + w_off_, w_count_, e.ctx.stream);
    if (node.bias && bf16_)
      k::bias_grad_bf16(bf(dy), e.pgrad + b_off_, rows_, node.channels, static_cast<double*>(e.scratch),
                        e.ctx.stream);
    else if (node.bias)
      k::bias_grad(dy, e.pgrad + b_off_, rows_, node.channels, static_cast<float*>(e.scratch), e.ctx.stream);
    if (!gin[0]) return;
    if (!Transposed) {
      CUDNN_CHECK(cudnnConvolutionBackwardData(h, &kOne, wd_, w, cyd_, dy, cd_[kBwdData],
                                               static_cast<cudnnConvolutionBwdDataAlgo_t>(algo_[kBwdData].algo),
                                               e.scratch, algo_[kBwdData].ws, &kZero, cxd_, gin[0]));
    } else {
      CUDNN_CHECK(cudnnConvolutionForward(h, &kOne, cxd_, dy, wd_, w, cd_[kFwd],
                                          static_cast<cudnnConvolutionFwdAlgo_t>(algo_[kFwd].algo), e.scratch,
                                          algo_[kFwd].ws, &kZero, cyd_, gin[0]));
    }
  }

 private:
  TensorDesc cxd_, cyd_;
  FilterDesc wd_;
  ConvDesc cd_[3];  // per direction: each carries the math type of its chosen algorithm
  Algo algo_[3];
  bool need_[3] = {false, false, false};
  int64_t rows_ = 0;
  size_t w_off_ = 0, b_off_ = 0, w_count_ = 0;
  const float* x_ = nullptr;
  bool bf16_ = false;
  int dw_buf_ = -1;
  void* dw_ = nullptr;
};

class BatchNorm : public GpuNode {
 public:
  using GpuNode::GpuNode;

  void create(GBuild& b) override {
    const GSlot& x = in(b, 0);
    bf16_ = b.bf16;
    rows_ = x.rows();
    c_ = x.c;
    if (bf16_) {
      // our kernels (the eps the CPU twin uses, rounded to float as the kernels take it)
      eps_ = static_cast<double>(static_cast<float>(node.eps));
      if (b.training) b.need_scratch(k::bf16_colsum_scratch_doubles(rows_, c_) * sizeof(double));
    } else {
      set_nhwc(xd_, x, node);
      CUDNN_CHECK(cudnnDeriveBNTensorDescriptor(pd_, xd_, CUDNN_BATCHNORM_SPATIAL));
      // cuDNN rejects eps < CUDNN_BN_MIN_EPSILON (0 in cuDNN 9): clamp
      eps_ = std::max(static_cast<double>(node.eps), static_cast<double>(CUDNN_BN_MIN_EPSILON));
    }
    training_ = b.training;
    const auto& P = b.g.params;
    scale_off_ = P[node.p_weight].offset;
    shift_off_ = P[node.p_bias].offset;
    mean_off_ = P[node.p_mean].offset;
    var_off_ = P[node.p_var].offset;
    if (!training_) return;
    const size_t cb = static_cast<size_t>(x.c) * sizeof(float);
    // read by bn_batch_stats after the step
    mean_buf_ = b.request(cb, b.tf(idx), b.t_end());
    inv_buf_ = b.request(cb, b.tf(idx), b.t_end());
    // One value per channel: cuDNN's unbiased variance divides by N·H·W − 1 = 0 (NaN running
    // variance); the CPU twin uses the biased one then. The running update is ours in that case.
    // (the bf16 kernels handle that case themselves, and take a null dx)
    single_ = !bf16_ && x.n * x.h * x.w == 1;
    if (single_) tmp_buf_ = b.request(cb, b.tf(idx), b.tf(idx));
    if (!x.need_grad && !bf16_) dx_buf_ = b.request(x.bytes(), b.tb(idx), b.tb(idx));
  }

  bool has_bf16() const override { return true; }

  void bind(GBuild& b) override {
    x_ = in(b, 0).data;
    if (!training_) return;
    save_mean_ = b.ws.f(mean_buf_);
    save_inv_ = b.ws.f(inv_buf_);
    if (single_) tmp_ = b.ws.f(tmp_buf_);
    dx_ = gin[0] ? gin[0] : dx_buf_ >= 0 ? b.ws.f(dx_buf_) : nullptr;
  }

  void forward(GExec& e) override {
    const float* scale = e.p.weights + scale_off_;
    const float* shift = e.p.weights + shift_off_;
    if (bf16_) {
      const float eps = static_cast<float>(eps_);
      if (!training_) {
        k::bn_forward_inference_bf16(bf(x_), bf(y), scale, shift, e.p.state + mean_off_, e.p.state + var_off_, rows_,
                                     c_, eps, e.ctx.stream);
        return;
      }
      float* rmean = e.p.state_out ? e.p.state_out + mean_off_ : nullptr;
      float* rvar = e.p.state_out ? e.p.state_out + var_off_ : nullptr;
      k::bn_forward_training_bf16(bf(x_), bf(y), scale, shift, rows_, c_, eps, e.p.bn_momentum, rmean, rvar,
                                  save_mean_, save_inv_, static_cast<double*>(e.scratch), e.ctx.stream);
      return;
    }
    if (!training_) {
      CUDNN_CHECK(cudnnBatchNormalizationForwardInference(e.ctx.dnn, CUDNN_BATCHNORM_SPATIAL, &kOne, &kZero, xd_, x_,
                                                          xd_, y, pd_, scale, shift, e.p.state + mean_off_,
                                                          e.p.state + var_off_, eps_));
      return;
    }
    // no state_out: the running statistics are not updated (cuDNN takes both null)
    float* rmean = e.p.state_out ? e.p.state_out + mean_off_ : nullptr;
    float* rvar = e.p.state_out ? e.p.state_out + var_off_ : nullptr;
    CUDNN_CHECK(cudnnBatchNormalizationForwardTraining(e.ctx.dnn, CUDNN_BATCHNORM_SPATIAL, &kOne, &kZero, xd_, x_, xd_,
                                                       y, pd_, scale, shift, static_cast<double>(e.p.bn_momentum),
                                                       single_ ? nullptr : rmean, single_ ? nullptr : rvar, eps_,
                                                       save_mean_, save_inv_));
    if (single_ && rmean) {
      // mean = (1 − m)·mean + m·x (x is the batch mean), var = (1 − m)·var (batch variance 0)
      const float m = e.p.bn_momentum;
      const size_t c = static_cast<size_t>(c_);
      CUDA_CHECK(cudaMemcpyAsync(tmp_, x_, c * sizeof(float), cudaMemcpyDeviceToDevice, e.ctx.stream));
      k::scale(tmp_, m, c, e.ctx.stream);
      k::scale(rmean, 1.f - m, c, e.ctx.stream);
      k::accumulate(rmean, tmp_, c, e.ctx.stream);
      k::scale(rvar, 1.f - m, c, e.ctx.stream);
    }
  }

  void backward(GExec& e) override {
    if (bf16_) {  // dscale / dshift written; dx only when needed
      k::bn_backward_bf16(bf(x_), bf(dy), e.p.weights + scale_off_, save_mean_, save_inv_, rows_, c_,
                          gin[0] ? bf(gin[0]) : nullptr, e.pgrad + scale_off_, e.pgrad + shift_off_,
                          static_cast<double*>(e.scratch), e.ctx.stream);
      return;
    }
    // dscale / dshift written (betaParamDiff = 0); dx into gin[0] or a scratch when unneeded
    CUDNN_CHECK(cudnnBatchNormalizationBackward(e.ctx.dnn, CUDNN_BATCHNORM_SPATIAL, &kOne, &kZero, &kOne, &kZero, xd_,
                                                x_, xd_, dy, xd_, dx_, pd_, e.p.weights + scale_off_,
                                                e.pgrad + scale_off_, e.pgrad + shift_off_, eps_, save_mean_,
                                                save_inv_));
  }

  bool bn_saved(const float** mean, const float** inv_std, double* eps) const override {
    if (!training_) return false;
    *mean = save_mean_;
    *inv_std = save_inv_;
    *eps = eps_;
    return true;
  }

 private:
  TensorDesc xd_, pd_;
  double eps_ = 1e-5;
  bool training_ = false;
  size_t scale_off_ = 0, shift_off_ = 0, mean_off_ = 0, var_off_ = 0;
  int mean_buf_ = -1, inv_buf_ = -1, dx_buf_ = -1, tmp_buf_ = -1;
  int64_t c_ = 0, rows_ = 0;
  bool bf16_ = false;
  bool single_ = false;  // training with N·H·W = 1 (fp32 plans)
  const float* x_ = nullptr;
  float *save_mean_ = nullptr, *save_inv_ = nullptr, *dx_ = nullptr, *tmp_ = nullptr;
};

class Pool : public GpuNode {
 public:
  using GpuNode::GpuNode;

  void create(GBuild& b) override {
    const GSlot& x = in(b, 0);
    const GSlot& yo = out(b);
    const Node& n = node;
    HALCDL_CHECK(x.dims.size() == 4, kErrInvalidInputShape, "node '", n.name, "' needs a 4-D input");
    set_nhwc(xd_, x, n);
    set_nhwc(yd_, yo, n);
    cudnnPoolingMode_t mode = n.op == OpKind::AvgPool ? CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING
                              : b.ctx.opts.deterministic ? CUDNN_POOLING_MAX_DETERMINISTIC
                                                         : CUDNN_POOLING_MAX;
    CUDNN_CHECK(cudnnSetPooling2dDescriptor(pd_, mode, CUDNN_PROPAGATE_NAN, n.kh, n.kw, n.ph, n.pw, n.sh, n.sw));
    int on = 0, oc = 0, oh = 0, ow = 0;
    CUDNN_CHECK(cudnnGetPooling2dForwardOutputDim(pd_, xd_, &on, &oc, &oh, &ow));
    HALCDL_CHECK(on == yo.n && oc == yo.c && oh == yo.h && ow == yo.w, kErrInvalidInputShape, "node '", n.name,
                 "': cuDNN pools to ", oh, "x", ow, ", the graph expects ", yo.h, "x", yo.w);
  }

  void bind(GBuild& b) override { x_ = in(b, 0).data; }
  bool has_bf16() const override { return true; }  // the descriptors carry the slots' type

  void forward(GExec& e) override {
    CUDNN_CHECK(cudnnPoolingForward(e.ctx.dnn, pd_, &kOne, xd_, x_, &kZero, yd_, y));
  }

  void backward(GExec& e) override {
    if (!gin[0]) return;
    CUDNN_CHECK(cudnnPoolingBackward(e.ctx.dnn, pd_, &kOne, yd_, y, yd_, dy, xd_, x_, &kZero, xd_, gin[0]));
  }

 private:
  TensorDesc xd_, yd_;
  PoolDesc pd_;
  const float* x_ = nullptr;
};

}  // namespace

std::unique_ptr<GpuNode> make_conv(const Node& n, int idx) { return std::make_unique<ConvT<false>>(n, idx); }
std::unique_ptr<GpuNode> make_deconv(const Node& n, int idx) { return std::make_unique<ConvT<true>>(n, idx); }
std::unique_ptr<GpuNode> make_bn(const Node& n, int idx) { return std::make_unique<BatchNorm>(n, idx); }
std::unique_ptr<GpuNode> make_pool(const Node& n, int idx) { return std::make_unique<Pool>(n, idx); }

}  // namespace halcdl::gpu
