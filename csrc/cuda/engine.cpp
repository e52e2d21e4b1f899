// The CUDA DeviceEngine (engine/device.h) and the function table libhalcdl_cuda.so exports.
// CudaEngine::train_step mirrors Model::train_step (engine/model.cpp) step for step; the
// only structural difference is that the per-sub-batch losses, Σw² and the finiteness flag
// are read back with a single stream synchronisation before the commit.
//
// precision 'bfloat16' (GPUs with compute capability >= 8.0): the plans are bf16 (plan.h);
// the engine keeps PB_, the trainable arena rounded to bf16, refreshed from the fp32 master
// arena P_ before a forward whenever P_ changed (one cast per step, like autocast's per-op
// weight casts). Images are rounded once on upload; the loss, dlogits, gradients, the
// optimizer and its state, and the running statistics stay fp32. No loss scaling (bf16 has
// fp32's exponent range).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "cuda/common.h"
#include "cuda/det_kernels.cuh"
#include "cuda/kernels.cuh"
#include "cuda/plan.h"
#include "engine/device.h"

namespace halcdl::gpu {
namespace {

// ---- devices ---------------------------------------------------------------------------

int device_count_impl() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e == cudaErrorNoDevice) {
    (void)cudaGetLastError();
    return 0;
  }
  // Driver missing / too old: throw_cuda says so (7709).
  if (e != cudaSuccess) throw_cuda(e, "cudaGetDeviceCount", __FILE__, __LINE__);
  return n;
}

void check_device(int index) {
  const int n = device_count_impl();
  HALCDL_CHECK(n > 0, kErrGpuRequired, "no CUDA GPU found");
  HALCDL_CHECK(index >= 0 && index < n, kErrGpuRequired, "GPU ", index, " does not exist (", n, " GPU",
               n == 1 ? "" : "s", " found)");
}

// Properties only: no CUDA context is created (listing the GPUs must not take memory on each
// of them). free_bytes needs a context, so only an engine's info() fills it in.
GpuInfo device_info_impl(int index, bool with_free = false) {
  check_device(index);
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
  GpuInfo gi;
  gi.index = index;
  gi.name = prop.name;
  gi.cc_major = prop.major;
  gi.cc_minor = prop.minor;
  gi.total_bytes = prop.totalGlobalMem;
  if (with_free) {
    DeviceGuard guard(index);
    size_t free_b = 0, total_b = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    gi.free_bytes = free_b;
  }
  gi.bf16 = prop.major >= 8;
  return gi;
}

// ---- helpers ---------------------------------------------------------------------------

size_t numel(const Dims& d) {
  size_t n = 1;
  for (int64_t x : d) n *= static_cast<size_t>(x);
  return n;
}

void ensure(DeviceBuffer& b, size_t bytes) {
  if (b.bytes() < bytes) b.resize(bytes);
}

void h2d(const Context& ctx, void* dst, const void* src, size_t bytes) {
  if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, ctx.stream));
}
void d2h(const Context& ctx, void* dst, const void* src, size_t bytes) {
  if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, ctx.stream));
}
void d2d(const Context& ctx, void* dst, const void* src, size_t bytes) {
  if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx.stream));
}

// Trainable arena, PyTorch layouts ↔ device layouts (host side). Unlisted floats copy as is.
void arena_to_device(const Graph& g, const float* src, float* dst) {
  if (!g.n_trainable) return;
  std::memcpy(dst, src, g.n_trainable * sizeof(float));
  for (const ParamInfo& p : g.params)
    if (p.kind != ParamKind::State) device_layout_from_torch(g, p, src + p.offset, dst + p.offset);
}
void arena_to_torch(const Graph& g, const float* src, float* dst) {
  if (!g.n_trainable) return;
  std::memcpy(dst, src, g.n_trainable * sizeof(float));
  for (const ParamInfo& p : g.params)
    if (p.kind != ParamKind::State) device_layout_to_torch(g, p, src + p.offset, dst + p.offset);
}

// A 4-D tensor whose NHWC and NCHW orders differ.
bool needs_transpose(const Dims& d) { return d.size() == 4 && d[1] > 1 && d[2] * d[3] > 1; }

// Device NCHW fp32 images → a plan's NHWC input (rounded to bf16 in a bf16 plan).
void to_plan_input(GpuPlan& p, int i, const float* src, int64_t n, int64_t c, int64_t hw, cudaStream_t st) {
  if (p.bf16()) k::nchw_f32_to_nhwc_bf16(src, reinterpret_cast<uint16_t*>(p.input(i)), n, c, hw, st);
  else k::nchw_to_nhwc(src, p.input(i), n, c, hw, st);
}

// Host NCHW (or (N, K)) → device NHWC, through `tmp`. Synchronous.
void upload_nchw(Context& ctx, const float* host, const Dims& d, float* dst, DeviceBuffer& tmp) {
  const size_t n = numel(d);
  if (needs_transpose(d)) {
    ensure(tmp, n * sizeof(float));
    h2d(ctx, tmp.f(), host, n * sizeof(float));
    k::nchw_to_nhwc(tmp.f(), dst, d[0], d[1], d[2] * d[3], ctx.stream);
  } else {
    h2d(ctx, dst, host, n * sizeof(float));
  }
  ctx.sync();
}

// Device NHWC (or (N, K)) → host NCHW, through `tmp`. Synchronous.
void download_nchw(Context& ctx, const float* src, const Dims& d, std::vector<float>& out, DeviceBuffer& tmp) {
  const size_t n = numel(d);
  out.assign(n, 0.f);
  if (needs_transpose(d)) {
    ensure(tmp, n * sizeof(float));
    k::nhwc_to_nchw(src, tmp.f(), d[0], d[1], d[2] * d[3], ctx.stream);
    d2h(ctx, out.data(), tmp.f(), n * sizeof(float));
  } else {
    d2h(ctx, out.data(), src, n * sizeof(float));
  }
  ctx.sync();
}

// Device images written by the caller on the legacy default stream (PyTorch's default) must be
// complete before our non-blocking stream reads them.
void wait_for_caller() { CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy)); }

// ---- the engine ------------------------------------------------------------------------

class CudaEngine final : public DeviceEngine {
 public:
  CudaEngine(const Graph& g, int device, const GpuOptions& opts) : dev_(device), g_(g), ctx_(device, opts) {
    DeviceGuard guard(dev_);
    const size_t nt = g_.n_trainable * sizeof(float), ns = g_.n_state * sizeof(float);
    P_.resize(nt);
    G_.resize(nt);
    M1_.resize(nt);
    S_.resize(ns);
    S2_.resize(ns);
  }

  ~CudaEngine() override {
    // Members are freed on the engine's device; nothing here throws.
    int prev = -1;
    const bool switched = cudaGetDevice(&prev) == cudaSuccess && prev != dev_ && cudaSetDevice(dev_) == cudaSuccess;
    if (ctx_.stream) cudaStreamSynchronize(ctx_.stream);
    plans_.clear();
    for (DeviceBuffer* b : {&P_, &PB_, &G_, &T_, &M1_, &M2_, &S_, &S2_, &scalars_, &scratch_, &dlogits_, &labels_d_,
                            &pixw_d_, &classw_d_, &stage_, &out_f_, &out_i_, &det_tgt_, &det_tbox_, &det_rows_})
      b->reset();
    for (PinnedBuffer* b : {&readback_, &pin_img_, &pin_lab_, &pin_w_}) b->reset();
    (void)cudaGetLastError();
    if (switched) cudaSetDevice(prev);
  }

  GpuInfo info() const override { return device_info_impl(dev_, true); }

  void upload(const float* params, const float* state, const float* m1, const float* m2) override {
    DeviceGuard guard(dev_);
    const size_t nt = g_.n_trainable;
    // Allocate first: a failure then changes nothing on the device.
    if (m2 && !M2_.bytes()) M2_.resize(nt * sizeof(float));
    std::vector<float> tmp(nt);
    if (params) {
      arena_to_device(g_, params, tmp.data());
      h2d(ctx_, P_.v(), tmp.data(), nt * sizeof(float));
      ctx_.sync();
      mirror_stale_ = true;
    }
    if (state) {
      h2d(ctx_, S_.v(), state, g_.n_state * sizeof(float));
      ctx_.sync();
    }
    // Optimizer state: elementwise over the params, so it uses the params' device layouts.
    upload_optimizer(M1_, m1, tmp);
    if (M2_.bytes()) upload_optimizer(M2_, m2, tmp);
  }

  void download(float* params, float* state, float* m1, float* m2) override {
    DeviceGuard guard(dev_);
    const size_t nt = g_.n_trainable;
    std::vector<float> tmp(nt);
    if (params) download_arena(P_, params, tmp);
    if (state) {
      d2h(ctx_, state, S_.v(), g_.n_state * sizeof(float));
      ctx_.sync();
    }
    if (m1) download_arena(M1_, m1, tmp);
    if (m2) {
      if (M2_.bytes()) download_arena(M2_, m2, tmp);
      else std::fill(m2, m2 + nt, 0.f);
    }
  }

  void reset_optimizer() override {
    DeviceGuard guard(dev_);
    if (M1_.bytes()) CUDA_CHECK(cudaMemsetAsync(M1_.v(), 0, M1_.bytes(), ctx_.stream));
    if (M2_.bytes()) CUDA_CHECK(cudaMemsetAsync(M2_.v(), 0, M2_.bytes(), ctx_.stream));
    ctx_.sync();
  }

  void set_options(const GpuOptions& o) override {
    DeviceGuard guard(dev_);
    const bool changed = o.deterministic != ctx_.opts.deterministic || o.tf32 != ctx_.opts.tf32;
    if (changed) drop_plans();
    ctx_.opts = o;
    ctx_.apply_options();
  }

  void set_precision(Precision p) override {
    if (p == precision_) return;
    DeviceGuard guard(dev_);
    if (p == Precision::BF16) {
      const GpuInfo gi = device_info_impl(dev_);
      HALCDL_CHECK(gi.bf16, kErrRuntimeUnsupported, "precision 'bfloat16' needs a GPU of compute capability 8.0 or "
                   "newer; GPU ", dev_, " (", gi.name, ") is ", gi.cc_major, ".", gi.cc_minor);
      if (!PB_.bytes() && g_.n_trainable) PB_.resize(g_.n_trainable * sizeof(uint16_t));  // first: 6021 changes nothing
      mirror_stale_ = true;
    }
    drop_plans();
    precision_ = p;
    if (p == Precision::F32) PB_.reset();
  }

  void release_training_plans() override {
    DeviceGuard guard(dev_);
    ctx_.sync();  // nothing queued may still use a plan's memory
    for (auto it = plans_.begin(); it != plans_.end();)
      it = std::get<4>(it->first) ? plans_.erase(it) : std::next(it);
  }

  float* pinned_images(size_t floats) override {
    DeviceGuard guard(dev_);
    pin_img_.ensure(floats * sizeof(float));
    return pin_img_.f();
  }
  int* pinned_labels(size_t n) override {
    DeviceGuard guard(dev_);
    pin_lab_.ensure(n * sizeof(int));
    return pin_lab_.i();
  }
  float* pinned_weights(size_t n) override {
    DeviceGuard guard(dev_);
    pin_w_.ensure(n * sizeof(float));
    return pin_w_.f();
  }

  TrainResult train_step(const float* images, bool images_on_device, const int* labels, const float* pixel_w, int bs,
                         int m, int c, int h, int w, const HParams& hp, int64_t adam_t, uint64_t rng_base,
                         const StepHook* hook) override {
    HALCDL_CHECK(bs > 0 && m > 0, kErrInvalidValue, "invalid batch size ", bs, " x ", m);
    const int kc = num_classes();
    HALCDL_CHECK(hp.class_weights.empty() || static_cast<int>(hp.class_weights.size()) == kc, kErrInvalidValue,
                 "class_weights needs ", kc, " values, got ", hp.class_weights.size());
    DeviceGuard guard(dev_);
    if (images_on_device) wait_for_caller();
    const int64_t per = g_.labels_per_sample(h, w);
    GpuPlan& p = plan(bs, c, h, w, true);
    const cudaStream_t st = ctx_.stream;
    const size_t img = static_cast<size_t>(c) * h * w;
    const size_t nlab = static_cast<size_t>(bs) * per;  // labels per sub-batch
    const size_t nt = g_.n_trainable, nw = g_.n_weight;
    const bool adam = hp.solver == "adam";
    const bool use_pw = pixel_w && per > 1;

    // Everything this step needs is allocated before anything is enqueued.
    if (m > 1 && !T_.bytes()) T_.resize(nt * sizeof(float));
    if (adam && !M2_.bytes()) M2_.resize(nt * sizeof(float));
    ensure(dlogits_, nlab * kc * sizeof(float));
    ensure(labels_d_, m * nlab * sizeof(int));
    if (use_pw) ensure(pixw_d_, m * nlab * sizeof(float));
    if (!hp.class_weights.empty()) ensure(classw_d_, kc * sizeof(float));
    if (!images_on_device) ensure(stage_, static_cast<size_t>(m) * bs * img * sizeof(float));
    const size_t nscr = std::max({k::loss_scratch_doubles(static_cast<int64_t>(nlab)),
                                  k::loss_scratch_doubles(static_cast<int64_t>(nw)), size_t(1)});
    ensure(scratch_, nscr * sizeof(double));
    // scalars: m sub-batch losses, Σw², then the finiteness flag (an int in the last slot).
    const size_t sc_bytes = (static_cast<size_t>(m) + 2) * sizeof(double);
    ensure(scalars_, sc_bytes);
    readback_.ensure(sc_bytes);
    double* losses = reinterpret_cast<double*>(scalars_.v());
    double* sumsq = losses + m;
    int* flag = reinterpret_cast<int*>(losses + m + 1);
    double* scratch = reinterpret_cast<double*>(scratch_.v());

    // Inputs: one transfer each.
    const float* src = images;
    if (!images_on_device) {
      h2d(ctx_, stage_.v(), images, static_cast<size_t>(m) * bs * img * sizeof(float));
      src = stage_.f();
    }
    h2d(ctx_, labels_d_.v(), labels, m * nlab * sizeof(int));
    if (use_pw) h2d(ctx_, pixw_d_.v(), pixel_w, m * nlab * sizeof(float));
    const float* cw = nullptr;
    if (!hp.class_weights.empty()) {
      h2d(ctx_, classw_d_.v(), hp.class_weights.data(), kc * sizeof(float));
      cw = classw_d_.f();
    }
    d2d(ctx_, S2_.v(), S_.v(), S_.bytes());

    // Running statistics go to the working copy S2 (committed at the end).
    refresh_mirror();
    const DeviceParams dp{P_.f(), S_.f(), S2_.f(), hp.batchnorm_momentum, mirror()};
    // data parallel: every sub-batch's share of the global step (StepReduce, hparams.h)
    const int mw = hook && hook->reduce ? m * hook->world_size : m;
    const float scale = 1.f / mw;
    for (int s = 0; s < m; ++s) {
      to_plan_input(p, 0, src + static_cast<size_t>(s) * bs * img, bs, c, static_cast<int64_t>(h) * w, st);
      p.forward(dp, rng_base + s);
      const int* lab = labels_d_.i() + s * nlab;
      if (per == 1)
        k::softmax_xent(p.output(), lab, cw, bs, kc, scale, dlogits_.f(), losses + s, scratch, st);
      else
        k::softmax_xent_pixels(p.output(), lab, cw, use_pw ? pixw_d_.f() + s * nlab : nullptr,
                               static_cast<int64_t>(nlab), kc, scale, dlogits_.f(), losses + s, scratch, st);
      p.backward(dp, dlogits_.f(), s == 0 ? G_.f() : T_.f());
      if (s > 0 && nt) k::accumulate(G_.f(), T_.f(), nt, st);
    }
    if (nw) k::sum_squares(P_.f(), nw, sumsq, scratch, st);
    else CUDA_CHECK(cudaMemsetAsync(sumsq, 0, sizeof(double), st));
    // Bytes of 1: any nonzero flag means finite (the checks only ever store 0). The divergence
    // check before the commit (as the CPU's): the update the step would make (weights,
    // optimizer state; it also covers a non-finite gradient) and the new running statistics
    // must be finite. Read-only passes, so a failing step leaves the device arenas untouched.
    CUDA_CHECK(cudaMemsetAsync(flag, 1, sizeof(int), st));
    if (nt) {
      if (adam)
        k::adam_update_finite(P_.f(), G_.f(), M1_.f(), M2_.f(), nw, nt, hp.learning_rate, hp.adam_beta1,
                              hp.adam_beta2, hp.adam_epsilon, hp.weight_prior, adam_t, flag, st);
      else
        k::sgd_update_finite(P_.f(), G_.f(), M1_.f(), nw, nt, hp.learning_rate, hp.momentum, hp.weight_prior, flag,
                             st);
    }
    if (g_.n_state) k::check_finite(S2_.f(), g_.n_state, flag, st);
    d2h(ctx_, readback_.f(), scalars_.v(), sc_bytes);
    ctx_.sync();

    const double* hl = reinterpret_cast<const double*>(readback_.f());
    const bool reduce = hook && hook->reduce;
    double ce = 0;
    for (int s = 0; s < m; ++s) {
      const double l = hl[s];
      // data parallel: reported after the reduce, on every rank alike (model.cpp)
      HALCDL_CHECK(reduce || (std::isfinite(l) && l <= kMaxLoss), kErrTrainingFailed,
                   "training step failed: the loss became ", l,
                   " (the training diverged: lower the learning rate); the weights were not changed");
      ce += l / mw;
    }
    int finite = 0;
    std::memcpy(&finite, hl + m + 1, sizeof(int));
    if (reduce) {
      // G and S2 are complete (the stream was synchronised above); the hook averages them
      // over the ranks in place (NCCL on its own stream, synchronised before it returns).
      double sc[2] = {ce, finite != 0 && std::isfinite(ce) ? 0.0 : 1.0};
      hook->reduce(
          StepReduce{G_.f(), nt, S2_.f(), S_.f(), g_.n_state, sc, 2, m, hp.batchnorm_momentum, true, dev_});
      HALCDL_CHECK(sc[1] == 0 && std::isfinite(sc[0]) && sc[0] <= kMaxLoss, kErrTrainingFailed,
                   "training step failed: the loss or the gradient is not finite on ",
                   sc[1] == 0 ? "the ranks' mean" : "at least one rank",
                   " (lower the learning rate); the weights were not changed");
      ce = sc[0];
      finite = 1;
    }
    const double reg = 0.5 * hp.weight_prior * hl[m];
    const double total = ce + reg;
    HALCDL_CHECK(std::isfinite(total) && finite != 0, kErrTrainingFailed,
                 "training step failed: the loss, its gradient, the updated weights / optimizer state or the "
                 "running statistics would not be finite (the training diverged: lower the learning rate); the "
                 "model was not changed");

    // Commit: update, optimizer state, running statistics. Queued on the stream; the next
    // call (or download) is ordered after it.
    if (nt) {
      if (adam)
        k::adam_update(P_.f(), G_.f(), M1_.f(), M2_.f(), nw, nt, hp.learning_rate, hp.adam_beta1, hp.adam_beta2,
                       hp.adam_epsilon, hp.weight_prior, adam_t, st);
      else
        k::sgd_update(P_.f(), G_.f(), M1_.f(), nw, nt, hp.learning_rate, hp.momentum, hp.weight_prior, st);
      mirror_stale_ = true;
    }
    d2d(ctx_, S_.v(), S2_.v(), S_.bytes());
    return {total, ce};
  }

  void infer(const float* images, bool images_on_device, int n, int bs, int c, int h, int w, float* probs,
             bool out_on_device) override {
    HALCDL_CHECK(bs > 0, kErrInvalidValue, "invalid batch size ", bs);
    DeviceGuard guard(dev_);
    HALCDL_CHECK(g_.labels_per_sample(h, w) == 1, kErrInvalidInputShape,
                 "this network outputs one score per pixel: use the segmentation inference");
    if (images_on_device) wait_for_caller();
    const int kc = num_classes();
    const size_t img = static_cast<size_t>(c) * h * w;
    for (int start = 0; start < n; start += bs) {
      const int cnt = std::min(bs, n - start);
      GpuPlan& p = plan(cnt, c, h, w, false);
      run_inference(p, images, images_on_device, start, cnt, c, h, w, img);
      const size_t rows = static_cast<size_t>(cnt) * kc;
      float* dst = probs + static_cast<size_t>(start) * kc;
      if (out_on_device) {
        k::softmax_rows(p.output(), dst, cnt, kc, ctx_.stream);
      } else {
        ensure(out_f_, rows * sizeof(float));
        k::softmax_rows(p.output(), out_f_.f(), cnt, kc, ctx_.stream);
        d2h(ctx_, dst, out_f_.v(), rows * sizeof(float));
      }
    }
    ctx_.sync();
  }

  void infer_segmentation(const float* images, bool images_on_device, int n, int bs, int c, int h, int w, int* index,
                          float* confidence, bool out_on_device) override {
    HALCDL_CHECK(bs > 0, kErrInvalidValue, "invalid batch size ", bs);
    DeviceGuard guard(dev_);
    const int64_t per = g_.labels_per_sample(h, w);
    HALCDL_CHECK(per > 1, kErrInvalidInputShape, "this network does not output one score per pixel");
    if (images_on_device) wait_for_caller();
    const int kc = num_classes();
    const size_t img = static_cast<size_t>(c) * h * w;
    for (int start = 0; start < n; start += bs) {
      const int cnt = std::min(bs, n - start);
      GpuPlan& p = plan(cnt, c, h, w, false);
      run_inference(p, images, images_on_device, start, cnt, c, h, w, img);
      // NHWC rows are the pixels in (n, h, w) order, the order of the outputs.
      const size_t rows = static_cast<size_t>(cnt) * per;
      const size_t off = static_cast<size_t>(start) * per;
      if (out_on_device) {
        k::softmax_argmax_rows(p.output(), static_cast<int64_t>(rows), kc, index + off, confidence + off, ctx_.stream);
      } else {
        ensure(out_i_, rows * sizeof(int));
        ensure(out_f_, rows * sizeof(float));
        k::softmax_argmax_rows(p.output(), static_cast<int64_t>(rows), kc, out_i_.i(), out_f_.f(), ctx_.stream);
        d2h(ctx_, index + off, out_i_.v(), rows * sizeof(int));
        d2h(ctx_, confidence + off, out_f_.v(), rows * sizeof(float));
      }
    }
    ctx_.sync();
  }

  // Model::train_step_detection on the device (see DeviceEngine::train_step_detection): the
  // per-row losses of all sub-batches are read back with one synchronisation together with
  // Σw² and the finiteness flag, and summed per level on the host in the CPU's order.
  TrainResult train_step_detection(const float* images, const DetTargets& t, int bs, int m, int c, int h, int w,
                                   const HParams& hp, int64_t adam_t, uint64_t rng_base,
                                   std::vector<double>& cls_level, std::vector<double>& box_level) override {
    HALCDL_CHECK(bs > 0 && m > 0 && t.na > 0, kErrInvalidValue, "invalid batch size ", bs, " x ", m);
    const Node& o = g_.nodes[g_.output];
    HALCDL_CHECK(o.op == OpKind::DetOut && (o.det_box == 4 || o.det_box == 5), kErrRuntimeUnsupported,
                 "this detection model does not run on the GPU (box values ", o.det_box, ")");
    const int kc = num_classes(), nd = o.det_box;
    HALCDL_CHECK(hp.class_weights.empty() || static_cast<int>(hp.class_weights.size()) == kc, kErrInvalidValue,
                 "class_weights needs ", kc, " values, got ", hp.class_weights.size());
    DeviceGuard guard(dev_);
    GpuPlan& p = plan(bs, c, h, w, true);
    const cudaStream_t st = ctx_.stream;
    const size_t img = static_cast<size_t>(c) * h * w;
    const size_t rows = static_cast<size_t>(bs) * t.na;  // rows per sub-batch
    const size_t nt = g_.n_trainable, nw = g_.n_weight;
    const bool adam = hp.solver == "adam";
    // the tied shadows' weights: their Σw² is taken off (each tied weight counts once)
    std::vector<const ParamInfo*> tied_w;
    for (auto [sh, ma] : g_.ties)
      if (g_.params[sh].kind == ParamKind::Weight) tied_w.push_back(&g_.params[sh]);
    const size_t ntw = tied_w.size();

    if (m > 1 && !T_.bytes()) T_.resize(nt * sizeof(float));
    if (adam && !M2_.bytes()) M2_.resize(nt * sizeof(float));
    ensure(dlogits_, rows * (kc + nd) * sizeof(float));
    ensure(det_tgt_, m * rows * sizeof(int));
    ensure(det_tbox_, m * rows * nd * sizeof(float));
    ensure(det_rows_, 2 * m * rows * sizeof(double));
    if (!hp.class_weights.empty()) ensure(classw_d_, kc * sizeof(float));
    ensure(stage_, static_cast<size_t>(m) * bs * img * sizeof(float));
    ensure(scratch_, std::max(k::loss_scratch_doubles(static_cast<int64_t>(nw)), size_t(1)) * sizeof(double));
    // scalars: Σw², Σw² of each tied shadow weight, then the finiteness flag
    const size_t sc_bytes = (ntw + 2) * sizeof(double);
    ensure(scalars_, sc_bytes);
    const size_t rb_bytes = sc_bytes + 2 * m * rows * sizeof(double);
    readback_.ensure(rb_bytes);
    double* sumsq = reinterpret_cast<double*>(scalars_.v());
    int* flag = reinterpret_cast<int*>(sumsq + ntw + 1);
    double* scratch = reinterpret_cast<double*>(scratch_.v());
    double* row_cls = reinterpret_cast<double*>(det_rows_.v());
    double* row_box = row_cls + m * rows;

    h2d(ctx_, stage_.v(), images, static_cast<size_t>(m) * bs * img * sizeof(float));
    h2d(ctx_, det_tgt_.v(), t.target, m * rows * sizeof(int));
    h2d(ctx_, det_tbox_.v(), t.tbox, m * rows * nd * sizeof(float));
    const float* cw = nullptr;
    if (!hp.class_weights.empty()) {
      h2d(ctx_, classw_d_.v(), hp.class_weights.data(), kc * sizeof(float));
      cw = classw_d_.f();
    }
    d2d(ctx_, S2_.v(), S_.v(), S_.bytes());
    const DeviceParams dp{P_.f(), S_.f(), S2_.f(), hp.batchnorm_momentum};
    for (int s = 0; s < m; ++s) {
      k::nchw_to_nhwc(stage_.f() + static_cast<size_t>(s) * bs * img, p.input(0), bs, c, static_cast<int64_t>(h) * w,
                      st);
      p.forward(dp, rng_base + s);
      // det::loss's gradient factors: scale / norm (float), times the head weight
      const float gs = static_cast<float>((1.f / m) / t.norm[s]);  // det::loss: scale / norm
      k::det_focal_huber(p.output(), det_tgt_.i() + s * rows, det_tbox_.f() + s * rows * nd, cw,
                         static_cast<int64_t>(rows), kc, nd, t.gamma, t.beta, gs * t.class_heads_weight,
                         gs * t.bbox_heads_weight, dlogits_.f(), row_cls + s * rows, row_box + s * rows, st);
      p.backward(dp, dlogits_.f(), s == 0 ? G_.f() : T_.f());
      if (s > 0 && nt) k::accumulate(G_.f(), T_.f(), nt, st);
    }
    // tied parameters: the shadows' gradients belong to their master (Model::commit_step)
    for (auto [sh, ma] : g_.ties) {
      const ParamInfo &a = g_.params[sh], &b = g_.params[ma];
      k::accumulate(G_.f() + b.offset, G_.f() + a.offset, a.size, st);
      CUDA_CHECK(cudaMemsetAsync(G_.f() + a.offset, 0, a.size * sizeof(float), st));
    }
    if (nw) k::sum_squares(P_.f(), nw, sumsq, scratch, st);
    else CUDA_CHECK(cudaMemsetAsync(sumsq, 0, sizeof(double), st));
    for (size_t j = 0; j < ntw; ++j) k::sum_squares(P_.f() + tied_w[j]->offset, tied_w[j]->size, sumsq + 1 + j, scratch, st);
    CUDA_CHECK(cudaMemsetAsync(flag, 1, sizeof(int), st));
    if (nt) {
      if (adam)
        k::adam_update_finite(P_.f(), G_.f(), M1_.f(), M2_.f(), nw, nt, hp.learning_rate, hp.adam_beta1,
                              hp.adam_beta2, hp.adam_epsilon, hp.weight_prior, adam_t, flag, st);
      else
        k::sgd_update_finite(P_.f(), G_.f(), M1_.f(), nw, nt, hp.learning_rate, hp.momentum, hp.weight_prior, flag,
                             st);
    }
    if (g_.n_state) k::check_finite(S2_.f(), g_.n_state, flag, st);
    d2h(ctx_, readback_.f(), scalars_.v(), sc_bytes);
    d2h(ctx_, reinterpret_cast<char*>(readback_.f()) + sc_bytes, det_rows_.v(), 2 * m * rows * sizeof(double));
    ctx_.sync();

    const double* hs = reinterpret_cast<const double*>(readback_.f());
    const double* hc = hs + ntw + 2;
    const double* hb = hc + m * rows;
    // per level and sub-batch as det::loss sums them (image, then anchor), then / norm, / m
    cls_level.assign(t.nlevels, 0.0);
    box_level.assign(t.nlevels, 0.0);
    double data = 0;
    for (int s = 0; s < m; ++s) {
      double l = 0;
      std::vector<double> cl(t.nlevels), bl(t.nlevels);
      for (int lv = 0; lv < t.nlevels; ++lv) {
        double sc = 0, sb = 0;
        for (int i = 0; i < bs; ++i)
          for (int64_t a = t.level_start[lv]; a < t.level_start[lv + 1]; ++a) {
            const size_t r = s * rows + static_cast<size_t>(i) * t.na + a;
            sc += hc[r];
            sb += hb[r];
          }
        cl[lv] = t.class_heads_weight * sc / t.norm[s];
        bl[lv] = t.bbox_heads_weight * sb / t.norm[s];
      }
      double lc = 0, lb = 0;
      for (int lv = 0; lv < t.nlevels; ++lv) {
        lc += cl[lv];
        lb += bl[lv];
      }
      l = lc + lb;
      HALCDL_CHECK(std::isfinite(l), kErrTrainingFailed, "training step failed: the loss became ", l,
                   " (lower the learning rate); the weights were not changed");
      data += l / m;
      for (int lv = 0; lv < t.nlevels; ++lv) {
        cls_level[lv] += cl[lv] / m;
        box_level[lv] += bl[lv] / m;
      }
    }
    int finite = 0;
    std::memcpy(&finite, hs + ntw + 1, sizeof(int));
    double sq = hs[0];
    for (size_t j = 0; j < ntw; ++j) sq -= hs[1 + j];
    const double total = data + 0.5 * hp.weight_prior * sq;
    HALCDL_CHECK(std::isfinite(total) && finite != 0, kErrTrainingFailed,
                 "training step failed: the loss, its gradient, the updated weights / optimizer state or the "
                 "running statistics would not be finite (the training diverged: lower the learning rate); the "
                 "model was not changed");
    if (nt) {
      if (adam)
        k::adam_update(P_.f(), G_.f(), M1_.f(), M2_.f(), nw, nt, hp.learning_rate, hp.adam_beta1, hp.adam_beta2,
                       hp.adam_epsilon, hp.weight_prior, adam_t, st);
      else
        k::sgd_update(P_.f(), G_.f(), M1_.f(), nw, nt, hp.learning_rate, hp.momentum, hp.weight_prior, st);
    }
    for (auto [sh, ma] : g_.ties) {  // Model::apply_ties: the masters' values into the shadows
      const ParamInfo &a = g_.params[sh], &b = g_.params[ma];
      d2d(ctx_, P_.f() + a.offset, P_.f() + b.offset, a.size * sizeof(float));
    }
    d2d(ctx_, S_.v(), S2_.v(), S_.bytes());
    double lcls = 0;
    for (double v : cls_level) lcls += v;
    return {total, lcls, {}};
  }

  void infer_detection_raw(const float* images, int n, int bs, int c, int h, int w, float* out) override {
    HALCDL_CHECK(bs > 0, kErrInvalidValue, "invalid batch size ", bs);
    DeviceGuard guard(dev_);
    const Node& o = g_.nodes[g_.output];
    HALCDL_CHECK(o.op == OpKind::DetOut, kErrInvalidValue, "this model is not a detection model");
    const size_t img = static_cast<size_t>(c) * h * w;
    for (int start = 0; start < n; start += bs) {
      const int cnt = std::min(bs, n - start);
      GpuPlan& p = plan(cnt, c, h, w, false);
      run_inference(p, images, false, start, cnt, c, h, w, img);
      const Dims& od = p.output_dims();
      const size_t row = static_cast<size_t>(od[1]) * od[2];
      d2h(ctx_, out + static_cast<size_t>(start) * row, p.output(), cnt * row * sizeof(float));
    }
    ctx_.sync();
  }

  size_t plan_bytes() const override {
    size_t b = 0;
    for (const auto& kv : plans_) b += kv.second->bytes();
    return b;
  }

 private:
  using Key = std::tuple<int, int, int, int, bool>;

  int num_classes() const { return g_.nodes[g_.output].channels; }

  // Model::plan, plus one retry after freeing the other plans when the GPU is full.
  GpuPlan& plan(int n, int c, int h, int w, bool training) {
    const Key key{n, c, h, w, training};
    auto it = plans_.find(key);
    if (it != plans_.end()) return *it->second;
    // Work queued by the caller (an earlier chunk) may still read a plan's or a scratch
    // buffer's memory: finish it before anything below frees one.
    ctx_.sync();
    if (plans_.size() >= 8) plans_.clear();
    const std::vector<Dims> dims{{n, c, h, w}};
    std::unique_ptr<GpuPlan> p;
    try {
      p = make_gpu_plan(ctx_, g_, dims, training, false, precision_);
    } catch (const Error& e) {
      if (e.code() != kErrNoGpuMemory) throw;
      plans_.clear();
      release_scratch();
      try {
        p = make_gpu_plan(ctx_, g_, dims, training, false, precision_);
      } catch (const Error& e2) {
        if (e2.code() != kErrNoGpuMemory) throw;
        HALCDL_THROW(kErrNoGpuMemory, "GPU out of memory for batch size ", n, " (", c, "x", h, "x", w,
                     " images, ", training ? "training" : "inference", "): lower the batch size [", e2.what(), "]");
      }
    }
    GpuPlan& ref = *p;
    plans_[key] = std::move(p);
    return ref;
  }

  void drop_plans() {
    ctx_.sync();
    plans_.clear();
  }

  // Per-call buffers, regrown on the next use.
  void release_scratch() {
    for (DeviceBuffer* b : {&scratch_, &dlogits_, &labels_d_, &pixw_d_, &stage_, &out_f_, &out_i_, &det_tgt_, &det_tbox_,
                            &det_rows_})
      b->reset();
  }

  // Images [start, start + cnt) into the plan's NHWC input, then the inference forward.
  void run_inference(GpuPlan& p, const float* images, bool on_device, int start, int cnt, int c, int h, int w,
                     size_t img) {
    const float* src = images + static_cast<size_t>(start) * img;
    if (!on_device) {
      ensure(stage_, static_cast<size_t>(cnt) * img * sizeof(float));
      h2d(ctx_, stage_.v(), src, static_cast<size_t>(cnt) * img * sizeof(float));
      src = stage_.f();
    }
    to_plan_input(p, 0, src, cnt, c, static_cast<int64_t>(h) * w, ctx_.stream);
    refresh_mirror();
    p.forward(DeviceParams{P_.f(), S_.f(), nullptr, 0.1f, mirror()}, 0);
  }

  // bf16: PB_ = bf16(P_) when P_ changed since the last cast (queued on the stream).
  void refresh_mirror() {
    if (precision_ != Precision::BF16 || !mirror_stale_ || !g_.n_trainable) return;
    k::f32_to_bf16(P_.f(), reinterpret_cast<uint16_t*>(PB_.v()), g_.n_trainable, ctx_.stream);
    mirror_stale_ = false;
  }
  const uint16_t* mirror() const {
    return precision_ == Precision::BF16 ? reinterpret_cast<const uint16_t*>(PB_.v()) : nullptr;
  }

  void upload_optimizer(DeviceBuffer& dst, const float* src, std::vector<float>& tmp) {
    if (!dst.bytes()) return;
    if (src) {
      arena_to_device(g_, src, tmp.data());
      h2d(ctx_, dst.v(), tmp.data(), g_.n_trainable * sizeof(float));
    } else {
      CUDA_CHECK(cudaMemsetAsync(dst.v(), 0, dst.bytes(), ctx_.stream));
    }
    ctx_.sync();
  }

  void download_arena(const DeviceBuffer& src, float* dst, std::vector<float>& tmp) {
    d2h(ctx_, tmp.data(), src.v(), g_.n_trainable * sizeof(float));
    ctx_.sync();
    arena_to_torch(g_, tmp.data(), dst);
  }

  int dev_;
  Graph g_;
  Context ctx_;
  // Arenas (device layouts, the graph's offsets): P weights+biases, G gradients, T sub-batch
  // gradient scratch (m > 1), M1/M2 optimizer state (M2 for Adam), S running statistics and
  // S2 its working copy during a step; PB the bf16 mirror of P (precision 'bfloat16').
  DeviceBuffer P_, PB_, G_, T_, M1_, M2_, S_, S2_;
  bool mirror_stale_ = true;
  DeviceBuffer scalars_, scratch_, dlogits_, labels_d_, pixw_d_, classw_d_, stage_, out_f_, out_i_;
  DeviceBuffer det_tgt_, det_tbox_, det_rows_;  // detection: targets, encoded boxes, per-row losses
  PinnedBuffer readback_, pin_img_, pin_lab_, pin_w_;
  Precision precision_ = Precision::F32;
  std::map<Key, std::unique_ptr<GpuPlan>> plans_;
};

DeviceEngine* create_engine_impl(const Graph* g, int device, const GpuOptions* options) {
  HALCDL_CHECK(g != nullptr, kErrInvalidValue, "create_engine: no graph");
  check_device(device);
  // Held while the engine is built, so that a failed constructor frees on this device too.
  DeviceGuard guard(device);
  return new CudaEngine(*g, device, options ? *options : GpuOptions{});
}

// ---- run_graph (tests): the GPU twin of run_op ------------------------------------------

void run_graph_impl(const RunRequest* req, RunResult* out) {
  HALCDL_CHECK(req && req->graph && out, kErrInvalidValue, "run_graph: missing request or result");
  const Graph& g = *req->graph;
  const size_t n_in = g.input_nodes.size();
  HALCDL_CHECK(req->input_dims.size() == n_in && req->inputs.size() == n_in, kErrInputsMissing, "run_graph: the graph has ",
               n_in, " inputs, got ", req->inputs.size(), " arrays and ", req->input_dims.size(), " shapes");
  for (size_t i = 0; i < n_in; ++i) {
    HALCDL_CHECK(req->inputs[i] != nullptr, kErrInputsMissing, "run_graph: input ", i, " is missing");
    HALCDL_CHECK(req->input_dims[i].size() == 4, kErrInvalidInputShape, "run_graph: inputs must be NCHW");
  }
  const size_t nt = g.n_trainable, ns = g.n_state;
  HALCDL_CHECK(nt == 0 || req->params, kErrInputsMissing, "run_graph: missing parameters");
  HALCDL_CHECK(ns == 0 || req->state, kErrInputsMissing, "run_graph: missing running statistics");
  check_device(req->device);
  const bool bf16 = req->precision == Precision::BF16;
  if (bf16) {
    const GpuInfo gi = device_info_impl(req->device);
    HALCDL_CHECK(gi.bf16, kErrRuntimeUnsupported, "precision 'bfloat16' needs a GPU of compute capability 8.0 or newer");
  }

  // Declaration order = reverse destruction order: the plan goes before the arenas, the
  // arenas before the context, and all of it while the guard holds the device.
  DeviceGuard guard(req->device);
  Context ctx(req->device, req->options);
  DeviceBuffer P(nt * sizeof(float)), G(nt * sizeof(float)), S(ns * sizeof(float)), S2(ns * sizeof(float)), tmp, go,
      PB(bf16 ? nt * sizeof(uint16_t) : 0);
  std::vector<float> host(nt);
  if (nt) {
    arena_to_device(g, req->params, host.data());
    h2d(ctx, P.v(), host.data(), nt * sizeof(float));
    if (bf16) k::f32_to_bf16(P.f(), reinterpret_cast<uint16_t*>(PB.v()), nt, ctx.stream);
  }
  h2d(ctx, S.v(), req->state, ns * sizeof(float));
  d2d(ctx, S2.v(), S.v(), ns * sizeof(float));
  ctx.sync();

  const bool backward = req->grad_output != nullptr;
  std::unique_ptr<GpuPlan> plan = make_gpu_plan(ctx, g, req->input_dims, req->training, backward, req->precision);
  for (size_t i = 0; i < n_in; ++i) {
    const Dims& d = req->input_dims[i];
    if (plan->bf16()) {  // host NCHW → device NCHW fp32 → bf16 NHWC
      ensure(tmp, numel(d) * sizeof(float));
      h2d(ctx, tmp.v(), req->inputs[i], numel(d) * sizeof(float));
      to_plan_input(*plan, static_cast<int>(i), tmp.f(), d[0], d[1], d[2] * d[3], ctx.stream);
      ctx.sync();
    } else {
      upload_nchw(ctx, req->inputs[i], d, plan->input(static_cast<int>(i)), tmp);
    }
  }
  const DeviceParams dp{P.f(), S.f(), S2.f(), 0.1f, bf16 ? reinterpret_cast<const uint16_t*>(PB.v()) : nullptr};
  plan->forward(dp, req->rng);
  const Dims od = plan->output_dims();
  out->output_dims = od;
  download_nchw(ctx, plan->output(), od, out->output, tmp);

  if (backward) {
    go.resize(numel(od) * sizeof(float));
    upload_nchw(ctx, req->grad_output, od, go.f(), tmp);
    plan->backward(dp, go.f(), G.f());
    out->input_grads.assign(n_in, {});
    for (size_t i = 0; i < n_in; ++i)
      download_nchw(ctx, plan->input_grad(static_cast<int>(i)), req->input_dims[i], out->input_grads[i], tmp);
    std::vector<float> dev(nt);
    d2h(ctx, dev.data(), G.v(), nt * sizeof(float));
    ctx.sync();
    out->param_grads.assign(nt, 0.f);
    if (nt) arena_to_torch(g, dev.data(), out->param_grads.data());
  }
  const int last = static_cast<int>(g.nodes.size()) - 1;
  if (req->training && last >= 0 && g.nodes[last].op == OpKind::Dropout)
    download_nchw(ctx, plan->dropout_mask(last), od, out->dropout_mask, tmp);
  if (req->training && last >= 0 && g.nodes[last].op == OpKind::BN) {
    ctx.sync();
    plan->bn_batch_stats(last, out->bn_mean, out->bn_var);
  }
  ctx.sync();
}

int device_count_api() { return device_count_impl(); }
GpuInfo device_info_api(int index) { return device_info_impl(index); }

}  // namespace
}  // namespace halcdl::gpu

extern "C" __attribute__((visibility("default"))) const halcdl::CudaApi* halcdl_cuda_api() {
  static const halcdl::CudaApi api{halcdl::kCudaAbiVersion, &halcdl::gpu::device_count_api,
                                   &halcdl::gpu::device_info_api, &halcdl::gpu::create_engine_impl,
                                   &halcdl::gpu::run_graph_impl};
  return &api;
}
