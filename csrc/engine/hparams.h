// Training hyperparameters and a train step's result, shared by the CPU engine (model.cpp)
// and the device backends (engine/device.h).
#pragma once
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

}  // namespace halcdl
