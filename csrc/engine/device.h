// The GPU backend's interface. _core never links CUDA: engine/device_loader.cpp dlopens
// libhalcdl_cuda.so (built from csrc/cuda/) on the first GPU request and takes its
// function table (CudaApi). A CUDA-enabled build therefore imports and runs on the CPU on a
// machine with no GPU and no driver.
//
// A DeviceEngine holds one model's arenas on one GPU — parameters, gradients, optimizer state,
// running statistics — in device layouts (conv filters OHWI/KRSC to match NHWC activations,
// fc weights in the NHWC flatten order); upload/download convert from/to the host arenas'
// PyTorch layouts. It runs Model::train_step's exact sequence (see model.h) with cuDNN,
// cuBLAS and our kernels, and throws halcdl::Error: 6021 out of GPU memory, 7709 / 7717 /
// 7718 for CUDA / cuBLAS / cuDNN failures, 7720 for a non-finite loss or gradient.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "engine/graph.h"
#include "engine/hparams.h"
#include "engine/plan.h"

namespace halcdl {

struct GpuInfo {
  int index = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;
  size_t total_bytes = 0, free_bytes = 0;  // free: DeviceEngine::info() only (needs a context)
  bool bf16 = false;  // compute capability >= 8.0
};

struct GpuOptions {
  bool deterministic = false;  // set_system('cudnn_deterministic'): deterministic algorithms only
  bool tf32 = true;            // set_system('tf32'): TF32 tensor-core math for fp32 conv and GEMM
};

class DeviceEngine {
 public:
  virtual ~DeviceEngine() = default;
  virtual GpuInfo info() const = 0;
  // Host arenas in PyTorch layouts → device. `m2` may be null (zeros).
  virtual void upload(const float* params, const float* state, const float* m1, const float* m2) = 0;
  // Device → host, PyTorch layouts. Null destinations are skipped.
  virtual void download(float* params, float* state, float* m1, float* m2) = 0;
  virtual void reset_optimizer() = 0;
  virtual void set_options(const GpuOptions& o) = 0;  // drops cached plans when it changes
  virtual void set_precision(Precision p) = 0;        // 7742 where the GPU has no bf16
  virtual void release_training_plans() = 0;
  // Page-locked host staging for batch assembly (grown on demand, reused).
  virtual float* pinned_images(size_t floats) = 0;
  virtual int* pinned_labels(size_t n) = 0;
  virtual float* pinned_weights(size_t n) = 0;
  // Model::train_step on the device. `images`: bs·m plain NCHW images in host memory (copied
  // with one transfer) or, with images_on_device, device memory used in place. `labels` and
  // `pixel_w` are host memory. `adam_t` is the Adam step count of this step (already counted);
  // sub-batch s uses dropout seed rng_base + s. `hook` (null: none) is called as in
  // Model::train_step, with device pointers. Nothing persistent changes unless the whole
  // step succeeds.
  virtual TrainResult train_step(const float* images, bool images_on_device, const int* labels,
                                 const float* pixel_w, int bs, int m, int c, int h, int w, const HParams& hp,
                                 int64_t adam_t, uint64_t rng_base, const StepHook* hook) = 0;
  // Classification: n·K softmax probabilities into `probs`. Host or device memory for the
  // images and for the outputs, as the flags say.
  virtual void infer(const float* images, bool images_on_device, int n, int bs, int c, int h, int w, float* probs,
                     bool out_on_device) = 0;
  // Segmentation: per pixel (n·H·W) the winning class index and its probability.
  virtual void infer_segmentation(const float* images, bool images_on_device, int n, int bs, int c, int h, int w,
                                  int* index, float* confidence, bool out_on_device) = 0;
  virtual size_t plan_bytes() const = 0;  // device memory held by cached plans

  // Object detection (docs/detection.md, docs/gpu.md). The anchor assignment runs on the host
  // (Model::train_step_detection, det::match / det::encode); the device runs the network, the
  // focal and Huber losses with their gradients (det_kernels.cu), the backward, the tied
  // parameters (graph ties: shadow gradients into their master, master values into the
  // shadows after the update) and the update, as Model::train_step_detection does on the CPU.
  // Per sub-batch s and image-anchor row: target (class index, -1 background, -2 ignored),
  // tbox (encoded box of a foreground row), norm[s] = max(1, #foreground). Returns the total
  // and, per level (level_start: anchor offsets), the weighted normalised losses summed over
  // the sub-batches (each / m) in cls_level / box_level.
  struct DetTargets {
    const int* target = nullptr;    // host, m·bs·na
    const float* tbox = nullptr;    // host, m·bs·na·D (D box values; rectangle2: NaN angle = no angle term)
    const double* norm = nullptr;   // host, m
    const int64_t* level_start = nullptr;
    int nlevels = 0;
    int64_t na = 0;
    float gamma = 2.f, beta = 0.11f, class_heads_weight = 1.f, bbox_heads_weight = 1.f;
  };
  // The defaults (an engine without detection, e.g. a test double) refuse with 7742.
  virtual TrainResult train_step_detection(const float* images, const DetTargets& t, int bs, int m, int c, int h,
                                           int w, const HParams& hp, int64_t adam_t, uint64_t rng_base,
                                           std::vector<double>& cls_level, std::vector<double>& box_level) {
    (void)images, (void)t, (void)bs, (void)m, (void)c, (void)h, (void)w, (void)hp, (void)adam_t, (void)rng_base;
    (void)cls_level, (void)box_level;
    HALCDL_THROW(kErrRuntimeUnsupported, "this GPU backend does not train detection models");
  }
  // The detection_output rows (n, A_total, K + D) of an inference forward, host images and
  // host `out` (decoding and NMS then run on the host: det::detect).
  virtual void infer_detection_raw(const float* images, int n, int bs, int c, int h, int w, float* out) {
    (void)images, (void)n, (void)bs, (void)c, (void)h, (void)w, (void)out;
    HALCDL_THROW(kErrRuntimeUnsupported, "this GPU backend does not run detection models");
  }
};

// One forward (and backward) of a graph on the GPU with host inputs, for tests: the GPU twin
// of run_op. Everything in plain NCHW and PyTorch layouts.
struct RunRequest {
  const Graph* graph = nullptr;
  std::vector<Dims> input_dims;
  std::vector<const float*> inputs;
  const float* params = nullptr;       // trainable arena (host, PyTorch layouts)
  const float* state = nullptr;        // running statistics
  const float* grad_output = nullptr;  // null: forward only
  bool training = true;
  uint64_t rng = 12345;
  int device = 0;
  GpuOptions options;
  Precision precision = Precision::F32;
};

struct RunResult {
  Dims output_dims;
  std::vector<float> output;
  std::vector<std::vector<float>> input_grads;
  std::vector<float> param_grads;      // trainable arena, PyTorch layouts
  std::vector<float> dropout_mask;     // when the last node is a training dropout
  std::vector<float> bn_mean, bn_var;  // when the last node is a training bn (biased variance)
};

constexpr int kCudaAbiVersion = 4;  // 2: train_step takes a StepHook; 3: detection; 4: rectangle2 targets

// The table libhalcdl_cuda.so exports through `extern "C" const CudaApi* halcdl_cuda_api()`.
// Every function may throw halcdl::Error.
struct CudaApi {
  int abi_version;
  int (*device_count)();  // 7709 when the driver is missing or too old; 0 devices is not an error
  GpuInfo (*device_info)(int index);
  DeviceEngine* (*create_engine)(const Graph* g, int device, const GpuOptions* options);
  void (*run_graph)(const RunRequest* req, RunResult* out);
};

// engine/device_loader.cpp (in _core): the table, loading the library on first use.
// `path` is where libhalcdl_cuda.so was installed (empty: this build has no CUDA backend).
void set_cuda_library_path(const std::string& path);
bool cuda_backend_built();
// Throws 7742 when the build has no CUDA backend, 7718 / 7717 / 7709 when loading fails
// because cuDNN / cuBLAS / the CUDA runtime is missing (the message names the library).
const CudaApi& cuda_api();

}  // namespace halcdl
