// detection_output on the GPU: the twin of cpu/detect.cpp. Gathers the per-level class and
// box heads (NHWC, channel = anchor·C + value) into the (N, A_total, K + B) rows the loss and
// the decoding read (row-major, anchor-major: level, row, column, anchor); the backward
// scatters the rows' gradient back (written, never accumulated). Kernels: det_kernels.cu.
// The detection loss and inference (CudaEngine::train_step_detection / infer_detection_raw)
// are in engine.cpp; docs/gpu.md ("Object detection") says what runs where.
#include "cuda/det_kernels.cuh"
#include "cuda/gpu_node.h"

namespace halcdl::gpu {
namespace {

class DetOut : public GpuNode {
 public:
  using GpuNode::GpuNode;

  void create(GBuild& b) override {
    const GSlot& o = out(b);
    n_ = o.n;
    na_ = o.h;  // rows (N, NA, R) are held as NHWC (N, NA, 1, R)
    r_ = static_cast<int>(o.c);
    HALCDL_CHECK(o.dims.size() == 3 && r_ == node.channels + node.det_box, kErrInvalidInputShape, "node '", node.name,
                 "': detection_output rows do not match its heads");
    levels_.clear();
    int64_t base = 0;
    for (size_t l = 0; l + 1 < node.inputs.size(); l += 2) {
      const GSlot& c = in(b, static_cast<int>(l));
      levels_.push_back({c.h * c.w, base});
      base += c.h * c.w * node.det_anchors;
    }
    HALCDL_CHECK(base == na_, kErrInvalidInputShape, "node '", node.name, "': the heads give ", base,
                 " anchors, the output has ", na_);
  }

  void bind(GBuild& b) override {
    src_.clear();
    for (size_t k = 0; k < node.inputs.size(); ++k) src_.push_back(in(b, static_cast<int>(k)).data);
  }

  void forward(GExec& e) override {
    const int K = node.channels, B = node.det_box, A = node.det_anchors;
    for (size_t l = 0; l < levels_.size(); ++l) {
      k::det_gather(src_[2 * l], y, n_, levels_[l].hw, A, K, na_, r_, levels_[l].base, 0, e.ctx.stream);
      k::det_gather(src_[2 * l + 1], y, n_, levels_[l].hw, A, B, na_, r_, levels_[l].base, K, e.ctx.stream);
    }
  }

  void backward(GExec& e) override {
    const int K = node.channels, B = node.det_box, A = node.det_anchors;
    for (size_t l = 0; l < levels_.size(); ++l) {
      if (gin[2 * l]) k::det_scatter(dy, gin[2 * l], n_, levels_[l].hw, A, K, na_, r_, levels_[l].base, 0, e.ctx.stream);
      if (gin[2 * l + 1])
        k::det_scatter(dy, gin[2 * l + 1], n_, levels_[l].hw, A, B, na_, r_, levels_[l].base, K, e.ctx.stream);
    }
  }

 private:
  struct Lv { int64_t hw, base; };
  std::vector<Lv> levels_;
  std::vector<const float*> src_;
  int64_t n_ = 0, na_ = 0;
  int r_ = 0;
};

}  // namespace

std::unique_ptr<GpuNode> make_detout(const Node& n, int idx) { return std::make_unique<DetOut>(n, idx); }

}  // namespace halcdl::gpu
