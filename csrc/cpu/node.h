// Infrastructure shared by the oneDNN twins of the ops: the plan's workspace allocator, the
// tensor slots, and the CpuNode interface every op implements.
//
// Gradient rule (as in llm.c): activation gradients are written, never accumulated, by the
// op's backward into the target the plan hands it (`gin`); when a tensor feeds several
// consumers the plan gives all but the first a scratch target and adds it afterwards.
// Parameter gradients are written into the gradient arena the plan is run with.
#pragma once
#include <dnnl.hpp>
#include <cstring>
#include <memory>
#include <unordered_map>
#include <vector>

#include "core/buffer.h"
#include "core/error.h"
#include "engine/graph.h"
#include "engine/lifetime.h"
#include "engine/plan.h"

namespace halcdl::cpu {

using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

// Buffers with lifetimes [t0, t1] (inclusive) packed into one arena: forward of node i is
// time i, backward of node i is time 2n-1-i.
class Workspace {
 public:
  int request(size_t bytes, int t0, int t1) { return layout_.request(bytes, t0, t1); }
  void assign() { arena_.resize(layout_.assign()); }
  void* ptr(int id) const { return arena_.c() + layout_.offset(id); }
  size_t bytes() const { return arena_.bytes(); }

 private:
  LifetimeLayout layout_{64};
  Buffer arena_;
};

struct Slot {          // the output tensor of one node
  Dims dims;
  memory::desc md;     // layout chosen by the backend (blocked where oneDNN likes it)
  int data_id = -1, grad_id = -1;
  memory data, grad;
  bool need_grad = false;
};

struct Build {
  dnnl::engine eng;
  const Graph& g;
  std::vector<Slot>& slots;
  Workspace& ws;
  int n;               // number of nodes
  bool training;
  dt adt;              // activation (compute) data type: f32 or bf16
  ParamViews views;
  bool eval = false;   // training plan in inference mode (eval_grads): bn global stats, no dropout
  int tf(int i) const { return i; }
  int tb(int i) const { return 2 * n - 1 - i; }
  int t_end() const { return 2 * n; }
  memory mem(const memory::desc& md, int id) const { return memory(md, eng, ws.ptr(id)); }
  int request(const memory::desc& md, int t0, int t1) const { return ws.request(md.get_size(), t0, t1); }
};

struct Exec {
  dnnl::stream& s;
  uint64_t version;    // of the trainable arena
  uint64_t rng;        // dropout seed of this forward
  float* pgrad;        // parameter-gradient arena of this backward
};

// A reorder created once, run many times.
struct Reorder {
  dnnl::reorder prim;
  memory src, dst;
  Reorder() = default;
  Reorder(const memory& s, const memory& d) : prim(s, d), src(s), dst(d) {}
  void run(dnnl::stream& st) { prim.execute(st, src, dst); }
  explicit operator bool() const { return static_cast<bool>(prim); }
};

// A parameter tensor kept plain (PyTorch layout) in the arena and, when the primitive wants
// another layout, mirrored into a plan buffer; the mirror is refreshed when the arena's
// version changes.
struct WeightMirror {
  memory plain, used;
  Reorder r;
  uint64_t seen = ~0ull;
  bool transient = false;  // its buffer is reused between uses: refresh every time
  void refresh(Exec& e) {
    if (r && (transient || seen != e.version)) { r.run(e.s); seen = e.version; }
  }
};

// Parameter gradient target: plain memory whose handle follows the arena of each backward.
struct GradTarget {
  memory m;
  size_t offset = 0;
  void point(Exec& e) { m.set_data_handle(e.pgrad + offset); }
};

using Args = std::unordered_map<int, memory>;

class CpuNode {
 public:
  CpuNode(const Node& n, int idx) : node(n), idx(idx) {}
  virtual ~CpuNode() = default;
  // Decide the output layout (slots[idx].md) and request buffers.
  virtual void create(Build& b) = 0;
  // Create memories and primitives once the workspace is laid out.
  virtual void bind(Build& b) = 0;
  virtual void forward(Exec& e) = 0;
  virtual void backward(Exec& e) = 0;
  virtual const BNStats* bn_stats() const { return nullptr; }
  virtual const memory* dropout_mask() const { return nullptr; }

  const Node& node;
  const int idx;
  std::vector<memory> gin;   // gradient target per input (empty memory: no gradient needed)
  memory y, dy;              // this node's output and its gradient (set by the plan before bind)

  // Fusions decided by the plan before create() (the fused nodes' slots alias this one's):
  int fused_bn = -1;                     // conv (inference): the bn folded into it
  OpKind fused_act = OpKind::Input;      // conv (inference): relu / relu6 as a post-op
  bool fuse_relu = false;                // bn / add: the relu that follows it
  // conv (inference, fp32): a following residual add as a sum post-op, computed in place in
  // the add's other operand's buffer (the plan makes the conv's output alias it), and the
  // relu after the add as a further post-op: y = relu(conv(x) + b + y_prev).
  int fused_sum = -1;                    // the slot whose data the conv accumulates into
  OpKind fused_post_act = OpKind::Input;

 protected:
  const Slot& in(Build& b, int k) const { return b.slots[node.inputs[k]]; }
  Slot& out(Build& b) const { return b.slots[idx]; }
};

std::unique_ptr<CpuNode> make_conv(const Node& n, int idx);
std::unique_ptr<CpuNode> make_bn(const Node& n, int idx);
std::unique_ptr<CpuNode> make_eltwise(const Node& n, int idx);
std::unique_ptr<CpuNode> make_pool(const Node& n, int idx);
std::unique_ptr<CpuNode> make_fc(const Node& n, int idx);
std::unique_ptr<CpuNode> make_add(const Node& n, int idx);
std::unique_ptr<CpuNode> make_concat(const Node& n, int idx);
std::unique_ptr<CpuNode> make_dropout(const Node& n, int idx);
std::unique_ptr<CpuNode> make_softmax(const Node& n, int idx);
std::unique_ptr<CpuNode> make_deconv(const Node& n, int idx);
std::unique_ptr<CpuNode> make_upsample(const Node& n, int idx);
std::unique_ptr<CpuNode> make_detout(const Node& n, int idx);
// shape_ops.cpp: sigmoid / tanh, resize_*, depth_to_space
std::unique_ptr<CpuNode> make_act(const Node& n, int idx);
std::unique_ptr<CpuNode> make_resize(const Node& n, int idx);
std::unique_ptr<CpuNode> make_depth_to_space(const Node& n, int idx);
std::unique_ptr<CpuNode> make_reshape(const Node& n, int idx);
std::unique_ptr<CpuNode> make_permute(const Node& n, int idx);
std::unique_ptr<CpuNode> make_depth_max(const Node& n, int idx);
std::unique_ptr<CpuNode> make_lrn(const Node& n, int idx);
std::unique_ptr<CpuNode> make_reduce(const Node& n, int idx);
std::unique_ptr<CpuNode> make_matmul(const Node& n, int idx);

// Helpers
memory::desc plain_desc(const Dims& d, dt type = dt::f32);

// bfloat16 <-> float (round to nearest even; NaN handling not needed for our buffers)
inline float bf16_to_f32(uint16_t v) {
  uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
dnnl::memory::dims to_dims(const Dims& d);
// Right padding so that oneDNN's output size equals floor((x + 2p - d(k-1) - 1)/s) + 1.
int64_t pad_right(int64_t x, int64_t out, int k, int s, int pl, int dil);
GradTarget grad_target(Build& b, int param, const memory::desc& md);
WeightMirror weight_mirror(Build& b, int param, const memory::desc& plain, const memory::desc& want, int buf);

}  // namespace halcdl::cpu
