// Our own CUDA kernels: the GPU twins of engine/kernels.h (losses, regulariser, optimizer),
// the layout / precision conversions and the ops cuDNN does not cover (relu/relu6, add,
// dropout, bias, gap, concat, upsampling, row softmax, argmax). Declarations and layouts in
// kernels.cuh; the reference semantics are the CPU twins (cpu/kernels.cpp, cpu/dropout.cpp,
// cpu/eltwise.cpp, cpu/resample.cpp, cpu/pool.cpp).
//
// Determinism rule: no float atomics, anywhere. Every reduction has a shape that depends only
// on the sizes (never on the device or the scheduling): a fixed grid (at most kMaxPartials
// blocks of kBlock threads), fixed per-thread element ranges (grid-stride over that fixed
// grid), a fixed shared-memory / butterfly tree, and a single-block pass that adds the
// per-block partials in a fixed order. Loss and Σx² accumulate in double. A row's softmax
// is reduced by a group of W lanes (W = next power of two ≥ k, at most 32) with xor
// butterflies, which leave bit-identical values in every lane (IEEE + and max commute).
// Elementwise kernels are grid-stride loops over size_t indexes (tensors may exceed 2^31).
// The optimizer and dropout use __f*_rn intrinsics so nvcc cannot contract them into FMAs:
// they then round exactly like the CPU twin (built without FMA).
#include <algorithm>
#include <cmath>

#include "cuda/common.h"
#include "cuda/kernels.cuh"

namespace halcdl::gpu::k {
namespace {

constexpr int kBlock = 256;                 // threads per block for every 1-D kernel
constexpr int kMaxPartials = 1024;          // blocks of a reduction's first pass
constexpr size_t kMaxGrid = size_t{1} << 16;  // elementwise grid cap (grid-stride beyond)
constexpr int kTile = 32;                   // transpose / column tile
constexpr int kRowLanes = 8;                // row lanes of a column-sum block (32 × 8)
constexpr int64_t kChunkRows = 64;          // bias_grad: min rows per chunk
constexpr int64_t kMaxChunks = 512;         // bias_grad: max chunks (scratch = chunks · c)
// Scratch layout of the loss reductions: [0, P) partials A, [P, 2P) partials B, [2P] total.
constexpr size_t kScrA = 0, kScrB = kMaxPartials, kScrTotal = 2 * kMaxPartials;

inline unsigned grid_for(size_t n) {
  size_t g = (n + kBlock - 1) / kBlock;
  return static_cast<unsigned>(std::min(std::max<size_t>(g, 1), kMaxGrid));
}
// Blocks of a reduction's first pass: a function of n only.
inline int partials_for(size_t n, size_t per_block) {
  size_t g = (n + per_block - 1) / per_block;
  return static_cast<int>(std::min<size_t>(std::max<size_t>(g, 1), kMaxPartials));
}
__device__ __forceinline__ size_t gtid() { return static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
__device__ __forceinline__ size_t gstride() { return static_cast<size_t>(gridDim.x) * blockDim.x; }

// Sum of one double per thread of a kBlock block, fixed tree. Result valid in thread 0.
__device__ double block_sum(double v) {
  __shared__ double sh[kBlock];
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = kBlock / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  return sh[0];
}

// Second pass: out = Σ partials[0, p) (one block; thread t sums t, t+kBlock, ... in order).
__global__ void reduce_partials_kernel(const double* partials, int p, double* out) {
  double acc = 0;
  for (int i = threadIdx.x; i < p; i += kBlock) acc += partials[i];
  double s = block_sum(acc);
  if (threadIdx.x == 0) out[0] = s;
}

// ---- layout ----------------------------------------------------------------------------

// dst[b][j][i] = src[b][i][j] for (rows × cols) matrices, 32×32 tiles through shared memory.
__global__ void transpose_kernel(const float* __restrict__ src, float* __restrict__ dst, int64_t batch, int64_t rows,
                                 int64_t cols) {
  __shared__ float tile[kTile][kTile + 1];
  const int64_t tr = (rows + kTile - 1) / kTile, tc = (cols + kTile - 1) / kTile;
  const int64_t tiles = batch * tr * tc, mat = rows * cols;
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int64_t b = t / (tr * tc), rem = t % (tr * tc);
    const int64_t r0 = (rem / tc) * kTile, c0 = (rem % tc) * kTile;
    const float* s = src + b * mat;
    float* d = dst + b * mat;
    for (int dy = ty; dy < kTile; dy += kRowLanes) {
      const int64_t r = r0 + dy, c = c0 + tx;
      if (r < rows && c < cols) tile[dy][tx] = s[r * cols + c];
    }
    __syncthreads();
    for (int dy = ty; dy < kTile; dy += kRowLanes) {
      const int64_t c = c0 + dy, r = r0 + tx;
      if (r < rows && c < cols) d[c * rows + r] = tile[tx][dy];
    }
    __syncthreads();
  }
}

void transpose(const float* src, float* dst, int64_t batch, int64_t rows, int64_t cols, cudaStream_t s) {
  if (batch <= 0 || rows <= 0 || cols <= 0) return;
  if (rows == 1 || cols == 1) {  // the permutation is the identity
    CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(batch * rows * cols) * sizeof(float),
                               cudaMemcpyDeviceToDevice, s));
    return;
  }
  const int64_t tiles = batch * ((rows + kTile - 1) / kTile) * ((cols + kTile - 1) / kTile);
  const unsigned g = static_cast<unsigned>(std::min<int64_t>(tiles, static_cast<int64_t>(kMaxGrid)));
  transpose_kernel<<<g, dim3(kTile, kRowLanes), 0, s>>>(src, dst, batch, rows, cols);
  CUDA_CHECK_LAUNCH();
}

// The CPU twin's rounding (cpu/node.h): round to nearest even on the raw bits.
__global__ void f32_to_bf16_kernel(const float* __restrict__ src, uint16_t* __restrict__ dst, size_t n) {
  for (size_t i = gtid(); i < n; i += gstride()) {
    uint32_t u = __float_as_uint(src[i]);
    u += 0x7fffu + ((u >> 16) & 1u);
    dst[i] = static_cast<uint16_t>(u >> 16);
  }
}
__global__ void bf16_to_f32_kernel(const uint16_t* __restrict__ src, float* __restrict__ dst, size_t n) {
  for (size_t i = gtid(); i < n; i += gstride()) dst[i] = __uint_as_float(static_cast<uint32_t>(src[i]) << 16);
}

// ---- elementwise -----------------------------------------------------------------------

// NaN propagates (oneDNN / PyTorch relu do), so a diverging step is still caught.
__device__ __forceinline__ float relu1(float x) { return (x > 0.f || x != x) ? x : 0.f; }
__device__ __forceinline__ float relu6_1(float x) { return x != x ? x : (x > 0.f ? (x < 6.f ? x : 6.f) : 0.f); }

__global__ void scale_kernel(float* x, float a, size_t n) {
  for (size_t i = gtid(); i < n; i += gstride()) x[i] = __fmul_rn(x[i], a);
}

__device__ __forceinline__ uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Elementwise kernels shared by fp32 and bf16 (precision 'bfloat16'): the element type T is
// float or bf16 bits (uint16_t, the upper half of an fp32); values are computed in float and a
// bf16 store rounds once to nearest even (NaN stays a quiet NaN), the CPU twin's rule. For
// T = float the loads and stores are plain copies, so the fp32 results are those of the
// former fp32-only kernels bit for bit. No __restrict__ where an output may alias an input
// (add / accumulate, mul).
__device__ __forceinline__ float ldb(uint16_t v) { return __uint_as_float(static_cast<uint32_t>(v) << 16); }
__device__ __forceinline__ uint16_t stb(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
// Loads / stores of an element type T (float or bf16 bits), computing in float.
__device__ __forceinline__ float ldt(float v) { return v; }
__device__ __forceinline__ float ldt(uint16_t v) { return ldb(v); }
template <typename T> __device__ __forceinline__ T stt(float f);
template <> __device__ __forceinline__ float stt<float>(float f) { return f; }
template <> __device__ __forceinline__ uint16_t stt<uint16_t>(float f) { return stb(f); }
template <typename T>
__global__ void relu_fwd_t(const T* __restrict__ x, T* __restrict__ y, size_t n) {
  for (size_t i = gtid(); i < n; i += gstride()) y[i] = stt<T>(relu1(ldt(x[i])));
}
template <typename T>
__global__ void relu_bwd_t(const T* __restrict__ y, const T* __restrict__ dy, T* __restrict__ dx, size_t n) {
  for (size_t i = gtid(); i < n; i += gstride()) dx[i] = ldt(y[i]) > 0.f ? dy[i] : stt<T>(0.f);
}
template <typename T>
__global__ void relu6_fwd_t(const T* __restrict__ x, T* __restrict__ y, size_t n) {
  for (size_t i = gtid(); i < n; i += gstride()) y[i] = stt<T>(relu6_1(ldt(x[i])));
}
template <typename T>
__global__ void relu6_bwd_t(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx, size_t n) {
  for (size_t i = gtid(); i < n; i += gstride()) {
    const float v = ldt(x[i]);
    dx[i] = (v > 0.f && v < 6.f) ? dy[i] : stt<T>(0.f);
  }
}
template <typename T>
__global__ void add_t(const T* a, const T* b, T* y, size_t n) {
  for (size_t i = gtid(); i < n; i += gstride()) y[i] = stt<T>(__fadd_rn(ldt(a[i]), ldt(b[i])));
}
// y = dy · m with an fp32 factor per element (the dropout mask)
template <typename T>
__global__ void mul_f32_t(const T* a, const float* m, T* y, size_t n) {
  for (size_t i = gtid(); i < n; i += gstride()) y[i] = stt<T>(__fmul_rn(ldt(a[i]), m[i]));
}
template <typename T>
__global__ void bias_add_t(T* __restrict__ y, const float* __restrict__ b, size_t n, int64_t c) {
  const size_t cc = static_cast<size_t>(c);
  for (size_t i = gtid(); i < n; i += gstride()) y[i] = stt<T>(__fadd_rn(ldt(y[i]), b[i % cc]));
}
template <typename T>
__global__ void dropout_t(const T* x, T* y, float* __restrict__ mask, size_t n, uint64_t seed, uint64_t threshold,
                          float keep) {
  for (size_t i = gtid(); i < n; i += gstride()) {
    const float m = splitmix64(seed + static_cast<uint64_t>(i)) >= threshold ? keep : 0.f;
    mask[i] = m;
    y[i] = stt<T>(__fmul_rn(ldt(x[i]), m));
  }
}
template <typename T>
__global__ void concat_fwd_t(const T* __restrict__ x, T* __restrict__ y, size_t total, int64_t ci, int64_t off,
                             int64_t ctot) {
  const size_t cc = static_cast<size_t>(ci);
  for (size_t i = gtid(); i < total; i += gstride()) y[(i / cc) * ctot + off + i % cc] = x[i];
}
template <typename T>
__global__ void concat_bwd_t(const T* __restrict__ dy, T* __restrict__ dx, size_t total, int64_t ci, int64_t off,
                             int64_t ctot) {
  const size_t cc = static_cast<size_t>(ci);
  for (size_t i = gtid(); i < total; i += gstride()) dx[i] = dy[(i / cc) * ctot + off + i % cc];
}

// ---- channel-wise ----------------------------------------------------------------------


// Column sums of rows [r0, r1) of a (·, c) matrix over a 32-column tile, block (32, 8):
// lane ty sums rows r0+ty, r0+ty+8, ... in double; the 8 lanes are added in order.
// Returns the sum in threads with ty == 0 (others: 0).
__device__ double column_sum(const float* __restrict__ x, int64_t r0, int64_t r1, int64_t c, int64_t col) {
  __shared__ double sh[kRowLanes][kTile];
  const int tx = threadIdx.x, ty = threadIdx.y;
  double acc = 0;
  if (col < c)
    for (int64_t r = r0 + ty; r < r1; r += kRowLanes) acc += x[r * c + col];
  sh[ty][tx] = acc;
  __syncthreads();
  double s = 0;
  if (ty == 0)
    for (int i = 0; i < kRowLanes; ++i) s += sh[i][tx];
  __syncthreads();  // sh is reused by the caller's next call
  return s;
}

// Pass 1: chunk blockIdx.y's column sums → out[chunk·c + col].
__global__ void bias_grad_chunks_kernel(const float* __restrict__ dy, float* __restrict__ out, int64_t rows,
                                        int64_t c, int64_t rows_per_chunk) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kTile + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  const int64_t r0 = chunk * rows_per_chunk, r1 = imin(rows, r0 + rows_per_chunk);
  const double s = column_sum(dy, r0, r1, c, col);
  if (threadIdx.y == 0 && col < c) out[chunk * c + col] = static_cast<float>(s);
}
// Pass 2: db[col] = Σ_chunk scratch[chunk·c + col], chunks in order.
__global__ void bias_grad_final_kernel(const float* __restrict__ part, float* __restrict__ db, int64_t chunks,
                                       int64_t c) {
  for (size_t col = gtid(); col < static_cast<size_t>(c); col += gstride()) {
    double acc = 0;
    for (int64_t ch = 0; ch < chunks; ++ch) acc += part[ch * c + static_cast<int64_t>(col)];
    db[col] = static_cast<float>(acc);
  }
}

int64_t bias_chunks(int64_t rows) {
  return std::min(kMaxChunks, std::max<int64_t>(1, (rows + kChunkRows - 1) / kChunkRows));
}

__global__ void gap_fwd_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t n, int64_t hw, int64_t c) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kTile + threadIdx.x;
  for (int64_t img = blockIdx.y; img < n; img += gridDim.y) {
    const double s = column_sum(x + img * hw * c, 0, hw, c, col);
    if (threadIdx.y == 0 && col < c) y[img * c + col] = static_cast<float>(s / static_cast<double>(hw));
  }
}
__global__ void gap_bwd_kernel(const float* __restrict__ dy, float* __restrict__ dx, size_t total, int64_t hw,
                               int64_t c, float div) {
  const size_t cc = static_cast<size_t>(c), img_sz = static_cast<size_t>(hw) * cc;
  for (size_t i = gtid(); i < total; i += gstride()) {
    const size_t img = i / img_sz, j = i % cc;
    dx[i] = dy[img * cc + j] / div;
  }
}


// ---- upsampling (NHWC) -----------------------------------------------------------------

// y (n, h·f, w·f, c) from x (n, h, w, c): source pixel (oy / f, ox / f).
__global__ void up_nearest_fwd_kernel(const float* __restrict__ x, float* __restrict__ y, size_t total, int64_t h,
                                      int64_t w, int64_t c, int f) {
  const int64_t W = w * f, H = h * f;
  for (size_t i = gtid(); i < total; i += gstride()) {
    const int64_t ch = static_cast<int64_t>(i % c);
    int64_t p = static_cast<int64_t>(i / c);
    const int64_t ox = p % W;
    p /= W;
    const int64_t oy = p % H, b = p / H;
    y[i] = x[((b * h + oy / f) * w + ox / f) * c + ch];
  }
}
// dx (n, h, w, c): Σ over the f×f output pixels of the block, row by row.
__global__ void up_nearest_bwd_kernel(const float* __restrict__ dy, float* __restrict__ dx, size_t total, int64_t h,
                                      int64_t w, int64_t c, int f) {
  const int64_t W = w * f, H = h * f;
  for (size_t i = gtid(); i < total; i += gstride()) {
    const int64_t ch = static_cast<int64_t>(i % c);
    int64_t p = static_cast<int64_t>(i / c);
    const int64_t ix = p % w;
    p /= w;
    const int64_t iy = p % h, b = p / h;
    float acc = 0.f;
    for (int a = 0; a < f; ++a) {
      const float* row = dy + ((b * H + iy * f + a) * W + ix * f) * c + ch;
      for (int e = 0; e < f; ++e) acc += row[static_cast<int64_t>(e) * c];
    }
    dx[i] = acc;
  }
}

// PyTorch's area_pixel_compute_source_index (align_corners=False, linear): src = scale·(o+½)−½
// clamped at 0, i0 = ⌊src⌋, i1 = i0 + (i0 < in−1), weights 1−λ, λ.
struct Lin {
  int64_t i0, i1;
  float l0, l1;
};
__device__ __forceinline__ Lin lin_src(int64_t o, int64_t in, float scale) {
  float src = scale * (static_cast<float>(o) + 0.5f) - 0.5f;
  if (src < 0.f) src = 0.f;
  int64_t i0 = static_cast<int64_t>(src);
  if (i0 > in - 1) i0 = in - 1;
  const float l1 = src - static_cast<float>(i0);
  return {i0, i0 + (i0 < in - 1 ? 1 : 0), 1.f - l1, l1};
}

__global__ void up_bilinear_fwd_kernel(const float* __restrict__ x, float* __restrict__ y, size_t total, int64_t h,
                                       int64_t w, int64_t c, int f, float scale) {
  const int64_t W = w * f, H = h * f;
  for (size_t i = gtid(); i < total; i += gstride()) {
    const int64_t ch = static_cast<int64_t>(i % c);
    int64_t p = static_cast<int64_t>(i / c);
    const int64_t ox = p % W;
    p /= W;
    const int64_t oy = p % H, b = p / H;
    const Lin ly = lin_src(oy, h, scale), lx = lin_src(ox, w, scale);
    const float* xb = x + b * h * w * c + ch;
    const float v00 = xb[(ly.i0 * w + lx.i0) * c], v01 = xb[(ly.i0 * w + lx.i1) * c];
    const float v10 = xb[(ly.i1 * w + lx.i0) * c], v11 = xb[(ly.i1 * w + lx.i1) * c];
    y[i] = ly.l0 * (lx.l0 * v00 + lx.l1 * v01) + ly.l1 * (lx.l0 * v10 + lx.l1 * v11);
  }
}
// Gather form of the adjoint: input pixel (iy, ix) sums (λy·λx)·dy over the output pixels
// whose forward read it. Those lie within rows [(iy−1)f, (iy+2)f) (same for columns).
__global__ void up_bilinear_bwd_kernel(const float* __restrict__ dy, float* __restrict__ dx, size_t total, int64_t h,
                                       int64_t w, int64_t c, int f, float scale) {
  const int64_t W = w * f, H = h * f;
  for (size_t i = gtid(); i < total; i += gstride()) {
    const int64_t ch = static_cast<int64_t>(i % c);
    int64_t p = static_cast<int64_t>(i / c);
    const int64_t ix = p % w;
    p /= w;
    const int64_t iy = p % h, b = p / h;
    const int64_t oy0 = imax(0, (iy - 1) * f), oy1 = imin(H, (iy + 2) * f);
    const int64_t ox0 = imax(0, (ix - 1) * f), ox1 = imin(W, (ix + 2) * f);
    const float* db = dy + b * H * W * c + ch;
    float acc = 0.f;
    for (int64_t oy = oy0; oy < oy1; ++oy) {
      const Lin ly = lin_src(oy, h, scale);
      const bool y0 = ly.i0 == iy, y1 = ly.i1 == iy;
      if (!y0 && !y1) continue;
      for (int64_t ox = ox0; ox < ox1; ++ox) {
        const Lin lx = lin_src(ox, w, scale);
        const bool x0 = lx.i0 == ix, x1 = lx.i1 == ix;
        if (!x0 && !x1) continue;
        const float g = db[(oy * W + ox) * c];
        if (y0 && x0) acc += (ly.l0 * lx.l0) * g;
        if (y0 && x1) acc += (ly.l0 * lx.l1) * g;
        if (y1 && x0) acc += (ly.l1 * lx.l0) * g;
        if (y1 && x1) acc += (ly.l1 * lx.l1) * g;
      }
    }
    dx[i] = acc;
  }
}

// ---- row softmax family ----------------------------------------------------------------
// A row of k values is handled by a group of W lanes (W ∈ {1, 2, ..., 32}, W ≥ k when
// k ≤ 32); lane l takes j = l, l+W, ... Every lane of a warp reaches every shuffle: the
// row loop's trip count is uniform per block and inactive groups run with zero elements.

template <int W>
__device__ __forceinline__ float group_max(float v) {
#pragma unroll
  for (int o = W / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o, W));
  return v;
}
template <int W>
__device__ __forceinline__ double group_sum(double v) {
#pragma unroll
  for (int o = W / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o, W);
  return v;
}

template <int W>
__global__ void softmax_rows_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t rows, int64_t k) {
  constexpr int G = kBlock / W;
  const int lane = threadIdx.x % W, grp = threadIdx.x / W;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * G; base < rows; base += static_cast<int64_t>(gridDim.x) * G) {
    const int64_t r = base + grp;
    const int64_t kk = r < rows ? k : 0;
    const float* z = x + r * k;
    float mx = -INFINITY;
    for (int64_t j = lane; j < kk; j += W) mx = fmaxf(mx, z[j]);
    mx = group_max<W>(mx);
    double se = 0;
    for (int64_t j = lane; j < kk; j += W) se += static_cast<double>(expf(z[j] - mx));
    se = group_sum<W>(se);
    const double inv = 1.0 / se;
    float* o = y + r * k;
    for (int64_t j = lane; j < kk; j += W) o[j] = static_cast<float>(static_cast<double>(expf(z[j] - mx)) * inv);
  }
}

template <int W>
__global__ void softmax_rows_bwd_kernel(const float* __restrict__ y, const float* __restrict__ dy,
                                        float* __restrict__ dx, int64_t rows, int64_t k) {
  constexpr int G = kBlock / W;
  const int lane = threadIdx.x % W, grp = threadIdx.x / W;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * G; base < rows; base += static_cast<int64_t>(gridDim.x) * G) {
    const int64_t r = base + grp;
    const int64_t kk = r < rows ? k : 0;
    const float* py = y + r * k;
    const float* pd = dy + r * k;
    double dot = 0;
    for (int64_t j = lane; j < kk; j += W) dot += static_cast<double>(py[j]) * pd[j];
    dot = group_sum<W>(dot);
    const float d = static_cast<float>(dot);
    float* o = dx + r * k;
    for (int64_t j = lane; j < kk; j += W) o[j] = py[j] * (pd[j] - d);
  }
}

// Argmax as the CPU's first-strictly-greater scan: NaN never wins except at j = 0 (the scan
// starts there and nothing compares greater than NaN). Keys make that a total order, so the
// tree (larger key, then smaller index) picks the same element in every lane.
__device__ __forceinline__ float argmax_key(float v, int64_t j) {
  return v != v ? (j == 0 ? INFINITY : -INFINITY) : v;
}
template <int W>
__global__ void softmax_argmax_kernel(const float* __restrict__ x, int64_t rows, int64_t k, int* __restrict__ index,
                                      float* __restrict__ confidence) {
  constexpr int G = kBlock / W;
  const int lane = threadIdx.x % W, grp = threadIdx.x / W;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * G; base < rows; base += static_cast<int64_t>(gridDim.x) * G) {
    const int64_t r = base + grp;
    const int64_t kk = r < rows ? k : 0;
    const float* z = x + r * k;
    float bv = -INFINITY;
    int64_t bi = INT64_MAX;
    for (int64_t j = lane; j < kk; j += W) {
      const float v = argmax_key(z[j], j);
      if (bi == INT64_MAX || v > bv) bv = v, bi = j;
    }
#pragma unroll
    for (int o = W / 2; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o, W);
      const int64_t oi = __shfl_xor_sync(0xffffffffu, bi, o, W);
      if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
    }
    const float zb = kk > 0 ? z[bi] : 0.f;
    double se = 0;
    for (int64_t j = lane; j < kk; j += W) se += static_cast<double>(expf(z[j] - zb));
    se = group_sum<W>(se);
    if (lane == 0 && kk > 0) {
      index[r] = static_cast<int>(bi);
      confidence[r] = static_cast<float>(1.0 / se);
    }
  }
}

// ---- losses ----------------------------------------------------------------------------

// Weight of row q: 0 for an ignored (< 0) or out-of-range label.
__device__ __forceinline__ double row_weight(const int* labels, const float* cw, const float* pw, int64_t q,
                                             int64_t k) {
  const int y = labels[q];
  if (y < 0 || y >= k) return 0.0;
  return (cw ? static_cast<double>(cw[y]) : 1.0) * (pw ? static_cast<double>(pw[q]) : 1.0);
}

__global__ void weight_partials_kernel(const int* __restrict__ labels, const float* __restrict__ cw,
                                       const float* __restrict__ pw, int64_t rows, int64_t k,
                                       double* __restrict__ partials) {
  double acc = 0;
  for (size_t q = gtid(); q < static_cast<size_t>(rows); q += gstride())
    acc += row_weight(labels, cw, pw, static_cast<int64_t>(q), k);
  const double s = block_sum(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

// Per row: l = (mx + log Σ e) − z[y] with e_j = exp(z_j − mx); dz_j = f·e_j/Σe (j ≠ y) and
// dz_y = −f·(Σ_{j≠y} e_j)/Σe (no cancellation when p_y → 1), f = scale·w/Σw. A row with
// weight 0 (or Σw = 0) gets dz = 0 and adds nothing. Block partial of Σ w·l → partials.
template <int W>
__global__ void xent_rows_kernel(const float* __restrict__ logits, const int* __restrict__ labels,
                                 const float* __restrict__ cw, const float* __restrict__ pw, int64_t rows, int64_t k,
                                 float scale, const double* __restrict__ wsum_p, float* __restrict__ dlogits,
                                 double* __restrict__ partials) {
  constexpr int G = kBlock / W;
  const int lane = threadIdx.x % W, grp = threadIdx.x / W;
  const double wsum = *wsum_p;
  double acc = 0;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * G; base < rows; base += static_cast<int64_t>(gridDim.x) * G) {
    const int64_t r = base + grp;
    const bool active = r < rows;
    const double wr = active ? row_weight(labels, cw, pw, r, k) : 0.0;
    const bool live = active && wr != 0.0 && wsum > 0.0;
    const int64_t kk = live ? k : 0;
    const int y = live ? labels[r] : -1;
    const float* z = logits + r * k;
    float mx = -INFINITY;
    for (int64_t j = lane; j < kk; j += W) mx = fmaxf(mx, z[j]);
    mx = group_max<W>(mx);
    double se = 0, so = 0;
    for (int64_t j = lane; j < kk; j += W) {
      const double e = expf(z[j] - mx);
      se += e;
      if (j != y) so += e;
    }
    se = group_sum<W>(se);
    so = group_sum<W>(so);
    if (!active) continue;
    float* dz = dlogits + r * k;
    if (!live) {
      for (int64_t j = lane; j < k; j += W) dz[j] = 0.f;
      continue;
    }
    if (lane == 0) acc += wr * ((static_cast<double>(mx) + log(se)) - static_cast<double>(z[y]));
    const double f = static_cast<double>(scale) * wr / wsum;
    const double fs = f / se;
    for (int64_t j = lane; j < k; j += W)
      dz[j] = j == y ? static_cast<float>(0.0 - fs * so) : static_cast<float>(fs * static_cast<double>(expf(z[j] - mx)));
  }
  const double s = block_sum(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

__global__ void xent_final_kernel(const double* __restrict__ partials, int p, const double* __restrict__ wsum_p,
                                  double* __restrict__ loss) {
  double acc = 0;
  for (int i = threadIdx.x; i < p; i += kBlock) acc += partials[i];
  const double s = block_sum(acc);
  if (threadIdx.x == 0) {
    const double wsum = *wsum_p;
    loss[0] = wsum > 0.0 ? s / wsum : 0.0;
  }
}

int group_width(int64_t k) {
  int w = 1;
  while (w < 32 && w < k) w <<= 1;
  return w;
}

// Launches KERNEL<W> with W = group_width(k).
#define HALCDL_DISPATCH_W(k, KERNEL, GRID, STREAM, ...)                         \
  switch (group_width(k)) {                                                      \
    case 1: KERNEL<1><<<(GRID), kBlock, 0, (STREAM)>>>(__VA_ARGS__); break;      \
    case 2: KERNEL<2><<<(GRID), kBlock, 0, (STREAM)>>>(__VA_ARGS__); break;      \
    case 4: KERNEL<4><<<(GRID), kBlock, 0, (STREAM)>>>(__VA_ARGS__); break;      \
    case 8: KERNEL<8><<<(GRID), kBlock, 0, (STREAM)>>>(__VA_ARGS__); break;      \
    case 16: KERNEL<16><<<(GRID), kBlock, 0, (STREAM)>>>(__VA_ARGS__); break;    \
    default: KERNEL<32><<<(GRID), kBlock, 0, (STREAM)>>>(__VA_ARGS__); break;    \
  }

// Rows per block of a row kernel, and grids: row kernels that reduce use a grid that is a
// function of (rows, k) only.
inline int64_t rows_per_block(int64_t k) { return kBlock / group_width(k); }
inline unsigned row_grid(int64_t rows, int64_t k) {
  return grid_for(static_cast<size_t>((rows + rows_per_block(k) - 1) / rows_per_block(k)) * kBlock);
}

void xent_impl(const float* logits, const int* labels, const float* class_w, const float* pixel_w, int64_t rows,
               int64_t k, float scale, float* dlogits, double* loss, double* scratch, cudaStream_t s) {
  if (rows <= 0 || k <= 0) {
    CUDA_CHECK(cudaMemsetAsync(loss, 0, sizeof(double), s));
    return;
  }
  double* wsum = scratch + kScrTotal;
  const int pw = partials_for(static_cast<size_t>(rows), kBlock);
  weight_partials_kernel<<<pw, kBlock, 0, s>>>(labels, class_w, pixel_w, rows, k, scratch + kScrA);
  CUDA_CHECK_LAUNCH();
  reduce_partials_kernel<<<1, kBlock, 0, s>>>(scratch + kScrA, pw, wsum);
  CUDA_CHECK_LAUNCH();
  const int pl = partials_for(static_cast<size_t>(rows), static_cast<size_t>(rows_per_block(k)));
  HALCDL_DISPATCH_W(k, xent_rows_kernel, pl, s, logits, labels, class_w, pixel_w, rows, k, scale, wsum, dlogits,
                    scratch + kScrB);
  CUDA_CHECK_LAUNCH();
  xent_final_kernel<<<1, kBlock, 0, s>>>(scratch + kScrB, pl, wsum, loss);
  CUDA_CHECK_LAUNCH();
}

// ---- optimizer -------------------------------------------------------------------------

__global__ void sum_squares_kernel(const float* __restrict__ x, size_t n, double* __restrict__ partials) {
  double acc = 0;
  for (size_t i = gtid(); i < n; i += gstride()) {
    const double v = x[i];
    acc += v * v;
  }
  const double s = block_sum(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

__global__ void check_finite_kernel(const float* __restrict__ x, size_t n, int* flag) {
  for (size_t i = gtid(); i < n; i += gstride())
    if (!isfinite(x[i])) flag[0] = 0;
}

// The CPU twin's float expressions, each operation rounded separately (no FMA).
__global__ void sgd_kernel(float* __restrict__ w, const float* __restrict__ grad, float* __restrict__ v,
                           size_t n_weight, size_t n, float lr, float momentum, float weight_prior) {
  for (size_t i = gtid(); i < n; i += gstride()) {
    const float wi = w[i];
    const float g = __fadd_rn(grad[i], i < n_weight ? __fmul_rn(weight_prior, wi) : 0.f);
    const float vi = __fsub_rn(__fmul_rn(momentum, v[i]), __fmul_rn(lr, g));
    v[i] = vi;
    w[i] = __fadd_rn(wi, vi);
  }
}
__global__ void adam_kernel(float* __restrict__ w, const float* __restrict__ grad, float* __restrict__ m1,
                            float* __restrict__ m2, size_t n_weight, size_t n, float lr, float beta1, float beta2,
                            float eps, float weight_prior, float c1, float c2) {
  const float ob1 = __fsub_rn(1.f, beta1), ob2 = __fsub_rn(1.f, beta2);
  for (size_t i = gtid(); i < n; i += gstride()) {
    const float wi = w[i];
    const float g = __fadd_rn(grad[i], i < n_weight ? __fmul_rn(weight_prior, wi) : 0.f);
    const float a = __fadd_rn(__fmul_rn(beta1, m1[i]), __fmul_rn(ob1, g));
    const float b = __fadd_rn(__fmul_rn(beta2, m2[i]), __fmul_rn(__fmul_rn(ob2, g), g));
    m1[i] = a;
    m2[i] = b;
    const float num = __fmul_rn(lr, __fdiv_rn(a, c1));
    const float den = __fadd_rn(__fsqrt_rn(__fdiv_rn(b, c2)), eps);
    w[i] = __fsub_rn(wi, __fdiv_rn(num, den));
  }
}

// The divergence checks: the kernels above without the stores.
__global__ void sgd_finite_kernel(const float* __restrict__ w, const float* __restrict__ grad,
                                  const float* __restrict__ v, size_t n_weight, size_t n, float lr, float momentum,
                                  float weight_prior, int* flag) {
  for (size_t i = gtid(); i < n; i += gstride()) {
    const float wi = w[i];
    const float g = __fadd_rn(grad[i], i < n_weight ? __fmul_rn(weight_prior, wi) : 0.f);
    const float vi = __fsub_rn(__fmul_rn(momentum, v[i]), __fmul_rn(lr, g));
    if (!isfinite(vi) || !isfinite(__fadd_rn(wi, vi))) flag[0] = 0;
  }
}
__global__ void adam_finite_kernel(const float* __restrict__ w, const float* __restrict__ grad,
                                   const float* __restrict__ m1, const float* __restrict__ m2, size_t n_weight,
                                   size_t n, float lr, float beta1, float beta2, float eps, float weight_prior,
                                   float c1, float c2, int* flag) {
  const float ob1 = __fsub_rn(1.f, beta1), ob2 = __fsub_rn(1.f, beta2);
  for (size_t i = gtid(); i < n; i += gstride()) {
    const float wi = w[i];
    const float g = __fadd_rn(grad[i], i < n_weight ? __fmul_rn(weight_prior, wi) : 0.f);
    const float a = __fadd_rn(__fmul_rn(beta1, m1[i]), __fmul_rn(ob1, g));
    const float b = __fadd_rn(__fmul_rn(beta2, m2[i]), __fmul_rn(__fmul_rn(ob2, g), g));
    const float num = __fmul_rn(lr, __fdiv_rn(a, c1));
    const float den = __fadd_rn(__fsqrt_rn(__fdiv_rn(b, c2)), eps);
    if (!isfinite(a) || !isfinite(b) || !isfinite(__fsub_rn(wi, __fdiv_rn(num, den)))) flag[0] = 0;
  }
}

}  // namespace

// ==== launchers =========================================================================

void nchw_to_nhwc(const float* src, float* dst, int64_t n, int64_t c, int64_t hw, cudaStream_t s) {
  transpose(src, dst, n, c, hw, s);
}
void nhwc_to_nchw(const float* src, float* dst, int64_t n, int64_t c, int64_t hw, cudaStream_t s) {
  transpose(src, dst, n, hw, c, s);
}
void f32_to_bf16(const float* src, uint16_t* dst, size_t n, cudaStream_t s) {
  if (n == 0) return;
  f32_to_bf16_kernel<<<grid_for(n), kBlock, 0, s>>>(src, dst, n);
  CUDA_CHECK_LAUNCH();
}
void bf16_to_f32(const uint16_t* src, float* dst, size_t n, cudaStream_t s) {
  if (n == 0) return;
  bf16_to_f32_kernel<<<grid_for(n), kBlock, 0, s>>>(src, dst, n);
  CUDA_CHECK_LAUNCH();
}

void relu_forward(const float* x, float* y, size_t n, cudaStream_t s) {
  if (n == 0) return;
  relu_fwd_t<float><<<grid_for(n), kBlock, 0, s>>>(x, y, n);
  CUDA_CHECK_LAUNCH();
}
void relu_backward(const float* y, const float* dy, float* dx, size_t n, cudaStream_t s) {
  if (n == 0) return;
  relu_bwd_t<float><<<grid_for(n), kBlock, 0, s>>>(y, dy, dx, n);
  CUDA_CHECK_LAUNCH();
}
void relu6_forward(const float* x, float* y, size_t n, cudaStream_t s) {
  if (n == 0) return;
  relu6_fwd_t<float><<<grid_for(n), kBlock, 0, s>>>(x, y, n);
  CUDA_CHECK_LAUNCH();
}
void relu6_backward(const float* x, const float* dy, float* dx, size_t n, cudaStream_t s) {
  if (n == 0) return;
  relu6_bwd_t<float><<<grid_for(n), kBlock, 0, s>>>(x, dy, dx, n);
  CUDA_CHECK_LAUNCH();
}
void add(const float* a, const float* b, float* y, size_t n, cudaStream_t s) {
  if (n == 0) return;
  add_t<float><<<grid_for(n), kBlock, 0, s>>>(a, b, y, n);
  CUDA_CHECK_LAUNCH();
}
void accumulate(float* dst, const float* src, size_t n, cudaStream_t s) {
  if (n == 0) return;
  add_t<float><<<grid_for(n), kBlock, 0, s>>>(dst, src, dst, n);
  CUDA_CHECK_LAUNCH();
}
void mul(const float* a, const float* b, float* y, size_t n, cudaStream_t s) {
  if (n == 0) return;
  mul_f32_t<float><<<grid_for(n), kBlock, 0, s>>>(a, b, y, n);
  CUDA_CHECK_LAUNCH();
}
void scale(float* x, float a, size_t n, cudaStream_t s) {
  if (n == 0) return;
  scale_kernel<<<grid_for(n), kBlock, 0, s>>>(x, a, n);
  CUDA_CHECK_LAUNCH();
}
void dropout_forward(const float* x, float* y, float* mask, size_t n, uint64_t seed, uint64_t threshold, float keep,
                     cudaStream_t s) {
  if (n == 0) return;
  dropout_t<float><<<grid_for(n), kBlock, 0, s>>>(x, y, mask, n, seed, threshold, keep);
  CUDA_CHECK_LAUNCH();
}

void bias_add(float* y, const float* bias, int64_t rows, int64_t c, cudaStream_t s) {
  if (rows <= 0 || c <= 0) return;
  const size_t n = static_cast<size_t>(rows) * static_cast<size_t>(c);
  bias_add_t<float><<<grid_for(n), kBlock, 0, s>>>(y, bias, n, c);
  CUDA_CHECK_LAUNCH();
}

size_t bias_grad_scratch_floats(int64_t rows, int64_t c) {
  if (c <= 0) return 0;
  return static_cast<size_t>(bias_chunks(rows)) * static_cast<size_t>(c);
}

void bias_grad(const float* dy, float* db, int64_t rows, int64_t c, float* scratch, cudaStream_t s) {
  if (c <= 0) return;
  if (rows <= 0) {
    CUDA_CHECK(cudaMemsetAsync(db, 0, static_cast<size_t>(c) * sizeof(float), s));
    return;
  }
  const int64_t chunks = bias_chunks(rows);
  const int64_t rpc = (rows + chunks - 1) / chunks;
  const dim3 grid(static_cast<unsigned>((c + kTile - 1) / kTile), static_cast<unsigned>(chunks));
  bias_grad_chunks_kernel<<<grid, dim3(kTile, kRowLanes), 0, s>>>(dy, chunks == 1 ? db : scratch, rows, c, rpc);
  CUDA_CHECK_LAUNCH();
  if (chunks == 1) return;
  bias_grad_final_kernel<<<grid_for(static_cast<size_t>(c)), kBlock, 0, s>>>(scratch, db, chunks, c);
  CUDA_CHECK_LAUNCH();
}

void gap_forward(const float* x, float* y, int64_t n, int64_t hw, int64_t c, cudaStream_t s) {
  if (n <= 0 || c <= 0) return;
  if (hw <= 0) {
    CUDA_CHECK(cudaMemsetAsync(y, 0, static_cast<size_t>(n * c) * sizeof(float), s));
    return;
  }
  const dim3 grid(static_cast<unsigned>((c + kTile - 1) / kTile), static_cast<unsigned>(std::min<int64_t>(n, 65535)));
  gap_fwd_kernel<<<grid, dim3(kTile, kRowLanes), 0, s>>>(x, y, n, hw, c);
  CUDA_CHECK_LAUNCH();
}
void gap_backward(const float* dy, float* dx, int64_t n, int64_t hw, int64_t c, cudaStream_t s) {
  if (n <= 0 || hw <= 0 || c <= 0) return;
  const size_t total = static_cast<size_t>(n) * static_cast<size_t>(hw) * static_cast<size_t>(c);
  gap_bwd_kernel<<<grid_for(total), kBlock, 0, s>>>(dy, dx, total, hw, c, static_cast<float>(hw));
  CUDA_CHECK_LAUNCH();
}

void concat_forward(const float* x, float* y, int64_t rows, int64_t ci, int64_t off, int64_t ctot, cudaStream_t s) {
  if (rows <= 0 || ci <= 0) return;
  const size_t total = static_cast<size_t>(rows) * static_cast<size_t>(ci);
  concat_fwd_t<float><<<grid_for(total), kBlock, 0, s>>>(x, y, total, ci, off, ctot);
  CUDA_CHECK_LAUNCH();
}
void concat_backward(const float* dy, float* dx, int64_t rows, int64_t ci, int64_t off, int64_t ctot,
                     cudaStream_t s) {
  if (rows <= 0 || ci <= 0) return;
  const size_t total = static_cast<size_t>(rows) * static_cast<size_t>(ci);
  concat_bwd_t<float><<<grid_for(total), kBlock, 0, s>>>(dy, dx, total, ci, off, ctot);
  CUDA_CHECK_LAUNCH();
}

void upsample_nearest_forward(const float* x, float* y, int64_t n, int64_t h, int64_t w, int64_t c, int f,
                              cudaStream_t s) {
  if (n <= 0 || h <= 0 || w <= 0 || c <= 0 || f <= 0) return;
  const size_t total = static_cast<size_t>(n * h * f * w * f * c);
  up_nearest_fwd_kernel<<<grid_for(total), kBlock, 0, s>>>(x, y, total, h, w, c, f);
  CUDA_CHECK_LAUNCH();
}
void upsample_nearest_backward(const float* dy, float* dx, int64_t n, int64_t h, int64_t w, int64_t c, int f,
                               cudaStream_t s) {
  if (n <= 0 || h <= 0 || w <= 0 || c <= 0 || f <= 0) return;
  const size_t total = static_cast<size_t>(n * h * w * c);
  up_nearest_bwd_kernel<<<grid_for(total), kBlock, 0, s>>>(dy, dx, total, h, w, c, f);
  CUDA_CHECK_LAUNCH();
}
void upsample_bilinear_forward(const float* x, float* y, int64_t n, int64_t h, int64_t w, int64_t c, int f,
                               cudaStream_t s) {
  if (n <= 0 || h <= 0 || w <= 0 || c <= 0 || f <= 0) return;
  const size_t total = static_cast<size_t>(n * h * f * w * f * c);
  // PyTorch's scale for a given scale_factor: 1/f, as float.
  const float sc = static_cast<float>(1.0 / f);
  up_bilinear_fwd_kernel<<<grid_for(total), kBlock, 0, s>>>(x, y, total, h, w, c, f, sc);
  CUDA_CHECK_LAUNCH();
}
void upsample_bilinear_backward(const float* dy, float* dx, int64_t n, int64_t h, int64_t w, int64_t c, int f,
                                cudaStream_t s) {
  if (n <= 0 || h <= 0 || w <= 0 || c <= 0 || f <= 0) return;
  const size_t total = static_cast<size_t>(n * h * w * c);
  const float sc = static_cast<float>(1.0 / f);
  up_bilinear_bwd_kernel<<<grid_for(total), kBlock, 0, s>>>(dy, dx, total, h, w, c, f, sc);
  CUDA_CHECK_LAUNCH();
}

void softmax_rows(const float* x, float* y, int64_t rows, int64_t k, cudaStream_t s) {
  if (rows <= 0 || k <= 0) return;
  HALCDL_DISPATCH_W(k, softmax_rows_kernel, row_grid(rows, k), s, x, y, rows, k);
  CUDA_CHECK_LAUNCH();
}
void softmax_rows_backward(const float* y, const float* dy, float* dx, int64_t rows, int64_t k, cudaStream_t s) {
  if (rows <= 0 || k <= 0) return;
  HALCDL_DISPATCH_W(k, softmax_rows_bwd_kernel, row_grid(rows, k), s, y, dy, dx, rows, k);
  CUDA_CHECK_LAUNCH();
}

size_t loss_scratch_doubles(int64_t) { return kScrTotal + 2; }

void softmax_xent(const float* logits, const int* labels, const float* class_w, int64_t n, int64_t k, float scale,
                  float* dlogits, double* loss, double* scratch, cudaStream_t s) {
  xent_impl(logits, labels, class_w, nullptr, n, k, scale, dlogits, loss, scratch, s);
}
void softmax_xent_pixels(const float* logits, const int* labels, const float* class_w, const float* pixel_w,
                         int64_t rows, int64_t k, float scale, float* dlogits, double* loss, double* scratch,
                         cudaStream_t s) {
  xent_impl(logits, labels, class_w, pixel_w, rows, k, scale, dlogits, loss, scratch, s);
}
void softmax_argmax_rows(const float* logits, int64_t rows, int64_t k, int* index, float* confidence,
                         cudaStream_t s) {
  if (rows <= 0 || k <= 0) return;
  HALCDL_DISPATCH_W(k, softmax_argmax_kernel, row_grid(rows, k), s, logits, rows, k, index, confidence);
  CUDA_CHECK_LAUNCH();
}

void sum_squares(const float* x, size_t n, double* out, double* scratch, cudaStream_t s) {
  if (n == 0) {
    CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(double), s));
    return;
  }
  const int p = partials_for(n, kBlock);
  sum_squares_kernel<<<p, kBlock, 0, s>>>(x, n, scratch + kScrA);
  CUDA_CHECK_LAUNCH();
  reduce_partials_kernel<<<1, kBlock, 0, s>>>(scratch + kScrA, p, out);
  CUDA_CHECK_LAUNCH();
}
void check_finite(const float* x, size_t n, int* flag, cudaStream_t s) {
  if (n == 0) return;
  check_finite_kernel<<<grid_for(n), kBlock, 0, s>>>(x, n, flag);
  CUDA_CHECK_LAUNCH();
}
void sgd_update(float* w, const float* grad, float* v, size_t n_weight, size_t n, float lr, float momentum,
                float weight_prior, cudaStream_t s) {
  if (n == 0) return;
  sgd_kernel<<<grid_for(n), kBlock, 0, s>>>(w, grad, v, n_weight, n, lr, momentum, weight_prior);
  CUDA_CHECK_LAUNCH();
}
void adam_update(float* w, const float* grad, float* m, float* v, size_t n_weight, size_t n, float lr, float beta1,
                 float beta2, float eps, float weight_prior, int64_t t, cudaStream_t s) {
  if (n == 0) return;
  // Bias corrections as the CPU twin computes them (double pow, rounded to float).
  const float c1 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(t)));
  const float c2 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(t)));
  adam_kernel<<<grid_for(n), kBlock, 0, s>>>(w, grad, m, v, n_weight, n, lr, beta1, beta2, eps, weight_prior, c1,
                                              c2);
  CUDA_CHECK_LAUNCH();
}

void sgd_update_finite(const float* w, const float* grad, const float* v, size_t n_weight, size_t n, float lr,
                       float momentum, float weight_prior, int* flag, cudaStream_t s) {
  if (n == 0) return;
  sgd_finite_kernel<<<grid_for(n), kBlock, 0, s>>>(w, grad, v, n_weight, n, lr, momentum, weight_prior, flag);
  CUDA_CHECK_LAUNCH();
}
void adam_update_finite(const float* w, const float* grad, const float* m, const float* v, size_t n_weight, size_t n,
                        float lr, float beta1, float beta2, float eps, float weight_prior, int64_t t, int* flag,
                        cudaStream_t s) {
  if (n == 0) return;
  const float c1 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(t)));
  const float c2 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(t)));
  adam_finite_kernel<<<grid_for(n), kBlock, 0, s>>>(w, grad, m, v, n_weight, n, lr, beta1, beta2, eps, weight_prior,
                                                    c1, c2, flag);
  CUDA_CHECK_LAUNCH();
}

}  // namespace halcdl::gpu::k

// ---- bfloat16 -------------------------------------------------------------------------------
// precision 'bfloat16' (kernels.cuh): activations and their gradients are stored as bf16 bits
// (uint16_t), every kernel computes in fp32 and rounds once on the store (the CPU twin's
// round-to-nearest-even, NaN kept quiet); parameters, statistics and parameter gradients stay
// fp32. Reductions follow the determinism rule above: fixed chunks of rows per column tile
// (bias_chunks), double accumulation, chunks added in order. The elementwise kernels (relu,
// relu6, add, mul by a mask, bias add, dropout, concat) are templates shared with fp32, in the
// elementwise section above; what follows is bf16 only.
namespace halcdl::gpu::k {
namespace {

// Column sums per chunk of rows over a 32-column tile, block (32, 8), of a per-element value:
//   Mode 0: a[r, j];   Mode 1: (a[r, j] − mean[j])²;   Mode 2: b[r, j] · (a[r, j] − mean[j]) · inv[j]
// out[chunk·c + j] (double). Lane ty sums rows r0+ty, r0+ty+8, ...; the 8 lanes in order.
template <int Mode>
__global__ void bf16_colsum_chunks_kernel(const uint16_t* __restrict__ a, const uint16_t* __restrict__ b,
                                          const float* __restrict__ mean, const float* __restrict__ inv,
                                          double* __restrict__ out, int64_t rows, int64_t c, int64_t rpc) {
  __shared__ double sh[kRowLanes][kTile];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kTile + tx;
  const int64_t chunk = blockIdx.y;
  const int64_t r0 = chunk * rpc, r1 = imin(rows, r0 + rpc);
  double acc = 0;
  if (col < c) {
    const float mu = Mode != 0 ? mean[col] : 0.f;
    const float iv = Mode == 2 ? inv[col] : 0.f;
    for (int64_t r = r0 + ty; r < r1; r += kRowLanes) {
      const float x = ldb(a[r * c + col]);
      float v;
      if (Mode == 0) {
        v = x;
      } else if (Mode == 1) {
        const float d = __fsub_rn(x, mu);
        v = __fmul_rn(d, d);
      } else {
        v = __fmul_rn(ldb(b[r * c + col]), __fmul_rn(__fsub_rn(x, mu), iv));
      }
      acc += static_cast<double>(v);
    }
  }
  sh[ty][tx] = acc;
  __syncthreads();
  if (ty == 0 && col < c) {
    double s = 0;
    for (int i = 0; i < kRowLanes; ++i) s += sh[i][tx];
    out[chunk * c + col] = s;
  }
}

__device__ __forceinline__ double chunk_total(const double* part, int64_t chunks, int64_t c, int64_t col) {
  double acc = 0;
  for (int64_t ch = 0; ch < chunks; ++ch) acc += part[ch * c + col];
  return acc;
}
__global__ void colsum_final_f32_kernel(const double* __restrict__ part, float* __restrict__ out, int64_t chunks,
                                        int64_t c, double div) {
  for (size_t j = gtid(); j < static_cast<size_t>(c); j += gstride())
    out[j] = static_cast<float>(chunk_total(part, chunks, c, static_cast<int64_t>(j)) / div);
}
// var = Σ(x − mean)² / rows (biased); inv = 1/sqrt(var + eps); running statistics (PyTorch's
// momentum, unbiased variance; one value per channel: the biased one, as the CPU twin)
__global__ void bn_var_final_kernel(const double* __restrict__ part, int64_t chunks, int64_t c, int64_t rows,
                                    float eps, float momentum, const float* __restrict__ mean,
                                    float* __restrict__ inv, float* rmean, float* rvar) {
  for (size_t jj = gtid(); jj < static_cast<size_t>(c); jj += gstride()) {
    const int64_t j = static_cast<int64_t>(jj);
    const double var = chunk_total(part, chunks, c, j) / static_cast<double>(rows);
    inv[j] = static_cast<float>(1.0 / sqrt(var + static_cast<double>(eps)));
    if (rmean) {
      const double uv = rows > 1 ? var * static_cast<double>(rows) / static_cast<double>(rows - 1) : var;
      const double m = momentum;
      rmean[j] = static_cast<float>((1.0 - m) * rmean[j] + m * mean[j]);
      rvar[j] = static_cast<float>((1.0 - m) * rvar[j] + m * uv);
    }
  }
}
// y = ((x − mean)·inv)·scale + shift
__global__ void bn_apply_kernel(const uint16_t* __restrict__ x, uint16_t* __restrict__ y, const float* __restrict__ mean,
                                const float* __restrict__ inv, const float* __restrict__ scale,
                                const float* __restrict__ shift, size_t n, int64_t c) {
  const size_t cc = static_cast<size_t>(c);
  for (size_t i = gtid(); i < n; i += gstride()) {
    const size_t j = i % cc;
    const float xh = __fmul_rn(__fsub_rn(ldb(x[i]), mean[j]), inv[j]);
    y[i] = stb(__fadd_rn(__fmul_rn(xh, scale[j]), shift[j]));
  }
}
__global__ void bn_infer_kernel(const uint16_t* __restrict__ x, uint16_t* __restrict__ y, const float* __restrict__ mean,
                                const float* __restrict__ var, const float* __restrict__ scale,
                                const float* __restrict__ shift, size_t n, int64_t c, float eps) {
  const size_t cc = static_cast<size_t>(c);
  for (size_t i = gtid(); i < n; i += gstride()) {
    const size_t j = i % cc;
    const float iv = static_cast<float>(1.0 / sqrt(static_cast<double>(var[j]) + static_cast<double>(eps)));
    const float xh = __fmul_rn(__fsub_rn(ldb(x[i]), mean[j]), iv);
    y[i] = stb(__fadd_rn(__fmul_rn(xh, scale[j]), shift[j]));
  }
}
// dx = scale·inv·(dy − dshift/rows − x̂·dscale/rows)
__global__ void bn_bwd_dx_kernel(const uint16_t* __restrict__ x, const uint16_t* __restrict__ dy,
                                 const float* __restrict__ mean, const float* __restrict__ inv,
                                 const float* __restrict__ scale, const float* __restrict__ dscale,
                                 const float* __restrict__ dshift, uint16_t* __restrict__ dx, size_t n, int64_t c,
                                 float inv_rows) {
  const size_t cc = static_cast<size_t>(c);
  for (size_t i = gtid(); i < n; i += gstride()) {
    const size_t j = i % cc;
    const float xh = __fmul_rn(__fsub_rn(ldb(x[i]), mean[j]), inv[j]);
    const float t = __fsub_rn(__fsub_rn(ldb(dy[i]), __fmul_rn(dshift[j], inv_rows)),
                              __fmul_rn(xh, __fmul_rn(dscale[j], inv_rows)));
    dx[i] = stb(__fmul_rn(__fmul_rn(scale[j], inv[j]), t));
  }
}

// Global average pooling of bf16 NHWC: y[n, j] = bf16(Σ_hw x / hw), lanes as column_sum.
__global__ void gap_fwd_bf16_kernel(const uint16_t* __restrict__ x, uint16_t* __restrict__ y, int64_t n, int64_t hw,
                                    int64_t c) {
  __shared__ double sh[kRowLanes][kTile];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kTile + tx;
  for (int64_t img = blockIdx.y; img < n; img += gridDim.y) {
    const uint16_t* xi = x + img * hw * c;
    double acc = 0;
    if (col < c)
      for (int64_t r = ty; r < hw; r += kRowLanes) acc += static_cast<double>(ldb(xi[r * c + col]));
    sh[ty][tx] = acc;
    __syncthreads();
    if (ty == 0 && col < c) {
      double t = 0;
      for (int i = 0; i < kRowLanes; ++i) t += sh[i][tx];
      y[img * c + col] = stb(static_cast<float>(t / static_cast<double>(hw)));
    }
    __syncthreads();
  }
}
__global__ void gap_bwd_bf16_kernel(const uint16_t* __restrict__ dy, uint16_t* __restrict__ dx, size_t total,
                                    int64_t hw, int64_t c, float div) {
  const size_t cc = static_cast<size_t>(c), img_sz = static_cast<size_t>(hw) * cc;
  for (size_t i = gtid(); i < total; i += gstride()) dx[i] = stb(ldb(dy[(i / img_sz) * cc + i % cc]) / div);
}
// fp32 NCHW → bf16 NHWC in one pass (the input upload of a bf16 plan): one thread per output
// element, writes coalesced.
__global__ void nchw_f32_to_nhwc_bf16_kernel(const float* __restrict__ src, uint16_t* __restrict__ dst, size_t total,
                                             int64_t c, int64_t hw) {
  const size_t cc = static_cast<size_t>(c), hh = static_cast<size_t>(hw);
  for (size_t i = gtid(); i < total; i += gstride()) {
    const size_t ch = i % cc, pix = (i / cc) % hh, b = i / (cc * hh);
    dst[i] = stb(src[(b * cc + ch) * hh + pix]);
  }
}

// The chunk grid of a column reduction over `rows` (bias_chunks) and its launch.
struct ColGrid {
  int64_t chunks, rpc;
  dim3 grid;
};
ColGrid col_grid(int64_t rows, int64_t c) {
  const int64_t chunks = bias_chunks(rows);
  return {chunks, (rows + chunks - 1) / chunks,
          dim3(static_cast<unsigned>((c + kTile - 1) / kTile), static_cast<unsigned>(chunks))};
}

}  // namespace

void relu_forward_bf16(const uint16_t* x, uint16_t* y, size_t n, cudaStream_t s) {
  if (n == 0) return;
  relu_fwd_t<uint16_t><<<grid_for(n), kBlock, 0, s>>>(x, y, n);
  CUDA_CHECK_LAUNCH();
}
void relu_backward_bf16(const uint16_t* y, const uint16_t* dy, uint16_t* dx, size_t n, cudaStream_t s) {
  if (n == 0) return;
  relu_bwd_t<uint16_t><<<grid_for(n), kBlock, 0, s>>>(y, dy, dx, n);
  CUDA_CHECK_LAUNCH();
}
void relu6_forward_bf16(const uint16_t* x, uint16_t* y, size_t n, cudaStream_t s) {
  if (n == 0) return;
  relu6_fwd_t<uint16_t><<<grid_for(n), kBlock, 0, s>>>(x, y, n);
  CUDA_CHECK_LAUNCH();
}
void relu6_backward_bf16(const uint16_t* x, const uint16_t* dy, uint16_t* dx, size_t n, cudaStream_t s) {
  if (n == 0) return;
  relu6_bwd_t<uint16_t><<<grid_for(n), kBlock, 0, s>>>(x, dy, dx, n);
  CUDA_CHECK_LAUNCH();
}
void add_bf16(const uint16_t* a, const uint16_t* b, uint16_t* y, size_t n, cudaStream_t s) {
  if (n == 0) return;
  add_t<uint16_t><<<grid_for(n), kBlock, 0, s>>>(a, b, y, n);
  CUDA_CHECK_LAUNCH();
}
void accumulate_bf16(uint16_t* dst, const uint16_t* src, size_t n, cudaStream_t s) {
  if (n == 0) return;
  add_t<uint16_t><<<grid_for(n), kBlock, 0, s>>>(dst, src, dst, n);
  CUDA_CHECK_LAUNCH();
}
void mul_mask_bf16(const uint16_t* a, const float* mask, uint16_t* y, size_t n, cudaStream_t s) {
  if (n == 0) return;
  mul_f32_t<uint16_t><<<grid_for(n), kBlock, 0, s>>>(a, mask, y, n);
  CUDA_CHECK_LAUNCH();
}
void dropout_forward_bf16(const uint16_t* x, uint16_t* y, float* mask, size_t n, uint64_t seed, uint64_t threshold,
                          float keep, cudaStream_t s) {
  if (n == 0) return;
  dropout_t<uint16_t><<<grid_for(n), kBlock, 0, s>>>(x, y, mask, n, seed, threshold, keep);
  CUDA_CHECK_LAUNCH();
}
void bias_add_bf16(uint16_t* y, const float* bias, int64_t rows, int64_t c, cudaStream_t s) {
  if (rows <= 0 || c <= 0) return;
  const size_t n = static_cast<size_t>(rows) * static_cast<size_t>(c);
  bias_add_t<uint16_t><<<grid_for(n), kBlock, 0, s>>>(y, bias, n, c);
  CUDA_CHECK_LAUNCH();
}

size_t bf16_colsum_scratch_doubles(int64_t rows, int64_t c) {
  if (c <= 0) return 0;
  return 2 * static_cast<size_t>(bias_chunks(rows)) * static_cast<size_t>(c);
}

void bias_grad_bf16(const uint16_t* dy, float* db, int64_t rows, int64_t c, double* scratch, cudaStream_t s) {
  if (c <= 0) return;
  if (rows <= 0) {
    CUDA_CHECK(cudaMemsetAsync(db, 0, static_cast<size_t>(c) * sizeof(float), s));
    return;
  }
  const ColGrid g = col_grid(rows, c);
  bf16_colsum_chunks_kernel<0><<<g.grid, dim3(kTile, kRowLanes), 0, s>>>(dy, nullptr, nullptr, nullptr, scratch, rows,
                                                                       c, g.rpc);
  CUDA_CHECK_LAUNCH();
  colsum_final_f32_kernel<<<grid_for(static_cast<size_t>(c)), kBlock, 0, s>>>(scratch, db, g.chunks, c, 1.0);
  CUDA_CHECK_LAUNCH();
}

void bn_forward_training_bf16(const uint16_t* x, uint16_t* y, const float* scale, const float* shift, int64_t rows,
                              int64_t c, float eps, float momentum, float* running_mean, float* running_var,
                              float* save_mean, float* save_inv_std, double* scratch, cudaStream_t s) {
  if (c <= 0) return;
  HALCDL_CHECK(rows > 0, kErrInvalidInputShape, "batch normalisation of an empty batch");
  const ColGrid g = col_grid(rows, c);
  const unsigned gc = grid_for(static_cast<size_t>(c));
  bf16_colsum_chunks_kernel<0><<<g.grid, dim3(kTile, kRowLanes), 0, s>>>(x, nullptr, nullptr, nullptr, scratch, rows, c,
                                                                       g.rpc);
  CUDA_CHECK_LAUNCH();
  colsum_final_f32_kernel<<<gc, kBlock, 0, s>>>(scratch, save_mean, g.chunks, c, static_cast<double>(rows));
  CUDA_CHECK_LAUNCH();
  bf16_colsum_chunks_kernel<1><<<g.grid, dim3(kTile, kRowLanes), 0, s>>>(x, nullptr, save_mean, nullptr, scratch, rows,
                                                                       c, g.rpc);
  CUDA_CHECK_LAUNCH();
  bn_var_final_kernel<<<gc, kBlock, 0, s>>>(scratch, g.chunks, c, rows, eps, momentum, save_mean, save_inv_std,
                                            running_mean, running_mean ? running_var : nullptr);
  CUDA_CHECK_LAUNCH();
  const size_t n = static_cast<size_t>(rows) * static_cast<size_t>(c);
  bn_apply_kernel<<<grid_for(n), kBlock, 0, s>>>(x, y, save_mean, save_inv_std, scale, shift, n, c);
  CUDA_CHECK_LAUNCH();
}

void bn_forward_inference_bf16(const uint16_t* x, uint16_t* y, const float* scale, const float* shift,
                               const float* mean, const float* var, int64_t rows, int64_t c, float eps,
                               cudaStream_t s) {
  if (rows <= 0 || c <= 0) return;
  const size_t n = static_cast<size_t>(rows) * static_cast<size_t>(c);
  bn_infer_kernel<<<grid_for(n), kBlock, 0, s>>>(x, y, mean, var, scale, shift, n, c, eps);
  CUDA_CHECK_LAUNCH();
}

void bn_backward_bf16(const uint16_t* x, const uint16_t* dy, const float* scale, const float* save_mean,
                      const float* save_inv_std, int64_t rows, int64_t c, uint16_t* dx, float* dscale, float* dshift,
                      double* scratch, cudaStream_t s) {
  if (c <= 0) return;
  HALCDL_CHECK(rows > 0, kErrInvalidInputShape, "batch normalisation of an empty batch");
  const ColGrid g = col_grid(rows, c);
  const unsigned gc = grid_for(static_cast<size_t>(c));
  double* part2 = scratch + static_cast<size_t>(g.chunks) * static_cast<size_t>(c);
  bf16_colsum_chunks_kernel<0><<<g.grid, dim3(kTile, kRowLanes), 0, s>>>(dy, nullptr, nullptr, nullptr, scratch, rows,
                                                                       c, g.rpc);
  CUDA_CHECK_LAUNCH();
  bf16_colsum_chunks_kernel<2><<<g.grid, dim3(kTile, kRowLanes), 0, s>>>(x, dy, save_mean, save_inv_std, part2, rows,
                                                                       c, g.rpc);
  CUDA_CHECK_LAUNCH();
  colsum_final_f32_kernel<<<gc, kBlock, 0, s>>>(scratch, dshift, g.chunks, c, 1.0);
  CUDA_CHECK_LAUNCH();
  colsum_final_f32_kernel<<<gc, kBlock, 0, s>>>(part2, dscale, g.chunks, c, 1.0);
  CUDA_CHECK_LAUNCH();
  if (!dx) return;
  const size_t n = static_cast<size_t>(rows) * static_cast<size_t>(c);
  bn_bwd_dx_kernel<<<grid_for(n), kBlock, 0, s>>>(x, dy, save_mean, save_inv_std, scale, dscale, dshift, dx, n, c,
                                                  1.f / static_cast<float>(rows));
  CUDA_CHECK_LAUNCH();
}

void gap_forward_bf16(const uint16_t* x, uint16_t* y, int64_t n, int64_t hw, int64_t c, cudaStream_t s) {
  if (n <= 0 || c <= 0) return;
  HALCDL_CHECK(hw > 0, kErrInvalidInputShape, "global average pooling of an empty image");
  const dim3 grid(static_cast<unsigned>((c + kTile - 1) / kTile), static_cast<unsigned>(std::min<int64_t>(n, 65535)));
  gap_fwd_bf16_kernel<<<grid, dim3(kTile, kRowLanes), 0, s>>>(x, y, n, hw, c);
  CUDA_CHECK_LAUNCH();
}
void gap_backward_bf16(const uint16_t* dy, uint16_t* dx, int64_t n, int64_t hw, int64_t c, cudaStream_t s) {
  if (n <= 0 || hw <= 0 || c <= 0) return;
  const size_t total = static_cast<size_t>(n) * static_cast<size_t>(hw) * static_cast<size_t>(c);
  gap_bwd_bf16_kernel<<<grid_for(total), kBlock, 0, s>>>(dy, dx, total, hw, c, static_cast<float>(hw));
  CUDA_CHECK_LAUNCH();
}
void concat_forward_bf16(const uint16_t* x, uint16_t* y, int64_t rows, int64_t ci, int64_t off, int64_t ctot,
                         cudaStream_t s) {
  if (rows <= 0 || ci <= 0) return;
  const size_t total = static_cast<size_t>(rows) * static_cast<size_t>(ci);
  concat_fwd_t<uint16_t><<<grid_for(total), kBlock, 0, s>>>(x, y, total, ci, off, ctot);
  CUDA_CHECK_LAUNCH();
}
void concat_backward_bf16(const uint16_t* dy, uint16_t* dx, int64_t rows, int64_t ci, int64_t off, int64_t ctot,
                          cudaStream_t s) {
  if (rows <= 0 || ci <= 0) return;
  const size_t total = static_cast<size_t>(rows) * static_cast<size_t>(ci);
  concat_bwd_t<uint16_t><<<grid_for(total), kBlock, 0, s>>>(dy, dx, total, ci, off, ctot);
  CUDA_CHECK_LAUNCH();
}
void nchw_f32_to_nhwc_bf16(const float* src, uint16_t* dst, int64_t n, int64_t c, int64_t hw, cudaStream_t s) {
  if (n <= 0 || c <= 0 || hw <= 0) return;
  const size_t total = static_cast<size_t>(n) * static_cast<size_t>(c) * static_cast<size_t>(hw);
  nchw_f32_to_nhwc_bf16_kernel<<<grid_for(total), kBlock, 0, s>>>(src, dst, total, c, hw);
  CUDA_CHECK_LAUNCH();
}

}  // namespace halcdl::gpu::k

// ---- layer-API ops (cuda/ops_extra.cpp): sigmoid, tanh, resize, depth_to_space ------------
namespace halcdl::gpu::k {
namespace {

__global__ void sigmoid_fwd_kernel(const float* __restrict__ x, float* __restrict__ y, size_t n) {
  for (size_t i = gtid(); i < n; i += gstride()) y[i] = 1.f / (1.f + expf(-x[i]));
}
__global__ void sigmoid_bwd_kernel(const float* __restrict__ y, const float* __restrict__ dy, float* __restrict__ dx,
                                   size_t n) {
  for (size_t i = gtid(); i < n; i += gstride()) {
    const float v = y[i];
    dx[i] = dy[i] * (v * (1.f - v));
  }
}
__global__ void tanh_fwd_kernel(const float* __restrict__ x, float* __restrict__ y, size_t n) {
  for (size_t i = gtid(); i < n; i += gstride()) y[i] = tanhf(x[i]);
}
__global__ void tanh_bwd_kernel(const float* __restrict__ y, const float* __restrict__ dy, float* __restrict__ dx,
                                size_t n) {
  for (size_t i = gtid(); i < n; i += gstride()) {
    const float v = y[i];
    dx[i] = dy[i] * (1.f - v * v);
  }
}

// Nearest with half-pixel centres (PyTorch 'nearest-exact', oneDNN resampling_nearest):
// src = min(⌊(o + ½)·in/out⌋, in − 1).
__device__ __forceinline__ int64_t near_src(int64_t o, int64_t in, float scale) {
  int64_t i = static_cast<int64_t>((static_cast<float>(o) + 0.5f) * scale);
  return i < in - 1 ? i : in - 1;
}

// y (n, H, W, c) from x (n, h, w, c), NHWC.
__global__ void resize_fwd_kernel(const float* __restrict__ x, float* __restrict__ y, size_t total, int64_t h,
                                  int64_t w, int64_t c, int64_t H, int64_t W, float sy, float sx, int bilinear) {
  for (size_t i = gtid(); i < total; i += gstride()) {
    const int64_t ch = static_cast<int64_t>(i % c);
    int64_t p = static_cast<int64_t>(i / c);
    const int64_t ox = p % W;
    p /= W;
    const int64_t oy = p % H, b = p / H;
    const float* xb = x + b * h * w * c + ch;
    if (!bilinear) {
      y[i] = xb[(near_src(oy, h, sy) * w + near_src(ox, w, sx)) * c];
      continue;
    }
    const Lin ly = lin_src(oy, h, sy), lx = lin_src(ox, w, sx);
    const float v00 = xb[(ly.i0 * w + lx.i0) * c], v01 = xb[(ly.i0 * w + lx.i1) * c];
    const float v10 = xb[(ly.i1 * w + lx.i0) * c], v11 = xb[(ly.i1 * w + lx.i1) * c];
    y[i] = ly.l0 * (lx.l0 * v00 + lx.l1 * v01) + ly.l1 * (lx.l0 * v10 + lx.l1 * v11);
  }
}
// Gather form of the adjoint: input pixel (iy, ix) sums the weighted dy of the output pixels
// whose forward read it. Those have source coordinates in (iy − 1, iy + 1], i.e. output rows
// within [(iy − 1)/sy − 1, (iy + 2)/sy + 1] (every candidate is re-checked exactly).
__global__ void resize_bwd_kernel(const float* __restrict__ dy, float* __restrict__ dx, size_t total, int64_t h,
                                  int64_t w, int64_t c, int64_t H, int64_t W, float sy, float sx, int bilinear) {
  for (size_t i = gtid(); i < total; i += gstride()) {
    const int64_t ch = static_cast<int64_t>(i % c);
    int64_t p = static_cast<int64_t>(i / c);
    const int64_t ix = p % w;
    p /= w;
    const int64_t iy = p % h, b = p / h;
    const int64_t oy0 = imax(0, static_cast<int64_t>((iy - 1) / sy) - 2);
    const int64_t oy1 = imin(H, static_cast<int64_t>((iy + 2) / sy) + 2);
    const int64_t ox0 = imax(0, static_cast<int64_t>((ix - 1) / sx) - 2);
    const int64_t ox1 = imin(W, static_cast<int64_t>((ix + 2) / sx) + 2);
    const float* db = dy + b * H * W * c + ch;
    float acc = 0.f;
    for (int64_t oy = oy0; oy < oy1; ++oy) {
      if (!bilinear) {
        if (near_src(oy, h, sy) != iy) continue;
        for (int64_t ox = ox0; ox < ox1; ++ox)
          if (near_src(ox, w, sx) == ix) acc += db[(oy * W + ox) * c];
        continue;
      }
      const Lin ly = lin_src(oy, h, sy);
      const bool y0 = ly.i0 == iy, y1 = ly.i1 == iy;
      if (!y0 && !y1) continue;
      for (int64_t ox = ox0; ox < ox1; ++ox) {
        const Lin lx = lin_src(ox, w, sx);
        const bool x0 = lx.i0 == ix, x1 = lx.i1 == ix;
        if (!x0 && !x1) continue;
        const float g = db[(oy * W + ox) * c];
        if (y0 && x0) acc += (ly.l0 * lx.l0) * g;
        if (y0 && x1) acc += (ly.l0 * lx.l1) * g;
        if (y1 && x0) acc += (ly.l1 * lx.l0) * g;
        if (y1 && x1) acc += (ly.l1 * lx.l1) * g;
      }
    }
    dx[i] = acc;
  }
}

// depth_to_space, NHWC: y (n, h·b, w·b, co) and x (n, h, w, co·b²); output channel c of
// block offset (i, j) reads input channel k = c·b² + i·b + j (CRD) or (i·b + j)·co + c (DCR).
// `inverse`: the gradient, dx ← dy through the same map (a permutation: no sums).
__global__ void d2s_kernel(const float* __restrict__ src, float* __restrict__ dst, size_t total, int64_t h, int64_t w,
                           int64_t co, int bs, int crd, int inverse) {
  const int64_t H = h * bs, W = w * bs, ci = co * bs * bs;
  for (size_t t = gtid(); t < total; t += gstride()) {
    const int64_t c = static_cast<int64_t>(t % co);
    int64_t p = static_cast<int64_t>(t / co);
    const int64_t ox = p % W;
    p /= W;
    const int64_t oy = p % H, b = p / H;
    const int64_t i = oy % bs, j = ox % bs;
    const int64_t k = crd ? c * bs * bs + i * bs + j : (i * bs + j) * co + c;
    const size_t xi = static_cast<size_t>(((b * h + oy / bs) * w + ox / bs) * ci + k);
    if (inverse) dst[xi] = src[t];
    else dst[t] = src[xi];
  }
}

// reshape NHWC: the sample's NCHW-order values under new dims. dst (n, oh, ow, oc) element
// reads the src (n, h, w, c) element of the same flat C·H·W index. A bijection: the backward is
// the same kernel with the roles of the two shapes swapped.
__global__ void reshape_kernel(const float* __restrict__ src, float* __restrict__ dst, size_t total, int64_t h,
                               int64_t w, int64_t c, int64_t oh, int64_t ow, int64_t oc) {
  const int64_t per = oh * ow * oc;
  for (size_t t = gtid(); t < total; t += gstride()) {
    const int64_t ch = static_cast<int64_t>(t % oc);
    int64_t p = static_cast<int64_t>(t / oc);
    const int64_t ox = p % ow;
    p /= ow;
    const int64_t oy = p % oh, b = p / oh;
    const int64_t f = (ch * oh + oy) * ow + ox;  // flat (C, H, W) index
    const int64_t ic = f / (h * w), r = f % (h * w);
    dst[t] = src[b * per + r * c + ic];  // r = iy·w + ix
  }
}

// permute NHWC: dst logical (n, A0, A1, A2) stored (n, A1, A2, A0); logical axis k of dst is
// axis perm[k] of src's (C, H, W); `st` are src's NHWC strides of its C, H, W axes.
__global__ void permute_kernel(const float* __restrict__ src, float* __restrict__ dst, size_t total, int64_t a0,
                               int64_t a1, int64_t a2, int64_t s0, int64_t s1, int64_t s2) {
  const int64_t per = a0 * a1 * a2;
  for (size_t t = gtid(); t < total; t += gstride()) {
    const int64_t i0 = static_cast<int64_t>(t % a0);
    int64_t p = static_cast<int64_t>(t / a0);
    const int64_t i2 = p % a2;
    p /= a2;
    const int64_t i1 = p % a1, b = p / a1;
    dst[t] = src[b * per + i0 * s0 + i1 * s1 + i2 * s2];
  }
}

// depth_max NHWC: one thread per pixel t of the n·h·w, over its c contiguous channels; the
// first maximum wins (as the CPU twin). Backward writes every channel of the pixel: dy at the
// maximum (value mode), zero elsewhere (and everywhere in argmax mode).
__global__ void depth_max_fwd_kernel(const float* __restrict__ x, float* __restrict__ y, size_t total, int64_t c,
                                     int argmax) {
  for (size_t t = gtid(); t < total; t += gstride()) {
    const float* xs = x + t * c;
    int64_t best = 0;
    for (int64_t k = 1; k < c; ++k)
      if (xs[k] > xs[best]) best = k;
    y[t] = argmax ? static_cast<float>(best) : xs[best];
  }
}
__global__ void depth_max_bwd_kernel(const float* __restrict__ x, const float* __restrict__ dy,
                                     float* __restrict__ dx, size_t total, int64_t c, int argmax) {
  for (size_t t = gtid(); t < total; t += gstride()) {
    const float* xs = x + t * c;
    int64_t best = 0;
    for (int64_t k = 1; k < c; ++k)
      if (xs[k] > xs[best]) best = k;
    for (int64_t k = 0; k < c; ++k) dx[t * c + k] = (!argmax && k == best) ? dy[t] : 0.f;
  }
}

// lrn across the c contiguous channels of NHWC, a centred window of `size` (odd), zero outside:
// s_c = k + alpha/size · Σ_{|j − c| <= size/2} x_j², y_c = x_c · s_c^−beta. One thread per element.
__device__ __forceinline__ float lrn_scale(const float* xs, int64_t c, int64_t ch, int half, float k, float an) {
  const int64_t lo = ch - half < 0 ? 0 : ch - half, hi = ch + half >= c ? c - 1 : ch + half;
  float acc = 0.f;
  for (int64_t j = lo; j <= hi; ++j) acc += xs[j] * xs[j];
  return k + an * acc;
}
__global__ void lrn_fwd_kernel(const float* __restrict__ x, float* __restrict__ y, size_t total, int64_t c, int half,
                               float k, float an, float beta) {
  for (size_t t = gtid(); t < total; t += gstride()) {
    const int64_t ch = static_cast<int64_t>(t % c);
    const float* xs = x + (t - ch);
    y[t] = x[t] * powf(lrn_scale(xs, c, ch, half, k, an), -beta);
  }
}
// dx_i = dy_i · s_i^−beta − 2·alpha/size·beta · x_i · Σ_{|c − i| <= size/2} dy_c · x_c · s_c^(−beta−1)
__global__ void lrn_bwd_kernel(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ dx,
                               size_t total, int64_t c, int half, float k, float an, float beta) {
  for (size_t t = gtid(); t < total; t += gstride()) {
    const int64_t ch = static_cast<int64_t>(t % c);
    const float* xs = x + (t - ch);
    const float* ds = dy + (t - ch);
    const int64_t lo = ch - half < 0 ? 0 : ch - half, hi = ch + half >= c ? c - 1 : ch + half;
    float acc = 0.f;
    for (int64_t j = lo; j <= hi; ++j) acc += ds[j] * xs[j] * powf(lrn_scale(xs, c, j, half, k, an), -beta - 1.f);
    dx[t] = dy[t] * powf(lrn_scale(xs, c, ch, half, k, an), -beta) - 2.f * an * beta * x[t] * acc;
  }
}

// reduce NHWC: x (n, h, w, c) → y (n, hy, wy, cy), a reduced axis of size 1 in y. Forward: one
// thread per output element over its inputs in a fixed order (no atomics); mode 0 sum, 1 mean,
// 2 L2 norm. Backward: one thread per input element, dx = dy (sum), dy / count, dy · x / y.
__global__ void reduce_fwd_kernel(const float* __restrict__ x, float* __restrict__ y, size_t total, int64_t h,
                                  int64_t w, int64_t c, int rh, int rw, int rc, int mode) {
  const int64_t hy = rh ? 1 : h, wy = rw ? 1 : w, cy = rc ? 1 : c;
  const float inv = 1.f / static_cast<float>((rh ? h : 1) * (rw ? w : 1) * (rc ? c : 1));
  for (size_t t = gtid(); t < total; t += gstride()) {
    const int64_t oc = static_cast<int64_t>(t % cy);
    int64_t p = static_cast<int64_t>(t / cy);
    const int64_t ox = p % wy;
    p /= wy;
    const int64_t oy = p % hy, b = p / hy;
    float acc = 0.f;
    for (int64_t iy = rh ? 0 : oy; iy <= (rh ? h - 1 : oy); ++iy)
      for (int64_t ix = rw ? 0 : ox; ix <= (rw ? w - 1 : ox); ++ix)
        for (int64_t ic = rc ? 0 : oc; ic <= (rc ? c - 1 : oc); ++ic) {
          const float v = x[((b * h + iy) * w + ix) * c + ic];
          acc += mode == 2 ? v * v : v;
        }
    y[t] = mode == 1 ? acc * inv : mode == 2 ? sqrtf(acc) : acc;
  }
}
__global__ void reduce_bwd_kernel(const float* __restrict__ x, const float* __restrict__ y,
                                  const float* __restrict__ dy, float* __restrict__ dx, size_t total, int64_t h,
                                  int64_t w, int64_t c, int rh, int rw, int rc, int mode) {
  const int64_t hy = rh ? 1 : h, wy = rw ? 1 : w, cy = rc ? 1 : c;
  const float inv = 1.f / static_cast<float>((rh ? h : 1) * (rw ? w : 1) * (rc ? c : 1));
  for (size_t t = gtid(); t < total; t += gstride()) {
    const int64_t ic = static_cast<int64_t>(t % c);
    int64_t p = static_cast<int64_t>(t / c);
    const int64_t ix = p % w;
    p /= w;
    const int64_t iy = p % h, b = p / h;
    const int64_t yi = ((b * hy + (rh ? 0 : iy)) * wy + (rw ? 0 : ix)) * cy + (rc ? 0 : ic);
    float v = dy[yi];
    if (mode == 1) v *= inv;
    else if (mode == 2) v = y[yi] > 0.f ? v * x[t] / y[yi] : 0.f;
    dx[t] = v;
  }
}

struct MatView {  // strides of a matrix operand: sample, channel, row, column
  int64_t sn, sc, sr, sk;
};
// batched matmul on strided views: out (n, r, s, c) NHWC = Σ_k L[b, ch, i, k] · R[b, ch, k, j]
// with L, R addressed by their strides (sample, channel, row, column); one thread per output
// element over k in order (no atomics). A transposed NHWC operand is its view with the row and
// column strides swapped, so forward and both gradients use this one kernel.
__global__ void matmul_kernel(const float* __restrict__ l, const float* __restrict__ r, float* __restrict__ out,
                              size_t total, int64_t rows, int64_t cols, int64_t c, int64_t kk, MatView lv,
                              MatView rv) {
  for (size_t t = gtid(); t < total; t += gstride()) {
    const int64_t ch = static_cast<int64_t>(t % c);
    int64_t p = static_cast<int64_t>(t / c);
    const int64_t j = p % cols;
    p /= cols;
    const int64_t i = p % rows, b = p / rows;
    const float* lp = l + b * lv.sn + ch * lv.sc + i * lv.sr;
    const float* rp = r + b * rv.sn + ch * rv.sc + j * rv.sk;
    float acc = 0.f;
    for (int64_t q = 0; q < kk; ++q) acc += lp[q * lv.sk] * rp[q * rv.sr];
    out[t] = acc;
  }
}

}  // namespace

void sigmoid_forward(const float* x, float* y, size_t n, cudaStream_t s) {
  if (!n) return;
  sigmoid_fwd_kernel<<<grid_for(n), kBlock, 0, s>>>(x, y, n);
  CUDA_CHECK_LAUNCH();
}
void sigmoid_backward(const float* y, const float* dy, float* dx, size_t n, cudaStream_t s) {
  if (!n) return;
  sigmoid_bwd_kernel<<<grid_for(n), kBlock, 0, s>>>(y, dy, dx, n);
  CUDA_CHECK_LAUNCH();
}
void tanh_forward(const float* x, float* y, size_t n, cudaStream_t s) {
  if (!n) return;
  tanh_fwd_kernel<<<grid_for(n), kBlock, 0, s>>>(x, y, n);
  CUDA_CHECK_LAUNCH();
}
void tanh_backward(const float* y, const float* dy, float* dx, size_t n, cudaStream_t s) {
  if (!n) return;
  tanh_bwd_kernel<<<grid_for(n), kBlock, 0, s>>>(y, dy, dx, n);
  CUDA_CHECK_LAUNCH();
}
void resize_forward(const float* x, float* y, int64_t n, int64_t h, int64_t w, int64_t c, int64_t oh, int64_t ow,
                    int bilinear, cudaStream_t s) {
  if (n <= 0 || h <= 0 || w <= 0 || c <= 0 || oh <= 0 || ow <= 0) return;
  const size_t total = static_cast<size_t>(n * oh * ow * c);
  const float sy = static_cast<float>(h) / static_cast<float>(oh), sx = static_cast<float>(w) / static_cast<float>(ow);
  resize_fwd_kernel<<<grid_for(total), kBlock, 0, s>>>(x, y, total, h, w, c, oh, ow, sy, sx, bilinear);
  CUDA_CHECK_LAUNCH();
}
void resize_backward(const float* dy, float* dx, int64_t n, int64_t h, int64_t w, int64_t c, int64_t oh, int64_t ow,
                     int bilinear, cudaStream_t s) {
  if (n <= 0 || h <= 0 || w <= 0 || c <= 0 || oh <= 0 || ow <= 0) return;
  const size_t total = static_cast<size_t>(n * h * w * c);
  const float sy = static_cast<float>(h) / static_cast<float>(oh), sx = static_cast<float>(w) / static_cast<float>(ow);
  resize_bwd_kernel<<<grid_for(total), kBlock, 0, s>>>(dy, dx, total, h, w, c, oh, ow, sy, sx, bilinear);
  CUDA_CHECK_LAUNCH();
}
void depth_to_space_forward(const float* x, float* y, int64_t n, int64_t h, int64_t w, int64_t co, int block,
                            int crd, cudaStream_t s) {
  if (n <= 0 || h <= 0 || w <= 0 || co <= 0 || block <= 0) return;
  const size_t total = static_cast<size_t>(n * h * w * co) * static_cast<size_t>(block * block);
  d2s_kernel<<<grid_for(total), kBlock, 0, s>>>(x, y, total, h, w, co, block, crd, 0);
  CUDA_CHECK_LAUNCH();
}
void depth_to_space_backward(const float* dy, float* dx, int64_t n, int64_t h, int64_t w, int64_t co, int block,
                             int crd, cudaStream_t s) {
  if (n <= 0 || h <= 0 || w <= 0 || co <= 0 || block <= 0) return;
  const size_t total = static_cast<size_t>(n * h * w * co) * static_cast<size_t>(block * block);
  d2s_kernel<<<grid_for(total), kBlock, 0, s>>>(dy, dx, total, h, w, co, block, crd, 1);
  CUDA_CHECK_LAUNCH();
}

void reshape_nhwc(const float* src, float* dst, int64_t n, int64_t h, int64_t w, int64_t c, int64_t oh, int64_t ow,
                  int64_t oc, cudaStream_t s) {
  if (n <= 0 || oh <= 0 || ow <= 0 || oc <= 0) return;
  const size_t total = static_cast<size_t>(n * oh * ow * oc);
  reshape_kernel<<<grid_for(total), kBlock, 0, s>>>(src, dst, total, h, w, c, oh, ow, oc);
  CUDA_CHECK_LAUNCH();
}
void permute_nhwc(const float* src, float* dst, int64_t n, int64_t c, int64_t h, int64_t w, int p0, int p1, int p2,
                  cudaStream_t s) {
  const int64_t dims[3] = {c, h, w}, st[3] = {1, w * c, c};  // NHWC strides of C, H, W
  const int64_t a0 = dims[p0], a1 = dims[p1], a2 = dims[p2];
  if (n <= 0 || a0 <= 0 || a1 <= 0 || a2 <= 0) return;
  const size_t total = static_cast<size_t>(n * a0 * a1 * a2);
  permute_kernel<<<grid_for(total), kBlock, 0, s>>>(src, dst, total, a0, a1, a2, st[p0], st[p1], st[p2]);
  CUDA_CHECK_LAUNCH();
}

void depth_max_forward(const float* x, float* y, int64_t pixels, int64_t c, int argmax, cudaStream_t s) {
  if (pixels <= 0 || c <= 0) return;
  depth_max_fwd_kernel<<<grid_for(static_cast<size_t>(pixels)), kBlock, 0, s>>>(x, y, static_cast<size_t>(pixels),
                                                                                  c, argmax);
  CUDA_CHECK_LAUNCH();
}
void depth_max_backward(const float* x, const float* dy, float* dx, int64_t pixels, int64_t c, int argmax,
                        cudaStream_t s) {
  if (pixels <= 0 || c <= 0) return;
  depth_max_bwd_kernel<<<grid_for(static_cast<size_t>(pixels)), kBlock, 0, s>>>(x, dy, dx,
                                                                                  static_cast<size_t>(pixels), c, argmax);
  CUDA_CHECK_LAUNCH();
}

void lrn_forward(const float* x, float* y, size_t n, int64_t c, int size, float alpha, float beta, float k,
                 cudaStream_t s) {
  if (n == 0 || c <= 0) return;
  lrn_fwd_kernel<<<grid_for(n), kBlock, 0, s>>>(x, y, n, c, size / 2, k, alpha / static_cast<float>(size), beta);
  CUDA_CHECK_LAUNCH();
}
void lrn_backward(const float* x, const float* dy, float* dx, size_t n, int64_t c, int size, float alpha, float beta,
                  float k, cudaStream_t s) {
  if (n == 0 || c <= 0) return;
  lrn_bwd_kernel<<<grid_for(n), kBlock, 0, s>>>(x, dy, dx, n, c, size / 2, k, alpha / static_cast<float>(size), beta);
  CUDA_CHECK_LAUNCH();
}

void reduce_forward(const float* x, float* y, int64_t n, int64_t h, int64_t w, int64_t c, int rh, int rw, int rc,
                    int mode, cudaStream_t s) {
  const size_t total = static_cast<size_t>(n * (rh ? 1 : h) * (rw ? 1 : w) * (rc ? 1 : c));
  if (total == 0) return;
  reduce_fwd_kernel<<<grid_for(total), kBlock, 0, s>>>(x, y, total, h, w, c, rh, rw, rc, mode);
  CUDA_CHECK_LAUNCH();
}
void reduce_backward(const float* x, const float* y, const float* dy, float* dx, int64_t n, int64_t h, int64_t w,
                     int64_t c, int rh, int rw, int rc, int mode, cudaStream_t s) {
  const size_t total = static_cast<size_t>(n * h * w * c);
  if (total == 0) return;
  reduce_bwd_kernel<<<grid_for(total), kBlock, 0, s>>>(x, y, dy, dx, total, h, w, c, rh, rw, rc, mode);
  CUDA_CHECK_LAUNCH();
}

void matmul_nhwc(const float* l, int ltrans, int64_t lh, int64_t lw, const float* r, int rtrans, int64_t rh,
                 int64_t rw, float* out, int64_t n, int64_t c, cudaStream_t s) {
  // an NHWC (n, h, w, c) operand: strides n h·w·c, c 1, row w·c, column c (swapped if transposed)
  const MatView lv{lh * lw * c, 1, ltrans ? c : lw * c, ltrans ? lw * c : c};
  const MatView rv{rh * rw * c, 1, rtrans ? c : rw * c, rtrans ? rw * c : c};
  const int64_t rows = ltrans ? lw : lh, kk = ltrans ? lh : lw, cols = rtrans ? rh : rw;
  const size_t total = static_cast<size_t>(n * rows * cols * c);
  if (total == 0) return;
  matmul_kernel<<<grid_for(total), kBlock, 0, s>>>(l, r, out, total, rows, cols, c, kk, lv, rv);
  CUDA_CHECK_LAUNCH();
}

}  // namespace halcdl::gpu::k
