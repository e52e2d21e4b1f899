// The layer API's ops beyond the zoo's (docs/layers.md): sigmoid / tanh on oneDNN eltwise,
// resizing to a fixed output size on oneDNN resampling, depth_to_space as a plain loop.
//   sigmoid: y = 1 / (1 + e^−x),  dx = dy · y · (1 − y)   (oneDNN eltwise_logistic_use_dst_for_bwd)
//   tanh:    y = tanh(x),         dx = dy · (1 − y²)      (eltwise_tanh_use_dst_for_bwd)
//   resize:  oneDNN resampling (nearest / linear) with half-pixel centres to (out_h, out_w):
//            PyTorch's interpolate(size=..., mode='nearest-exact' / 'bilinear',
//            align_corners=False); backward: the adjoint.
//   depth_to_space: y[n, c, h·b + i, w·b + j] = x[n, k, h, w] with k = c·b² + i·b + j (CRD,
//            PyTorch's pixel_shuffle) or k = (i·b + j)·C + c (DCR); backward: the inverse
//            permutation of dy.
//   reshape: the NCHW values of a sample under new (C, H, W); permute: a transpose of (C, H, W).
//   depth_max: the maximum over the channels (or its first index); backward to that index.
//   lrn: oneDNN's lrn_across_channels (PyTorch's LocalResponseNorm for an odd size).
//   reduce: sum / mean / L2 norm over some of C, H, W on oneDNN's reduction; backward a loop.
//   matmul: per (n, c) the H × W matrices multiplied on oneDNN's matmul (backward: two more).
// The data-movement ops run on plain NCHW fp32 (a blocked input is reordered first).
#include <omp.h>

#include <cstring>

#include "cpu/node.h"

namespace halcdl::cpu {
namespace {

class Act : public CpuNode {
 public:
  using CpuNode::CpuNode;

  void create(Build& b) override {
    const Slot& x = in(b, 0);
    out(b).md = x.md;
    alg_ = node.op == OpKind::Sigmoid ? dnnl::algorithm::eltwise_logistic_use_dst_for_bwd
                                      : dnnl::algorithm::eltwise_tanh_use_dst_for_bwd;
    auto prop = b.training ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
    fwd_pd_ = dnnl::eltwise_forward::primitive_desc(b.eng, prop, alg_, x.md, x.md, 0.f, 0.f);
    if (b.training && x.need_grad)
      bwd_pd_ = dnnl::eltwise_backward::primitive_desc(b.eng, alg_, x.md, x.md, x.md, 0.f, 0.f, fwd_pd_);
  }

  void bind(Build& b) override {
    fwd_ = dnnl::eltwise_forward(fwd_pd_);
    fwd_args_ = {{DNNL_ARG_SRC, in(b, 0).data}, {DNNL_ARG_DST, y}};
    if (gin.size() && gin[0]) {
      bwd_ = dnnl::eltwise_backward(bwd_pd_);
      bwd_args_ = {{DNNL_ARG_DST, y}, {DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_DIFF_SRC, gin[0]}};
    }
  }

  void forward(Exec& e) override { fwd_.execute(e.s, fwd_args_); }
  void backward(Exec& e) override {
    if (bwd_) bwd_.execute(e.s, bwd_args_);
  }

 private:
  dnnl::algorithm alg_;
  dnnl::eltwise_forward::primitive_desc fwd_pd_;
  dnnl::eltwise_backward::primitive_desc bwd_pd_;
  dnnl::eltwise_forward fwd_;
  dnnl::eltwise_backward bwd_;
  Args fwd_args_, bwd_args_;
};

class Resize : public CpuNode {
 public:
  using CpuNode::CpuNode;

  void create(Build& b) override {
    const Slot& x = in(b, 0);
    const Dims& yd = b.slots[idx].dims;
    auto alg = node.op == OpKind::ResizeNearest ? dnnl::algorithm::resampling_nearest
                                                : dnnl::algorithm::resampling_linear;
    memory::desc dst_any(to_dims(yd), x.md.get_data_type(), tag::any);
    auto prop = b.training ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
    // no factors: oneDNN takes them from the sizes (out / in per axis)
    fwd_pd_ = dnnl::resampling_forward::primitive_desc(b.eng, prop, alg, x.md, dst_any);
    out(b).md = fwd_pd_.dst_desc();
    if (b.training && x.need_grad)
      bwd_pd_ = dnnl::resampling_backward::primitive_desc(b.eng, alg, x.md, out(b).md, fwd_pd_);
  }

  void bind(Build& b) override {
    fwd_ = dnnl::resampling_forward(fwd_pd_);
    fwd_args_ = {{DNNL_ARG_SRC, in(b, 0).data}, {DNNL_ARG_DST, y}};
    if (gin.size() && gin[0]) {
      bwd_ = dnnl::resampling_backward(bwd_pd_);
      bwd_args_ = {{DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_DIFF_SRC, gin[0]}};
    }
  }

  void forward(Exec& e) override { fwd_.execute(e.s, fwd_args_); }
  void backward(Exec& e) override {
    if (bwd_) bwd_.execute(e.s, bwd_args_);
  }

 private:
  dnnl::resampling_forward::primitive_desc fwd_pd_;
  dnnl::resampling_backward::primitive_desc bwd_pd_;
  dnnl::resampling_forward fwd_;
  dnnl::resampling_backward bwd_;
  Args fwd_args_, bwd_args_;
};

// lrn across channels on oneDNN's lrn primitive (its workspace kept from forward to backward),
// in the input's layout: y_c = x_c / (k + alpha/size · Σ_window x²)^beta.
class Lrn : public CpuNode {
 public:
  using CpuNode::CpuNode;

  void create(Build& b) override {
    const Slot& x = in(b, 0);
    out(b).md = x.md;
    const auto alg = dnnl::algorithm::lrn_across_channels;
    auto prop = b.training ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
    fwd_pd_ = dnnl::lrn_forward::primitive_desc(b.eng, prop, alg, x.md, x.md, node.lrn_size, node.lrn_alpha,
                                                node.lrn_beta, node.lrn_k);
    if (!b.training) return;
    if (fwd_pd_.workspace_desc().get_size())
      ws_buf_ = b.request(fwd_pd_.workspace_desc(), b.tf(idx), b.tb(idx));
    if (x.need_grad)
      bwd_pd_ = dnnl::lrn_backward::primitive_desc(b.eng, alg, x.md, x.md, x.md, node.lrn_size, node.lrn_alpha,
                                                   node.lrn_beta, node.lrn_k, fwd_pd_);
  }

  void bind(Build& b) override {
    const memory& x = in(b, 0).data;
    fwd_ = dnnl::lrn_forward(fwd_pd_);
    fwd_args_ = {{DNNL_ARG_SRC, x}, {DNNL_ARG_DST, y}};
    memory ws;
    if (ws_buf_ >= 0) {
      ws = b.mem(fwd_pd_.workspace_desc(), ws_buf_);
      fwd_args_[DNNL_ARG_WORKSPACE] = ws;
    }
    if (gin.size() && gin[0]) {
      bwd_ = dnnl::lrn_backward(bwd_pd_);
      bwd_args_ = {{DNNL_ARG_SRC, x}, {DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_DIFF_SRC, gin[0]}};
      if (ws) bwd_args_[DNNL_ARG_WORKSPACE] = ws;
    }
  }

  void forward(Exec& e) override { fwd_.execute(e.s, fwd_args_); }
  void backward(Exec& e) override {
    if (bwd_) bwd_.execute(e.s, bwd_args_);
  }

 private:
  dnnl::lrn_forward::primitive_desc fwd_pd_;
  dnnl::lrn_backward::primitive_desc bwd_pd_;
  dnnl::lrn_forward fwd_;
  dnnl::lrn_backward bwd_;
  int ws_buf_ = -1;
  Args fwd_args_, bwd_args_;
};

// reduce: forward on oneDNN's reduction (sum, mean, norm_lp_sum with p = 2) from the input's
// layout into a plain output with the reduced axes of size 1; backward (oneDNN has none) a loop
// on plain NCHW: dx = dy (sum), dy / count (mean), dy · x / y (L2 norm; 0 where y = 0).
class Reduce : public CpuNode {
 public:
  using CpuNode::CpuNode;

  void create(Build& b) override {
    HALCDL_CHECK(b.adt == dt::f32, kErrRuntimeUnsupported, "node '", node.name,
                 "' (reduce) runs in float32 only, not with precision 'bfloat16'");
    const Slot& x = in(b, 0);
    out(b).md = plain_desc(b.slots[idx].dims);
    const auto alg = node.reduce_mode == 0   ? dnnl::algorithm::reduction_sum
                     : node.reduce_mode == 1 ? dnnl::algorithm::reduction_mean
                                             : dnnl::algorithm::reduction_norm_lp_sum;
    fwd_pd_ = dnnl::reduction::primitive_desc(b.eng, alg, x.md, out(b).md, node.reduce_mode == 2 ? 2.f : 0.f, 0.f);
    if (!(b.training && x.need_grad)) return;
    const memory::desc xp = plain_desc(x.dims);
    xplain_ = x.md != xp;
    if (xplain_) {
      gbuf_ = b.request(xp, b.tb(idx), b.tb(idx));
      if (node.reduce_mode == 2) xbuf_ = b.request(xp, b.tb(idx), b.tb(idx));
    }
  }

  void bind(Build& b) override {
    const Slot& x = in(b, 0);
    xd_ = x.dims;
    yd_ = b.slots[idx].dims;
    fwd_ = dnnl::reduction(fwd_pd_);
    fwd_args_ = {{DNNL_ARG_SRC, x.data}, {DNNL_ARG_DST, y}};
    if (!(gin.size() && gin[0])) return;
    const memory::desc xp = plain_desc(x.dims);
    if (xplain_) {
      gp_ = b.mem(xp, gbuf_);
      from_plain_ = Reorder(gp_, gin[0]);
      if (xbuf_ >= 0) {
        xp_ = b.mem(xp, xbuf_);
        to_plain_ = Reorder(x.data, xp_);
      }
    } else {
      gp_ = gin[0];
      xp_ = x.data;
    }
  }

  void forward(Exec& e) override { fwd_.execute(e.s, fwd_args_); }

  void backward(Exec& e) override {
    if (!gp_) return;
    if (to_plain_) {
      to_plain_.run(e.s);
      e.s.wait();
    }
    const bool rc = node.reduce_axis[0], rh = node.reduce_axis[1], rw = node.reduce_axis[2];
    const int64_t N = xd_[0], C = xd_[1], H = xd_[2], W = xd_[3];
    const int64_t Cy = yd_[1], Hy = yd_[2], Wy = yd_[3];
    const float inv = 1.f / static_cast<float>((rc ? C : 1) * (rh ? H : 1) * (rw ? W : 1));
    const float* g = static_cast<const float*>(dy.get_data_handle());
    const float* yv = static_cast<const float*>(y.get_data_handle());
    const float* xv = node.reduce_mode == 2 ? static_cast<const float*>(xp_.get_data_handle()) : nullptr;
    float* dx = static_cast<float*>(gp_.get_data_handle());
    const int mode = node.reduce_mode;
#pragma omp parallel for collapse(2)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t w = 0; w < W; ++w) {
            const int64_t yi = ((n * Cy + (rc ? 0 : c)) * Hy + (rh ? 0 : h)) * Wy + (rw ? 0 : w);
            const int64_t xi = ((n * C + c) * H + h) * W + w;
            float v = g[yi];
            if (mode == 1) v *= inv;
            else if (mode == 2) v = yv[yi] > 0.f ? v * xv[xi] / yv[yi] : 0.f;
            dx[xi] = v;
          }
    if (from_plain_) from_plain_.run(e.s);
  }

 private:
  dnnl::reduction::primitive_desc fwd_pd_;
  dnnl::reduction fwd_;
  Args fwd_args_;
  Dims xd_, yd_;
  bool xplain_ = false;
  int xbuf_ = -1, gbuf_ = -1;
  memory xp_, gp_;
  Reorder to_plain_, from_plain_;
};

// matmul on oneDNN's matmul primitive, batched over (N, C) on plain NCHW (a blocked input is
// reordered first, its gradient back); a transposed operand is a strided view, no copy.
//   Y = op(A) · op(B);  dA = dY · op(B)ᵀ (or op(B) · dYᵀ stored transposed), dB likewise.
class MatMul : public CpuNode {
 public:
  using CpuNode::CpuNode;

  // the (N, C, R, S) plain tensor `d`, or its view with the last two axes swapped
  static memory::desc view(const Dims& d, bool t) {
    const memory::dim n = d[0], c = d[1], r = d[2], s = d[3];
    if (!t) return memory::desc({n, c, r, s}, dt::f32, memory::dims{c * r * s, r * s, s, 1});
    return memory::desc({n, c, s, r}, dt::f32, memory::dims{c * r * s, r * s, 1, s});
  }

  void create(Build& b) override {
    HALCDL_CHECK(b.adt == dt::f32, kErrRuntimeUnsupported, "node '", node.name,
                 "' (matmul) runs in float32 only, not with precision 'bfloat16'");
    const Dims& yd = b.slots[idx].dims;
    out(b).md = plain_desc(yd);
    for (int k = 0; k < 2; ++k) {
      const Slot& x = in(b, k);
      d_[k] = x.dims;
      const memory::desc xp = plain_desc(x.dims);
      plain_[k] = x.md == xp;
      const bool grad = b.training && x.need_grad;
      if (!plain_[k]) xbuf_[k] = b.request(xp, b.tf(idx), b.training ? b.tb(idx) : b.tf(idx));
      if (grad && !plain_[k]) gbuf_[k] = b.request(xp, b.tb(idx), b.tb(idx));
    }
    const bool ta = node.trans_a, tb = node.trans_b;
    fwd_pd_ = dnnl::matmul::primitive_desc(b.eng, view(d_[0], ta), view(d_[1], tb), plain_desc(yd));
    if (!b.training) return;
    if (in(b, 0).need_grad)   // dA: A stored (M, K) = dY · op(B)ᵀ; stored (K, M) = op(B) · dYᵀ
      bwd_pd_[0] = ta ? dnnl::matmul::primitive_desc(b.eng, view(d_[1], tb), view(yd, true), plain_desc(d_[0]))
                      : dnnl::matmul::primitive_desc(b.eng, view(yd, false), view(d_[1], !tb), plain_desc(d_[0]));
    if (in(b, 1).need_grad)   // dB: B stored (K, P) = op(A)ᵀ · dY; stored (P, K) = dYᵀ · op(A)
      bwd_pd_[1] = tb ? dnnl::matmul::primitive_desc(b.eng, view(yd, true), view(d_[0], ta), plain_desc(d_[1]))
                      : dnnl::matmul::primitive_desc(b.eng, view(d_[0], !ta), view(yd, false), plain_desc(d_[1]));
  }

  void bind(Build& b) override {
    memory xp[2];
    for (int k = 0; k < 2; ++k) {
      const Slot& x = in(b, k);
      if (plain_[k]) {
        xp[k] = x.data;
      } else {
        xp[k] = b.mem(plain_desc(x.dims), xbuf_[k]);
        to_plain_[k] = Reorder(x.data, xp[k]);
      }
      if (gin.size() > static_cast<size_t>(k) && gin[k]) {
        if (plain_[k]) {
          gp_[k] = gin[k];
        } else {
          gp_[k] = b.mem(plain_desc(x.dims), gbuf_[k]);
          from_plain_[k] = Reorder(gp_[k], gin[k]);
        }
      }
    }
    const bool ta = node.trans_a, tb = node.trans_b;
    const Dims& yd = b.slots[idx].dims;
    auto as = [](const memory& m, const memory::desc& md) { return memory(md, m.get_engine(), m.get_data_handle()); };
    fwd_ = dnnl::matmul(fwd_pd_);
    fwd_args_ = {{DNNL_ARG_SRC, as(xp[0], view(d_[0], ta))}, {DNNL_ARG_WEIGHTS, as(xp[1], view(d_[1], tb))},
                 {DNNL_ARG_DST, y}};
    if (gp_[0]) {
      bwd_[0] = dnnl::matmul(bwd_pd_[0]);
      bwd_args_[0] = ta ? Args{{DNNL_ARG_SRC, as(xp[1], view(d_[1], tb))}, {DNNL_ARG_WEIGHTS, as(dy, view(yd, true))},
                               {DNNL_ARG_DST, gp_[0]}}
                        : Args{{DNNL_ARG_SRC, as(dy, view(yd, false))}, {DNNL_ARG_WEIGHTS, as(xp[1], view(d_[1], !tb))},
                               {DNNL_ARG_DST, gp_[0]}};
    }
    if (gp_[1]) {
      bwd_[1] = dnnl::matmul(bwd_pd_[1]);
      bwd_args_[1] = tb ? Args{{DNNL_ARG_SRC, as(dy, view(yd, true))}, {DNNL_ARG_WEIGHTS, as(xp[0], view(d_[0], ta))},
                               {DNNL_ARG_DST, gp_[1]}}
                        : Args{{DNNL_ARG_SRC, as(xp[0], view(d_[0], !ta))}, {DNNL_ARG_WEIGHTS, as(dy, view(yd, false))},
                               {DNNL_ARG_DST, gp_[1]}};
    }
  }

  void forward(Exec& e) override {
    for (auto& r : to_plain_)
      if (r) r.run(e.s);
    fwd_.execute(e.s, fwd_args_);
  }
  void backward(Exec& e) override {
    for (int k = 0; k < 2; ++k) {
      if (!bwd_[k]) continue;
      bwd_[k].execute(e.s, bwd_args_[k]);
      if (from_plain_[k]) from_plain_[k].run(e.s);
    }
  }

 private:
  Dims d_[2];
  bool plain_[2] = {true, true};
  int xbuf_[2] = {-1, -1}, gbuf_[2] = {-1, -1};
  memory gp_[2];
  Reorder to_plain_[2], from_plain_[2];
  dnnl::matmul::primitive_desc fwd_pd_, bwd_pd_[2];
  dnnl::matmul fwd_, bwd_[2];
  Args fwd_args_, bwd_args_[2];
};

// The data-movement ops on plain NCHW fp32: a blocked input is reordered to plain first, the
// input gradient is computed plain and reordered into the input's layout.
class PlainMove : public CpuNode {
 public:
  using CpuNode::CpuNode;

  void create(Build& b) override {
    HALCDL_CHECK(b.adt == dt::f32, kErrRuntimeUnsupported, "node '", node.name, "' (", op_name(node.op),
                 ") runs in float32 only, not with precision 'bfloat16'");
    const Slot& x = in(b, 0);
    out(b).md = plain_desc(b.slots[idx].dims);
    const memory::desc xp = plain_desc(x.dims);
    xplain_ = x.md != xp;
    // an op whose backward reads x keeps the plain copy until its backward
    if (xplain_) xbuf_ = b.request(xp, b.tf(idx), b.training && backward_reads_x() ? b.tb(idx) : b.tf(idx));
    if (b.training && x.need_grad && xplain_) gbuf_ = b.request(xp, b.tb(idx), b.tb(idx));
  }

  void bind(Build& b) override {
    const Slot& x = in(b, 0);
    const memory::desc xp = plain_desc(x.dims);
    xd_ = x.dims;
    yd_ = b.slots[idx].dims;
    if (xplain_) {
      xp_ = b.mem(xp, xbuf_);
      to_plain_ = Reorder(x.data, xp_);
    } else {
      xp_ = x.data;
    }
    if (gin.size() && gin[0]) {
      if (xplain_) {
        gp_ = b.mem(xp, gbuf_);
        from_plain_ = Reorder(gp_, gin[0]);
      } else {
        gp_ = gin[0];
      }
    }
  }

  void forward(Exec& e) override {
    if (to_plain_) {
      to_plain_.run(e.s);
      e.s.wait();
    }
    move(static_cast<const float*>(xp_.get_data_handle()), static_cast<float*>(y.get_data_handle()), false);
  }

  void backward(Exec& e) override {
    if (!gp_) return;
    move_back(static_cast<const float*>(xp_.get_data_handle()), static_cast<const float*>(dy.get_data_handle()),
              static_cast<float*>(gp_.get_data_handle()));
    if (from_plain_) from_plain_.run(e.s);
  }

 protected:
  // the input gradient from dy (and the plain input x where backward_reads_x())
  virtual bool backward_reads_x() const { return false; }
  virtual void move_back(const float* /*x*/, const float* dy, float* dx) const { move(dy, dx, true); }
  // forward: y ← x; inverse: x-shaped dst ← y-shaped src (the same index map read backwards)
  virtual void move(const float* src, float* dst, bool inverse) const = 0;
  Dims xd_, yd_;

 private:
  bool xplain_ = false;
  int xbuf_ = -1, gbuf_ = -1;
  memory xp_, gp_;
  Reorder to_plain_, from_plain_;
};

class DepthToSpace : public PlainMove {
 public:
  using PlainMove::PlainMove;

 protected:
  void move(const float* src, float* dst, bool inverse) const override {
    const int64_t n_ = xd_[0], c_in_ = xd_[1], h_ = xd_[2], w_ = xd_[3];
    const int64_t bs = node.block, co = c_in_ / (bs * bs), H = h_ * bs, W = w_ * bs;
#pragma omp parallel for collapse(2)
    for (int64_t n = 0; n < n_; ++n)
      for (int64_t c = 0; c < co; ++c)
        for (int64_t oy = 0; oy < H; ++oy) {
          const int64_t iy = oy / bs, i = oy % bs;
          for (int64_t ox = 0; ox < W; ++ox) {
            const int64_t ix = ox / bs, j = ox % bs;
            const int64_t k = node.crd ? c * bs * bs + i * bs + j : (i * bs + j) * co + c;
            const int64_t yi = ((n * co + c) * H + oy) * W + ox;
            const int64_t xi = ((n * c_in_ + k) * h_ + iy) * w_ + ix;
            if (inverse) dst[xi] = src[yi];
            else dst[yi] = src[xi];
          }
        }
  }
};

// reshape: the plain NCHW buffer unchanged under new dims (a copy both ways)
class Reshape : public PlainMove {
 public:
  using PlainMove::PlainMove;

 protected:
  void move(const float* src, float* dst, bool) const override {
    int64_t m = 1;
    for (int64_t d : xd_) m *= d;  // (N, F) or (N, C, H, W)
    std::memcpy(dst, src, static_cast<size_t>(m) * sizeof(float));
  }
};

// permute: y[n, a0, a1, a2] = x[n, (C, H, W) with axis perm[k] = a_k]
class Permute : public PlainMove {
 public:
  using PlainMove::PlainMove;

 protected:
  void move(const float* src, float* dst, bool inverse) const override {
    const int64_t in_st[3] = {xd_[2] * xd_[3], xd_[3], 1};
    int64_t st[3];  // input stride of each output axis
    for (int k = 0; k < 3; ++k) st[k] = in_st[node.perm[k]];
    const int64_t N = yd_[0], A0 = yd_[1], A1 = yd_[2], A2 = yd_[3], per = A0 * A1 * A2;
#pragma omp parallel for collapse(2)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t a0 = 0; a0 < A0; ++a0)
        for (int64_t a1 = 0; a1 < A1; ++a1)
          for (int64_t a2 = 0; a2 < A2; ++a2) {
            const int64_t yi = n * per + (a0 * A1 + a1) * A2 + a2;
            const int64_t xi = n * per + a0 * st[0] + a1 * st[1] + a2 * st[2];
            if (inverse) dst[xi] = src[yi];
            else dst[yi] = src[xi];
          }
  }
};

// depth_max: y[n, 0, p] = max_c x[n, c, p] or (argmax) the first c reaching it, as a float;
// backward: dy to that first maximum (torch.max(x, 1)'s gradient), zero for argmax.
class DepthMax : public PlainMove {
 public:
  using PlainMove::PlainMove;

 protected:
  bool backward_reads_x() const override { return !node.argmax; }

  void move(const float* src, float* dst, bool) const override {
    const int64_t N = xd_[0], C = xd_[1], P = xd_[2] * xd_[3];
#pragma omp parallel for collapse(2)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t p = 0; p < P; ++p) {
        const float* x = src + n * C * P + p;
        int64_t best = 0;
        for (int64_t c = 1; c < C; ++c)
          if (x[c * P] > x[best * P]) best = c;
        dst[n * P + p] = node.argmax ? static_cast<float>(best) : x[best * P];
      }
  }

  void move_back(const float* x, const float* dy, float* dx) const override {
    const int64_t N = xd_[0], C = xd_[1], P = xd_[2] * xd_[3];
    std::memset(dx, 0, static_cast<size_t>(N * C * P) * sizeof(float));
    if (node.argmax) return;
#pragma omp parallel for collapse(2)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t p = 0; p < P; ++p) {
        const float* xs = x + n * C * P + p;
        int64_t best = 0;
        for (int64_t c = 1; c < C; ++c)
          if (xs[c * P] > xs[best * P]) best = c;
        dx[(n * C + best) * P + p] = dy[n * P + p];
      }
  }
};

}  // namespace

std::unique_ptr<CpuNode> make_depth_max(const Node& n, int idx) { return std::make_unique<DepthMax>(n, idx); }
std::unique_ptr<CpuNode> make_lrn(const Node& n, int idx) { return std::make_unique<Lrn>(n, idx); }
std::unique_ptr<CpuNode> make_reduce(const Node& n, int idx) { return std::make_unique<Reduce>(n, idx); }
std::unique_ptr<CpuNode> make_matmul(const Node& n, int idx) { return std::make_unique<MatMul>(n, idx); }
std::unique_ptr<CpuNode> make_act(const Node& n, int idx) { return std::make_unique<Act>(n, idx); }
std::unique_ptr<CpuNode> make_resize(const Node& n, int idx) { return std::make_unique<Resize>(n, idx); }
std::unique_ptr<CpuNode> make_depth_to_space(const Node& n, int idx) {
  return std::make_unique<DepthToSpace>(n, idx);
}
std::unique_ptr<CpuNode> make_reshape(const Node& n, int idx) { return std::make_unique<Reshape>(n, idx); }
std::unique_ptr<CpuNode> make_permute(const Node& n, int idx) { return std::make_unique<Permute>(n, idx); }

}  // namespace halcdl::cpu
