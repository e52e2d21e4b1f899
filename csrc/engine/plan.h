// An execution plan: one graph at one set of input shapes, built once and reused. It owns the
// backend primitives and one workspace for activations, gradients and scratch, laid out by a
// lifetime-aware allocator. Building a plan allocates; running one does not.
#pragma once
#include <string>
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/graph.h"

namespace halcdl {

// Views of the model's arenas that a plan reads and writes.
struct ParamViews {
  float* weights = nullptr;        // trainable arena (weights then biases), PyTorch layouts
  float* state = nullptr;          // running statistics
  const uint64_t* version = nullptr;  // bumped whenever the trainable arena changes
};

struct BNStats {                   // batch statistics of one bn node after a training forward
  int node;
  const float* mean;
  const float* var;                // biased variance
  int64_t count;                   // N*H*W
};

class Plan {
 public:
  virtual ~Plan() = default;
  virtual const Dims& input_dims(int i) const = 0;
  virtual const Dims& output_dims() const = 0;
  // Plain NCHW buffer of input i; fill it before forward().
  virtual float* input_buffer(int i) = 0;
  virtual void forward(uint64_t rng_seed) = 0;
  // The output in plain layout ((N, K) or NCHW).
  virtual const float* output() = 0;
  // Backward from a plain gradient of the output. Parameter gradients are written (not
  // accumulated) into `param_grad` (same offsets as the trainable arena); params the graph
  // does not reach get zeros.
  virtual void backward(const float* grad_output, float* param_grad) = 0;
  // Plain NCHW gradient of input i (plans built with input_grads only).
  virtual void input_grad(int i, float* dst) = 0;
  virtual const std::vector<BNStats>& bn_stats() const = 0;
  // Dropout masks (scale 0 or 1/(1-p)) in plain layout, for tests.
  virtual void dropout_mask(int node, float* dst) = 0;
  virtual size_t workspace_bytes() const = 0;
  // Introspection (get_dl_model_layer_activations / _gradients, heatmaps): the output of a
  // node kept by the plan (`keep` of make_cpu_plan), or its gradient after backward(), in
  // plain layout; 7735 for a node the plan does not keep (or keeps no gradient of).
  virtual void read_tensor(int node, bool grad, float* dst) = 0;
  virtual const Dims& node_dims(int node) const = 0;
};

// Compute precision: fp32, or bf16 activations/weights with fp32 master weights, fp32
// weight gradients and an fp32 loss.
enum class Precision { F32, BF16 };

bool bf16_supported();
void check_bf16_supported();  // 7742 when the CPU lacks bfloat16 instructions

std::unique_ptr<Plan> make_cpu_plan(const Graph& g, const std::vector<Dims>& input_dims, bool training,
                                    bool input_grads, ParamViews views, Precision precision = Precision::F32,
                                    bool fuse = true, const std::vector<int>& keep = {}, bool eval_grads = false,
                                    bool guided = false);
// keep: nodes whose output (and, in a training plan, gradient) stays readable after the run
// (read_tensor): they are not fused and their buffers are not reused. eval_grads (with
// training = true): gradients through the network in inference mode (batch norm with the
// running statistics, dropout the identity), for heatmaps; such a plan reports no bn_stats.
// guided (with eval_grads, fuse = false): guided backpropagation, every ReLU's backward passes
// only positive gradients (dx = max(dy · [x > 0], 0)), for Guided Grad-CAM.

// Per-op timer of the CPU plans (off by default; on with HALCDL_OP_TIMER=1 in the environment
// or set_op_timer(true)). When on, every node of a forward / backward is timed on its own
// (the stream is waited for after each), keyed "<phase>:<op>[+fused ops]" with phase
// infer / train_fwd / train_bwd. When off, a plan's forward and backward test one flag.
struct OpTime {
  std::string key;
  double seconds;
  int64_t calls;
};
void set_op_timer(bool on);
bool op_timer();
std::vector<OpTime> op_times();
void reset_op_times();
// Adds one timed call under `key` (used by the train step's update: "train_step:check",
// "train_step:update"); callers test op_timer() first.
void add_op_time(const std::string& key, double seconds);

}  // namespace halcdl
