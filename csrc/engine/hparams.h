// Training hyperparameters and a train step's result, shared by the CPU engine (model.cpp)
// and the device backends (engine/device.h).
#pragma once
#include <cstddef>
#include <functional>
#include <string>
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
};

// Data parallelism (python/halcdl/distributed.py, docs/distributed.md). A train step with a
// StepHook calls `reduce` once, after the backward pass(es) of all sub-batches and before
// anything is committed, with this rank's local results; `reduce` replaces them in place by
// their means over all ranks (every rank must end up with the same bits), or throws: then
// nothing is committed and the model is as before the step.
struct StepReduce {
  float* grad;      // the gradient arena (n_grad floats): mean of this rank's sub-batches
  size_t n_grad;
  float* stats;     // running statistics as this step leaves them (working copy, n_stats)
  size_t n_stats;
  double* scalars;  // host memory: [0] this rank's classification loss (mean over its
  int n_scalars;    //   sub-batches); [1] 0, or 1 when its loss or gradient is not finite
  bool on_device;   // grad and stats are device pointers on GPU `device` (stream synchronised)
  int device;
};

struct StepHook {
  std::function<void(const StepReduce&)> reduce;
  // This rank's first sub-batch in the global step (rank × multiplier): dropout seeds are
  // those of sub-batch sub_offset + s of one process running all ranks' sub-batches.
  int sub_offset = 0;
};

}  // namespace halcdl
