// halcdl::Error — every failure the engine reports carries one of HALCON's error numbers.
// The bindings translate it to halcdl.HOperatorError(error_code, message). Nothing in the
// engine aborts or asserts on user input.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace halcdl {

// HALCON error numbers used by the engine (see docs/operators.md for the full table).
enum ErrorCode : int {
  kErrNoMemory = 6001,
  kErrNoGpuMemory = 6021,       // cudaMalloc failed (lower the batch size)
  kErrTrainingUnsupported = 7707,
  kErrGpuRequired = 7708,       // no usable GPU (none present, index out of range)
  kErrCuda = 7709,              // CUDA runtime / driver missing or failing
  kErrInvalidLabels = 7714,
  kErrCublas = 7717,            // cuBLAS missing or failing
  kErrCudnn = 7718,             // cuDNN missing or failing
  kErrTrainingFailed = 7720,
  kErrInputTooSmall = 7722,
  kErrDetImageSize = 7730,      // an image size the detection levels cannot divide
  kErrChannels = 7724,
  kErrInvalidInputShape = 7735,
  kErrInvalidInputData = 7736,
  kErrRuntimeUnsupported = 7742,
  kErrInputsMissing = 7783,
  kErrClassIdsNotUnique = 7792,
  kErrClassIdsOverlapIgnore = 7797,
  kErrBatchSizeMultiplier = 7799,
  kErrWrongNumSamples = 7800,
  kErrInvalidSolver = 7840,
  kErrUnsupportedParam = 7911,
  kErrInvalidValue = 7914,
  kErrDetParamValue = 7822,     // invalid detection parameter value
};

// Divergence (docs/robustness.md): a training step fails with kErrTrainingFailed, changing
// nothing, when its loss is not finite or exceeds kMaxLoss, or when the update it would
// commit (weights, optimizer state, running statistics) holds NaN or Inf. A mean
// cross-entropy of 1e10 means logits 1e10 apart: no network that has not diverged gets
// anywhere near it (raw 16-bit images give losses of ~1e4 at worst).
constexpr double kMaxLoss = 1e10;

class Error : public std::runtime_error {
 public:
  Error(int code, const std::string& msg) : std::runtime_error(msg), code_(code) {}
  int code() const { return code_; }

 private:
  int code_;
};

namespace detail {
template <typename... Args>
std::string cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace halcdl

// Throw a halcdl::Error with a message built from the remaining arguments.
#define HALCDL_THROW(code, ...) throw ::halcdl::Error((code), ::halcdl::detail::cat(__VA_ARGS__))
#define HALCDL_CHECK(cond, code, ...) \
  do {                                \
    if (!(cond)) HALCDL_THROW(code, __VA_ARGS__); \
  } while (0)
