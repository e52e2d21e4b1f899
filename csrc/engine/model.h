// A model: graph, parameter arenas, optimizer state, cached plans, and the train step.
//
// Arenas (one buffer each, same offsets): P weights+biases, G gradients, T gradient scratch
// for sub-batches after the first (allocated when a multiplier > 1 is first used), M1/M2
// optimizer state (M2 only for Adam, on first use); S running statistics.
// One train step = for each of the m sub-batches: forward → loss (value and gradient scaled
// by 1/m) → backward (into G for the first, T then G += T for the rest); then one update.
// Nothing persistent (P, M1, M2, S, step counters) changes until the whole step succeeded.
#pragma once
#include "engine/kernels.h"
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "core/buffer.h"
#include "engine/detection.h"
#include "engine/device.h"
#include "engine/graph.h"
#include "engine/hparams.h"
#include "engine/plan.h"

namespace halcdl {

void set_num_threads(int n);   // 0: OpenMP's default
int get_num_threads();
// Benchmark switch, CPU only (docs/performance.md "Cost of the divergence check"): off, a
// training step skips the update's divergence check (gradient pass, bounds, exact pass,
// running-statistics pass, the maxima fused into the update). On by default; off with
// HALCDL_DIVERGENCE_CHECK=0 in the environment (read once) or core._set_divergence_check.
// Never switch it off outside a measurement: a diverging step then corrupts the model.
void set_divergence_check(bool on);
bool divergence_check();

class Model {
 public:
  Model(const std::vector<NodeSpec>& spec, uint64_t seed);

  const Graph& graph() const { return g_; }
  std::vector<float> get_param(const std::string& name) const;
  void set_param(const std::string& name, const float* data, size_t n);
  // Copies every parameter (and running statistic) whose name and shape match; returns the
  // names copied. Used when the head or the input layer is re-created.
  std::vector<std::string> copy_params_from(const Model& other);
  int64_t num_trainable_params() const { return static_cast<int64_t>(g_.n_trainable); }
  int num_classes() const;
  Dims output_dims(int64_t h, int64_t w) const;

  void set_class_ids(const std::vector<int64_t>& ids);
  // Segmentation: ids whose pixels the loss skips (7797 if one is also a class id).
  void set_ignore_ids(const std::vector<int64_t>& ids);
  // Output index of a label id; kIgnored for an ignored id; kUnknown otherwise.
  static constexpr int kIgnored = -1, kUnknown = -2;
  int label_index(int64_t id) const;
  // Labels per sample: 1 (classification) or H·W (segmentation, the output at image size);
  // 7735 when the network's output fits neither.
  int64_t labels_per_sample(int64_t h, int64_t w) const;
  void set_hparams(const HParams& hp);
  const HParams& hparams() const { return hp_; }
  void reset_optimizer();
  // 'float32' or 'bfloat16' (bf16 compute, fp32 master weights); 7742 without bf16 hardware.
  void set_precision(Precision p);
  Precision precision() const { return precision_; }
  // Frees the cached training plans (their workspaces); a later train step rebuilds one.
  void release_training_plans();

  // Device: -1 = CPU, k >= 0 = GPU k (through the CUDA backend, engine/device.h). Moving
  // takes parameters, running statistics and optimizer state along; training continues
  // where it was. On failure (7742 no CUDA build, 7708 no such GPU, 7709/7717/7718 missing
  // libraries, 6021) the model stays where it was, unchanged.
  void set_device(int gpu);
  int device() const { return gpu_; }
  void set_gpu_options(const GpuOptions& o);
  const GpuOptions& gpu_options() const { return gpu_opts_; }
  DeviceEngine* engine() { return dev_.get(); }

  // Everything besides parameters that a resumed run needs to continue bit-identically.
  struct State {
    std::vector<float> m1, m2;   // SGD velocity / Adam first moment; Adam second moment
    int64_t adam_t;
    uint64_t steps, seed;
  };
  State get_state() const;
  void set_state(const State& st);  // validates sizes first; 7735 on mismatch

  // `images`: bs·m plain NCHW images; `labels`: class indices, labels_per_sample() per image
  // (kIgnored = skip the pixel); `pixel_w`: null or one weight per label.
  // With `images_on_device` (GPU only) `images` is device memory (a CuPy array), used in place.
  // `hook` (data parallelism, hparams.h): averages gradient, running statistics and loss over
  // the ranks between backward and update; null costs nothing.
  TrainResult train_step(const float* images, const int* labels, const float* pixel_w, int bs, int m, int c, int h,
                         int w, bool images_on_device = false, const StepHook* hook = nullptr);
  // `images`: n plain NCHW images, run in chunks of bs. Classification: n·K probabilities into
  // `probs`. Segmentation: per pixel the winning class index and its probability.
  // On the GPU, `on_device` says that images and outputs are device memory (CuPy arrays).
  void infer(const float* images, int n, int bs, int c, int h, int w, float* probs, bool on_device = false);
  void infer_segmentation(const float* images, int n, int bs, int c, int h, int w, int* index, float* confidence,
                          bool on_device = false);

  // Object detection (a graph ending in detection_output; docs/detection.md).
  bool is_detection() const { return g_.is_detection(); }
  // Anchors, matching, loss weights and inference settings; 7822 when inconsistent with the
  // graph (number of levels) or out of range.
  void set_detection(const det::Config& c);
  const det::Config& detection() const { return det_; }
  // Levels at an h×w image (7730 when the levels' strides do not divide the image size).
  std::vector<det::Level> det_levels(int h, int w) const;
  // The anchors at h×w and the anchor offset of every level (cached).
  const std::vector<float>& anchors(int h, int w, std::vector<int64_t>* level_start);
  // `boxes`: (row1, col1, row2, col2) of all images; image i owns boxes box_off[i]..box_off[i+1]
  // and their label indices `labels` (into class_ids).
  TrainResult train_step_detection(const float* images, const float* boxes, const int* labels,
                                   const int64_t* box_off, int bs, int m, int c, int h, int w);
  std::vector<std::vector<det::Detection>> infer_detection(const float* images, int n, int bs, int c, int h, int w);
  // The raw detection_output rows (n, A_total, K + 4) of an inference forward, into `out`
  // (host): the ONNX export's reference and the GPU-vs-CPU tests (docs/detection.md).
  void infer_detection_raw(const float* images, int n, int bs, int c, int h, int w, float* out);
 private:
  TrainResult train_step_detection_gpu(const float* images, const float* boxes, const int* labels,
                                       const int64_t* box_off, int bs, int m, int c, int h, int w,
                                       const std::vector<float>& anc, const std::vector<int64_t>& ls);

 public:
  // Parameters the optimizer leaves alone (detection's freeze_backbone_level); 7911 for an
  // unknown name. Their gradients are computed but not applied, their moments stay 0.
  void set_frozen(const std::vector<std::string>& names);
  // Floats of the arena that are tied copies of other parameters (conv `share`).
  int64_t num_shared_params() const;

  // Staging buffers for batch assembly (grown on demand, reused; page-locked on the GPU).
  float* staging(size_t floats);
  int* label_staging(size_t n);
  float* weight_staging(size_t n);
  std::string summary() const;
  std::mutex& mutex() { return mu_; }

  // Introspection (docs/introspection.md). Kept nodes: their outputs (and, in training, their
  // gradients) stay readable after a CPU run; they are not fused and their buffers are not
  // reused. Changing the set rebuilds the plans; an empty set (the default) costs nothing.
  void set_keep(const std::vector<std::string>& names);  // 7911 for an unknown node
  std::vector<std::string> keep_names() const;
  // A kept node's output (grad = false) or gradient (grad = true) of the last CPU batch run
  // (the last chunk of an inference, the last sub-batch of a train step, or grad_forward /
  // grad_backward), plain; `dims` gets its shape. 7735 when there is none; 7742 on the GPU.
  std::vector<float> layer_tensor(const std::string& name, bool grad, Dims* dims);
  // Heatmaps: a forward in inference mode (running statistics, no dropout) through a plan
  // with gradients that keeps the kept nodes; returns the plain output. grad_backward then
  // runs the backward from a given output gradient (parameter gradients go to scratch).
  // Neither touches weights, statistics, optimizer state or step counters. 7742 on the GPU.
  // `guided`: a plan with guided backpropagation through the ReLUs (no fusion) that keeps
  // the input gradient (grad_input after grad_backward), for Guided Grad-CAM.
  std::vector<float> grad_forward(const float* images, int n, int c, int h, int w, Dims* out_dims,
                                  bool guided = false);
  void grad_backward(const float* grad_output, size_t n);
  std::vector<float> grad_input(Dims* dims);  // guided plans only
  // Workspace bytes (activations, gradients, op buffers) of the cached CPU plans: tests and
  // benchmarks compare plans by it.
  size_t cpu_plan_bytes() const;

 private:
  Plan& plan(int n, int c, int h, int w, bool training);
  // The host arenas are the truth on the CPU; on the GPU the device arenas are, and the host
  // copies are refreshed (sync_host) before anything reads them and pushed (push_device)
  // after anything on the host changes them.
  void sync_host() const;  // refreshes a cache: logically const
  void apply_ties();        // copies every tied master parameter into its shadows
  // The update after the sub-batches' gradients are in G: ties, regulariser, finiteness
  // (7720), optimizer, running statistics; returns the total loss.
  double commit_step(double data_loss);
  // Uploads the host arenas after a host-side change. If the upload fails, `undo` restores
  // the host as it was before the change, and the error propagates.
  void push_device(const std::function<void()>& undo);
  static constexpr size_t kMaxPinnedFloats = size_t(64) << 20;  // 256 MiB of images
  Graph g_;
  Buffer P_, G_, T_, M1_, M2_, S_, S2_, staging_, dlogits_, labels_, pixel_w_;
  uint64_t version_ = 1;
  int64_t adam_t_ = 0;
  uint64_t seed_, steps_ = 0;
  HParams hp_;
  std::vector<int64_t> class_ids_, ignore_ids_;
  std::unordered_map<int64_t, int> label_index_;
  Precision precision_ = Precision::F32;
  std::map<std::tuple<int, int, int, int, bool>, std::unique_ptr<Plan>> plans_;
  // introspection: kept nodes, the eval-mode gradient plans, and which plan ran last
  std::vector<int> keep_;
  std::map<std::tuple<int, int, int, int>, std::unique_ptr<Plan>> grad_plans_;  // h < 0: guided
  std::tuple<int, int, int, int, bool> last_key_{};
  int last_kind_ = 0;  // 0 none, 1 plans_[last_key_], 2 grad_plans_ (n, c, h, w of last_key_)
  Buffer grad_scratch_;
  Plan* last_plan();
  void ran(int n, int c, int h, int w, bool training) {
    last_key_ = std::make_tuple(n, c, h, w, training);
    last_kind_ = 1;
  }
  std::mutex mu_;
  std::unique_ptr<DeviceEngine> dev_;
  int gpu_ = -1;
  bool host_stale_ = false;  // device arenas changed since the last sync_host
  // Maxima of |weights| and |optimizer state| the last CPU update left (its divergence check
  // bounds the next update from them); invalid after any other change to the arenas.
  kern::UpdateMax update_max_;
  bool update_max_valid_ = false;
  GpuOptions gpu_opts_;
  det::Config det_;
  std::vector<int> frozen_;
  std::map<std::pair<int, int>, std::pair<std::vector<float>, std::vector<int64_t>>> anchors_;
};

}  // namespace halcdl
