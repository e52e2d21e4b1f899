// A GPU execution plan: one graph at one set of input shapes (the GPU twin of
// engine/plan.h's Plan). Built once per (batch, shape, training, precision, options) and
// reused; building allocates (one device workspace for activations, gradients and the
// cuDNN/scratch workspace, plus cached descriptors and algorithm choices); running does not.
//
// Layouts: activations NHWC. A node's logical dims stay (N, C, H, W) as Graph::infer_shapes
// gives them; the buffer is (N, H, W, C). (N, K) outputs (fc) are row-major.
// Parameters: the device arena (see DeviceEngine in engine/device.h) at the graph's offsets,
// in device layouts:
//   conv weight     (O, kh, kw, I/g)        — PyTorch (O, I/g, kh, kw)
//   deconv weight   (I, kh, kw, O/g)        — PyTorch (I, O/g, kh, kw)
//   fc weight       (K, H, W, C) flattened  — PyTorch (K, C, H, W) flattened (same when H=W=1)
//   everything else as in PyTorch.
// Use device_layout_* (below) to convert.
//
// Ops: conv / deconv (grouped, depthwise, dilated, with or without bias) on cuDNN; bn on
// cuDNN (spatial); max / avg pooling on cuDNN (floor mode, avg excludes padding); fc on
// cuBLAS; relu, relu6, add, concat, dropout, softmax, gap, upsampling on kernels.cuh.
// Deterministic mode (Context::opts.deterministic): only algorithms cuDNN reports
// CUDNN_DETERMINISTIC, chosen by heuristics (not timing), so two runs pick the same ones.
// Otherwise the fastest by cudnnFind* at build time (like cudnn.benchmark = True).
// TF32 (opts.tf32): CUDNN_DEFAULT_MATH / TF32 cuBLAS compute; off: CUDNN_FMA_MATH / pedantic fp32.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "cuda/common.h"
#include "engine/graph.h"
#include "engine/plan.h"

namespace halcdl::gpu {

// The device arenas a plan runs with.
struct DeviceParams {
  const float* weights = nullptr;  // trainable arena (device layouts)
  const float* state = nullptr;    // running statistics, read by inference bn
  float* state_out = nullptr;      // training bn: running statistics updated here
                                   // (cuDNN's exponential average, unbiased variance)
  float bn_momentum = 0.1f;        // PyTorch's momentum (cuDNN's exponentialAverageFactor)
  // bfloat16 plans: the trainable arena rounded to bf16 (same offsets), the conv / deconv /
  // fc operands. The fp32 arena above stays the master copy (biases, bn and the update).
  const uint16_t* weights_bf16 = nullptr;
};

class GpuPlan {
 public:
  virtual ~GpuPlan() = default;
  virtual const Dims& input_dims(int i) const = 0;   // logical (N, C, H, W)
  virtual const Dims& output_dims() const = 0;       // logical, (N, K) or (N, C, H, W)
  // Device NHWC buffer; fill before forward. Its elements are bf16 bits when bf16() (fill it
  // with k::nchw_f32_to_nhwc_bf16), fp32 otherwise.
  virtual float* input(int i) = 0;
  virtual bool bf16() const { return false; }        // a bfloat16 plan
  // output(), the gradient backward() takes and input_grad() are fp32 in every plan (a bf16
  // plan casts at its boundary), so the loss and the caller stay fp32.
  virtual void forward(const DeviceParams& p, uint64_t rng) = 0;
  virtual const float* output() const = 0;           // device NHWC / (N, K)
  // From a device gradient of the output (same layout). Parameter gradients are written (not
  // accumulated) into `param_grad` (device arena, device layouts); unreached params get 0.
  virtual void backward(const DeviceParams& p, const float* grad_output, float* param_grad) = 0;
  virtual const float* input_grad(int i) const = 0;  // plans built with input_grads only
  virtual const float* dropout_mask(int node) const = 0;  // device NHWC, training plans
  // Batch statistics of a bn node after a training forward: mean and biased variance (device
  // buffers of `channels` floats each; written into host vectors by the caller).
  virtual void bn_batch_stats(int node, std::vector<float>& mean, std::vector<float>& var) = 0;
  virtual size_t bytes() const = 0;                  // device memory held
};

std::unique_ptr<GpuPlan> make_gpu_plan(Context& ctx, const Graph& g, const std::vector<Dims>& input_dims,
                                       bool training, bool input_grads, Precision precision);

// Host-side layout conversion of one parameter between PyTorch and device layouts (p.size
// floats). An fc weight's permutation needs only C = channels of the fc's input node and
// HW = in_features / C (the H·W flatten order is the same in both layouts).
void device_layout_from_torch(const Graph& g, const ParamInfo& p, const float* src, float* dst);
void device_layout_to_torch(const Graph& g, const ParamInfo& p, const float* src, float* dst);

}  // namespace halcdl::gpu
