// The CUDA execution plan: builds the ops for one set of input shapes, lays out one device
// arena by buffer lifetimes (activations, gradients, scratch, the shared cuDNN workspace),
// wires gradient targets as the CPU plan does, and runs forward / backward on the context's
// stream. Building allocates once; forward / backward enqueue work and never allocate or sync.
#include <algorithm>
#include <cstdlib>
#include <climits>
#include <cstring>
#include <numeric>

#include "cuda/gpu_node.h"
#include "cuda/kernels.cuh"

namespace halcdl::gpu {

// ---- helpers -------------------------------------------------------------------------------

int to_int(int64_t v, const Node& n, const char* what) {
  HALCDL_CHECK(v >= 0 && v <= INT_MAX, kErrRuntimeUnsupported, "node '", n.name, "': the ", what, " (", v,
               ") is too large for cuDNN / cuBLAS on the GPU (lower the batch size or image size)");
  return static_cast<int>(v);
}

void set_nhwc(cudnnTensorDescriptor_t d, int64_t n, int64_t c, int64_t h, int64_t w, const Node& node,
              cudnnDataType_t dt) {
  to_int(n * c * h * w, node, "tensor size");  // cuDNN's limit: 2^31 elements per tensor
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(d, CUDNN_TENSOR_NHWC, dt, to_int(n, node, "batch size"),
                                         to_int(c, node, "channel count"), to_int(h, node, "height"),
                                         to_int(w, node, "width")));
}

namespace {

std::unique_ptr<GpuNode> make_node(const Node& n, int idx) {
  switch (n.op) {
    case OpKind::Conv: return make_conv(n, idx);
    case OpKind::Deconv: return make_deconv(n, idx);
    case OpKind::BN: return make_bn(n, idx);
    case OpKind::MaxPool:
    case OpKind::AvgPool: return make_pool(n, idx);
    case OpKind::FC: return make_fc(n, idx);
    case OpKind::Relu:
    case OpKind::Relu6: return make_eltwise(n, idx);
    case OpKind::Add: return make_add(n, idx);
    case OpKind::Concat: return make_concat(n, idx);
    case OpKind::Dropout: return make_dropout(n, idx);
    case OpKind::Softmax: return make_softmax(n, idx);
    case OpKind::GAP: return make_gap(n, idx);
    case OpKind::UpNearest:
    case OpKind::UpBilinear: return make_upsample(n, idx);
    case OpKind::Sigmoid:
    case OpKind::Tanh: return make_act(n, idx);
    case OpKind::ResizeNearest:
    case OpKind::ResizeBilinear: return make_resize(n, idx);
    case OpKind::DepthToSpace: return make_depth_to_space(n, idx);
    case OpKind::Reshape: return make_reshape(n, idx);
    case OpKind::Permute: return make_permute(n, idx);
    case OpKind::DepthMax: return make_depth_max(n, idx);
    case OpKind::Lrn: return make_lrn(n, idx);
    case OpKind::Reduce: return make_reduce(n, idx);
    case OpKind::MatMul: return make_matmul(n, idx);
    case OpKind::DetOut: return make_detout(n, idx);  // cuda/detection.cpp
    case OpKind::Input: return nullptr;  // its slot is the plan's input buffer
  }
  return nullptr;
}

void fill_shape(GSlot& s, const Dims& d, const Node& n) {
  s.dims = d;
  if (d.size() == 4) {
    s.n = d[0]; s.c = d[1]; s.h = d[2]; s.w = d[3];
  } else if (d.size() == 2) {
    s.n = d[0]; s.c = d[1]; s.h = 1; s.w = 1;
  } else if (d.size() == 3 && n.op == OpKind::DetOut) {  // (N, A_total, K + B) rows: NHWC (N, A, 1, R)
    s.n = d[0]; s.c = d[2]; s.h = d[1]; s.w = 1;
  } else {
    HALCDL_THROW(kErrInvalidInputShape, "node '", n.name, "': a ", d.size(), "-D tensor is not supported on the GPU");
  }
  s.count = static_cast<size_t>(s.n * s.c * s.h * s.w);
}

class CudaPlan : public GpuPlan {
 public:
  CudaPlan(Context& ctx, const Graph& g, const std::vector<Dims>& input_dims, bool training, bool input_grads,
           bool bf16)
      : ctx_(ctx), g_(g), training_(training), bf16_(bf16) {
    const int n = static_cast<int>(g.nodes.size());
    std::vector<Dims> dims = g.infer_shapes(input_dims);
    slots_.resize(n);
    nodes_.resize(n);
    GBuild b{ctx, g, slots_, ws_, n, training};
    b.bf16 = bf16;

    // Which tensors need a gradient.
    const Graph::GradInfo gi = g.grad_info(training, input_grads);
    const auto& consumers = gi.consumers;
    for (int i = 0; i < n; ++i) {
      fill_shape(slots_[i], dims[i], g.nodes[i]);
      if (bf16) slots_[i].esize = 2;
      slots_[i].need_grad = gi.need_grad[i];
    }

    // Op descriptors and buffers, in topological order; every node's output buffer.
    for (int i = 0; i < n; ++i) {
      const Node& nd = g.nodes[i];
      int first = b.tf(i);
      if (nd.op == OpKind::Input) {
        first = 0;  // filled by the caller before any op runs
        input_slots_.push_back(i);
        input_dims_.push_back(dims[i]);
      } else {
        nodes_[i] = make_node(nd, i);
        HALCDL_CHECK(!bf16 || nodes_[i]->has_bf16(), kErrRuntimeUnsupported, "node '", nd.name, "' (",
                     op_name(nd.op), "): precision 'bfloat16' on the GPU does not support this op yet; use "
                     "'float32' on the GPU or runtime 'cpu'");
        nodes_[i]->create(b);
      }
      int last = i;
      for (auto& c : consumers[i]) last = std::max(last, c.first);
      if (i == g.output) last = b.t_end();
      slots_[i].data_id = b.request(slots_[i].bytes(), first, training ? b.t_end() : last);
    }

    // Gradient buffers and targets: the consumer whose backward runs first (the latest one)
    // writes the tensor's gradient; the others write scratch that is added afterwards.
    std::vector<std::vector<int>> scratch(n);  // per node and input: scratch buffer id or -1
    if (training) {
      for (int i = 0; i < n; ++i) scratch[i].assign(g.nodes[i].inputs.size(), -1);
      for (int i = 0; i < n; ++i) {
        GSlot& s = slots_[i];
        if (!s.need_grad) continue;
        int t0 = b.tb(i);
        for (auto& c : consumers[i]) t0 = std::min(t0, b.tb(c.first));
        // the output's gradient is copied in, and an unconsumed tensor's zeroed, when the
        // backward starts: their buffers must be live from then on
        if (i == g.output || consumers[i].empty()) t0 = n - 1;
        // input gradients are read after the backward: keep them to the end
        s.grad_id = b.request(s.bytes(), t0, g.nodes[i].op == OpKind::Input ? b.t_end() : b.tb(i));
        if (consumers[i].empty() && i != g.output) zero_grads_.push_back(i);
      }
      for (int i = 0; i < n; ++i) {
        auto& cs = consumers[i];
        if (!slots_[i].need_grad || cs.empty()) continue;
        auto first = *std::max_element(cs.begin(), cs.end(), [](auto& a, auto& c) {
          return a.first != c.first ? a.first < c.first : a.second > c.second;
        });
        for (auto& c : cs)
          if (c != first) scratch[c.first][c.second] = b.request(slots_[i].bytes(), b.tb(c.first), b.tb(c.first));
      }
    }

    // bf16 plans: the fp32 boundary (output and input gradients, see GpuPlan).
    int out32_id = -1;
    std::vector<int> in32_ids;
    if (bf16) {
      out32_id = b.request(slots_[g.output].count * sizeof(float), 0, b.t_end());
      for (int i : input_slots_)
        in32_ids.push_back(slots_[i].grad_id >= 0 ? b.request(slots_[i].count * sizeof(float), 0, b.t_end()) : -1);
    }

    // One shared scratch for every op (cuDNN workspace, bias_grad): ops run one at a time.
    int scratch_id = b.scratch_bytes ? b.request(b.scratch_bytes, 0, b.t_end()) : -1;
    ws_.assign();
    scratch_bytes_ = b.scratch_bytes;
    scratch_ = scratch_id >= 0 ? ws_.ptr(scratch_id) : nullptr;
    if (bf16) {
      out32_ = ws_.f(out32_id);
      for (int id : in32_ids) in32_.push_back(id >= 0 ? ws_.f(id) : nullptr);
    }

    for (int i = 0; i < n; ++i) {
      GSlot& s = slots_[i];
      s.data = ws_.f(s.data_id);
      if (s.grad_id >= 0) s.grad = ws_.f(s.grad_id);
    }
    accum_.resize(n);
    for (int i = 0; i < n; ++i) {
      if (!nodes_[i]) continue;
      GpuNode& nd = *nodes_[i];
      nd.y = slots_[i].data;
      nd.dy = slots_[i].grad;
      const auto& ins = g.nodes[i].inputs;
      nd.gin.assign(ins.size(), nullptr);
      for (size_t k = 0; k < ins.size(); ++k) {
        const GSlot& x = slots_[ins[k]];
        if (!training || !x.need_grad || !slots_[i].need_grad) continue;
        if (scratch[i][k] >= 0) {
          nd.gin[k] = ws_.f(scratch[i][k]);
          accum_[i].push_back({x.grad, nd.gin[k], x.count});
        } else {
          nd.gin[k] = x.grad;
        }
      }
      nd.bind(b);
    }

    // Parameters whose node never runs a backward get zeros (none in a well-formed graph:
    // every node with parameters needs a gradient in training).
    if (training) {
      for (const auto& p : g.params) {
        if (p.kind == ParamKind::State) continue;
        if (!slots_[p.node].need_grad || !nodes_[p.node]) zero_params_.push_back({p.offset, p.size});
      }
    }
  }

  const Dims& input_dims(int i) const override {
    HALCDL_CHECK(i >= 0 && i < static_cast<int>(input_dims_.size()), kErrInvalidInputShape, "the graph has ",
                 input_dims_.size(), " inputs, asked for input ", i);
    return input_dims_[i];
  }
  const Dims& output_dims() const override { return slots_[g_.output].dims; }

  float* input(int i) override {
    input_dims(i);
    return slots_[input_slots_[i]].data;
  }
  bool bf16() const override { return bf16_; }

  void forward(const DeviceParams& p, uint64_t rng) override {
    HALCDL_CHECK(!bf16_ || p.weights_bf16 || !g_.n_trainable, kErrRuntimeUnsupported,
                 "a bfloat16 GPU plan needs the bf16 weight mirror");
    GExec e{ctx_, p, rng, nullptr, scratch_, scratch_bytes_};
    for (size_t i = 0; i < nodes_.size(); ++i)
      if (nodes_[i]) {
        nodes_[i]->forward(e);
        if (debug_) debug_check(static_cast<int>(i), "forward", slots_[i].data, slots_[i].count);
      }
    if (bf16_) {
      const GSlot& o = slots_[g_.output];
      k::bf16_to_f32(bf(o.data), out32_, o.count, ctx_.stream);
    }
  }

  const float* output() const override { return bf16_ ? out32_ : slots_[g_.output].data; }

  void backward(const DeviceParams& p, const float* grad_output, float* param_grad) override {
    const GSlot& o = slots_[g_.output];
    HALCDL_CHECK(training_ && o.grad, kErrTrainingUnsupported, "backward on a GPU plan without gradients");
    GExec e{ctx_, p, 0, param_grad, scratch_, scratch_bytes_};
    if (bf16_)
      k::f32_to_bf16(grad_output, bf(o.grad), o.count, ctx_.stream);
    else if (grad_output != o.grad)
      CUDA_CHECK(cudaMemcpyAsync(o.grad, grad_output, o.bytes(), cudaMemcpyDeviceToDevice, ctx_.stream));
    for (int i : zero_grads_) CUDA_CHECK(cudaMemsetAsync(slots_[i].grad, 0, slots_[i].bytes(), ctx_.stream));
    for (auto& z : zero_params_)
      CUDA_CHECK(cudaMemsetAsync(param_grad + z.first, 0, z.second * sizeof(float), ctx_.stream));
    for (int i = static_cast<int>(nodes_.size()) - 1; i >= 0; --i) {
      if (!nodes_[i] || !slots_[i].need_grad) continue;
      nodes_[i]->backward(e);
      for (auto& a : accum_[i]) {
        if (bf16_) k::accumulate_bf16(bf(a.dst), bf(a.src), a.count, ctx_.stream);
        else k::accumulate(a.dst, a.src, a.count, ctx_.stream);
      }
      if (debug_)
        for (int in : g_.nodes[i].inputs)
          if (slots_[in].grad) debug_check(i, "backward", slots_[in].grad, slots_[in].count);
    }
    if (bf16_)
      for (size_t k = 0; k < input_slots_.size(); ++k)
        if (in32_[k]) {
          const GSlot& s = slots_[input_slots_[k]];
          k::bf16_to_f32(bf(s.grad), in32_[k], s.count, ctx_.stream);
        }
  }

  const float* input_grad(int i) const override {
    HALCDL_CHECK(i >= 0 && i < static_cast<int>(input_slots_.size()), kErrInvalidInputShape, "the graph has ",
                 input_slots_.size(), " inputs, asked for input ", i);
    const GSlot& s = slots_[input_slots_[i]];
    HALCDL_CHECK(s.grad, kErrTrainingUnsupported, "this GPU plan keeps no input gradient");
    return bf16_ ? in32_[i] : s.grad;
  }

  const float* dropout_mask(int node) const override {
    const float* m = node >= 0 && node < static_cast<int>(nodes_.size()) && nodes_[node]
                         ? nodes_[node]->dropout_mask() : nullptr;
    HALCDL_CHECK(m, kErrInvalidInputShape, "node ", node, " has no dropout mask");
    return m;
  }

  void bn_batch_stats(int node, std::vector<float>& mean, std::vector<float>& var) override {
    const float *m = nullptr, *inv = nullptr;
    double eps = 0;
    const bool ok = node >= 0 && node < static_cast<int>(nodes_.size()) && nodes_[node] &&
                    nodes_[node]->bn_saved(&m, &inv, &eps);
    HALCDL_CHECK(ok, kErrInvalidInputShape, "node ", node, " is not a batch normalisation of a training plan");
    const size_t c = static_cast<size_t>(g_.nodes[node].channels);
    mean.resize(c);
    var.resize(c);
    CUDA_CHECK(cudaMemcpyAsync(mean.data(), m, c * sizeof(float), cudaMemcpyDeviceToHost, ctx_.stream));
    CUDA_CHECK(cudaMemcpyAsync(var.data(), inv, c * sizeof(float), cudaMemcpyDeviceToHost, ctx_.stream));
    ctx_.sync();
    // cuDNN saves 1/sqrt(var_B + eps) with the biased batch variance
    for (size_t j = 0; j < c; ++j) {
      const double s = var[j];
      var[j] = static_cast<float>(std::max(0.0, 1.0 / (s * s) - eps));
    }
  }

  size_t bytes() const override { return ws_.bytes(); }

  // HALCDL_CUDA_DEBUG=1: synchronise after every op and name the op an error comes from;
  // =2: also stop at the first op whose output (or input gradient) is not finite.
  void set_debug(int level) {
    debug_ = level;
    if (debug_ < 2) return;
    flag_.resize(sizeof(int));
    if (bf16_) {  // check_finite reads fp32: bf16 tensors are widened into this buffer first
      size_t most = 0;
      for (const GSlot& s : slots_) most = std::max(most, s.count);
      dbg32_.resize(most * sizeof(float));
    }
  }

 private:
  void debug_check(int i, const char* phase, const float* t, size_t count) {
    const Node& nd = g_.nodes[i];
    try {
      if (debug_ >= 2 && count) {
        CUDA_CHECK(cudaMemsetAsync(flag_.v(), 1, sizeof(int), ctx_.stream));
        if (bf16_) {
          k::bf16_to_f32(bf(t), dbg32_.f(), count, ctx_.stream);
          t = dbg32_.f();
        }
        k::check_finite(t, count, flag_.i(), ctx_.stream);
      }
      ctx_.sync();
    } catch (const Error& e) {
      HALCDL_THROW(e.code(), "node '", nd.name, "' (", op_name(nd.op), ") ", phase, ": ", e.what());
    }
    if (debug_ < 2 || !count) return;
    int ok = 0;
    CUDA_CHECK(cudaMemcpy(&ok, flag_.v(), sizeof(int), cudaMemcpyDeviceToHost));
    HALCDL_CHECK(ok != 0, kErrTrainingFailed, "HALCDL_CUDA_DEBUG: node '", nd.name, "' (", op_name(nd.op), ") ",
                 phase, " produced a non-finite value");
  }

  int debug_ = 0;
  DeviceBuffer flag_, dbg32_;
  struct Accum { float* dst; const float* src; size_t count; };
  Context& ctx_;
  const Graph& g_;
  bool training_;
  bool bf16_;
  Arena ws_;
  std::vector<GSlot> slots_;
  std::vector<std::unique_ptr<GpuNode>> nodes_;
  std::vector<std::vector<Accum>> accum_;
  std::vector<int> input_slots_, zero_grads_;
  std::vector<std::pair<size_t, size_t>> zero_params_;  // (offset, floats) in the gradient arena
  std::vector<Dims> input_dims_;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  float* out32_ = nullptr;      // bf16 plans: the output widened to fp32
  std::vector<float*> in32_;    // bf16 plans: input gradients widened to fp32 (null: none kept)
};

}  // namespace

std::unique_ptr<GpuPlan> make_gpu_plan(Context& ctx, const Graph& g, const std::vector<Dims>& input_dims,
                                       bool training, bool input_grads, Precision precision) {
  DeviceGuard guard(ctx.device);
  auto p = std::make_unique<CudaPlan>(ctx, g, input_dims, training, input_grads, precision == Precision::BF16);
  if (const char* d = std::getenv("HALCDL_CUDA_DEBUG")) p->set_debug(std::atoi(d));
  return p;
}

}  // namespace halcdl::gpu
