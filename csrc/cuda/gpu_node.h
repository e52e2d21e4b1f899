// Internals of the CUDA plan (cuda/plan.cpp) shared with the ops (ops_cudnn.cpp, ops_misc.cpp):
// the lifetime-packed device arena, the tensor slots, RAII cuDNN descriptors and the GpuNode
// interface every op implements. The GPU twin of cpu/node.h.
//
// Gradient rule (as on the CPU): an op's backward writes (never accumulates) activation
// gradients into the targets the plan hands it (`gin`, null: not needed); when a tensor feeds
// several consumers the plan gives all but the first a scratch target and adds it afterwards.
// Parameter gradients are written into the gradient arena of the backward call.
//
// Everything runs on Context::stream; nothing here allocates after the build.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "cuda/common.h"
#include "cuda/plan.h"
#include "engine/graph.h"
#include "engine/lifetime.h"

namespace halcdl::gpu {

// Buffers with lifetimes [t0, t1] (inclusive) packed into one device allocation: forward of
// node i is time i, backward of node i is time 2n-1-i. Offsets are 256-byte aligned.
class Arena {
 public:
  int request(size_t bytes, int t0, int t1) { return layout_.request(bytes, t0, t1); }
  // lays out the requests and allocates (the only cudaMalloc of a plan)
  void assign() { buf_.resize(layout_.assign(256)); }
  void* ptr(int id) const { return buf_.c() + layout_.offset(id); }
  float* f(int id) const { return static_cast<float*>(ptr(id)); }
  size_t bytes() const { return buf_.bytes(); }

 private:
  LifetimeLayout layout_{256};  // 256-byte alignment for cuDNN / cuBLAS / vector loads
  DeviceBuffer buf_;
};

// The output tensor of one node: logical dims (N, C, H, W) or (N, K); buffer NHWC / row-major.
// Element type: fp32 (esize 4), or bf16 bits (esize 2) in a bfloat16 plan. `data` / `grad`
// keep the type float* either way (the op interface is shared); a bf16 op reads them through
// bf() below.
struct GSlot {
  Dims dims;
  int64_t n = 0, c = 0, h = 1, w = 1;
  size_t count = 0;  // elements
  size_t esize = sizeof(float);
  int data_id = -1, grad_id = -1;
  float* data = nullptr;
  float* grad = nullptr;
  bool need_grad = false;
  size_t bytes() const { return count * esize; }
  int64_t rows() const { return n * h * w; }  // NHWC pixels (channels contiguous)
};

struct GBuild {
  Context& ctx;
  const Graph& g;
  std::vector<GSlot>& slots;
  Arena& ws;
  int n;                     // number of nodes
  bool training;
  size_t scratch_bytes = 0;  // shared scratch (cuDNN workspace, bias_grad scratch): max over ops
  bool bf16 = false;         // a bfloat16 plan: activations and their gradients are bf16
  int tf(int i) const { return i; }
  int tb(int i) const { return 2 * n - 1 - i; }
  int t_end() const { return 2 * n; }
  int request(size_t bytes, int t0, int t1) const { return ws.request(bytes, t0, t1); }
  void need_scratch(size_t bytes) { if (bytes > scratch_bytes) scratch_bytes = bytes; }
};

struct GExec {
  Context& ctx;
  const DeviceParams& p;
  uint64_t rng;         // dropout seed of this forward
  float* pgrad;         // parameter-gradient arena of this backward (null in forward)
  void* scratch;        // shared scratch, scratch_bytes long; free between op calls
  size_t scratch_bytes;
};

// RAII cuDNN descriptors (destruction never throws).
struct TensorDesc {
  cudnnTensorDescriptor_t d = nullptr;
  TensorDesc() { CUDNN_CHECK(cudnnCreateTensorDescriptor(&d)); }
  ~TensorDesc() { if (d) cudnnDestroyTensorDescriptor(d); }
  TensorDesc(const TensorDesc&) = delete;
  TensorDesc& operator=(const TensorDesc&) = delete;
  operator cudnnTensorDescriptor_t() const { return d; }
};
struct FilterDesc {
  cudnnFilterDescriptor_t d = nullptr;
  FilterDesc() { CUDNN_CHECK(cudnnCreateFilterDescriptor(&d)); }
  ~FilterDesc() { if (d) cudnnDestroyFilterDescriptor(d); }
  FilterDesc(const FilterDesc&) = delete;
  FilterDesc& operator=(const FilterDesc&) = delete;
  operator cudnnFilterDescriptor_t() const { return d; }
};
struct ConvDesc {
  cudnnConvolutionDescriptor_t d = nullptr;
  ConvDesc() { CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&d)); }
  ~ConvDesc() { if (d) cudnnDestroyConvolutionDescriptor(d); }
  ConvDesc(const ConvDesc&) = delete;
  ConvDesc& operator=(const ConvDesc&) = delete;
  operator cudnnConvolutionDescriptor_t() const { return d; }
};
struct PoolDesc {
  cudnnPoolingDescriptor_t d = nullptr;
  PoolDesc() { CUDNN_CHECK(cudnnCreatePoolingDescriptor(&d)); }
  ~PoolDesc() { if (d) cudnnDestroyPoolingDescriptor(d); }
  PoolDesc(const PoolDesc&) = delete;
  PoolDesc& operator=(const PoolDesc&) = delete;
  operator cudnnPoolingDescriptor_t() const { return d; }
};

// bf16 views of a slot's (or op's) buffer in a bfloat16 plan.
inline uint16_t* bf(float* p) { return reinterpret_cast<uint16_t*>(p); }
inline const uint16_t* bf(const float* p) { return reinterpret_cast<const uint16_t*>(p); }

// A dimension as the int cuDNN / cuBLAS take; 7742 when it does not fit.
int to_int(int64_t v, const Node& n, const char* what);
// NHWC tensor descriptor of (n, c, h, w) (fp32 unless `dt` says otherwise); 7742 when cuDNN's
// 2^31-element limit is exceeded. The slot form takes the slot's element type.
void set_nhwc(cudnnTensorDescriptor_t d, int64_t n, int64_t c, int64_t h, int64_t w, const Node& node,
              cudnnDataType_t dt = CUDNN_DATA_FLOAT);
inline cudnnDataType_t cudnn_type(const GSlot& s) { return s.esize == 2 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT; }
inline void set_nhwc(cudnnTensorDescriptor_t d, const GSlot& s, const Node& node) {
  set_nhwc(d, s.n, s.c, s.h, s.w, node, cudnn_type(s));
}

class GpuNode {
 public:
  GpuNode(const Node& n, int idx) : node(n), idx(idx) {}
  virtual ~GpuNode() = default;
  // Descriptors, algorithm choice, buffer requests (the arena is not laid out yet).
  virtual void create(GBuild& b) = 0;
  // Pointers, once the arena is laid out (y, dy, gin are set by the plan before this).
  virtual void bind(GBuild& b) { (void)b; }
  virtual void forward(GExec& e) = 0;
  virtual void backward(GExec& e) = 0;
  virtual const float* dropout_mask() const { return nullptr; }
  // Whether the op has a bfloat16 path (a bf16 plan refuses the others with 7742). An op
  // that says true reads and writes bf16 activations when GBuild::bf16 is set, the bf16
  // weight mirror (DeviceParams::weights_bf16) where it uses weights as GEMM / conv operands,
  // and fp32 everywhere else (biases, bn parameters and statistics, parameter gradients).
  virtual bool has_bf16() const { return false; }
  // Training bn: the saved batch mean and 1/sqrt(var + eps) (device, channels floats each).
  virtual bool bn_saved(const float** mean, const float** inv_std, double* eps) const {
    (void)mean, (void)inv_std, (void)eps;
    return false;
  }

  const Node& node;
  const int idx;
  std::vector<float*> gin;  // gradient target per input (null: no gradient needed)
  float* y = nullptr;       // this node's output and its gradient (null without one)
  float* dy = nullptr;

 protected:
  const GSlot& in(const GBuild& b, int k) const { return b.slots[node.inputs[k]]; }
  const GSlot& out(const GBuild& b) const { return b.slots[idx]; }
  size_t poff(const GBuild& b, int param) const { return b.g.params[param].offset; }
};

// ops_cudnn.cpp
std::unique_ptr<GpuNode> make_conv(const Node& n, int idx);
std::unique_ptr<GpuNode> make_deconv(const Node& n, int idx);
std::unique_ptr<GpuNode> make_bn(const Node& n, int idx);
std::unique_ptr<GpuNode> make_pool(const Node& n, int idx);  // max / avg
// ops_misc.cpp
std::unique_ptr<GpuNode> make_fc(const Node& n, int idx);
std::unique_ptr<GpuNode> make_eltwise(const Node& n, int idx);  // relu / relu6
std::unique_ptr<GpuNode> make_add(const Node& n, int idx);
std::unique_ptr<GpuNode> make_concat(const Node& n, int idx);
std::unique_ptr<GpuNode> make_dropout(const Node& n, int idx);
std::unique_ptr<GpuNode> make_softmax(const Node& n, int idx);
std::unique_ptr<GpuNode> make_gap(const Node& n, int idx);
std::unique_ptr<GpuNode> make_upsample(const Node& n, int idx);  // nearest / bilinear
// ops_extra.cpp (the layer API's ops)
std::unique_ptr<GpuNode> make_act(const Node& n, int idx);        // sigmoid / tanh
std::unique_ptr<GpuNode> make_resize(const Node& n, int idx);     // resize_nearest / resize_bilinear
std::unique_ptr<GpuNode> make_depth_to_space(const Node& n, int idx);
std::unique_ptr<GpuNode> make_reshape(const Node& n, int idx);
std::unique_ptr<GpuNode> make_permute(const Node& n, int idx);
std::unique_ptr<GpuNode> make_depth_max(const Node& n, int idx);
std::unique_ptr<GpuNode> make_lrn(const Node& n, int idx);
std::unique_ptr<GpuNode> make_reduce(const Node& n, int idx);
std::unique_ptr<GpuNode> make_matmul(const Node& n, int idx);
// detection.cpp
std::unique_ptr<GpuNode> make_detout(const Node& n, int idx);

}  // namespace halcdl::gpu
