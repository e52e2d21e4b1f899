// The oneDNN execution plan: builds the ops for one set of input shapes, lays out one
// workspace by buffer lifetimes, wires gradient targets, and runs forward / backward.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <numeric>

#include "cpu/node.h"

namespace halcdl::cpu {

// ---- helpers -------------------------------------------------------------------------------

memory::dims to_dims(const Dims& d) { return memory::dims(d.begin(), d.end()); }

memory::desc plain_desc(const Dims& d, dt type) {
  tag t = d.size() == 4 ? tag::nchw : d.size() == 3 ? tag::ncw : d.size() == 2 ? tag::nc : tag::x;
  return memory::desc(to_dims(d), type, t);
}

int64_t pad_right(int64_t x, int64_t out, int k, int s, int pl, int dil) {
  return (out - 1) * s + static_cast<int64_t>(dil) * (k - 1) + 1 - x - pl;
}

GradTarget grad_target(Build& b, int param, const memory::desc& md) {
  GradTarget t;
  t.offset = b.g.params[param].offset;
  t.m = memory(md, b.eng, b.views.weights);  // re-pointed at the gradient arena per backward
  return t;
}

WeightMirror weight_mirror(Build& b, int param, const memory::desc& plain, const memory::desc& want, int buf) {
  WeightMirror w;
  w.transient = b.training;
  w.plain = memory(plain, b.eng, b.views.weights + b.g.params[param].offset);
  if (buf >= 0) {
    w.used = b.mem(want, buf);
    w.r = Reorder(w.plain, w.used);
  } else {
    w.used = w.plain;
  }
  return w;
}

// ---- per-op timer ---------------------------------------------------------------------------

namespace {
std::atomic<bool>& timer_flag() {
  static std::atomic<bool> on{[] {
    const char* v = std::getenv("HALCDL_OP_TIMER");
    return v && *v && std::strcmp(v, "0") != 0;
  }()};
  return on;
}
std::mutex timer_mu;
std::map<std::string, std::pair<double, int64_t>>& timer_table() {
  static std::map<std::string, std::pair<double, int64_t>> t;
  return t;
}
void timer_add(const std::string& key, double sec) {
  std::lock_guard<std::mutex> l(timer_mu);
  auto& e = timer_table()[key];
  e.first += sec;
  e.second += 1;
}
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
}  // namespace

// ---- the plan ------------------------------------------------------------------------------

namespace {

// HALCDL_NO_FUSE=sum,add_relu,grad_share: the plans built from now on skip those fusions (for
// before/after benchmarks in one process; read when a plan is built).
bool no_fuse(const char* what) {
  const char* v = std::getenv("HALCDL_NO_FUSE");
  if (!v) return false;
  const std::string s = std::string(",") + v + ",";
  return s.find(std::string(",") + what + ",") != std::string::npos;
}

std::unique_ptr<CpuNode> make_node(const Node& n, int idx) {
  switch (n.op) {
    case OpKind::Conv: return make_conv(n, idx);
    case OpKind::BN: return make_bn(n, idx);
    case OpKind::Relu:
    case OpKind::Relu6: return make_eltwise(n, idx);
    case OpKind::MaxPool:
    case OpKind::AvgPool:
    case OpKind::GAP: return make_pool(n, idx);
    case OpKind::FC: return make_fc(n, idx);
    case OpKind::Add: return make_add(n, idx);
    case OpKind::Concat: return make_concat(n, idx);
    case OpKind::Dropout: return make_dropout(n, idx);
    case OpKind::Softmax: return make_softmax(n, idx);
    case OpKind::Deconv: return make_deconv(n, idx);
    case OpKind::UpNearest:
    case OpKind::UpBilinear: return make_upsample(n, idx);
    case OpKind::DetOut: return make_detout(n, idx);
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
    case OpKind::Input: return nullptr;
  }
  return nullptr;
}

// dst += src over the physical elements of two buffers of one layout.
void add_into(void* dst, const void* src, size_t bytes, bool bf16) {
  if (!bf16) {
    float* d = static_cast<float*>(dst);
    const float* s = static_cast<const float*>(src);
    const int64_t m = static_cast<int64_t>(bytes / sizeof(float));
#pragma omp parallel for simd
    for (int64_t i = 0; i < m; ++i) d[i] += s[i];
    return;
  }
  uint16_t* d = static_cast<uint16_t*>(dst);
  const uint16_t* s = static_cast<const uint16_t*>(src);
  const int64_t m = static_cast<int64_t>(bytes / sizeof(uint16_t));
#pragma omp parallel for simd
  for (int64_t i = 0; i < m; ++i) d[i] = f32_to_bf16(bf16_to_f32(d[i]) + bf16_to_f32(s[i]));
}

class CpuPlan : public Plan {
 public:
  CpuPlan(const Graph& g, const std::vector<Dims>& input_dims, bool training, bool input_grads, bool bf16,
          ParamViews views, bool fuse, const std::vector<int>& keep, bool eval_grads, bool guided)
      : g_(g), eng_(dnnl::engine::kind::cpu, 0), strm_(eng_), training_(training), bf16_(bf16), fuse_(fuse) {
    const int n = static_cast<int>(g.nodes.size());
    std::vector<Dims> dims = g.infer_shapes(input_dims);
    slots_.resize(n);
    nodes_.resize(n);
    Build b{eng_, g, slots_, ws_, n, training, bf16 ? dt::bf16 : dt::f32, views};
    b.eval = training && eval_grads;
    guided_ = b.eval && guided;
    kept_.assign(n, false);
    for (int k : keep)
      if (k >= 0 && k < n) kept_[k] = true;

    // Which tensors need a gradient.
    const Graph::GradInfo gi = g.grad_info(training, input_grads);
    const auto& consumers = gi.consumers;
    for (int i = 0; i < n; ++i) {
      slots_[i].dims = dims[i];
      slots_[i].need_grad = gi.need_grad[i];
    }

    // Fusions. A fused node does not run; its slot aliases the buffers of the node that
    // absorbed it (root). Always: bn → relu (oneDNN's fuse_norm_relu), add → relu (post-op). Inference:
    // conv → bn [→ relu | relu6] (bn folded into the conv's weights, activation post-op).
    std::vector<int> alias(n, -1), fuse_bn(n, -1);
    std::vector<OpKind> fuse_act(n, OpKind::Input);
    std::vector<bool> bn_relu(n, false);
    auto sole = [&](int i, OpKind k) -> int {  // the only consumer of i, if of kind k
      if (i == g.output || consumers[i].size() != 1 || kept_[i]) return -1;  // a kept output is not fused away
      int c = consumers[i][0].first;
      return g.nodes[c].op == k ? c : -1;
    };
    for (int i = 0; i < n && !training && fuse_; ++i) {
      if (g.nodes[i].op != OpKind::Conv) continue;
      int bn = sole(i, OpKind::BN);
      if (bn < 0) continue;
      alias[bn] = i;
      fuse_bn[i] = bn;
      int act = sole(bn, OpKind::Relu);
      if (act < 0) act = sole(bn, OpKind::Relu6);
      if (act >= 0) {
        alias[act] = i;
        fuse_act[i] = g.nodes[act].op;
      }
    }
    // Inference, fp32: conv [→ bn] → add(·, r) [→ relu] becomes one convolution with a sum
    // (and relu) post-op that accumulates into r's buffer in place: r must be the data of a
    // non-input root whose every other consumer runs before the conv, and not the output.
    // HALCDL_NO_FUSE=sum turns it off (benchmarks compare both in one process).
    std::vector<int> fuse_sum(n, -1), share(n, -1);
    std::vector<OpKind> post_act(n, OpKind::Input);
    const bool fuse_sum_on = !no_fuse("sum"), fuse_add_relu = !no_fuse("add_relu");
    auto root = [&](int i) { return alias[i] >= 0 ? alias[i] : i; };
    for (int j = 0; j < n && !training && !bf16 && fuse_ && fuse_sum_on; ++j) {
      const Node& add = g.nodes[j];
      if (add.op != OpKind::Add || add.inputs.size() != 2) continue;
      for (int k = 0; k < 2; ++k) {
        const int t = add.inputs[k], o = add.inputs[1 - k];
        const int c = root(t), r = root(o);
        if (t == o || g.nodes[c].op != OpKind::Conv || fuse_act[c] != OpKind::Input || fuse_sum[c] >= 0) continue;
        if (t == g.output || consumers[t].size() != 1 || dims[t] != dims[o]) continue;
        if (kept_[t] || kept_[j] || kept_[c]) continue;  // a kept output is read after the batch
        if (g.nodes[r].op == OpKind::Input || r >= c || o == g.output) continue;  // o computed before c
        // every other reader of r's group runs (at its root's turn) before the conv, and
        // none is itself an in-place sum (it would overwrite o first)
        bool ok = true;
        for (int m = 0; m < n && ok; ++m) {
          if (root(m) != r) continue;
          if (kept_[m]) ok = false;  // the sum overwrites r's buffer in place
          for (auto& cs : consumers[m]) {
            const int u = cs.first;
            if (u == j || root(u) == r) continue;
            if (root(u) >= c || (alias[u] >= 0 && g.nodes[u].op == OpKind::Add)) ok = false;
          }
        }
        if (!ok) continue;
        alias[j] = c;
        fuse_sum[c] = o;  // resolved to its buffer's owner below, once all fusions are known
        int act = sole(j, OpKind::Relu);
        if (act >= 0) {
          alias[act] = c;
          post_act[c] = OpKind::Relu;
        }
        break;
      }
    }
    for (int i = 0; i < n && fuse_; ++i) {
      // bn → relu (fuse_norm_relu) and add → relu (eltwise post-op of the binary)
      if ((g.nodes[i].op != OpKind::BN && g.nodes[i].op != OpKind::Add) || alias[i] >= 0) continue;
      if (g.nodes[i].op == OpKind::Add && (g.nodes[i].inputs.size() != 2 || !fuse_add_relu)) continue;
      int r = sole(i, OpKind::Relu);
      if (r < 0) continue;
      alias[r] = i;
      bn_relu[i] = true;
    }
    // The buffer each in-place sum accumulates into, resolved only now: the bn / add → relu
    // fusion above can still make the residual operand's root a member of another group (a
    // relu whose add was not summed in place, e.g. a kept layer stopped it, becomes a member of
    // that add), and a member has neither a buffer nor, before its turn in the layout loop, a
    // layout. So the owner is the operand's final root (computed before the conv: roots only
    // move earlier), or, for a chain of in-place sums, the first owner's. Resolving the owner
    // at the sum loop's time gave a member's data id (-1) or an empty layout (a primitive that
    // could not be created) whenever a chain was fused only in part.
    auto final_root = [&](int i) {
      while (alias[i] >= 0) i = alias[i];
      return i;
    };
    for (int c = 0; c < n; ++c) {
      if (fuse_sum[c] < 0) continue;
      const int r = final_root(fuse_sum[c]);
      HALCDL_CHECK(r < c && alias[c] < 0, kErrRuntimeUnsupported, "internal: in-place sum order");
      share[c] = share[r] >= 0 ? share[r] : r;
      fuse_sum[c] = share[c];
    }
    // Timer labels: the root's op and the ops fused into it.
    labels_.resize(n);
    for (int i = 0; i < n; ++i)
      if (alias[i] < 0) labels_[i] = op_name(g.nodes[i].op);
    for (int i = 0; i < n; ++i)
      if (alias[i] >= 0) labels_[alias[i]] += std::string("+") + op_name(g.nodes[i].op);
    // Per root: the consumers of its group (members excluded) and whether it is the output.
    std::vector<std::vector<std::pair<int, int>>> gcons(n);
    std::vector<bool> gout(n, false);
    for (int i = 0; i < n; ++i) {
      int r = alias[i] >= 0 ? alias[i] : i;
      if (i == g.output) gout[r] = true;
      for (auto& c : consumers[i])
        if (alias[c.first] != r && c.first != r) gcons[r].push_back(c);
    }
    // a group with a kept member keeps its buffers to the end (the member read is the
    // group's last: fusion stops at a kept node, see sole())
    std::vector<bool> gkeep(n, false);
    for (int i = 0; i < n; ++i)
      if (kept_[i]) gkeep[alias[i] >= 0 ? alias[i] : i] = true;

    // Data lifetimes per root; a buffer shared in place lives until its last sharer's readers.
    std::vector<int> last(n);
    for (int i = 0; i < n; ++i) {
      last[i] = i;
      for (auto& c : gcons[i]) last[i] = std::max(last[i], c.first);
      if (gout[i] || gkeep[i]) last[i] = b.t_end();
    }
    for (int i = n - 1; i >= 0; --i)
      if (share[i] >= 0) last[share[i]] = std::max(last[share[i]], last[i]);

    // Layouts and op buffers, in topological order.
    for (int i = 0; i < n; ++i) {
      const Node& nd = g.nodes[i];
      if (alias[i] >= 0) {
        slots_[i].md = slots_[alias[i]].md;
        continue;
      }
      if (nd.op == OpKind::Input) {
        // plain, in the compute type: fp32 callers' data is converted on entry
        slots_[i].md = plain_desc(dims[i], b.adt);
        input_slots_.push_back(i);
        input_dims_.push_back(dims[i]);
      } else {
        nodes_[i] = make_node(nd, i);
        nodes_[i]->fused_bn = fuse_bn[i];
        nodes_[i]->fused_act = fuse_act[i];
        nodes_[i]->fuse_relu = bn_relu[i];
        nodes_[i]->fused_sum = fuse_sum[i];
        nodes_[i]->fused_post_act = post_act[i];
        nodes_[i]->create(b);
      }
      if (share[i] >= 0) {
        HALCDL_CHECK(slots_[i].md == slots_[share[i]].md, kErrRuntimeUnsupported, "internal: in-place sum layout");
        slots_[i].data_id = slots_[share[i]].data_id;
        continue;
      }
      slots_[i].data_id = b.request(slots_[i].md, b.tf(i), training ? b.t_end() : last[i]);
    }

    // Gradient buffers and targets: the consumer whose backward runs first (the latest one)
    // writes the tensor's gradient; the others write scratch that is added afterwards.
    std::vector<std::vector<int>> scratch(n);  // per node and input: scratch buffer id or -1
    // first writer of root i's gradient: the latest consumer, its first use of the tensor
    auto first_writer = [&](int i) {
      return *std::max_element(gcons[i].begin(), gcons[i].end(), [](auto& a, auto& c) {
        return a.first != c.first ? a.first < c.first : a.second > c.second;
      });
    };
    // Gradients passed through an add in place: an add's backward only hands its gradient on
    // (dx_k = dy; with the fused relu g = [y > 0]·dy, computed in place), so an input whose
    // gradient the add writes first (the add is its latest consumer) and that has the add's
    // layout uses the add's own gradient buffer, and the copy into it is skipped. All sharers
    // of one add read the same values, so at most one of them may have other consumers (whose
    // scratch is added into the shared buffer), and only if every other sharer's backward runs
    // before theirs (it reads the buffer before they add into it). An add that is a sharer is
    // no owner (no chains). Kept layers and the output keep buffers of their own.
    // HALCDL_NO_FUSE=grad_share turns it off.
    std::vector<int> gshare(n, -1), gend(n, -1);
    bwd_in_place_.assign(n, false);
    for (int a = n - 1; a >= 0 && training && fuse_ && !no_fuse("grad_share"); --a) {
      const Node& nd = g.nodes[a];
      if (nd.op != OpKind::Add || nd.inputs.size() != 2 || alias[a] >= 0 || !slots_[a].need_grad) continue;
      if (gshare[a] >= 0 || gkeep[a] || gout[a] || gcons[a].empty()) continue;
      const int r0 = final_root(nd.inputs[0]), r1 = final_root(nd.inputs[1]);
      if (r0 == r1) continue;
      std::vector<int> sh;
      for (int k = 0; k < 2; ++k) {
        const int r = k == 0 ? r0 : r1;
        if (!slots_[r].need_grad || g.nodes[r].op == OpKind::Input || gout[r] || gkeep[r] || gshare[r] >= 0) continue;
        if (slots_[r].md != slots_[a].md || first_writer(r) != std::make_pair(a, k)) continue;
        sh.push_back(r);
      }
      if (sh.size() == 2) {  // both: the one with other consumers (if any) adds into it last
        auto others = [&](int r) { return gcons[r].size() > 1; };
        auto latest_other = [&](int r) {  // the latest consumer of r besides the add
          int m = -1;
          for (auto& c : gcons[r])
            if (c.first != a) m = std::max(m, c.first);
          return m;
        };
        if (others(sh[0]) && others(sh[1])) sh.pop_back();
        else if (others(sh[0]) && !(sh[1] > latest_other(sh[0]))) sh.pop_back();
        else if (others(sh[1]) && !(sh[0] > latest_other(sh[1]))) sh.erase(sh.begin());
      }
      if (!sh.empty()) bwd_in_place_[a] = true;
      for (int r : sh) {
        gshare[r] = a;
        gend[a] = std::max(gend[a], b.tb(r));
      }
    }
    if (training) {
      for (int i = 0; i < n; ++i) scratch[i].assign(g.nodes[i].inputs.size(), -1);
      for (int i = 0; i < n; ++i) {
        Slot& s = slots_[i];
        if (!s.need_grad || alias[i] >= 0 || gshare[i] >= 0) continue;
        int t0 = b.tb(i);
        for (auto& c : gcons[i]) t0 = std::min(t0, b.tb(c.first));
        // the output's gradient is copied in, a dangling tensor's zeroed, when the backward starts
        if (gout[i] || gcons[i].empty()) t0 = n - 1;
        s.grad_id = b.request(s.md, t0, gkeep[i] ? b.t_end() : std::max(b.tb(i), gend[i]));
        if (gcons[i].empty() && !gout[i]) zero_grads_.push_back(i);
      }
      for (int i = 0; i < n; ++i)
        if (gshare[i] >= 0) slots_[i].grad_id = slots_[gshare[i]].grad_id;
      for (int i = 0; i < n; ++i) {
        auto& cs = gcons[i];
        if (!slots_[i].need_grad || alias[i] >= 0 || cs.empty()) continue;
        const auto first = first_writer(i);
        for (auto& c : cs)
          if (c != first) scratch[c.first][c.second] = b.request(slots_[i].md, b.tb(c.first), b.tb(c.first));
      }
    }

    ws_.assign();

    for (int i = 0; i < n; ++i) {
      Slot& s = slots_[i];
      if (alias[i] >= 0) {
        s.data = slots_[alias[i]].data;
        s.grad = slots_[alias[i]].grad;
        continue;
      }
      s.data = b.mem(s.md, s.data_id);
      if (s.grad_id >= 0) s.grad = b.mem(s.md, s.grad_id);
    }
    accum_.resize(n);
    for (int i = 0; i < n; ++i) {
      if (!nodes_[i]) continue;
      CpuNode& nd = *nodes_[i];
      nd.y = slots_[i].data;
      nd.dy = slots_[i].grad;
      const auto& ins = g.nodes[i].inputs;
      nd.gin.resize(ins.size());
      for (size_t k = 0; k < ins.size(); ++k) {
        const Slot& x = slots_[ins[k]];
        if (!training || !x.need_grad) continue;
        if (scratch[i][k] >= 0) {
          nd.gin[k] = b.mem(x.md, scratch[i][k]);
          accum_[i].push_back({x.grad.get_data_handle(), nd.gin[k].get_data_handle(), x.md.get_size()});
        } else {
          nd.gin[k] = x.grad;
        }
      }
      nd.bind(b);
      if (training && nd.bn_stats()) bn_stats_.push_back(*nd.bn_stats());
    }

    // Plain views of the output (and its gradient) for the loss.
    const Slot& o = slots_[g.output];
    memory::desc pmd = plain_desc(o.dims);
    out_plain_.resize(pmd.get_size());
    out_mem_ = memory(pmd, eng_, out_plain_.f());
    out_r_ = Reorder(o.data, out_mem_);
    if (training && o.need_grad) {
      gout_plain_.resize(pmd.get_size());
      gout_mem_ = memory(pmd, eng_, gout_plain_.f());
      gout_r_ = Reorder(gout_mem_, o.grad);
    }
    for (size_t k = 0; k < input_slots_.size(); ++k) {
      const Slot& s = slots_[input_slots_[k]];
      if (!bf16) {
        in_ptr_.push_back(static_cast<float*>(s.data.get_data_handle()));
        continue;
      }
      in_f32_.emplace_back(plain_desc(s.dims).get_size());
      memory f32(plain_desc(s.dims), eng_, in_f32_.back().f());
      in_cvt_.emplace_back(f32, s.data);
      in_ptr_.push_back(in_f32_.back().f());
    }
    views_ = views;
  }

  const Dims& input_dims(int i) const override { return input_dims_.at(i); }
  const Dims& output_dims() const override { return slots_[g_.output].dims; }
  float* input_buffer(int i) override { return in_ptr_.at(i); }
  size_t workspace_bytes() const override { return ws_.bytes(); }

  void forward(uint64_t rng) override {
    if (op_timer()) return forward_timed(rng);
    Exec e{strm_, *views_.version, rng, nullptr};
    for (auto& r : in_cvt_) r.run(strm_);
    for (auto& nd : nodes_)
      if (nd) nd->forward(e);
    out_r_.run(strm_);
    strm_.wait();
  }

  // forward() with every step timed on its own (the stream waited for after each).
  void forward_timed(uint64_t rng) {
    const std::string ph = training_ ? "train_fwd:" : "infer:";
    Exec e{strm_, *views_.version, rng, nullptr};
    auto t0 = Clock::now();
    for (auto& r : in_cvt_) r.run(strm_);
    strm_.wait();
    if (!in_cvt_.empty()) timer_add(ph + "input_convert", since(t0));
    for (auto& nd : nodes_) {
      if (!nd) continue;
      t0 = Clock::now();
      nd->forward(e);
      strm_.wait();
      timer_add(ph + labels_[nd->idx], since(t0));
    }
    t0 = Clock::now();
    out_r_.run(strm_);
    strm_.wait();
    timer_add(ph + "output_reorder", since(t0));
  }

  const float* output() override { return out_plain_.f(); }

  void backward(const float* grad_output, float* param_grad) override {
    HALCDL_CHECK(training_ && gout_r_, kErrTrainingUnsupported, "backward on a plan without gradients");
    Exec e{strm_, *views_.version, 0, param_grad};
    const bool timed = op_timer();
    auto t0 = Clock::now();
    std::memcpy(gout_plain_.f(), grad_output, gout_mem_.get_desc().get_size());
    gout_r_.run(strm_);
    for (int i : zero_grads_) std::memset(slots_[i].grad.get_data_handle(), 0, slots_[i].md.get_size());
    if (timed) {
      strm_.wait();
      timer_add("train_bwd:grad_output_reorder", since(t0));
    }
    for (int i = static_cast<int>(nodes_.size()) - 1; i >= 0; --i) {
      if (!nodes_[i] || !slots_[i].need_grad) continue;
      if (timed) t0 = Clock::now();
      nodes_[i]->backward(e);
      if (guided_ && g_.nodes[i].op == OpKind::Relu && !nodes_[i]->gin.empty() && nodes_[i]->gin[0])
        clamp_negative(nodes_[i]->gin[0]);
      if (timed) {
        strm_.wait();
        timer_add("train_bwd:" + labels_[i] + (bwd_in_place_[i] ? "(in place)" : ""), since(t0));
        t0 = Clock::now();
      }
      for (auto& a : accum_[i]) add_into(a.dst, a.src, a.bytes, bf16_);
      if (timed && !accum_[i].empty()) timer_add("train_bwd:grad_accumulate", since(t0));
    }
    strm_.wait();
  }

  void input_grad(int i, float* dst) override {
    const Slot& s = slots_[input_slots_.at(i)];
    HALCDL_CHECK(s.grad_id >= 0, kErrTrainingUnsupported, "this plan keeps no input gradient");
    memory src = s.grad, plain(plain_desc(s.dims), eng_, dst);
    dnnl::reorder(src, plain).execute(strm_, src, plain);
    strm_.wait();
  }

  const std::vector<BNStats>& bn_stats() const override { return bn_stats_; }

  const Dims& node_dims(int node) const override { return slots_.at(node).dims; }

  void read_tensor(int node, bool grad, float* dst) override {
    HALCDL_CHECK(node >= 0 && node < static_cast<int>(slots_.size()) && kept_[node], kErrInvalidInputShape,
                 "node ", node, " is not kept by this plan");
    const Slot& s = slots_[node];
    HALCDL_CHECK(!grad || static_cast<bool>(s.grad), kErrInvalidInputShape, "this plan keeps no gradient of layer '",
                 g_.nodes[node].name, "' (no gradient flows into it, or the plan is not a training plan)");
    memory src = grad ? s.grad : s.data, plain(plain_desc(s.dims), eng_, dst);
    dnnl::reorder(src, plain).execute(strm_, src, plain);
    strm_.wait();
  }

  void dropout_mask(int node, float* dst) override {
    const memory* m = nodes_.at(node) ? nodes_[node]->dropout_mask() : nullptr;
    HALCDL_CHECK(m, kErrInvalidInputShape, "node ", node, " has no dropout mask");
    memory src = *m, plain(plain_desc(slots_[node].dims), eng_, dst);
    dnnl::reorder(src, plain).execute(strm_, src, plain);
    strm_.wait();
  }

 private:
  // guided backpropagation: a ReLU's input gradient keeps its positive values only
  void clamp_negative(const memory& m) const {
    const size_t bytes = m.get_desc().get_size();
    if (bf16_) {
      uint16_t* d = static_cast<uint16_t*>(m.get_data_handle());
      const int64_t k = static_cast<int64_t>(bytes / 2);
#pragma omp parallel for simd
      for (int64_t i = 0; i < k; ++i) d[i] = (d[i] & 0x8000u) ? uint16_t(0) : d[i];
      return;
    }
    float* d = static_cast<float*>(m.get_data_handle());
    const int64_t k = static_cast<int64_t>(bytes / 4);
#pragma omp parallel for simd
    for (int64_t i = 0; i < k; ++i) d[i] = d[i] > 0.f ? d[i] : 0.f;
  }
  bool guided_ = false;
  struct Accum { void* dst; const void* src; size_t bytes; };
  const Graph& g_;
  dnnl::engine eng_;
  dnnl::stream strm_;
  bool training_, bf16_, fuse_;
  ParamViews views_;
  Workspace ws_;
  std::vector<Slot> slots_;
  std::vector<bool> kept_;
  std::vector<std::unique_ptr<CpuNode>> nodes_;
  std::vector<std::vector<Accum>> accum_;
  std::vector<int> input_slots_, zero_grads_;
  std::vector<BNStats> bn_stats_;
  std::vector<Dims> input_dims_;
  std::vector<std::string> labels_;  // per root node: "Conv+BN+Relu" (the per-op timer's keys)
  std::vector<bool> bwd_in_place_;   // per add: an input's gradient shares its buffer (timer: "(in place)")
  std::vector<float*> in_ptr_;
  Buffer out_plain_, gout_plain_;
  std::vector<Buffer> in_f32_;
  std::vector<Reorder> in_cvt_;
  memory out_mem_, gout_mem_;
  Reorder out_r_, gout_r_;
};

}  // namespace
}  // namespace halcdl::cpu

namespace halcdl {

void set_op_timer(bool on) { cpu::timer_flag().store(on, std::memory_order_relaxed); }
bool op_timer() { return cpu::timer_flag().load(std::memory_order_relaxed); }
std::vector<OpTime> op_times() {
  std::lock_guard<std::mutex> l(cpu::timer_mu);
  std::vector<OpTime> out;
  for (auto& [k, v] : cpu::timer_table()) out.push_back({k, v.first, v.second});
  return out;
}
void reset_op_times() {
  std::lock_guard<std::mutex> l(cpu::timer_mu);
  cpu::timer_table().clear();
}
void add_op_time(const std::string& key, double seconds) { cpu::timer_add(key, seconds); }

bool bf16_supported() {
  auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  auto need = static_cast<unsigned>(dnnl::cpu_isa::avx512_core_bf16);
  return (isa & need) == need;
}

void check_bf16_supported() {
  HALCDL_CHECK(bf16_supported(), kErrRuntimeUnsupported,
               "precision 'bfloat16' needs a CPU with bfloat16 instructions (AVX512-BF16 or AMX); this one has "
               "none, and halcdl does not emulate them");
}

std::unique_ptr<Plan> make_cpu_plan(const Graph& g, const std::vector<Dims>& input_dims, bool training,
                                    bool input_grads, ParamViews views, Precision precision, bool fuse,
                                    const std::vector<int>& keep, bool eval_grads, bool guided) {
  if (precision == Precision::BF16) check_bf16_supported();
  try {
    return std::make_unique<cpu::CpuPlan>(g, input_dims, training, input_grads, precision == Precision::BF16, views,
                                          fuse, keep, eval_grads, guided);
  } catch (const dnnl::error& e) {
    HALCDL_THROW(kErrRuntimeUnsupported, "oneDNN could not create a primitive for this network: ", e.what());
  }
}

}  // namespace halcdl
