// Host-side conversion of one parameter between PyTorch and the GPU's device layouts
// (see cuda/plan.h). Each weight is viewed as (A, B, S) and its last two axes are swapped:
//   conv   (O, I/g, kh·kw)        ↔ (O, kh·kw, I/g)
//   deconv (I, O/g, kh·kw)        ↔ (I, kh·kw, O/g)
//   fc     (K, C, H·W)            ↔ (K, H·W, C)      C = channels of the fc's input node
// Everything else is copied. to_torch is the exact inverse of from_torch (a permutation).
#include <cstring>

#include "cuda/plan.h"

namespace halcdl::gpu {
namespace {

struct View { size_t a = 0, b = 0, s = 0; };

// The (A, B, S) view of a parameter, or s = 0 when it is copied as is.
View view_of(const Graph& g, const ParamInfo& p) {
  View v;
  if (p.role != "weight" || p.node < 0 || p.node >= static_cast<int>(g.nodes.size())) return v;
  const Node& n = g.nodes[p.node];
  if ((n.op == OpKind::Conv || n.op == OpKind::Deconv) && p.shape.size() == 4) {
    v = {static_cast<size_t>(p.shape[0]), static_cast<size_t>(p.shape[1]),
         static_cast<size_t>(p.shape[2] * p.shape[3])};
  } else if (n.op == OpKind::FC && p.shape.size() == 2 && !n.inputs.empty()) {
    const int64_t c = g.nodes[n.inputs[0]].channels;
    if (c <= 0 || n.in_features % c != 0) return v;  // no shape can run it: nothing to permute
    v = {static_cast<size_t>(p.shape[0]), static_cast<size_t>(c), static_cast<size_t>(n.in_features / c)};
  }
  if (v.a * v.b * v.s != p.size || v.b == 1 || v.s == 1) v.s = 0;  // identity (or inconsistent)
  return v;
}

}  // namespace

void device_layout_from_torch(const Graph& g, const ParamInfo& p, const float* src, float* dst) {
  const View v = view_of(g, p);
  if (v.s == 0) {
    std::memcpy(dst, src, p.size * sizeof(float));
    return;
  }
  const size_t bs = v.b * v.s;
  for (size_t a = 0; a < v.a; ++a)
    for (size_t b = 0; b < v.b; ++b)
      for (size_t s = 0; s < v.s; ++s) dst[a * bs + s * v.b + b] = src[a * bs + b * v.s + s];
}

void device_layout_to_torch(const Graph& g, const ParamInfo& p, const float* src, float* dst) {
  const View v = view_of(g, p);
  if (v.s == 0) {
    std::memcpy(dst, src, p.size * sizeof(float));
    return;
  }
  const size_t bs = v.b * v.s;
  for (size_t a = 0; a < v.a; ++a)
    for (size_t b = 0; b < v.b; ++b)
      for (size_t s = 0; s < v.s; ++s) dst[a * bs + b * v.s + s] = src[a * bs + s * v.b + b];
}

}  // namespace halcdl::gpu
