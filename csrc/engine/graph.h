// The static graph: nodes built once from a spec (a list of node dicts in topological order),
// with the channel rule of every op and the parameters each op owns. Device-neutral: the
// backends (cpu/, later cuda/) turn a Graph plus input shapes into an execution plan.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace halcdl {

using Dims = std::vector<int64_t>;

enum class OpKind {
  Input, Conv, BN, Relu, Relu6, MaxPool, AvgPool, GAP, FC, Add, Concat, Dropout, Softmax,
  Deconv, UpNearest, UpBilinear, DetOut,
  // layer-API ops (cpu/shape_ops.cpp, cuda/ops_extra.cpp)
  Sigmoid, Tanh, DepthToSpace, ResizeNearest, ResizeBilinear, Reshape, Permute, DepthMax, Lrn, Reduce, MatMul
};

const char* op_name(OpKind k);

// Attributes as the spec gives them: every value a list of numbers (ints, floats, bools).
struct NodeSpec {
  std::string name, op;
  std::vector<std::string> inputs;
  std::map<std::string, std::vector<double>> attrs;
  std::string share;  // conv only: the name of an earlier conv whose parameters this one uses
};

enum class ParamKind { Weight, Bias, State };

struct ParamInfo {
  std::string name;      // "<node>.<role>"
  std::string role;      // weight, bias, scale, shift, running_mean, running_var
  Dims shape;            // PyTorch layout
  ParamKind kind;
  int node = -1;
  size_t offset = 0;     // in floats, into the trainable arena (Weight/Bias) or the state arena
  size_t size = 0;       // number of floats
};

struct Node {
  std::string name;
  OpKind op;
  std::vector<int> inputs;
  int channels = 0;        // output channels (or features for fc)
  // conv / pooling geometry
  int kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1, groups = 1;
  int oph = 0, opw = 0;     // deconv output padding
  int scale = 1;            // upsampling factor
  bool bias = true;
  float eps = 1e-5f;       // bn
  float p = 0.5f;          // dropout
  int64_t in_features = 0; // fc: C*H*W of its input
  int share_of = -1;        // conv: the node whose parameters it shares (tied params)
  int det_anchors = 0;      // detection_output: anchors per position (A), box values (B)
  int det_box = 4;
  int block = 1;             // depth_to_space: block size; mode CRD (PyTorch's pixel_shuffle) or DCR
  bool crd = true;
  int out_h = 0, out_w = 0;  // resize_*, reshape: output size
  int perm[3] = {0, 1, 2};   // permute: output axis k of (C, H, W) is input axis perm[k]
  bool argmax = false;       // depth_max: the index of the maximum (else its value)
  int lrn_size = 5;          // lrn: y = x / (k + alpha/size · Σ_window x²)^beta, odd window across channels
  float lrn_alpha = 1e-4f, lrn_beta = 0.75f, lrn_k = 1.f;
  int reduce_mode = 0;       // reduce: 0 sum, 1 mean, 2 L2 norm (sqrt of the sum of squares)
  bool reduce_axis[3] = {false, false, false};  // reduce: over C, H, W (each reduced to 1)
  bool trans_a = false, trans_b = false;  // matmul: per (n, c) Y = op(A) · op(B) of the H × W matrices
  // parameter indices into Graph::params (-1 when absent)
  int p_weight = -1, p_bias = -1, p_mean = -1, p_var = -1;
};

struct Graph {
  std::vector<Node> nodes;
  std::vector<ParamInfo> params;   // arena order: weights, then biases, then state
  std::vector<int> input_nodes;    // nodes of kind Input, in spec order
  int output = -1;                 // the last node
  size_t n_weight = 0;             // floats in the weight range [0, n_weight)
  size_t n_trainable = 0;          // floats in weights + biases
  size_t n_state = 0;              // floats of running statistics
  std::unordered_map<std::string, int> param_lookup;  // name -> index in params (param_index)
  // Tied parameters (conv `share`): (shadow param, master param). The shadow has its own
  // arena slot with the master's values; the model adds its gradient into the master's and
  // copies the master back after every update (engine/model.cpp).
  std::vector<std::pair<int, int>> ties;
  bool is_detection() const { return output >= 0 && nodes[output].op == OpKind::DetOut; }

  // Output dims of every node for the given input dims (N, C, H, W) per input node.
  // Throws 7722 when an image is too small for the network, 7735 when shapes don't fit.
  std::vector<Dims> infer_shapes(const std::vector<Dims>& input_dims) const;
  int param_index(const std::string& name) const;
  // Output dims for one h×w image per input node.
  Dims output_dims(int64_t h, int64_t w) const;
  // Labels per sample: 1 (one score per class) or h·w (one per pixel, the output at image
  // size); 7735 when the output fits neither.
  int64_t labels_per_sample(int64_t h, int64_t w) const;
  // Per node: its consumers (node, input slot) and whether its tensor needs a gradient
  // (training: it has parameters or an input that needs one; inputs only with input_grads).
  struct GradInfo {
    std::vector<std::vector<std::pair<int, int>>> consumers;
    std::vector<bool> need_grad;
  };
  GradInfo grad_info(bool training, bool input_grads) const;
};

// Builds and checks a graph. Throws halcdl::Error(7735) naming the node on a bad spec.
Graph build_graph(const std::vector<NodeSpec>& spec);

}  // namespace halcdl
