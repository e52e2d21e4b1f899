#include "engine/graph.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "core/error.h"

namespace halcdl {

const char* op_name(OpKind k) {
  switch (k) {
    case OpKind::Input: return "input";
    case OpKind::Conv: return "conv";
    case OpKind::BN: return "bn";
    case OpKind::Relu: return "relu";
    case OpKind::Relu6: return "relu6";
    case OpKind::MaxPool: return "maxpool";
    case OpKind::AvgPool: return "avgpool";
    case OpKind::GAP: return "gap";
    case OpKind::FC: return "fc";
    case OpKind::Add: return "add";
    case OpKind::Concat: return "concat";
    case OpKind::Dropout: return "dropout";
    case OpKind::Softmax: return "softmax";
    case OpKind::Deconv: return "deconv";
    case OpKind::UpNearest: return "upsample_nearest";
    case OpKind::UpBilinear: return "upsample_bilinear";
    case OpKind::DetOut: return "detection_output";
    case OpKind::Sigmoid: return "sigmoid";
    case OpKind::Tanh: return "tanh";
    case OpKind::DepthToSpace: return "depth_to_space";
    case OpKind::ResizeNearest: return "resize_nearest";
    case OpKind::ResizeBilinear: return "resize_bilinear";
    case OpKind::Reshape: return "reshape";
    case OpKind::Permute: return "permute";
    case OpKind::DepthMax: return "depth_max";
    case OpKind::Lrn: return "lrn";
    case OpKind::Reduce: return "reduce";
    case OpKind::MatMul: return "matmul";
  }
  return "?";
}

namespace {

const std::unordered_map<std::string, OpKind>& op_table() {
  static const std::unordered_map<std::string, OpKind> t = {
      {"input", OpKind::Input}, {"conv", OpKind::Conv},       {"bn", OpKind::BN},
      {"relu", OpKind::Relu},   {"relu6", OpKind::Relu6},     {"maxpool", OpKind::MaxPool},
      {"avgpool", OpKind::AvgPool}, {"gap", OpKind::GAP},     {"fc", OpKind::FC},
      {"add", OpKind::Add},     {"concat", OpKind::Concat},   {"dropout", OpKind::Dropout},
      {"softmax", OpKind::Softmax}, {"deconv", OpKind::Deconv},
      {"upsample_nearest", OpKind::UpNearest}, {"upsample_bilinear", OpKind::UpBilinear},
      {"detection_output", OpKind::DetOut}, {"sigmoid", OpKind::Sigmoid}, {"tanh", OpKind::Tanh},
      {"depth_to_space", OpKind::DepthToSpace}, {"resize_nearest", OpKind::ResizeNearest},
      {"resize_bilinear", OpKind::ResizeBilinear}, {"reshape", OpKind::Reshape}, {"permute", OpKind::Permute},
      {"depth_max", OpKind::DepthMax}, {"lrn", OpKind::Lrn}, {"reduce", OpKind::Reduce},
      {"matmul", OpKind::MatMul}};
  return t;
}

struct Attrs {
  const NodeSpec& s;
  bool has(const char* k) const { return s.attrs.count(k) > 0; }
  double num(const char* k, double def) const {
    auto it = s.attrs.find(k);
    if (it == s.attrs.end()) return def;
    HALCDL_CHECK(it->second.size() == 1, kErrInvalidInputShape, "node '", s.name, "': attribute '", k,
                 "' must be a single number");
    HALCDL_CHECK(std::isfinite(it->second[0]), kErrInvalidInputShape, "node '", s.name, "': attribute '", k,
                 "' must be finite");
    return it->second[0];
  }
  // an integer in [-2^30, 2^30] (no conversion beyond int's range, which would be undefined)
  static int to_int(const NodeSpec& s, const char* k, double v) {
    HALCDL_CHECK(std::isfinite(v) && v == std::floor(v) && std::fabs(v) <= 1073741824.0, kErrInvalidInputShape,
                 "node '", s.name, "': attribute '", k, "' must be an integer of at most 2^30, got ", v);
    return static_cast<int>(v);
  }
  int integer(const char* k, int def) const { return to_int(s, k, num(k, def)); }
  // int or [a, b]
  void pair(const char* k, int def, int& a, int& b) const {
    auto it = s.attrs.find(k);
    if (it == s.attrs.end()) { a = b = def; return; }
    const auto& v = it->second;
    HALCDL_CHECK(v.size() == 1 || v.size() == 2, kErrInvalidInputShape, "node '", s.name, "': attribute '", k,
                 "' must be an int or a pair");
    a = to_int(s, k, v[0]);
    b = to_int(s, k, v.size() == 2 ? v[1] : v[0]);
  }
};

}  // namespace

int Graph::param_index(const std::string& name) const {
  // a hash lookup: reading a model calls this once per tensor (linear, not quadratic, in the
  // number of layers)
  if (param_lookup.size() == params.size()) {
    auto it = param_lookup.find(name);
    return it == param_lookup.end() ? -1 : it->second;
  }
  for (size_t i = 0; i < params.size(); ++i)
    if (params[i].name == name) return static_cast<int>(i);
  return -1;
}

// Largest parameter tensor a spec may declare (2^32 floats = 16 GiB).
constexpr size_t kMaxParamFloats = size_t(1) << 32;

Graph build_graph(const std::vector<NodeSpec>& spec) {
  Graph g;
  HALCDL_CHECK(!spec.empty(), kErrInvalidInputShape, "the graph spec is empty");
  std::unordered_map<std::string, int> index;
  std::vector<ParamInfo> weights, biases, states;
  auto add_param = [&](Node& n, int node_idx, const char* role, Dims shape, ParamKind kind) {
    ParamInfo p;
    p.name = n.name + "." + role;
    p.role = role;
    p.shape = shape;
    p.kind = kind;
    p.node = node_idx;
    p.size = 1;
    for (auto d : shape) {
      // overflow-safe: a spec may declare any size; the model's arenas are bounded
      HALCDL_CHECK(d > 0 && p.size <= kMaxParamFloats / static_cast<size_t>(d), kErrInvalidInputShape, "node '",
                   n.name, "': parameter '", role, "' would hold more than ", kMaxParamFloats, " values");
      p.size *= static_cast<size_t>(d);
    }
    (kind == ParamKind::Weight ? weights : kind == ParamKind::Bias ? biases : states).push_back(p);
  };

  for (const auto& s : spec) {
    HALCDL_CHECK(!s.name.empty(), kErrInvalidInputShape, "a node of the graph spec has no name");
    HALCDL_CHECK(!index.count(s.name), kErrInvalidInputShape, "node name '", s.name, "' appears twice");
    auto ot = op_table().find(s.op);
    HALCDL_CHECK(ot != op_table().end(), kErrInvalidInputShape, "node '", s.name, "': unknown op '", s.op, "'");
    Node n;
    n.name = s.name;
    n.op = ot->second;
    for (const auto& in : s.inputs) {
      auto it = index.find(in);
      HALCDL_CHECK(it != index.end(), kErrInvalidInputShape, "node '", s.name, "': input '", in,
                   "' is not an earlier node");
      n.inputs.push_back(it->second);
    }
    Attrs a{s};
    const int idx = static_cast<int>(g.nodes.size());
    auto in_ch = [&](int i) { return g.nodes[n.inputs[i]].channels; };
    auto need_inputs = [&](size_t lo, size_t hi) {
      HALCDL_CHECK(n.inputs.size() >= lo && n.inputs.size() <= hi, kErrInvalidInputShape, "node '", s.name,
                   "' (", s.op, ") takes ", lo, lo == hi ? "" : " or more", " input(s), got ", n.inputs.size());
    };
    switch (n.op) {
      case OpKind::Input:
        need_inputs(0, 0);
        n.channels = a.integer("channels", 3);
        HALCDL_CHECK(n.channels > 0, kErrInvalidInputShape, "node '", s.name, "': channels must be > 0");
        g.input_nodes.push_back(idx);
        break;
      case OpKind::Conv: {
        need_inputs(1, 1);
        n.channels = a.integer("out_channels", 0);
        a.pair("kernel", 1, n.kh, n.kw);
        a.pair("stride", 1, n.sh, n.sw);
        a.pair("pad", 0, n.ph, n.pw);
        a.pair("dilation", 1, n.dh, n.dw);
        n.groups = a.integer("groups", 1);
        n.bias = a.num("bias", 1) != 0;
        const int ic = in_ch(0);
        HALCDL_CHECK(n.channels > 0 && n.kh > 0 && n.kw > 0 && n.sh > 0 && n.sw > 0 && n.ph >= 0 && n.pw >= 0 &&
                         n.dh > 0 && n.dw > 0 && n.groups > 0,
                     kErrInvalidInputShape, "node '", s.name, "': invalid convolution attributes");
        HALCDL_CHECK(ic % n.groups == 0 && n.channels % n.groups == 0, kErrInvalidInputShape, "node '", s.name,
                     "': groups (", n.groups, ") must divide input (", ic, ") and output (", n.channels,
                     ") channels");
        add_param(n, idx, "weight", {n.channels, ic / n.groups, n.kh, n.kw}, ParamKind::Weight);
        if (n.bias) add_param(n, idx, "bias", {n.channels}, ParamKind::Bias);
        if (!s.share.empty()) {
          auto it = index.find(s.share);
          HALCDL_CHECK(it != index.end() && g.nodes[it->second].op == OpKind::Conv, kErrInvalidInputShape, "node '",
                       s.name, "': 'share' must name an earlier conv, got '", s.share, "'");
          const Node& m = g.nodes[it->second];
          HALCDL_CHECK(m.share_of < 0, kErrInvalidInputShape, "node '", s.name, "': shares with '", s.share,
                       "', which itself shares another node's parameters");
          HALCDL_CHECK(m.channels == n.channels && m.kh == n.kh && m.kw == n.kw && m.sh == n.sh && m.sw == n.sw &&
                           m.ph == n.ph && m.pw == n.pw && m.dh == n.dh && m.dw == n.dw && m.groups == n.groups &&
                           m.bias == n.bias && g.nodes[m.inputs[0]].channels == ic,
                       kErrInvalidInputShape, "node '", s.name, "' cannot share the parameters of '", s.share,
                       "': their attributes or input channels differ");
          n.share_of = it->second;
        }
        break;
      }
      case OpKind::DetOut: {
        // inputs: per level the class head (N, A·K, H, W) then the box head (N, A·B, H, W)
        need_inputs(2, 64);
        HALCDL_CHECK(n.inputs.size() % 2 == 0, kErrInvalidInputShape, "node '", s.name,
                     "': detection_output takes (class head, box head) pairs");
        n.channels = a.integer("num_classes", 0);
        n.det_anchors = a.integer("num_anchors", 0);
        n.det_box = a.integer("box_values", 4);
        HALCDL_CHECK(n.channels > 0 && n.det_anchors > 0 && (n.det_box == 4 || n.det_box == 5), kErrInvalidInputShape,
                     "node '", s.name, "': num_classes and num_anchors must be > 0, box_values 4 or 5");
        for (size_t l = 0; l < n.inputs.size(); l += 2)
          HALCDL_CHECK(in_ch(static_cast<int>(l)) == n.channels * n.det_anchors &&
                           in_ch(static_cast<int>(l) + 1) == n.det_box * n.det_anchors,
                       kErrInvalidInputShape, "node '", s.name, "': level ", l / 2, " needs ",
                       n.channels * n.det_anchors, " class and ", n.det_box * n.det_anchors, " box channels, got ",
                       in_ch(static_cast<int>(l)), " and ", in_ch(static_cast<int>(l) + 1));
        break;
      }
      case OpKind::Deconv: {
        // PyTorch's ConvTranspose2d (groups 1): weight (I, O, kh, kw)
        need_inputs(1, 1);
        n.channels = a.integer("out_channels", 0);
        a.pair("kernel", 1, n.kh, n.kw);
        a.pair("stride", 1, n.sh, n.sw);
        a.pair("pad", 0, n.ph, n.pw);
        a.pair("output_padding", 0, n.oph, n.opw);
        a.pair("dilation", 1, n.dh, n.dw);
        n.bias = a.num("bias", 1) != 0;
        HALCDL_CHECK(a.integer("groups", 1) == 1, kErrInvalidInputShape, "node '", s.name,
                     "': transposed convolution supports groups = 1 only");
        HALCDL_CHECK(n.channels > 0 && n.kh > 0 && n.kw > 0 && n.sh > 0 && n.sw > 0 && n.ph >= 0 && n.pw >= 0 &&
                         n.dh > 0 && n.dw > 0 && n.oph >= 0 && n.opw >= 0 && n.oph < std::max(n.sh, n.dh) &&
                         n.opw < std::max(n.sw, n.dw),
                     kErrInvalidInputShape, "node '", s.name, "': invalid transposed convolution attributes");
        add_param(n, idx, "weight", {in_ch(0), n.channels, n.kh, n.kw}, ParamKind::Weight);
        if (n.bias) add_param(n, idx, "bias", {n.channels}, ParamKind::Bias);
        break;
      }
      case OpKind::UpNearest:
      case OpKind::UpBilinear:
        need_inputs(1, 1);
        n.channels = in_ch(0);
        n.scale = a.integer("scale", 2);
        HALCDL_CHECK(n.scale >= 1, kErrInvalidInputShape, "node '", s.name, "': scale must be >= 1");
        break;
      case OpKind::BN:
        need_inputs(1, 1);
        n.channels = in_ch(0);
        n.eps = static_cast<float>(a.num("eps", 1e-5));
        // a positive normal float32 (1/sqrt(var + eps) must stay finite for var = 0)
        HALCDL_CHECK(n.eps >= 1.17549435e-38f && n.eps <= 1.f, kErrInvalidInputShape, "node '", s.name,
                     "': batch-norm eps must be in (0, 1], got ", a.num("eps", 1e-5));
        add_param(n, idx, "scale", {n.channels}, ParamKind::Weight);
        add_param(n, idx, "shift", {n.channels}, ParamKind::Bias);
        add_param(n, idx, "running_mean", {n.channels}, ParamKind::State);
        add_param(n, idx, "running_var", {n.channels}, ParamKind::State);
        break;
      case OpKind::Relu:
      case OpKind::Relu6:
      case OpKind::GAP:
      case OpKind::Softmax:
        need_inputs(1, 1);
        n.channels = in_ch(0);
        break;
      case OpKind::Dropout:
        need_inputs(1, 1);
        n.channels = in_ch(0);
        n.p = static_cast<float>(a.num("p", 0.5));
        HALCDL_CHECK(n.p >= 0 && n.p < 1, kErrInvalidInputShape, "node '", s.name, "': dropout p must be in [0, 1)");
        break;
      case OpKind::MaxPool:
      case OpKind::AvgPool:
        need_inputs(1, 1);
        n.channels = in_ch(0);
        a.pair("kernel", 2, n.kh, n.kw);
        if (a.has("stride")) a.pair("stride", 1, n.sh, n.sw); else { n.sh = n.kh; n.sw = n.kw; }
        a.pair("pad", 0, n.ph, n.pw);
        HALCDL_CHECK(n.kh > 0 && n.kw > 0 && n.sh > 0 && n.sw > 0 && n.ph >= 0 && n.pw >= 0 && 2 * n.ph <= n.kh &&
                         2 * n.pw <= n.kw,
                     kErrInvalidInputShape, "node '", s.name, "': invalid pooling attributes");
        break;
      case OpKind::FC: {
        need_inputs(1, 1);
        n.channels = a.integer("out_features", 0);
        n.bias = a.num("bias", 1) != 0;
        n.in_features = static_cast<int64_t>(a.num("in_features", in_ch(0)));
        HALCDL_CHECK(n.channels > 0 && n.in_features > 0, kErrInvalidInputShape, "node '", s.name,
                     "': out_features and in_features must be > 0");
        add_param(n, idx, "weight", {n.channels, n.in_features}, ParamKind::Weight);
        if (n.bias) add_param(n, idx, "bias", {n.channels}, ParamKind::Bias);
        break;
      }
      case OpKind::Sigmoid:
      case OpKind::Tanh:
        need_inputs(1, 1);
        n.channels = in_ch(0);
        break;
      case OpKind::DepthToSpace: {
        // y[n, c, h·b + i, w·b + j] = x[n, k, h, w]; CRD: k = c·b² + i·b + j, DCR: k = (i·b + j)·C + c
        need_inputs(1, 1);
        n.block = a.integer("block_size", 2);
        n.crd = a.num("crd", 1) != 0;
        HALCDL_CHECK(n.block >= 1 && n.block <= 4096, kErrInvalidInputShape, "node '", s.name,
                     "': block_size must be in [1, 4096]");
        const int64_t bb = static_cast<int64_t>(n.block) * n.block;
        HALCDL_CHECK(in_ch(0) % bb == 0, kErrInvalidInputShape, "node '", s.name, "': the input's ", in_ch(0),
                     " channels are not a multiple of block_size² = ", bb);
        n.channels = static_cast<int>(in_ch(0) / bb);
        break;
      }
      case OpKind::ResizeNearest:
      case OpKind::ResizeBilinear:
        // to a fixed output size (half-pixel centres, PyTorch's interpolate(size=...),
        // 'nearest-exact' / 'bilinear' with align_corners=False)
        need_inputs(1, 1);
        n.channels = in_ch(0);
        n.out_h = a.integer("height", 0);
        n.out_w = a.integer("width", 0);
        HALCDL_CHECK(n.out_h >= 1 && n.out_w >= 1 && n.out_h <= 65536 && n.out_w <= 65536, kErrInvalidInputShape,
                     "node '", s.name, "': height and width must be in [1, 65536]");
        break;
      case OpKind::Reshape:
        // (N, C, H, W) → (N, channels, height, width), the same C·H·W values in NCHW order
        need_inputs(1, 1);
        n.channels = a.integer("channels", 0);
        n.out_h = a.integer("height", 0);
        n.out_w = a.integer("width", 0);
        HALCDL_CHECK(n.channels >= 1 && n.out_h >= 1 && n.out_w >= 1, kErrInvalidInputShape, "node '", s.name,
                     "': reshape needs channels, height and width >= 1");
        break;
      case OpKind::Permute: {
        // numpy's transpose of the (C, H, W) axes of every sample
        need_inputs(1, 1);
        auto it = s.attrs.find("perm");
        HALCDL_CHECK(it != s.attrs.end() && it->second.size() == 3, kErrInvalidInputShape, "node '", s.name,
                     "': permute needs 'perm', a permutation of [0, 1, 2] (axes C, H, W)");
        bool seen[3] = {false, false, false};
        for (int k = 0; k < 3; ++k) {
          const int v = Attrs::to_int(s, "perm", it->second[k]);
          HALCDL_CHECK(v >= 0 && v <= 2 && !seen[v], kErrInvalidInputShape, "node '", s.name,
                       "': 'perm' must be a permutation of [0, 1, 2]");
          seen[v] = true;
          n.perm[k] = v;
        }
        // the output's channels: the input's, or (an image axis moved to the channels) the spec's
        // 'channels', which infer_shapes checks against the image size
        n.channels = n.perm[0] == 0 ? in_ch(0) : a.integer("channels", 0);
        HALCDL_CHECK(n.channels >= 1, kErrInvalidInputShape, "node '", s.name,
                     "': a permute that moves an image axis to the channels needs 'channels' >= 1");
        break;
      }
      case OpKind::MatMul:
        // per sample and channel the H × W matrices: Y = op(A) · op(B), op transposes with
        // trans_a / trans_b; A and B have the same batch and channels (checked in infer_shapes)
        need_inputs(2, 2);
        n.trans_a = a.num("trans_a", 0) != 0;
        n.trans_b = a.num("trans_b", 0) != 0;
        HALCDL_CHECK(in_ch(0) == in_ch(1), kErrInvalidInputShape, "node '", s.name, "': matmul needs inputs of ",
                     "the same depth, got ", in_ch(0), " and ", in_ch(1));
        n.channels = in_ch(0);
        break;
      case OpKind::Reduce: {
        // sum / mean / L2 norm over a non-empty subset of the axes 1 C, 2 H, 3 W (kept, of size 1)
        need_inputs(1, 1);
        n.reduce_mode = a.integer("mode", 0);
        HALCDL_CHECK(n.reduce_mode >= 0 && n.reduce_mode <= 2, kErrInvalidInputShape, "node '", s.name,
                     "': reduce mode must be 0 (sum), 1 (mean) or 2 (L2 norm)");
        auto it = s.attrs.find("axes");
        HALCDL_CHECK(it != s.attrs.end() && !it->second.empty() && it->second.size() <= 3, kErrInvalidInputShape,
                     "node '", s.name, "': reduce needs 'axes', 1 to 3 of the axes 1 (C), 2 (H), 3 (W)");
        for (double d : it->second) {
          const int v = Attrs::to_int(s, "axes", d);
          HALCDL_CHECK(v >= 1 && v <= 3 && !n.reduce_axis[v - 1], kErrInvalidInputShape, "node '", s.name,
                       "': reduce 'axes' must be distinct values of 1 (C), 2 (H), 3 (W), got ", v);
          n.reduce_axis[v - 1] = true;
        }
        n.channels = n.reduce_axis[0] ? 1 : in_ch(0);
        break;
      }
      case OpKind::Lrn: {
        // across channels: y_c = x_c / (k + alpha/size · Σ_{|c' − c| <= size/2} x_c'²)^beta (PyTorch's
        // LocalResponseNorm, oneDNN's lrn_across_channels); an odd size (a centred window)
        need_inputs(1, 1);
        n.channels = in_ch(0);
        n.lrn_size = a.integer("size", 5);
        const double al = a.num("alpha", 1e-4), be = a.num("beta", 0.75), kk = a.num("k", 1.0);
        HALCDL_CHECK(n.lrn_size >= 1 && n.lrn_size % 2 == 1 && n.lrn_size <= 4095, kErrInvalidInputShape, "node '",
                     s.name, "': lrn size must be odd and in [1, 4095], got ", n.lrn_size);
        HALCDL_CHECK(std::isfinite(al) && std::isfinite(be) && std::isfinite(kk) && kk > 0, kErrInvalidInputShape,
                     "node '", s.name, "': lrn alpha, beta must be finite and k > 0");
        n.lrn_alpha = static_cast<float>(al);
        n.lrn_beta = static_cast<float>(be);
        n.lrn_k = static_cast<float>(kk);
        break;
      }
      case OpKind::DepthMax:
        // y[n, 0, h, w] = max_c x[n, c, h, w] (argmax: the first c where it is reached)
        need_inputs(1, 1);
        n.argmax = a.num("argmax", 0) != 0;
        n.channels = 1;
        break;
      case OpKind::Add:
        need_inputs(2, 2);
        n.channels = in_ch(0);
        HALCDL_CHECK(in_ch(1) == n.channels, kErrInvalidInputShape, "node '", s.name,
                     "': add needs equal channel counts, got ", in_ch(0), " and ", in_ch(1));
        break;
      case OpKind::Concat:
        need_inputs(2, 64);
        n.channels = 0;
        for (size_t i = 0; i < n.inputs.size(); ++i) n.channels += in_ch(static_cast<int>(i));
        break;
    }
    index[s.name] = idx;
    g.nodes.push_back(std::move(n));
  }
  HALCDL_CHECK(!g.input_nodes.empty(), kErrInvalidInputShape, "the graph spec has no 'input' node");
  g.output = static_cast<int>(g.nodes.size()) - 1;
  HALCDL_CHECK(g.nodes[g.output].op != OpKind::Input, kErrInvalidInputShape, "the graph has no operations");

  // Arena order: weights (get weight_prior), then biases, then running statistics.
  size_t off = 0;
  for (auto& p : weights) { p.offset = off; off += p.size; }
  g.n_weight = off;
  for (auto& p : biases) { p.offset = off; off += p.size; }
  g.n_trainable = off;
  size_t soff = 0;
  for (auto& p : states) { p.offset = soff; soff += p.size; }
  g.n_state = soff;
  for (auto* v : {&weights, &biases, &states})
    for (auto& p : *v) g.params.push_back(p);
  for (size_t i = 0; i < g.params.size(); ++i) g.param_lookup.emplace(g.params[i].name, static_cast<int>(i));
  HALCDL_CHECK(g.param_lookup.size() == g.params.size(), kErrInvalidInputShape,
               "two parameters of the graph have the same name");
  for (size_t i = 0; i < g.params.size(); ++i) {
    auto& p = g.params[i];
    Node& n = g.nodes[p.node];
    if (p.role == "weight" || p.role == "scale") n.p_weight = static_cast<int>(i);
    else if (p.role == "bias" || p.role == "shift") n.p_bias = static_cast<int>(i);
    else if (p.role == "running_mean") n.p_mean = static_cast<int>(i);
    else if (p.role == "running_var") n.p_var = static_cast<int>(i);
  }
  for (const Node& n : g.nodes) {
    if (n.share_of < 0) continue;
    const Node& m = g.nodes[n.share_of];
    g.ties.push_back({n.p_weight, m.p_weight});
    if (n.p_bias >= 0) g.ties.push_back({n.p_bias, m.p_bias});
  }
  return g;
}

std::vector<Dims> Graph::infer_shapes(const std::vector<Dims>& input_dims) const {
  HALCDL_CHECK(input_dims.size() == input_nodes.size(), kErrInvalidInputShape, "the graph has ",
               input_nodes.size(), " inputs, got ", input_dims.size(), " input shapes");
  std::vector<Dims> out(nodes.size());
  size_t next_input = 0;
  for (size_t i = 0; i < nodes.size(); ++i) {
    const Node& n = nodes[i];
    auto in = [&](int k) -> const Dims& { return out[n.inputs[k]]; };
    auto spatial = [&](int64_t x, int k, int s, int p, int d, const char* what) {
      int64_t o = (x + 2 * p - static_cast<int64_t>(d) * (k - 1) - 1) / s + 1;
      HALCDL_CHECK(x + 2 * p - static_cast<int64_t>(d) * (k - 1) - 1 >= 0 && o >= 1, kErrInputTooSmall,
                   "input image too small: at node '", n.name, "' (", op_name(n.op), ") the ", what, " is ", x,
                   " px but the kernel needs ", static_cast<int64_t>(d) * (k - 1) + 1 - 2 * p, " px");
      return o;
    };
    switch (n.op) {
      case OpKind::Input: {
        const Dims& d = input_dims[next_input++];
        HALCDL_CHECK(d.size() == 4 && d[0] > 0 && d[2] > 0 && d[3] > 0, kErrInvalidInputShape,
                     "input shape must be (N, C, H, W) with positive sizes");
        HALCDL_CHECK(d[1] == n.channels, kErrInvalidInputData, "the model takes images with ", n.channels,
                     " channel(s), got ", d[1]);
        out[i] = d;
        break;
      }
      case OpKind::Conv:
      case OpKind::MaxPool:
      case OpKind::AvgPool: {
        const Dims& x = in(0);
        HALCDL_CHECK(x.size() == 4, kErrInvalidInputShape, "node '", n.name, "' needs a 4-D input");
        int dh = n.op == OpKind::Conv ? n.dh : 1, dw = n.op == OpKind::Conv ? n.dw : 1;
        out[i] = {x[0], n.channels, spatial(x[2], n.kh, n.sh, n.ph, dh, "height"),
                  spatial(x[3], n.kw, n.sw, n.pw, dw, "width")};
        break;
      }
      case OpKind::Deconv: {
        const Dims& x = in(0);
        HALCDL_CHECK(x.size() == 4, kErrInvalidInputShape, "node '", n.name, "' needs a 4-D input");
        auto o = [&](int64_t v, int k, int st, int p, int d, int op) {
          return (v - 1) * st - 2 * p + static_cast<int64_t>(d) * (k - 1) + op + 1;
        };
        int64_t oh = o(x[2], n.kh, n.sh, n.ph, n.dh, n.oph), ow = o(x[3], n.kw, n.sw, n.pw, n.dw, n.opw);
        HALCDL_CHECK(oh >= 1 && ow >= 1, kErrInputTooSmall, "input image too small for node '", n.name, "'");
        out[i] = {x[0], n.channels, oh, ow};
        break;
      }
      case OpKind::UpNearest:
      case OpKind::UpBilinear: {
        const Dims& x = in(0);
        HALCDL_CHECK(x.size() == 4, kErrInvalidInputShape, "node '", n.name, "' needs a 4-D input");
        out[i] = {x[0], x[1], x[2] * n.scale, x[3] * n.scale};
        break;
      }
      case OpKind::DepthToSpace: {
        const Dims& x = in(0);
        HALCDL_CHECK(x.size() == 4, kErrInvalidInputShape, "node '", n.name, "' needs a 4-D input");
        out[i] = {x[0], n.channels, x[2] * n.block, x[3] * n.block};
        break;
      }
      case OpKind::Reshape: {
        Dims x = in(0);
        if (x.size() == 2) x = {x[0], x[1], 1, 1};  // (N, F) features: F channels of 1×1
        HALCDL_CHECK(x.size() == 4, kErrInvalidInputShape, "node '", n.name, "' needs a 2-D or 4-D input");
        HALCDL_CHECK(x[1] * x[2] * x[3] == static_cast<int64_t>(n.channels) * n.out_h * n.out_w, kErrInvalidInputShape,
                     "node '", n.name, "' (reshape): the input has ", x[1] * x[2] * x[3], " values per sample (",
                     x[1], "x", x[2], "x", x[3], "), the shape ", n.channels, "x", n.out_h, "x", n.out_w, " needs ",
                     static_cast<int64_t>(n.channels) * n.out_h * n.out_w);
        out[i] = {x[0], n.channels, n.out_h, n.out_w};
        break;
      }
      case OpKind::MatMul: {
        const Dims& x = in(0);
        const Dims& z = in(1);
        HALCDL_CHECK(x.size() == 4 && z.size() == 4, kErrInvalidInputShape, "node '", n.name, "' needs 4-D inputs");
        const int64_t m = n.trans_a ? x[3] : x[2], ka = n.trans_a ? x[2] : x[3];
        const int64_t kb = n.trans_b ? z[3] : z[2], p = n.trans_b ? z[2] : z[3];
        HALCDL_CHECK(x[0] == z[0] && x[1] == z[1], kErrInvalidInputShape, "node '", n.name,
                     "' (matmul): the inputs differ in batch or depth (", x[0], "x", x[1], " and ", z[0], "x", z[1], ")");
        HALCDL_CHECK(ka == kb, kErrInvalidInputShape, "node '", n.name, "' (matmul): A is ", m, "x", ka,
                     " (rows x columns), B is ", kb, "x", p, ": A's columns must equal B's rows");
        out[i] = {x[0], x[1], m, p};
        break;
      }
      case OpKind::Reduce: {
        const Dims& x = in(0);
        HALCDL_CHECK(x.size() == 4, kErrInvalidInputShape, "node '", n.name, "' needs a 4-D input");
        out[i] = {x[0], n.reduce_axis[0] ? 1 : x[1], n.reduce_axis[1] ? 1 : x[2], n.reduce_axis[2] ? 1 : x[3]};
        break;
      }
      case OpKind::Lrn: {
        const Dims& x = in(0);
        HALCDL_CHECK(x.size() == 4, kErrInvalidInputShape, "node '", n.name, "' needs a 4-D input");
        out[i] = x;
        break;
      }
      case OpKind::DepthMax: {
        const Dims& x = in(0);
        HALCDL_CHECK(x.size() == 4, kErrInvalidInputShape, "node '", n.name, "' needs a 4-D input");
        out[i] = {x[0], 1, x[2], x[3]};
        break;
      }
      case OpKind::Permute: {
        const Dims& x = in(0);
        HALCDL_CHECK(x.size() == 4, kErrInvalidInputShape, "node '", n.name, "' needs a 4-D input");
        HALCDL_CHECK(x[1 + n.perm[0]] == n.channels, kErrInvalidInputShape, "node '", n.name,
                     "' (permute) gives ", x[1 + n.perm[0]], " channels, the network was built for ", n.channels,
                     ": this network needs its original image size");
        out[i] = {x[0], x[1 + n.perm[0]], x[1 + n.perm[1]], x[1 + n.perm[2]]};
        break;
      }
      case OpKind::ResizeNearest:
      case OpKind::ResizeBilinear: {
        const Dims& x = in(0);
        HALCDL_CHECK(x.size() == 4, kErrInvalidInputShape, "node '", n.name, "' needs a 4-D input");
        out[i] = {x[0], x[1], n.out_h, n.out_w};
        break;
      }
      case OpKind::GAP: {
        const Dims& x = in(0);
        HALCDL_CHECK(x.size() == 4, kErrInvalidInputShape, "node '", n.name, "' needs a 4-D input");
        out[i] = {x[0], x[1], 1, 1};
        break;
      }
      case OpKind::FC: {
        const Dims& x = in(0);
        int64_t f = 1;
        for (size_t k = 1; k < x.size(); ++k) f *= x[k];
        HALCDL_CHECK(f == n.in_features, kErrInvalidInputShape, "node '", n.name, "' (fully connected) takes ",
                     n.in_features, " input features but gets ", f,
                     ": this network needs its original image size");
        out[i] = {x[0], n.channels};
        break;
      }
      case OpKind::Add:
        HALCDL_CHECK(in(0) == in(1), kErrInvalidInputShape, "node '", n.name, "': add needs equal shapes");
        out[i] = in(0);
        break;
      case OpKind::Concat: {
        Dims d = in(0);
        HALCDL_CHECK(d.size() == 4, kErrInvalidInputShape, "node '", n.name, "' needs 4-D inputs");
        d[1] = 0;
        for (size_t k = 0; k < n.inputs.size(); ++k) {
          const Dims& x = in(static_cast<int>(k));
          HALCDL_CHECK(x.size() == 4 && x[0] == d[0] && x[2] == d[2] && x[3] == d[3], kErrInvalidInputShape,
                       "node '", n.name, "': concat needs equal N, H, W");
          d[1] += x[1];
        }
        out[i] = d;
        break;
      }
      case OpKind::DetOut: {
        int64_t anchors = 0;
        for (size_t l = 0; l < n.inputs.size(); l += 2) {
          const Dims& c = in(static_cast<int>(l));
          const Dims& b = in(static_cast<int>(l) + 1);
          HALCDL_CHECK(c.size() == 4 && b.size() == 4 && c[0] == b[0] && c[2] == b[2] && c[3] == b[3],
                       kErrInvalidInputShape, "node '", n.name, "': the class and box heads of level ", l / 2,
                       " need equal N, H, W");
          anchors += c[2] * c[3] * n.det_anchors;
        }
        out[i] = {in(0)[0], anchors, static_cast<int64_t>(n.channels + n.det_box)};
        break;
      }
      default:  // shape-preserving ops
        out[i] = in(0);
        break;
    }
  }
  return out;
}

Dims Graph::output_dims(int64_t h, int64_t w) const {
  std::vector<Dims> in;
  for (int i : input_nodes) in.push_back({1, nodes[i].channels, h, w});
  return infer_shapes(in)[output];
}

int64_t Graph::labels_per_sample(int64_t h, int64_t w) const {
  const Dims o = output_dims(h, w);
  int64_t spatial = 1;
  for (size_t i = 2; i < o.size(); ++i) spatial *= o[i];
  if (spatial == 1) return 1;
  HALCDL_CHECK(o.size() == 4 && o[2] == h && o[3] == w, kErrInvalidInputShape, "the network's output (", o[2], "x",
               o[3], ") is neither one score per class nor one per pixel of the ", h, "x", w, " image");
  return h * w;
}

Graph::GradInfo Graph::grad_info(bool training, bool input_grads) const {
  const int n = static_cast<int>(nodes.size());
  GradInfo r;
  r.consumers.resize(n);
  r.need_grad.assign(n, false);
  for (int i = 0; i < n; ++i) {
    const Node& nd = nodes[i];
    for (size_t k = 0; k < nd.inputs.size(); ++k) r.consumers[nd.inputs[k]].push_back({i, static_cast<int>(k)});
    if (!training) continue;
    if (nd.op == OpKind::Input) {
      r.need_grad[i] = input_grads;
    } else {
      bool ng = nd.p_weight >= 0 || nd.p_bias >= 0;
      for (int in : nd.inputs) ng = ng || r.need_grad[in];
      r.need_grad[i] = ng;
    }
  }
  return r;
}

}  // namespace halcdl
