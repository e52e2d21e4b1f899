#include "engine/model.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>

#include "core/error.h"
#include "engine/kernels.h"

namespace halcdl {

namespace {
std::atomic<bool>& divergence_flag() {
  static std::atomic<bool> on{[] {
    const char* v = std::getenv("HALCDL_DIVERGENCE_CHECK");
    return !(v && std::strcmp(v, "0") == 0);
  }()};
  return on;
}
}  // namespace

void set_divergence_check(bool on) { divergence_flag().store(on); }
bool divergence_check() { return divergence_flag().load(); }

namespace {
constexpr int kMaxThreads = 1024;
int g_threads = 0;
void apply_threads() {
  if (g_threads > 0) omp_set_num_threads(g_threads);
}
}  // namespace

void set_num_threads(int n) {
  // The Python layer bounds thread_num by the hardware (set_system); this is the engine's own
  // limit: libgomp ends the process when it cannot create the threads asked for.
  HALCDL_CHECK(n >= 0 && n <= kMaxThreads, kErrInvalidValue, "thread_num must be in [0, ", kMaxThreads, "], got ", n);
  g_threads = n;
  apply_threads();
}
int get_num_threads() { return g_threads > 0 ? g_threads : omp_get_max_threads(); }

Model::Model(const std::vector<NodeSpec>& spec, uint64_t seed) : g_(build_graph(spec)), seed_(seed) {
  const size_t n = g_.n_trainable * sizeof(float);
  P_.resize(n);
  G_.resize(n);
  M1_.resize(n);
  S_.resize(g_.n_state * sizeof(float));
  S2_.resize(g_.n_state * sizeof(float));
  // Initialisation: conv weights Kaiming normal (fan_out, ReLU gain, as torchvision), fc
  // weights uniform ±1/sqrt(fan_in) (PyTorch's default), biases 0, bn scale 1 / shift 0,
  // running mean 0 / var 1.
  std::mt19937_64 rng(seed);
  for (const auto& p : g_.params) {
    float* base = (p.kind == ParamKind::State ? S_.f() : P_.f()) + p.offset;
    const Node& nd = g_.nodes[p.node];
    if (p.role == "weight" && (nd.op == OpKind::Conv || nd.op == OpKind::Deconv)) {
      // fan_out: output channels × kernel area (a deconv weight is (I, O, kh, kw))
      const int64_t o = nd.op == OpKind::Conv ? p.shape[0] : p.shape[1];
      double fan_out = static_cast<double>(o) * p.shape[2] * p.shape[3];
      std::normal_distribution<float> d(0.f, static_cast<float>(std::sqrt(2.0 / fan_out)));
      for (size_t i = 0; i < p.size; ++i) base[i] = d(rng);
    } else if (p.role == "weight" && nd.op == OpKind::FC) {
      float b = static_cast<float>(1.0 / std::sqrt(static_cast<double>(p.shape[1])));
      std::uniform_real_distribution<float> d(-b, b);
      for (size_t i = 0; i < p.size; ++i) base[i] = d(rng);
    } else if (p.role == "scale" || p.role == "running_var") {
      std::fill(base, base + p.size, 1.f);
    }  // biases, shifts, running means stay 0
  }
  apply_ties();
  const int k = num_classes();
  for (int i = 0; i < k; ++i) {
    class_ids_.push_back(i);
    label_index_[i] = i;
  }
}

int Model::num_classes() const {
  const Node& o = g_.nodes[g_.output];
  return o.channels;
}

Dims Model::output_dims(int64_t h, int64_t w) const { return g_.output_dims(h, w); }

std::vector<float> Model::get_param(const std::string& name) const {
  int i = g_.param_index(name);
  HALCDL_CHECK(i >= 0, kErrUnsupportedParam, "the model has no parameter '", name, "'");
  sync_host();
  const ParamInfo& p = g_.params[i];
  const float* base = (p.kind == ParamKind::State ? S_.f() : P_.f()) + p.offset;
  return std::vector<float>(base, base + p.size);
}

void Model::set_param(const std::string& name, const float* data, size_t n) {
  int i = g_.param_index(name);
  HALCDL_CHECK(i >= 0, kErrUnsupportedParam, "the model has no parameter '", name, "'");
  const ParamInfo& p = g_.params[i];
  HALCDL_CHECK(n == p.size, kErrInvalidInputShape, "parameter '", name, "' holds ", p.size, " values, got ", n);
  sync_host();
  float* base = (p.kind == ParamKind::State ? S_.f() : P_.f()) + p.offset;
  std::vector<float> old;
  if (dev_) old.assign(base, base + n);
  std::memcpy(base, data, n * sizeof(float));
  apply_ties();
  ++version_;
  update_max_valid_ = false;
  push_device([&] { std::memcpy(base, old.data(), n * sizeof(float)); });
}

std::vector<std::string> Model::copy_params_from(const Model& other) {
  sync_host();
  other.sync_host();
  std::vector<float> old_p, old_s;  // for the undo when the upload fails
  if (dev_) {
    old_p.assign(P_.f(), P_.f() + g_.n_trainable);
    old_s.assign(S_.f(), S_.f() + g_.n_state);
  }
  std::vector<std::string> copied;
  for (const auto& p : g_.params) {
    int j = other.g_.param_index(p.name);
    if (j < 0) continue;
    const ParamInfo& q = other.g_.params[j];
    if (q.shape != p.shape || q.kind != p.kind) continue;
    const float* src = (q.kind == ParamKind::State ? other.S_.f() : other.P_.f()) + q.offset;
    float* dst = (p.kind == ParamKind::State ? S_.f() : P_.f()) + p.offset;
    std::memcpy(dst, src, p.size * sizeof(float));
    copied.push_back(p.name);
  }
  apply_ties();
  ++version_;
  update_max_valid_ = false;
  push_device([&] {
    std::copy(old_p.begin(), old_p.end(), P_.f());
    std::copy(old_s.begin(), old_s.end(), S_.f());
  });
  return copied;
}

void Model::set_class_ids(const std::vector<int64_t>& ids) {
  HALCDL_CHECK(static_cast<int>(ids.size()) == num_classes(), kErrInvalidValue, "the model has ", num_classes(),
               " classes, got ", ids.size(), " class ids");
  std::unordered_map<int64_t, int> idx;
  for (size_t i = 0; i < ids.size(); ++i) {
    HALCDL_CHECK(!idx.count(ids[i]), kErrClassIdsNotUnique, "class id ", ids[i], " appears twice");
    idx[ids[i]] = static_cast<int>(i);
  }
  for (int64_t id : ignore_ids_)
    HALCDL_CHECK(!idx.count(id), kErrClassIdsOverlapIgnore, "id ", id, " is both a class id and an ignore class id");
  for (int64_t id : ignore_ids_) idx[id] = kIgnored;
  class_ids_ = ids;
  label_index_ = std::move(idx);
}

int Model::label_index(int64_t id) const {
  auto it = label_index_.find(id);
  return it == label_index_.end() ? kUnknown : it->second;
}

void Model::set_ignore_ids(const std::vector<int64_t>& ids) {
  std::unordered_map<int64_t, int> idx;
  for (size_t i = 0; i < class_ids_.size(); ++i) idx[class_ids_[i]] = static_cast<int>(i);
  for (int64_t id : ids) {
    HALCDL_CHECK(!idx.count(id) || idx[id] == kIgnored, kErrClassIdsOverlapIgnore, "id ", id,
                 " is both a class id and an ignore class id");
    idx[id] = kIgnored;
  }
  ignore_ids_ = ids;
  label_index_ = std::move(idx);
}

int64_t Model::labels_per_sample(int64_t h, int64_t w) const { return g_.labels_per_sample(h, w); }

void Model::set_hparams(const HParams& hp) {
  HALCDL_CHECK(hp.solver == "sgd" || hp.solver == "adam", kErrInvalidSolver, "invalid solver type '", hp.solver,
               "' (use 'sgd' or 'adam')");
  HALCDL_CHECK(hp.class_weights.empty() || static_cast<int>(hp.class_weights.size()) == num_classes(),
               kErrInvalidValue, "class_weights needs ", num_classes(), " values, got ", hp.class_weights.size());
  if (hp.solver != hp_.solver) reset_optimizer();
  hp_ = hp;
}

void Model::reset_optimizer() {
  update_max_valid_ = false;
  if (dev_) dev_->reset_optimizer();  // first: a failure leaves the host as it was
  std::memset(M1_.c(), 0, M1_.bytes());
  if (M2_.bytes()) std::memset(M2_.c(), 0, M2_.bytes());
  adam_t_ = 0;
}

Model::State Model::get_state() const {
  sync_host();
  State st;
  st.m1.assign(M1_.f(), M1_.f() + g_.n_trainable);
  if (M2_.bytes()) st.m2.assign(M2_.f(), M2_.f() + g_.n_trainable);
  else st.m2.assign(g_.n_trainable, 0.f);
  st.adam_t = adam_t_;
  st.steps = steps_;
  st.seed = seed_;
  return st;
}

void Model::set_state(const State& st) {
  HALCDL_CHECK(st.m1.size() == g_.n_trainable && st.m2.size() == g_.n_trainable, kErrInvalidInputShape,
               "optimizer state holds ", st.m1.size(), "/", st.m2.size(), " values, the model has ", g_.n_trainable,
               " trainable parameters");
  HALCDL_CHECK(st.adam_t >= 0, kErrInvalidValue, "invalid Adam step count ", st.adam_t);
  sync_host();
  State old{{}, {}, 0, 0, 0};  // for the undo when the upload fails
  const bool had_m2 = M2_.bytes() > 0;
  if (dev_) {
    old.m1.assign(M1_.f(), M1_.f() + g_.n_trainable);
    if (had_m2) old.m2.assign(M2_.f(), M2_.f() + g_.n_trainable);
    old.adam_t = adam_t_;
    old.steps = steps_;
    old.seed = seed_;
  }
  std::memcpy(M1_.f(), st.m1.data(), st.m1.size() * sizeof(float));
  if (!had_m2) M2_.resize(g_.n_trainable * sizeof(float));
  std::memcpy(M2_.f(), st.m2.data(), st.m2.size() * sizeof(float));
  adam_t_ = st.adam_t;
  steps_ = st.steps;
  seed_ = st.seed;
  update_max_valid_ = false;
  push_device([&] {
    std::copy(old.m1.begin(), old.m1.end(), M1_.f());
    if (had_m2) std::copy(old.m2.begin(), old.m2.end(), M2_.f());
    else M2_.resize(0);
    adam_t_ = old.adam_t;
    steps_ = old.steps;
    seed_ = old.seed;
  });
}

void Model::set_precision(Precision p) {
  if (p == precision_) return;
  if (dev_) {
    dev_->set_precision(p);  // 7742 where the GPU cannot; nothing changed then
  } else if (p == Precision::BF16) {
    check_bf16_supported();
  }
  precision_ = p;
  plans_.clear();
  grad_plans_.clear();
  last_kind_ = 0;
}

void Model::release_training_plans() {
  for (auto it = plans_.begin(); it != plans_.end();)
    it = std::get<4>(it->first) ? plans_.erase(it) : std::next(it);
  grad_plans_.clear();
  if (std::get<4>(last_key_) || last_kind_ == 2) last_kind_ = 0;
  if (dev_) dev_->release_training_plans();
}

void Model::sync_host() const {
  if (!dev_ || !host_stale_) return;
  Model* self = const_cast<Model*>(this);
  self->dev_->download(P_.f(), S_.f(), M1_.f(), M2_.bytes() ? M2_.f() : nullptr);
  self->host_stale_ = false;
  self->update_max_valid_ = false;
}

void Model::push_device(const std::function<void()>& undo) {
  if (!dev_) return;
  try {
    dev_->upload(P_.f(), S_.f(), M1_.f(), M2_.bytes() ? M2_.f() : nullptr);
  } catch (...) {
    // The call that changed the host fails as a whole: undo it there, and give the device
    // back what it held (best effort: the upload may have stopped half-way).
    undo();
    try {
      dev_->upload(P_.f(), S_.f(), M1_.f(), M2_.bytes() ? M2_.f() : nullptr);
    } catch (...) {
    }
    throw;
  }
}

void Model::set_gpu_options(const GpuOptions& o) {
  if (dev_) dev_->set_options(o);  // first: a failure leaves gpu_opts_ as it was
  gpu_opts_ = o;
}

void Model::set_device(int gpu) {
  HALCDL_CHECK(gpu >= -1, kErrInvalidValue, "invalid GPU index ", gpu);
  if (gpu == gpu_) return;
  sync_host();  // the host arenas hold the latest state from here on
  update_max_valid_ = false;
  if (gpu < 0) {
    dev_.reset();
    gpu_ = -1;
    return;
  }
  HALCDL_CHECK(g_.ties.empty() || g_.is_detection(), kErrRuntimeUnsupported,
               "shared (tied) parameters run on the GPU only in detection models; use runtime 'cpu'");
  HALCDL_CHECK(frozen_.empty(), kErrRuntimeUnsupported,
               "frozen parameters (freeze_backbone_level) are not supported on the GPU yet; use runtime 'cpu'");
  const CudaApi& api = cuda_api();  // 7742 / 7709 / 7717 / 7718
  std::unique_ptr<DeviceEngine> eng(api.create_engine(&g_, gpu, &gpu_opts_));  // 7708 / 7709 / 6021
  if (precision_ != Precision::F32) eng->set_precision(precision_);
  if (hp_.solver == "adam" && !M2_.bytes()) M2_.resize(g_.n_trainable * sizeof(float));
  eng->upload(P_.f(), S_.f(), M1_.f(), M2_.bytes() ? M2_.f() : nullptr);
  dev_ = std::move(eng);  // only now: a failure above left the model where it was
  gpu_ = gpu;
  host_stale_ = false;
  plans_.clear();         // the CPU plans' workspaces are not needed on the GPU
  grad_plans_.clear();
  last_kind_ = 0;
}

float* Model::staging(size_t floats) {
  // Page-locked only up to a bound: the engine keeps its staging for the model's lifetime, and
  // apply_dl_model assembles all of its images at once. Larger batches take pageable memory
  // (the engine copies from either).
  if (dev_ && floats <= kMaxPinnedFloats) return dev_->pinned_images(floats);
  if (staging_.bytes() < floats * sizeof(float)) staging_.resize(floats * sizeof(float));
  return staging_.f();
}

int* Model::label_staging(size_t n) {
  if (dev_) return dev_->pinned_labels(n);
  if (labels_.bytes() < n * sizeof(int)) labels_.resize(n * sizeof(int));
  return reinterpret_cast<int*>(labels_.c());
}

float* Model::weight_staging(size_t n) {
  if (dev_) return dev_->pinned_weights(n);
  if (pixel_w_.bytes() < n * sizeof(float)) pixel_w_.resize(n * sizeof(float));
  return pixel_w_.f();
}

Plan& Model::plan(int n, int c, int h, int w, bool training) {
  auto key = std::make_tuple(n, c, h, w, training);
  auto it = plans_.find(key);
  if (it != plans_.end()) return *it->second;
  if (plans_.size() >= 8) plans_.clear();
  ParamViews v{P_.f(), S_.f(), &version_};
  auto p = make_cpu_plan(g_, {{n, c, h, w}}, training, false, v, precision_, true, keep_);
  auto& ref = *p;
  plans_[key] = std::move(p);
  return ref;
}

TrainResult Model::train_step(const float* images, const int* labels, const float* pixel_w, int bs, int m, int c,
                              int h, int w, bool images_on_device, const StepHook* hook) {
  const bool dp = hook && hook->reduce;
  const uint64_t rng = seed_ * 0x9e3779b97f4a7c15ull + steps_ * 1315423911ull + (dp ? hook->sub_offset : 0);
  last_kind_ = 0;
  if (dev_) {
    if (hp_.solver == "adam" && !M2_.bytes()) M2_.resize(g_.n_trainable * sizeof(float));
    const int64_t t = hp_.solver == "adam" ? adam_t_ + 1 : adam_t_;
    TrainResult r = dev_->train_step(images, images_on_device, labels, pixel_w, bs, m, c, h, w, hp_, t, rng,
                                     dp ? hook : nullptr);
    adam_t_ = t;  // committed: the device step succeeded
    host_stale_ = true;
    ++version_;
    ++steps_;
    return r;
  }
  HALCDL_CHECK(!images_on_device, kErrInvalidInputData, "device images need the model on the GPU");
  apply_threads();
  Plan& p = plan(bs, c, h, w, true);
  last_kind_ = 0;
  const int k = num_classes();
  const size_t img = static_cast<size_t>(c) * h * w;
  const int64_t per = labels_per_sample(h, w);
  const size_t nlog = static_cast<size_t>(bs) * k * per;
  if (dlogits_.bytes() < nlog * sizeof(float)) dlogits_.resize(nlog * sizeof(float));
  const size_t nt = g_.n_trainable;
  std::memcpy(S2_.c(), S_.c(), S_.bytes());
  const float* cw = hp_.class_weights.empty() ? nullptr : hp_.class_weights.data();
  // Arenas only some configurations need, allocated on first use (then reused).
  if (m > 1 && !T_.bytes()) T_.resize(nt * sizeof(float));
  if (hp_.solver == "adam" && !M2_.bytes()) {
    M2_.resize(nt * sizeof(float));
    update_max_valid_ = false;
  }
  double ce = 0;
  const int mw = dp ? m * hook->world_size : m;  // sub-batches of the whole (global) step
  for (int s = 0; s < m; ++s) {
    std::memcpy(p.input_buffer(0), images + s * bs * img, bs * img * sizeof(float));
    p.forward(rng + s);
    const float* z = p.output();
    const size_t lo = static_cast<size_t>(s) * bs * per;
    double l = per == 1 ? kern::softmax_xent(z, labels + lo, cw, bs, k, 1.f / mw, dlogits_.f())
                        : kern::softmax_xent_pixels(z, labels + lo, cw, pixel_w ? pixel_w + lo : nullptr, bs, k, per,
                                                    1.f / mw, dlogits_.f());
    // Data parallel: every rank must reach the reduce (the others would wait for it), so a
    // non-finite or diverging loss is only reported after it, on all ranks alike.
    HALCDL_CHECK(dp || (std::isfinite(l) && l <= kMaxLoss), kErrTrainingFailed, "training step failed: the loss became ", l,
                 " (the training diverged: lower the learning rate); the weights were not changed");
    ce += l / mw;
    p.backward(dlogits_.f(), s == 0 ? G_.f() : T_.f());
    ran(bs, c, h, w, true);
    if (s > 0) kern::accumulate(G_.f(), T_.f(), nt);
    for (const BNStats& st : p.bn_stats()) {
      const Node& nd = g_.nodes[st.node];
      float* mean = S2_.f() + g_.params[nd.p_mean].offset;
      float* var = S2_.f() + g_.params[nd.p_var].offset;
      kern::bn_running_update(mean, var, st.mean, st.var, nd.channels, st.count, hp_.batchnorm_momentum);
    }
  }
  if (dp) {
    double sc[2] = {ce, std::isfinite(ce) && kern::all_finite(G_.f(), nt) ? 0.0 : 1.0};
    hook->reduce(StepReduce{G_.f(), nt, S2_.f(), S_.f(), g_.n_state, sc, 2, m, hp_.batchnorm_momentum, false, -1});
    HALCDL_CHECK(sc[1] == 0 && std::isfinite(sc[0]) && sc[0] <= kMaxLoss, kErrTrainingFailed,
                 "training step failed: the loss or the gradient is not finite on ",
                 sc[1] == 0 ? "the ranks' mean" : "at least one rank",
                 " (lower the learning rate); the weights were not changed");
    ce = sc[0];  // the global mean
  }
  return {commit_step(ce), ce, {}};
}

void Model::apply_ties() {
  for (auto [sh, ma] : g_.ties) {
    const ParamInfo &a = g_.params[sh], &b = g_.params[ma];
    std::memcpy(P_.f() + a.offset, P_.f() + b.offset, a.size * sizeof(float));
  }
}

void Model::set_frozen(const std::vector<std::string>& names) {
  std::vector<int> idx;
  for (const auto& n : names) {
    const int i = g_.param_index(n);
    HALCDL_CHECK(i >= 0 && g_.params[i].kind != ParamKind::State, kErrUnsupportedParam, "the model has no trainable "
                 "parameter '", n, "'");
    idx.push_back(i);
  }
  HALCDL_CHECK(idx.empty() || !dev_, kErrRuntimeUnsupported, "frozen parameters are not supported on the GPU yet");
  frozen_ = std::move(idx);
}

int64_t Model::num_shared_params() const {
  int64_t n = 0;
  for (auto t : g_.ties) n += static_cast<int64_t>(g_.params[t.first].size);
  return n;
}

double Model::commit_step(double ce) {
  const size_t nt = g_.n_trainable;
  // tied parameters: the shadows' gradients belong to their master
  for (auto [sh, ma] : g_.ties) {
    const ParamInfo &a = g_.params[sh], &b = g_.params[ma];
    kern::accumulate(G_.f() + b.offset, G_.f() + a.offset, a.size);
    std::memset(G_.f() + a.offset, 0, a.size * sizeof(float));
  }
  double sq = kern::sum_squares(P_.f(), g_.n_weight);
  for (auto t : g_.ties) {
    const ParamInfo& a = g_.params[t.first];
    if (a.kind == ParamKind::Weight) sq -= kern::sum_squares(P_.f() + a.offset, a.size);
  }
  const double reg = 0.5 * hp_.weight_prior * sq;
  const double total = ce + reg;
  HALCDL_CHECK(std::isfinite(total), kErrTrainingFailed,
               "training step failed: the loss is not finite (lower the learning rate); the weights were not "
               "changed");
  // Divergence check before the commit: the update it would make (weights, optimizer state)
  // and the new running statistics must all be finite; nothing has been written yet, so a
  // failure leaves the model bit-identical. Cheap path: one pass over the gradient (max |g|
  // and finiteness, what the former gradient-only check cost) and the maxima the previous
  // update left (computed inside it), which bound every value this update computes; only
  // when that bound is not far below FLT_MAX does the exact per-element pass run.
  const bool adam = hp_.solver == "adam";
  // HALCDL_DIVERGENCE_CHECK=0 (benchmark switch, model.h): the update alone, no maxima kept.
  const bool check = divergence_check();
  const bool timed = op_timer();  // HALCDL_OP_TIMER: the check and the update are timed too
  auto t0 = std::chrono::steady_clock::now();
  auto lap = [&](const char* key) {
    const auto t1 = std::chrono::steady_clock::now();
    add_op_time(key, std::chrono::duration<double>(t1 - t0).count());
    t0 = t1;
  };
  if (check) {
    bool grad_finite = true;
    const double gmax = kern::max_abs(G_.f(), nt, &grad_finite);
    if (!update_max_valid_) {
      update_max_.w = kern::max_abs(P_.f(), nt, nullptr);
      update_max_.m1 = kern::max_abs(M1_.f(), nt, nullptr);
      update_max_.m2 = adam ? kern::max_abs(M2_.f(), nt, nullptr) : 0.0;
      update_max_valid_ = true;
    }
    const double bound =
        !grad_finite ? std::numeric_limits<double>::infinity()
        : adam ? kern::adam_update_bound(update_max_, gmax, hp_.learning_rate, hp_.adam_beta1, hp_.adam_beta2,
                                         hp_.adam_epsilon, hp_.weight_prior, adam_t_ + 1)
               : kern::sgd_update_bound(update_max_, gmax, hp_.learning_rate, hp_.momentum, hp_.weight_prior);
    const bool finite_update =
        grad_finite &&
        (bound < 0.5 * std::numeric_limits<float>::max() ||
         (adam ? kern::adam_update_finite(P_.f(), G_.f(), M1_.f(), M2_.f(), g_.n_weight, nt, hp_.learning_rate,
                                          hp_.adam_beta1, hp_.adam_beta2, hp_.adam_epsilon, hp_.weight_prior,
                                          adam_t_ + 1)
               : kern::sgd_update_finite(P_.f(), G_.f(), M1_.f(), g_.n_weight, nt, hp_.learning_rate, hp_.momentum,
                                         hp_.weight_prior)));
    HALCDL_CHECK(finite_update, kErrTrainingFailed,
                 "training step failed: the gradient or the updated weights / optimizer state would not be finite "
                 "(the training diverged: lower the learning rate); the model was not changed");
    HALCDL_CHECK(kern::all_finite(S2_.f(), g_.n_state), kErrTrainingFailed,
                 "training step failed: the batch-norm running statistics would not be finite (the training "
                 "diverged: lower the learning rate); the model was not changed");
    if (timed) lap("train_step:check");
  } else {
    update_max_valid_ = false;
  }
  // Commit: update, optimizer state, running statistics.
  std::vector<std::vector<float>> keep;
  for (int i : frozen_) {
    const ParamInfo& a = g_.params[i];
    keep.emplace_back(P_.f() + a.offset, P_.f() + a.offset + a.size);
  }
  if (adam) {
    ++adam_t_;
    kern::adam_update(P_.f(), G_.f(), M1_.f(), M2_.f(), g_.n_weight, nt, hp_.learning_rate, hp_.adam_beta1,
                      hp_.adam_beta2, hp_.adam_epsilon, hp_.weight_prior, adam_t_, check ? &update_max_ : nullptr);
  } else {
    kern::sgd_update(P_.f(), G_.f(), M1_.f(), g_.n_weight, nt, hp_.learning_rate, hp_.momentum, hp_.weight_prior,
                     check ? &update_max_ : nullptr);
  }
  for (size_t j = 0; j < frozen_.size(); ++j) {
    const ParamInfo& a = g_.params[frozen_[j]];
    std::copy(keep[j].begin(), keep[j].end(), P_.f() + a.offset);
    std::fill(M1_.f() + a.offset, M1_.f() + a.offset + a.size, 0.f);
    if (M2_.bytes()) std::fill(M2_.f() + a.offset, M2_.f() + a.offset + a.size, 0.f);
  }
  if (timed) lap(check ? "train_step:update" : "train_step:update_unchecked");
  apply_ties();
  // frozen parameters got their old values back: the maxima must cover those too
  if (!frozen_.empty()) update_max_valid_ = false;
  std::memcpy(S_.c(), S2_.c(), S_.bytes());
  ++version_;
  ++steps_;
  return total;
}

void Model::set_detection(const det::Config& c) {
  HALCDL_CHECK(g_.is_detection(), kErrInvalidValue, "this model is not a detection model");
  const Node& o = g_.nodes[g_.output];
  const int levels = static_cast<int>(o.inputs.size() / 2);
  HALCDL_CHECK(c.min_level >= 1 && c.max_level >= c.min_level && c.max_level - c.min_level + 1 == levels,
               kErrDetParamValue, "min_level/max_level (", c.min_level, "/", c.max_level, ") do not match the ",
               levels, " levels of the network");
  HALCDL_CHECK(c.num_subscales >= 1 && !c.aspect_ratios.empty() && !c.angles.empty() &&
                   c.anchors_per_position() == o.det_anchors,
               kErrDetParamValue, "anchor_aspect_ratios × anchor_num_subscales (× anchor_angles) must give the network's ",
               o.det_anchors, " anchors per position");
  HALCDL_CHECK(c.box_dim() == o.det_box, kErrDetParamValue, "instance_type does not match the network's ", o.det_box,
               " box values");
  for (float a : c.angles) HALCDL_CHECK(std::isfinite(a), kErrDetParamValue, "anchor angles must be finite");
  for (float r : c.aspect_ratios)
    HALCDL_CHECK(std::isfinite(r) && r > 0, kErrDetParamValue, "anchor aspect ratios must be > 0, got ", r);
  HALCDL_CHECK(c.bg_iou <= c.fg_iou && c.bg_iou >= 0 && c.fg_iou <= 1, kErrDetParamValue,
               "invalid IoU thresholds for the anchor assignment");
  HALCDL_CHECK(c.min_confidence >= 0 && c.min_confidence <= 1 && c.max_overlap >= 0 && c.max_overlap <= 1 &&
                   c.max_overlap_class_agnostic >= 0 && c.max_overlap_class_agnostic <= 1 &&
                   c.max_num_detections >= -1 && c.pre_nms_top_n >= 1,
               kErrDetParamValue, "invalid detection inference parameters");
  HALCDL_CHECK(std::isfinite(c.class_heads_weight) && c.class_heads_weight >= 0 &&
                   std::isfinite(c.bbox_heads_weight) && c.bbox_heads_weight >= 0 && c.gamma >= 0 && c.beta > 0,
               kErrDetParamValue, "invalid detection loss weights");
  det_ = c;
  anchors_.clear();
}

std::vector<det::Level> Model::det_levels(int h, int w) const {
  HALCDL_CHECK(g_.is_detection(), kErrInvalidValue, "this model is not a detection model");
  std::vector<Dims> in;
  for (int i : g_.input_nodes) in.push_back({1, g_.nodes[i].channels, h, w});
  const std::vector<Dims> d = g_.infer_shapes(in);
  const Node& o = g_.nodes[g_.output];
  std::vector<det::Level> r;
  for (size_t l = 0; l < o.inputs.size(); l += 2) {
    const Dims& x = d[o.inputs[l]];
    const int stride = 1 << (det_.min_level + static_cast<int>(l / 2));
    HALCDL_CHECK(x[2] * stride == h && x[3] * stride == w, kErrDetImageSize, "image size ", w, "x", h,
                 ": level ", det_.min_level + l / 2, " has a ", x[3], "x", x[2], " feature map, not the image size / ",
                 stride, " (image width and height must be multiples of 2^max_level = ", 1 << det_.max_level, ")");
    r.push_back({x[2], x[3], stride});
  }
  return r;
}

const std::vector<float>& Model::anchors(int h, int w, std::vector<int64_t>* level_start) {
  auto key = std::make_pair(h, w);
  auto it = anchors_.find(key);
  if (it == anchors_.end()) {
    auto lv = det_levels(h, w);
    std::vector<int64_t> st{0};
    for (auto& l : lv) st.push_back(st.back() + l.h * l.w * det_.anchors_per_position());
    if (anchors_.size() >= 8) anchors_.clear();
    it = anchors_.emplace(key, std::make_pair(det::make_anchors(det_, lv), st)).first;
  }
  if (level_start) *level_start = it->second.second;
  return it->second.first;
}

TrainResult Model::train_step_detection(const float* images, const float* boxes, const int* labels,
                                        const int64_t* box_off, int bs, int m, int c, int h, int w) {
  HALCDL_CHECK(g_.is_detection(), kErrInvalidValue, "this model is not a detection model");
  apply_threads();
  std::vector<int64_t> ls;
  const std::vector<float>& anc = anchors(h, w, &ls);
  if (dev_) return train_step_detection_gpu(images, boxes, labels, box_off, bs, m, c, h, w, anc, ls);
  Plan& p = plan(bs, c, h, w, true);
  const int k = num_classes();
  const int64_t na = ls.back();
  const size_t img = static_cast<size_t>(c) * h * w;
  const int D = det_.box_dim();
  const size_t nout = static_cast<size_t>(bs) * na * (k + D);
  if (dlogits_.bytes() < nout * sizeof(float)) dlogits_.resize(nout * sizeof(float));
  const size_t nt = g_.n_trainable;
  std::memcpy(S2_.c(), S_.c(), S_.bytes());
  const float* cw = hp_.class_weights.empty() ? nullptr : hp_.class_weights.data();
  if (m > 1 && !T_.bytes()) T_.resize(nt * sizeof(float));
  if (hp_.solver == "adam" && !M2_.bytes()) M2_.resize(nt * sizeof(float));
  const int nl = static_cast<int>(ls.size()) - 1;
  std::vector<double> cls_l(nl, 0.0), box_l(nl, 0.0);
  double data = 0;
  for (int s = 0; s < m; ++s) {
    std::memcpy(p.input_buffer(0), images + s * bs * img, bs * img * sizeof(float));
    p.forward(seed_ * 0x9e3779b97f4a7c15ull + steps_ * 1315423911ull + s);
    std::vector<int64_t> off(bs + 1);
    for (int i = 0; i <= bs; ++i) off[i] = box_off[s * bs + i] - box_off[s * bs];
    const int64_t b0 = box_off[s * bs];
    det::LossResult r = det::loss(p.output(), bs, na, k, anc.data(), ls.data(), nl, boxes + D * b0, labels + b0,
                                  off.data(), cw, det_, 1.f / m, dlogits_.f());
    const double l = r.cls + r.box;
    HALCDL_CHECK(std::isfinite(l), kErrTrainingFailed, "training step failed: the loss became ", l,
                 " (lower the learning rate); the weights were not changed");
    data += l / m;
    for (int j = 0; j < nl; ++j) {
      cls_l[j] += r.cls_level[j] / m;
      box_l[j] += r.box_level[j] / m;
    }
    p.backward(dlogits_.f(), s == 0 ? G_.f() : T_.f());
    if (s > 0) kern::accumulate(G_.f(), T_.f(), nt);
    for (const BNStats& st : p.bn_stats()) {
      const Node& nd = g_.nodes[st.node];
      float* mean = S2_.f() + g_.params[nd.p_mean].offset;
      float* var = S2_.f() + g_.params[nd.p_var].offset;
      kern::bn_running_update(mean, var, st.mean, st.var, nd.channels, st.count, hp_.batchnorm_momentum);
    }
  }
  TrainResult res{0, 0, {}};
  res.total_loss = commit_step(data);
  double cls = 0;
  for (int j = 0; j < nl; ++j) {
    const std::string lv = std::to_string(det_.min_level + j);
    res.terms.push_back({"classhead" + lv + "_loss", cls_l[j]});
    res.terms.push_back({"bboxhead" + lv + "_loss", box_l[j]});
    cls += cls_l[j];
  }
  res.loss_cls = cls;
  return res;
}

// The GPU step: the anchor assignment here (det::match, det::encode / encode2: the CPU's code), the
// network, losses, backward, ties and update on the device (DeviceEngine::train_step_detection).
TrainResult Model::train_step_detection_gpu(const float* images, const float* boxes, const int* labels,
                                            const int64_t* box_off, int bs, int m, int c, int h, int w,
                                            const std::vector<float>& anc, const std::vector<int64_t>& ls) {
  const int64_t na = ls.back();
  const int nl = static_cast<int>(ls.size()) - 1;
  const int D = det_.box_dim();
  const size_t rows = static_cast<size_t>(bs) * na;
  // rectangle2: the boxes of classes without orientation become axis-parallel (phi 0) before
  // matching, as in det::loss
  std::vector<float> ap;
  if (det_.oriented && !det_.no_orientation.empty()) {
    ap.assign(boxes, boxes + D * box_off[m * bs]);
    for (int64_t j = box_off[0]; j < box_off[m * bs]; ++j)
      if (!det_.has_orientation(labels[j])) det::axis_parallel2(boxes + D * j, ap.data() + D * j);
    boxes = ap.data();
  }
  std::vector<int> tgt(m * rows);
  std::vector<float> tbox(m * rows * D, 0.f);
  std::vector<double> norm(m);
  for (int s = 0; s < m; ++s) {
    int64_t fg = 0;
    for (int i = 0; i < bs; ++i) {
      const int64_t b0 = box_off[s * bs + i];
      const int nb = static_cast<int>(box_off[s * bs + i + 1] - b0);
      int* mt = tgt.data() + s * rows + static_cast<size_t>(i) * na;
      det::match(anc.data(), na, boxes + D * b0, nb, det_, mt);
      for (int64_t a = 0; a < na; ++a) {
        if (mt[a] < 0) continue;
        const float* gb = boxes + D * (b0 + mt[a]);
        const float* an = anc.data() + D * a;
        float* tg = tbox.data() + D * (s * rows + i * na + a);
        const int cls = labels[b0 + mt[a]];
        if (!det_.oriented) {
          det::encode(an, gb, tg);
        } else if (det_.has_orientation(cls)) {
          det::encode2(an, gb, tg, det_.ignore_direction);
        } else {  // the axis-parallel target, no angle term (NaN: det_kernels.cuh)
          float nbx[5];
          det::no_orientation_target(an, gb, nbx);
          det::encode2(an, nbx, tg, false);
          tg[4] = std::numeric_limits<float>::quiet_NaN();
        }
        mt[a] = cls;
        ++fg;
      }
    }
    norm[s] = static_cast<double>(std::max<int64_t>(fg, 1));
  }
  DeviceEngine::DetTargets t;
  t.target = tgt.data();
  t.tbox = tbox.data();
  t.norm = norm.data();
  t.level_start = ls.data();
  t.nlevels = nl;
  t.na = na;
  t.gamma = det_.gamma;
  t.beta = det_.beta;
  t.class_heads_weight = det_.class_heads_weight;
  t.bbox_heads_weight = det_.bbox_heads_weight;
  if (hp_.solver == "adam" && !M2_.bytes()) M2_.resize(g_.n_trainable * sizeof(float));
  const int64_t at = hp_.solver == "adam" ? adam_t_ + 1 : adam_t_;
  const uint64_t rng = seed_ * 0x9e3779b97f4a7c15ull + steps_ * 1315423911ull;
  std::vector<double> cls_l, box_l;
  TrainResult r = dev_->train_step_detection(images, t, bs, m, c, h, w, hp_, at, rng, cls_l, box_l);
  adam_t_ = at;  // committed: the device step succeeded
  host_stale_ = true;
  ++version_;
  ++steps_;
  for (int j = 0; j < nl; ++j) {
    const std::string lv = std::to_string(det_.min_level + j);
    r.terms.push_back({"classhead" + lv + "_loss", cls_l[j]});
    r.terms.push_back({"bboxhead" + lv + "_loss", box_l[j]});
  }
  return r;
}

std::vector<std::vector<det::Detection>> Model::infer_detection(const float* images, int n, int bs, int c, int h,
                                                                int w) {
  HALCDL_CHECK(g_.is_detection(), kErrInvalidValue, "this model is not a detection model");
  apply_threads();
  std::vector<int64_t> ls;
  const std::vector<float>& anc = anchors(h, w, &ls);
  const int k = num_classes();
  const int64_t na = ls.back();
  const size_t img = static_cast<size_t>(c) * h * w;
  std::vector<std::vector<det::Detection>> out(n);
  if (dev_) {  // the network on the GPU, decoding and NMS here (docs/gpu.md)
    const size_t row = static_cast<size_t>(na) * (k + det_.box_dim());
    std::vector<float> raw(static_cast<size_t>(std::min(n, bs)) * row);
    for (int start = 0; start < n; start += bs) {
      const int cnt = std::min(bs, n - start);
      dev_->infer_detection_raw(images + start * img, cnt, cnt, c, h, w, raw.data());
      for (int i = 0; i < cnt; ++i)
        out[start + i] = det::detect(raw.data() + i * row, na, k, anc.data(), ls.data(),
                                     static_cast<int>(ls.size()) - 1, det_, h, w);
    }
    return out;
  }
  for (int start = 0; start < n; start += bs) {
    const int cnt = std::min(bs, n - start);
    Plan& p = plan(cnt, c, h, w, false);
    std::memcpy(p.input_buffer(0), images + start * img, cnt * img * sizeof(float));
    p.forward(0);
    const float* o = p.output();
    for (int i = 0; i < cnt; ++i)
      out[start + i] = det::detect(o + static_cast<size_t>(i) * na * (k + det_.box_dim()), na, k, anc.data(), ls.data(),
                                   static_cast<int>(ls.size()) - 1, det_, h, w);
  }
  return out;
}

void Model::infer_detection_raw(const float* images, int n, int bs, int c, int h, int w, float* out) {
  HALCDL_CHECK(g_.is_detection(), kErrInvalidValue, "this model is not a detection model");
  HALCDL_CHECK(bs > 0, kErrInvalidValue, "invalid batch size ", bs);
  std::vector<int64_t> ls;
  anchors(h, w, &ls);  // checks the image size (7730)
  const size_t row = static_cast<size_t>(ls.back()) * (num_classes() + det_.box_dim());
  const size_t img = static_cast<size_t>(c) * h * w;
  apply_threads();
  if (dev_) return dev_->infer_detection_raw(images, n, bs, c, h, w, out);
  for (int start = 0; start < n; start += bs) {
    const int cnt = std::min(bs, n - start);
    Plan& p = plan(cnt, c, h, w, false);
    std::memcpy(p.input_buffer(0), images + start * img, cnt * img * sizeof(float));
    p.forward(0);
    std::memcpy(out + start * row, p.output(), cnt * row * sizeof(float));
  }
}

void Model::infer(const float* images, int n, int bs, int c, int h, int w, float* probs, bool on_device) {
  apply_threads();
  last_kind_ = 0;
  HALCDL_CHECK(labels_per_sample(h, w) == 1, kErrInvalidInputShape,
               "this network outputs one score per pixel: use the segmentation inference");
  if (dev_) return dev_->infer(images, on_device, n, bs, c, h, w, probs, on_device);
  HALCDL_CHECK(!on_device, kErrInvalidInputData, "device images need the model on the GPU");
  const int k = num_classes();
  const size_t img = static_cast<size_t>(c) * h * w;
  for (int start = 0; start < n; start += bs) {
    const int cnt = std::min(bs, n - start);
    Plan& p = plan(cnt, c, h, w, false);
    std::memcpy(p.input_buffer(0), images + start * img, cnt * img * sizeof(float));
    p.forward(0);
    ran(cnt, c, h, w, false);
    kern::softmax_rows(p.output(), cnt, k, probs + static_cast<size_t>(start) * k);
  }
}

void Model::infer_segmentation(const float* images, int n, int bs, int c, int h, int w, int* index,
                               float* confidence, bool on_device) {
  apply_threads();
  last_kind_ = 0;
  const int k = num_classes();
  const int64_t per = labels_per_sample(h, w);
  HALCDL_CHECK(per > 1, kErrInvalidInputShape, "this network does not output one score per pixel");
  if (dev_) return dev_->infer_segmentation(images, on_device, n, bs, c, h, w, index, confidence, on_device);
  HALCDL_CHECK(!on_device, kErrInvalidInputData, "device images need the model on the GPU");
  const size_t img = static_cast<size_t>(c) * h * w;
  for (int start = 0; start < n; start += bs) {
    const int cnt = std::min(bs, n - start);
    Plan& p = plan(cnt, c, h, w, false);
    std::memcpy(p.input_buffer(0), images + start * img, cnt * img * sizeof(float));
    p.forward(0);
    ran(cnt, c, h, w, false);
    kern::softmax_argmax_pixels(p.output(), cnt, k, per, index + start * per, confidence + start * per);
  }
}

void Model::set_keep(const std::vector<std::string>& names) {
  std::vector<int> k;
  for (const auto& nm : names) {
    int idx = -1;
    for (size_t i = 0; i < g_.nodes.size(); ++i)
      if (g_.nodes[i].name == nm) idx = static_cast<int>(i);
    HALCDL_CHECK(idx >= 0, kErrUnsupportedParam, "the network has no layer '", nm, "'");
    if (std::find(k.begin(), k.end(), idx) == k.end()) k.push_back(idx);
  }
  std::sort(k.begin(), k.end());
  if (k == keep_) return;
  keep_ = std::move(k);
  plans_.clear();
  grad_plans_.clear();
  last_kind_ = 0;
}

std::vector<std::string> Model::keep_names() const {
  std::vector<std::string> r;
  for (int i : keep_) r.push_back(g_.nodes[i].name);
  return r;
}

Plan* Model::last_plan() {
  if (last_kind_ == 1) {
    auto it = plans_.find(last_key_);
    return it == plans_.end() ? nullptr : it->second.get();
  }
  if (last_kind_ == 2) {
    auto [n, c, h, w, t] = last_key_;
    auto it = grad_plans_.find(std::make_tuple(n, c, h, w));
    return it == grad_plans_.end() ? nullptr : it->second.get();
  }
  return nullptr;
}

std::vector<float> Model::layer_tensor(const std::string& name, bool grad, Dims* dims) {
  HALCDL_CHECK(!dev_, kErrRuntimeUnsupported, "layer activations and gradients are not available on the GPU yet "
               "(run the model on the CPU to read them)");
  int idx = -1;
  for (size_t i = 0; i < g_.nodes.size(); ++i)
    if (g_.nodes[i].name == name) idx = static_cast<int>(i);
  HALCDL_CHECK(idx >= 0, kErrUnsupportedParam, "the network has no layer '", name, "'");
  HALCDL_CHECK(std::find(keep_.begin(), keep_.end(), idx) != keep_.end(), kErrInvalidInputShape, "layer '", name,
               "' is not kept: its output is only kept for layers named before the run");
  Plan* p = last_plan();
  HALCDL_CHECK(p, kErrInvalidInputShape, "no batch has run since layer '", name, "' was kept (apply or train first)");
  HALCDL_CHECK(!grad || last_kind_ == 2 || std::get<4>(last_key_), kErrInvalidInputShape, "the last run of layer '",
               name, "' was an inference: gradients exist after a training step (or a heatmap) only");
  const Dims& d = p->node_dims(idx);
  size_t cnt = 1;
  for (auto v : d) cnt *= static_cast<size_t>(v);
  std::vector<float> out(cnt);
  p->read_tensor(idx, grad, out.data());
  *dims = d;
  return out;
}

std::vector<float> Model::grad_forward(const float* images, int n, int c, int h, int w, Dims* out_dims,
                                       bool guided) {
  HALCDL_CHECK(!dev_, kErrRuntimeUnsupported, "heatmaps (forward + backward without an update) are not supported "
               "on the GPU yet (run the model on the CPU)");
  HALCDL_CHECK(!g_.is_detection(), kErrRuntimeUnsupported, "heatmaps are not supported for detection models");
  apply_threads();
  last_kind_ = 0;
  auto key = std::make_tuple(n, c, guided ? -h : h, w);
  auto it = grad_plans_.find(key);
  if (it == grad_plans_.end()) {
    if (grad_plans_.size() >= 4) grad_plans_.clear();
    ParamViews v{P_.f(), S_.f(), &version_};
    it = grad_plans_.emplace(key, make_cpu_plan(g_, {{n, c, h, w}}, true, guided, v, precision_, !guided, keep_, true,
                                                guided))
             .first;
  }
  Plan& p = *it->second;
  std::memcpy(p.input_buffer(0), images, static_cast<size_t>(n) * c * h * w * sizeof(float));
  p.forward(0);
  last_key_ = std::make_tuple(n, c, guided ? -h : h, w, true);
  last_kind_ = 2;
  const Dims& od = p.output_dims();
  size_t cnt = 1;
  for (auto v : od) cnt *= static_cast<size_t>(v);
  *out_dims = od;
  return std::vector<float>(p.output(), p.output() + cnt);
}

void Model::grad_backward(const float* grad_output, size_t n) {
  HALCDL_CHECK(!dev_, kErrRuntimeUnsupported, "heatmaps are not supported on the GPU yet");
  Plan* p = last_kind_ == 2 ? last_plan() : nullptr;
  HALCDL_CHECK(p, kErrInvalidInputShape, "grad_backward needs a grad_forward first");
  size_t cnt = 1;
  for (auto v : p->output_dims()) cnt *= static_cast<size_t>(v);
  HALCDL_CHECK(n == cnt, kErrInvalidInputShape, "the output gradient needs ", cnt, " values, got ", n);
  apply_threads();
  if (grad_scratch_.bytes() < g_.n_trainable * sizeof(float)) grad_scratch_.resize(g_.n_trainable * sizeof(float));
  p->backward(grad_output, grad_scratch_.f());
}

std::vector<float> Model::grad_input(Dims* dims) {
  Plan* p = last_kind_ == 2 ? last_plan() : nullptr;
  HALCDL_CHECK(p && std::get<2>(last_key_) < 0, kErrInvalidInputShape, "grad_input needs a guided grad_forward "
               "and grad_backward first");
  const Dims& d = p->input_dims(0);
  size_t cnt = 1;
  for (auto v : d) cnt *= static_cast<size_t>(v);
  std::vector<float> out(cnt);
  p->input_grad(0, out.data());
  *dims = d;
  return out;
}

std::string Model::summary() const {
  std::ostringstream os;
  os << "layer                          type      output channels  params\n";
  for (const auto& nd : g_.nodes) {
    size_t np = 0;
    for (int pi : {nd.p_weight, nd.p_bias})
      if (pi >= 0) np += g_.params[pi].size;
    os.width(31);
    os << std::left << nd.name;
    os.width(10);
    os << op_name(nd.op);
    os.width(17);
    os << nd.channels << np << "\n";
  }
  os << "trainable parameters: " << g_.n_trainable << "\n";
  return os.str();
}

size_t Model::cpu_plan_bytes() const {
  size_t t = 0;
  for (const auto& kv : plans_) t += kv.second->workspace_bytes();
  for (const auto& kv : grad_plans_) t += kv.second->workspace_bytes();
  return t;
}

}  // namespace halcdl
