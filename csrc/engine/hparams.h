// Training hyperparameters and a train step's result, shared by the CPU engine (model.cpp)
// and the device backends (engine/device.h).
#pragma once
#include <cstddef>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace halcdl {

struct HParams {
  float learning_rate = 0.001f, momentum = 0.9f, weight_prior = 0.f;
  std::string solver = "sgd";
  float adam_beta1 = 0.9f, adam_beta2 = 0.999f, adam_epsilon = 1e-8f;
  float batchnorm_momentum = 0.1f;
  std::vector<float> class_weights;  // empty: uniform
};

struct TrainResult {
  double total_loss, loss_cls;
  std::vector<std::pair<std::string, double>> terms;  // detection: one entry per loss and level
};

// Data parallelism (python/halcdl/distributed.py, docs/distributed.md). A train step with a
// StepHook calls `reduce` once, after the backward pass(es) of all sub-batches and before
// anything is committed, with this rank's contributions; `reduce` replaces grad, stats and
// scalars in place by their sums over all ranks (every rank must end up with the same bits),
// or throws: then nothing is committed and the model is as before the step.
// The contributions are scaled so that the sums are what one process would compute for the
// whole step (all ranks' sub-batches, in rank order, as batch_size_multiplier m·W): the loss
// gradient of every sub-batch is scaled by 1/(m·W), the loss likewise. The running
// statistics, updated after every sub-batch (r ← (1−a)·r + a·batch statistic), are linear in
// the batch statistics, so the caller turns this rank's `stats` into its contribution
//   (stats − (1−a)^m · stats_before) · (1−a)^((W−1−rank)·m)   (+ (1−a)^(m·W) · stats_before
// on rank 0) with a = bn_momentum before summing (distributed.py does).
struct StepReduce {
  float* grad;                // the gradient arena (n_grad floats)
  size_t n_grad;
  float* stats;               // running statistics as this step leaves them (working copy)
  const float* stats_before;  // the committed running statistics (n_stats floats)
  size_t n_stats;
  double* scalars;            // host memory: [0] this rank's loss contribution (Σ l / (m·W));
  int n_scalars;              //   [1] 0, or 1 when its loss or gradient is not finite
  int multiplier;             // m: this rank's sub-batches
  float bn_momentum;          // a
  bool on_device;             // grad and stats are device pointers on GPU `device` (the
  int device;                 //   engine's stream is synchronised; reduce synchronises its own)
};

struct StepHook {
  std::function<void(const StepReduce&)> reduce;
  int world_size = 1;  // W
  // This rank's first sub-batch in the global step (rank × m): dropout seeds are those of
  // sub-batch sub_offset + s of one process running all ranks' sub-batches.
  int sub_offset = 0;
};

}  // namespace halcdl
