// A fake cuDNN (legacy API, fp32 only) for the emulated GPU backend: host memory, reference math.
//
// Compiled against the REAL cudnn.h (cuDNN 9 headers) so that the host code of csrc/cuda/ links
// against it unchanged:
//
//   g++ -std=c++17 -O2 -fPIC -Wno-deprecated-declarations -I<cudnn include> -I<cuda include>
//       -c tests/gpu_emu/fake_cudnn.cpp
//
// Every function is defined inside extern "C", so a signature that does not match the header's
// declaration is a compile error (not a silently mangled overload).
//
// The only assumption about the CUDA runtime: "device" pointers are host pointers, streams are
// opaque tokens (cudnnSetStream stores the handle; every call runs synchronously on the host).
//
// What is emulated (semantics from NVIDIA's documentation of the legacy API):
//   * handles: cudnnCreate / Destroy / SetStream / GetStream, cudnnGetVersion, cudnnGetErrorString,
//     cudnnGetLastErrorString (the message of the last failing call in this thread; cleared when read).
//   * tensor 4-D descriptors (NCHW, NHWC, or explicit strides through ...4dDescriptorEx); filter 4-D
//     descriptors (NCHW = KCRS, NHWC = KRSC); convolution 2-D descriptors (pad, stride, dilation,
//     CUDNN_CONVOLUTION (flipped kernel) or CUDNN_CROSS_CORRELATION, group count, math type);
//     pooling 2-D descriptors; cudnnDeriveBNTensorDescriptor.
//   * cudnnConvolutionForward / BackwardData / BackwardFilter: y = alpha·op + beta·y (y is not read
//     when beta == 0), any pad / stride / dilation / groups, double accumulation.
//   * algorithm queries. Per direction the fake offers three algorithms, in this order (both
//     cudnnGet*_v7 and cudnnFind* return the same list, truncated to requestedAlgoCount):
//       forward:        IMPLICIT_PRECOMP_GEMM (workspace, deterministic), IMPLICIT_GEMM (no
//                       workspace, deterministic), FFT (status NOT_SUPPORTED)
//       backward data:  ALGO_0 (no workspace, NON_DETERMINISTIC, as cuDNN documents it), ALGO_1
//                       (workspace, deterministic), FFT (status NOT_SUPPORTED)
//       backward filter: ALGO_0 (no workspace, NON_DETERMINISTIC), ALGO_1 (workspace,
//                       deterministic), FFT (status NOT_SUPPORTED)
//     mathType of every result = the descriptor's current math type; time = 0.
//     The workspace of a "workspace" algorithm is 4 bytes per element of the direction's output
//     (y, dx or dw). Running such an algorithm checks that the workspace passed is non-null and
//     large enough (CUDNN_STATUS_BAD_PARAM otherwise) and then overwrites ALL workSpaceSizeInBytes
//     bytes with 0xFF (NaN floats): a workspace that overlaps live data, or whose stated size
//     exceeds its allocation, shows up. Algorithms not in the list: CUDNN_STATUS_NOT_SUPPORTED.
//     Get*AlgorithmMaxCount returns cuDNN's *_ALGO_COUNT.
//   * batch norm, CUDNN_BATCHNORM_SPATIAL only (other modes: NOT_SUPPORTED; Derive accepts them):
//     ForwardTraining (batch mean, biased variance for the normalisation, running averages
//     r = (1-f)·r + f·batch with the UNBIASED variance M/(M-1)·var, M = N·H·W: M = 1 gives NaN as the
//     division by zero does; running pointers both null or both set; saved mean / inverse std
//     1/sqrt(var+eps) both null or both set), ForwardInference, Backward (alpha/beta for data and
//     params; saved statistics used when given, recomputed from x otherwise).
//   * pooling: MAX and MAX_DETERMINISTIC (padding never wins; NaN propagation per the descriptor;
//     the backward pass routes dy to the FIRST element of the window, in row-major scan order,
//     whose value equals y: a stale y gets no gradient, like cuDNN which compares x with y),
//     AVERAGE_COUNT_INCLUDE_PADDING (divides by kh·kw) and AVERAGE_COUNT_EXCLUDE_PADDING (by the
//     number of in-bounds elements). Output size: floor. Padding >= window: NOT_SUPPORTED.
//   * data type: CUDNN_DATA_FLOAT (descriptors accept any valid type; a compute call with
//     another one returns CUDNN_STATUS_NOT_SUPPORTED). Convolution compute type: FLOAT only.
//     Convolutions (all three directions) also take x, w, y all CUDNN_DATA_BFLOAT16 with FLOAT
//     compute (cuDNN's PSEUDO_BFLOAT16_CONFIG): products summed in double from the bf16 values,
//     alpha·v + beta·old rounded once to bf16 (nearest even). Pooling forward / backward takes
//     x, y, dy, dx all BFLOAT16 likewise. Batch norm: FLOAT only (cuDNN's legacy batch norm has
//     no bf16 path halcdl uses: its own kernels do bf16 bn).
// Unsupported parameters return CUDNN_STATUS_NOT_SUPPORTED, invalid ones CUDNN_STATUS_BAD_PARAM;
// nothing aborts.
//
// With -DFAKE_CUDNN_TEST_API, a few extern "C" wrappers (fake_cudnn_test_*) drive the public API
// from ctypes (tests/test_fake_cudnn.py compares them with torch).
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#include <cudnn.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <vector>

struct cudnnContext {
  cudaStream_t stream = nullptr;
};

struct cudnnTensorStruct {
  bool set = false;
  cudnnDataType_t dt = CUDNN_DATA_FLOAT;
  int n = 0, c = 0, h = 0, w = 0;
  int64_t ns = 0, cs = 0, hs = 0, ws = 0;
  int64_t off(int64_t in, int64_t ic, int64_t ih, int64_t iw) const { return in * ns + ic * cs + ih * hs + iw * ws; }
  int64_t count() const { return int64_t(n) * c * h * w; }
};

struct cudnnFilterStruct {
  bool set = false;
  cudnnDataType_t dt = CUDNN_DATA_FLOAT;
  cudnnTensorFormat_t fmt = CUDNN_TENSOR_NCHW;
  int k = 0, c = 0, h = 0, w = 0;
  // offset of element (k, c, r, s)
  int64_t off(int64_t ik, int64_t ic, int64_t ir, int64_t is) const {
    if (fmt == CUDNN_TENSOR_NHWC) return ((ik * h + ir) * w + is) * c + ic;
    return ((ik * c + ic) * h + ir) * w + is;
  }
};

struct cudnnConvolutionStruct {
  bool set = false;
  int ph = 0, pw = 0, sh = 1, sw = 1, dh = 1, dw = 1;
  cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
  cudnnDataType_t compute = CUDNN_DATA_FLOAT;
  int groups = 1;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
};

struct cudnnPoolingStruct {
  bool set = false;
  cudnnPoolingMode_t mode = CUDNN_POOLING_MAX;
  cudnnNanPropagation_t nan = CUDNN_NOT_PROPAGATE_NAN;
  int kh = 0, kw = 0, ph = 0, pw = 0, sh = 1, sw = 1;
};

namespace {

thread_local std::string g_last_error;

cudnnStatus_t fail(cudnnStatus_t s, const char* fn, const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  g_last_error = std::string("fake cuDNN: ") + fn + ": " + buf;
  return s;
}

#define BAD(...) fail(CUDNN_STATUS_BAD_PARAM, __func__, __VA_ARGS__)
#define UNSUP(...) fail(CUDNN_STATUS_NOT_SUPPORTED, __func__, __VA_ARGS__)
#define TRY(x)                                   \
  do {                                           \
    cudnnStatus_t s_ = (x);                      \
    if (s_ != CUDNN_STATUS_SUCCESS) return s_;   \
  } while (0)

bool valid_dtype(cudnnDataType_t t) { return int(t) >= 0 && int(t) <= 20; }

cudnnStatus_t need_float(const char* fn, cudnnDataType_t t, const char* what) {
  if (t != CUDNN_DATA_FLOAT)
    return fail(CUDNN_STATUS_NOT_SUPPORTED, fn, "%s: data type %d (the fake supports CUDNN_DATA_FLOAT only)", what,
                int(t));
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t tensor_ok(const char* fn, cudnnTensorDescriptor_t d, const char* what) {
  if (!d) return fail(CUDNN_STATUS_BAD_PARAM, fn, "%s descriptor is NULL", what);
  if (!d->set) return fail(CUDNN_STATUS_BAD_PARAM, fn, "%s descriptor was never set", what);
  return need_float(fn, d->dt, what);
}

bool same_dims(const cudnnTensorStruct& a, const cudnnTensorStruct& b) {
  return a.n == b.n && a.c == b.c && a.h == b.h && a.w == b.w;
}

float rd(const void* p) { return *static_cast<const float*>(p); }

// dst = alpha·v + beta·dst (dst not read when beta == 0)
inline void blend(float* dst, double v, double alpha, double beta) {
  *dst = static_cast<float>(beta == 0.0 ? alpha * v : alpha * v + beta * static_cast<double>(*dst));
}

// ---- convolution geometry ------------------------------------------------------------------

struct ConvGeom {
  int N, C, H, W;       // input
  int K, R, S, Cg, Kg;  // filter
  int G;
  int OH, OW;
  int ph, pw, sh, sw, dh, dw;
  bool flip;
};

// Checks x / w / conv against each other and computes the output dims.
cudnnStatus_t geom(const char* fn, cudnnConvolutionDescriptor_t cd, cudnnTensorDescriptor_t xd,
                   cudnnFilterDescriptor_t wd, ConvGeom* g) {
  if (!cd || !cd->set) return fail(CUDNN_STATUS_BAD_PARAM, fn, "convolution descriptor NULL or not set");
  if (!xd || !xd->set) return fail(CUDNN_STATUS_BAD_PARAM, fn, "input tensor descriptor NULL or not set");
  if (!wd || !wd->set) return fail(CUDNN_STATUS_BAD_PARAM, fn, "filter descriptor NULL or not set");
  g->N = xd->n;
  g->C = xd->c;
  g->H = xd->h;
  g->W = xd->w;
  g->K = wd->k;
  g->Cg = wd->c;
  g->R = wd->h;
  g->S = wd->w;
  g->G = cd->groups;
  if (int64_t(g->Cg) * g->G != g->C)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "input has %d channels, filter %d x %d groups", g->C, g->Cg, g->G);
  if (g->K % g->G != 0)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "%d output channels not divisible by %d groups", g->K, g->G);
  g->Kg = g->K / g->G;
  g->ph = cd->ph;
  g->pw = cd->pw;
  g->sh = cd->sh;
  g->sw = cd->sw;
  g->dh = cd->dh;
  g->dw = cd->dw;
  g->flip = cd->mode == CUDNN_CONVOLUTION;
  const int64_t eh = int64_t(g->R - 1) * g->dh + 1, ew = int64_t(g->S - 1) * g->dw + 1;
  const int64_t hin = int64_t(g->H) + 2 * g->ph, win = int64_t(g->W) + 2 * g->pw;
  if (hin < eh || win < ew)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "the dilated filter (%lldx%lld) exceeds the padded input (%lldx%lld)",
                (long long)eh, (long long)ew, (long long)hin, (long long)win);
  g->OH = int((hin - eh) / g->sh + 1);
  g->OW = int((win - ew) / g->sw + 1);
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t conv_check(const char* fn, cudnnConvolutionDescriptor_t cd, cudnnTensorDescriptor_t xd,
                         cudnnFilterDescriptor_t wd, cudnnTensorDescriptor_t yd, ConvGeom* g) {
  TRY(geom(fn, cd, xd, wd, g));
  if (!yd || !yd->set) return fail(CUDNN_STATUS_BAD_PARAM, fn, "output tensor descriptor NULL or not set");
  if (yd->n != g->N || yd->c != g->K || yd->h != g->OH || yd->w != g->OW)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "output descriptor is %dx%dx%dx%d (NCHW), the convolution gives %dx%dx%dx%d",
                yd->n, yd->c, yd->h, yd->w, g->N, g->K, g->OH, g->OW);
  // FLOAT_CONFIG (x, w, y FLOAT) or BFLOAT16 data with FLOAT compute (cuDNN's
  // PSEUDO_BFLOAT16_CONFIG: x, w, y BFLOAT16, products accumulated in fp32, y rounded once)
  if (xd->dt == CUDNN_DATA_BFLOAT16 && yd->dt == CUDNN_DATA_BFLOAT16 && wd->dt == CUDNN_DATA_BFLOAT16) {
    if (cd->compute != CUDNN_DATA_FLOAT)
      return fail(CUDNN_STATUS_NOT_SUPPORTED, fn, "compute type %d with bfloat16 data (FLOAT only)", int(cd->compute));
  } else {
    TRY(need_float(fn, xd->dt, "x"));
    TRY(need_float(fn, yd->dt, "y"));
    TRY(need_float(fn, wd->dt, "filter"));
    if (cd->compute != CUDNN_DATA_FLOAT)
      return fail(CUDNN_STATUS_NOT_SUPPORTED, fn, "compute type %d with float data (FLOAT only)", int(cd->compute));
  }
  if (wd->fmt != CUDNN_TENSOR_NCHW && wd->fmt != CUDNN_TENSOR_NHWC)
    return fail(CUDNN_STATUS_NOT_SUPPORTED, fn, "filter format %d", int(wd->fmt));
  return CUDNN_STATUS_SUCCESS;
}

// Elements of a FLOAT or BFLOAT16 (the upper half of an fp32) buffer. bf16 stores round the
// fp32 value (alpha·v + beta·old, computed in double, rounded to float) to nearest even.
float elem_load(const void* p, int64_t i, cudnnDataType_t dt) {
  if (dt != CUDNN_DATA_BFLOAT16) return static_cast<const float*>(p)[i];
  uint32_t u = static_cast<uint32_t>(static_cast<const uint16_t*>(p)[i]) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
void elem_blend(void* p, int64_t i, cudnnDataType_t dt, double v, double alpha, double beta) {
  if (dt != CUDNN_DATA_BFLOAT16) return blend(static_cast<float*>(p) + i, v, alpha, beta);
  const double old = beta == 0.0 ? 0.0 : static_cast<double>(elem_load(p, i, dt));
  const float f = static_cast<float>(beta == 0.0 ? alpha * v : alpha * v + beta * old);
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  uint16_t h;
  if ((u & 0x7fffffffu) > 0x7f800000u) h = static_cast<uint16_t>((u >> 16) | 0x40u);
  else h = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  static_cast<uint16_t*>(p)[i] = h;
}

// tensor -> dense NHWC doubles
std::vector<double> gather_nhwc(const cudnnTensorStruct& d, const void* p) {
  std::vector<double> v(static_cast<size_t>(d.count()));
  size_t i = 0;
  for (int n = 0; n < d.n; ++n)
    for (int h = 0; h < d.h; ++h)
      for (int w = 0; w < d.w; ++w)
        for (int c = 0; c < d.c; ++c) v[i++] = elem_load(p, d.off(n, c, h, w), d.dt);
  return v;
}

void scatter_nhwc(const cudnnTensorStruct& d, void* p, const std::vector<double>& v, double alpha, double beta) {
  size_t i = 0;
  for (int n = 0; n < d.n; ++n)
    for (int h = 0; h < d.h; ++h)
      for (int w = 0; w < d.w; ++w)
        for (int c = 0; c < d.c; ++c) elem_blend(p, d.off(n, c, h, w), d.dt, v[i++], alpha, beta);
}

// filter -> dense KRSC doubles of the cross-correlation (flipped for CUDNN_CONVOLUTION)
std::vector<double> gather_krsc(const cudnnFilterStruct& f, const void* p, bool flip) {
  std::vector<double> v(size_t(f.k) * f.h * f.w * f.c);
  size_t i = 0;
  for (int k = 0; k < f.k; ++k)
    for (int r = 0; r < f.h; ++r)
      for (int s = 0; s < f.w; ++s)
        for (int c = 0; c < f.c; ++c)
          v[i++] = elem_load(p, f.off(k, c, flip ? f.h - 1 - r : r, flip ? f.w - 1 - s : s), f.dt);
  return v;
}

void scatter_krsc(const cudnnFilterStruct& f, void* p, const std::vector<double>& v, bool flip, double alpha,
                  double beta) {
  size_t i = 0;
  for (int k = 0; k < f.k; ++k)
    for (int r = 0; r < f.h; ++r)
      for (int s = 0; s < f.w; ++s)
        for (int c = 0; c < f.c; ++c)
          elem_blend(p, f.off(k, c, flip ? f.h - 1 - r : r, flip ? f.w - 1 - s : s), f.dt, v[i++], alpha, beta);
}

// y[n,oh,ow,k] = Σ x[n,ih,iw,g·Cg+c] · w[k,r,s,c], all dense NHWC / KRSC
void conv_fwd(const ConvGeom& g, const double* __restrict x, const double* __restrict wk, double* __restrict y) {
  const int Cg = g.Cg, Kg = g.Kg, G = g.G, R = g.R, S = g.S;
  // wt[g][r][s][c][kk]: the inner loop runs over the output channels of a group
  std::vector<double> wt(size_t(g.K) * R * S * Cg);
  for (int gi = 0; gi < G; ++gi)
    for (int kk = 0; kk < Kg; ++kk)
      for (int r = 0; r < R; ++r)
        for (int s = 0; s < S; ++s)
          for (int c = 0; c < Cg; ++c)
            wt[((((size_t)gi * R + r) * S + s) * Cg + c) * Kg + kk] =
                wk[((((size_t)gi * Kg + kk) * R + r) * S + s) * Cg + c];
  for (int n = 0; n < g.N; ++n)
    for (int oh = 0; oh < g.OH; ++oh)
      for (int ow = 0; ow < g.OW; ++ow) {
        double* __restrict acc = y + (((size_t)n * g.OH + oh) * g.OW + ow) * g.K;
        std::fill(acc, acc + g.K, 0.0);
        for (int r = 0; r < R; ++r) {
          const int ih = oh * g.sh - g.ph + r * g.dh;
          if (ih < 0 || ih >= g.H) continue;
          for (int s = 0; s < S; ++s) {
            const int iw = ow * g.sw - g.pw + s * g.dw;
            if (iw < 0 || iw >= g.W) continue;
            const double* __restrict xp = x + (((size_t)n * g.H + ih) * g.W + iw) * g.C;
            for (int gi = 0; gi < G; ++gi) {
              double* __restrict ap = acc + (size_t)gi * Kg;
              const double* __restrict wp0 = wt.data() + ((((size_t)gi * R + r) * S + s) * Cg) * Kg;
              for (int c = 0; c < Cg; ++c) {
                const double xv = xp[gi * Cg + c];
                const double* __restrict wp = wp0 + (size_t)c * Kg;
                for (int kk = 0; kk < Kg; ++kk) ap[kk] += xv * wp[kk];
              }
            }
          }
        }
      }
}

// dx[n,ih,iw,g·Cg+c] = Σ dy[n,oh,ow,k] · w[k,r,s,c]
void conv_bwd_data(const ConvGeom& g, const double* __restrict dy, const double* __restrict wk,
                   double* __restrict dx) {
  const int Cg = g.Cg, Kg = g.Kg, G = g.G, R = g.R, S = g.S;
  std::fill(dx, dx + (size_t)g.N * g.H * g.W * g.C, 0.0);
  for (int n = 0; n < g.N; ++n)
    for (int oh = 0; oh < g.OH; ++oh)
      for (int ow = 0; ow < g.OW; ++ow) {
        const double* __restrict dyp = dy + (((size_t)n * g.OH + oh) * g.OW + ow) * g.K;
        for (int r = 0; r < R; ++r) {
          const int ih = oh * g.sh - g.ph + r * g.dh;
          if (ih < 0 || ih >= g.H) continue;
          for (int s = 0; s < S; ++s) {
            const int iw = ow * g.sw - g.pw + s * g.dw;
            if (iw < 0 || iw >= g.W) continue;
            double* __restrict dxp = dx + (((size_t)n * g.H + ih) * g.W + iw) * g.C;
            for (int gi = 0; gi < G; ++gi) {
              double* __restrict dxg = dxp + (size_t)gi * Cg;
              for (int kk = 0; kk < Kg; ++kk) {
                const int k = gi * Kg + kk;
                const double dv = dyp[k];
                const double* __restrict wp = wk + ((((size_t)k * R + r) * S + s) * Cg);
                for (int c = 0; c < Cg; ++c) dxg[c] += dv * wp[c];
              }
            }
          }
        }
      }
}

// dw[k,r,s,c] = Σ dy[n,oh,ow,k] · x[n,ih,iw,g·Cg+c]
void conv_bwd_filter(const ConvGeom& g, const double* __restrict x, const double* __restrict dy,
                     double* __restrict dw) {
  const int Cg = g.Cg, Kg = g.Kg, G = g.G, R = g.R, S = g.S;
  std::fill(dw, dw + (size_t)g.K * R * S * Cg, 0.0);
  for (int n = 0; n < g.N; ++n)
    for (int oh = 0; oh < g.OH; ++oh)
      for (int ow = 0; ow < g.OW; ++ow) {
        const double* __restrict dyp = dy + (((size_t)n * g.OH + oh) * g.OW + ow) * g.K;
        for (int r = 0; r < R; ++r) {
          const int ih = oh * g.sh - g.ph + r * g.dh;
          if (ih < 0 || ih >= g.H) continue;
          for (int s = 0; s < S; ++s) {
            const int iw = ow * g.sw - g.pw + s * g.dw;
            if (iw < 0 || iw >= g.W) continue;
            const double* __restrict xp = x + (((size_t)n * g.H + ih) * g.W + iw) * g.C;
            for (int gi = 0; gi < G; ++gi) {
              const double* __restrict xg = xp + (size_t)gi * Cg;
              for (int kk = 0; kk < Kg; ++kk) {
                const int k = gi * Kg + kk;
                const double dv = dyp[k];
                double* __restrict wp = dw + ((((size_t)k * R + r) * S + s) * Cg);
                for (int c = 0; c < Cg; ++c) wp[c] += dv * xg[c];
              }
            }
          }
        }
      }
}

// ---- algorithms --------------------------------------------------------------------------------

enum Dir { kFwd, kBwdData, kBwdFilter };

struct AlgoInfo {
  int algo;
  bool workspace;
  bool deterministic;
  bool supported;
};

const AlgoInfo kFwdAlgos[] = {
    {CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, true, true, true},
    {CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, false, true, true},
    {CUDNN_CONVOLUTION_FWD_ALGO_FFT, false, true, false},
};
const AlgoInfo kBwdDataAlgos[] = {
    {CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, false, false, true},
    {CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, true, true, true},
    {CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT, false, true, false},
};
const AlgoInfo kBwdFilterAlgos[] = {
    {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, false, false, true},
    {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, true, true, true},
    {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT, false, true, false},
};
constexpr int kNumAlgos = 3;

const AlgoInfo* algos(Dir d) { return d == kFwd ? kFwdAlgos : d == kBwdData ? kBwdDataAlgos : kBwdFilterAlgos; }

const AlgoInfo* find_algo(Dir d, int a) {
  const AlgoInfo* l = algos(d);
  for (int i = 0; i < kNumAlgos; ++i)
    if (l[i].algo == a && l[i].supported) return &l[i];
  return nullptr;
}

// workspace bytes of a supported algorithm: 4 bytes per element of the direction's output
size_t ws_bytes(Dir d, const AlgoInfo& a, const ConvGeom& g) {
  if (!a.workspace) return 0;
  size_t elems = d == kFwd       ? size_t(g.N) * g.K * g.OH * g.OW
                 : d == kBwdData ? size_t(g.N) * g.C * g.H * g.W
                                 : size_t(g.K) * g.Cg * g.R * g.S;
  return elems * sizeof(float);
}

cudnnStatus_t ws_size(const char* fn, Dir d, const ConvGeom& g, int algo, size_t* bytes) {
  if (!bytes) return fail(CUDNN_STATUS_BAD_PARAM, fn, "sizeInBytes is NULL");
  const AlgoInfo* a = find_algo(d, algo);
  if (!a) return fail(CUDNN_STATUS_NOT_SUPPORTED, fn, "algorithm %d is not supported (by the fake)", algo);
  *bytes = ws_bytes(d, *a, g);
  return CUDNN_STATUS_SUCCESS;
}

// checks and poisons the workspace of algorithm `algo`
cudnnStatus_t use_ws(const char* fn, Dir d, const ConvGeom& g, int algo, void* ws, size_t ws_size_given) {
  const AlgoInfo* a = find_algo(d, algo);
  if (!a) return fail(CUDNN_STATUS_NOT_SUPPORTED, fn, "algorithm %d is not supported (by the fake)", algo);
  const size_t need = ws_bytes(d, *a, g);
  if (ws_size_given < need)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "workspace of %zu bytes, algorithm %d needs %zu", ws_size_given, algo,
                need);
  if (ws_size_given > 0 && !ws)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "workspace is NULL with workSpaceSizeInBytes = %zu", ws_size_given);
  if (ws && ws_size_given) std::memset(ws, 0xFF, ws_size_given);
  return CUDNN_STATUS_SUCCESS;
}

template <typename Perf>
cudnnStatus_t list_algos(const char* fn, Dir d, cudnnHandle_t h, const ConvGeom& g, cudnnConvolutionDescriptor_t cd,
                         int requested, int* returned, Perf* res) {
  if (!h) return fail(CUDNN_STATUS_BAD_PARAM, fn, "handle is NULL");
  if (!returned || !res) return fail(CUDNN_STATUS_BAD_PARAM, fn, "returnedAlgoCount or perfResults is NULL");
  if (requested <= 0) return fail(CUDNN_STATUS_BAD_PARAM, fn, "requestedAlgoCount = %d", requested);
  const AlgoInfo* l = algos(d);
  const int n = std::min(requested, kNumAlgos);
  for (int i = 0; i < n; ++i) {
    Perf p;
    std::memset(&p, 0, sizeof(p));
    p.algo = static_cast<decltype(p.algo)>(l[i].algo);
    p.status = l[i].supported ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_NOT_SUPPORTED;
    p.time = l[i].supported ? 0.01f * float(i + 1) : -1.f;
    p.memory = l[i].supported ? ws_bytes(d, l[i], g) : 0;
    p.determinism = l[i].deterministic ? CUDNN_DETERMINISTIC : CUDNN_NON_DETERMINISTIC;
    p.mathType = cd->math;
    res[i] = p;
  }
  *returned = n;
  return CUDNN_STATUS_SUCCESS;
}

// ---- pooling -----------------------------------------------------------------------------------

struct PoolGeom {
  int OH, OW;
};

cudnnStatus_t pool_out(const char* fn, cudnnPoolingDescriptor_t pd, cudnnTensorDescriptor_t xd, PoolGeom* g) {
  if (!pd || !pd->set) return fail(CUDNN_STATUS_BAD_PARAM, fn, "pooling descriptor NULL or not set");
  if (!xd || !xd->set) return fail(CUDNN_STATUS_BAD_PARAM, fn, "input tensor descriptor NULL or not set");
  const int64_t hin = int64_t(xd->h) + 2 * pd->ph, win = int64_t(xd->w) + 2 * pd->pw;
  if (hin < pd->kh || win < pd->kw)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "window %dx%d exceeds the padded input", pd->kh, pd->kw);
  g->OH = int((hin - pd->kh) / pd->sh + 1);
  g->OW = int((win - pd->kw) / pd->sw + 1);
  return CUDNN_STATUS_SUCCESS;
}

bool is_max(cudnnPoolingMode_t m) { return m == CUDNN_POOLING_MAX || m == CUDNN_POOLING_MAX_DETERMINISTIC; }

cudnnStatus_t pool_check(const char* fn, cudnnPoolingDescriptor_t pd, cudnnTensorDescriptor_t xd,
                         cudnnTensorDescriptor_t yd) {
  PoolGeom g;
  TRY(pool_out(fn, pd, xd, &g));
  if (!(xd && xd->set && yd && yd->set && xd->dt == CUDNN_DATA_BFLOAT16 && yd->dt == CUDNN_DATA_BFLOAT16)) {
    TRY(tensor_ok(fn, xd, "x"));  // FLOAT, or both BFLOAT16
    TRY(tensor_ok(fn, yd, "y"));
  }
  if (yd->n != xd->n || yd->c != xd->c || yd->h != g.OH || yd->w != g.OW)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "output descriptor %dx%dx%dx%d, pooling gives %dx%dx%dx%d", yd->n, yd->c,
                yd->h, yd->w, xd->n, xd->c, g.OH, g.OW);
  if (pd->ph >= pd->kh || pd->pw >= pd->kw)
    return fail(CUDNN_STATUS_NOT_SUPPORTED, fn, "padding %dx%d >= window %dx%d (unsupported by the fake)", pd->ph,
                pd->pw, pd->kh, pd->kw);
  return CUDNN_STATUS_SUCCESS;
}

// ---- batch norm --------------------------------------------------------------------------------

cudnnStatus_t bn_check(const char* fn, cudnnBatchNormMode_t mode, cudnnTensorDescriptor_t xd,
                       cudnnTensorDescriptor_t yd, cudnnTensorDescriptor_t pd) {
  if (mode != CUDNN_BATCHNORM_SPATIAL && mode != CUDNN_BATCHNORM_PER_ACTIVATION &&
      mode != CUDNN_BATCHNORM_SPATIAL_PERSISTENT)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "invalid mode %d", int(mode));
  if (mode != CUDNN_BATCHNORM_SPATIAL)
    return fail(CUDNN_STATUS_NOT_SUPPORTED, fn, "mode %d (the fake supports CUDNN_BATCHNORM_SPATIAL only)", int(mode));
  TRY(tensor_ok(fn, xd, "x"));
  TRY(tensor_ok(fn, yd, "y/dy/dx"));
  TRY(tensor_ok(fn, pd, "scale/bias/mean/var"));
  if (!same_dims(*xd, *yd)) return fail(CUDNN_STATUS_BAD_PARAM, fn, "x and y/dx/dy dims differ");
  if (pd->n != 1 || pd->c != xd->c || pd->h != 1 || pd->w != 1)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "parameter descriptor is %dx%dx%dx%d, spatial mode needs 1x%dx1x1", pd->n,
                pd->c, pd->h, pd->w, xd->c);
  return CUDNN_STATUS_SUCCESS;
}

// per-channel batch mean and biased variance (two passes, doubles)
void bn_stats(const cudnnTensorStruct& d, const float* x, std::vector<double>* mean, std::vector<double>* var) {
  const double M = double(d.n) * d.h * d.w;
  mean->assign(d.c, 0.0);
  var->assign(d.c, 0.0);
  for (int c = 0; c < d.c; ++c) {
    double s = 0;
    for (int n = 0; n < d.n; ++n)
      for (int h = 0; h < d.h; ++h)
        for (int w = 0; w < d.w; ++w) s += x[d.off(n, c, h, w)];
    const double m = s / M;
    double v = 0;
    for (int n = 0; n < d.n; ++n)
      for (int h = 0; h < d.h; ++h)
        for (int w = 0; w < d.w; ++w) {
          const double t = x[d.off(n, c, h, w)] - m;
          v += t * t;
        }
    (*mean)[c] = m;
    (*var)[c] = v / M;
  }
}

float* pf(void* p) { return static_cast<float*>(p); }
const float* pf(const void* p) { return static_cast<const float*>(p); }

cudnnStatus_t set_tensor(const char* fn, cudnnTensorDescriptor_t d, cudnnDataType_t dt, int n, int c, int h, int w,
                         int64_t ns, int64_t cs, int64_t hs, int64_t ws) {
  if (!d) return fail(CUDNN_STATUS_BAD_PARAM, fn, "descriptor is NULL");
  if (!valid_dtype(dt)) return fail(CUDNN_STATUS_BAD_PARAM, fn, "invalid data type %d", int(dt));
  if (n <= 0 || c <= 0 || h <= 0 || w <= 0)
    return fail(CUDNN_STATUS_BAD_PARAM, fn, "dims %dx%dx%dx%d must be positive", n, c, h, w);
  if (ns <= 0 || cs <= 0 || hs <= 0 || ws <= 0) return fail(CUDNN_STATUS_BAD_PARAM, fn, "strides must be positive");
  if (int64_t(n) * c * h * w > (int64_t(1) << 31) - 1)
    return fail(CUDNN_STATUS_NOT_SUPPORTED, fn, "tensor of more than 2^31-1 elements");
  d->set = true;
  d->dt = dt;
  d->n = n;
  d->c = c;
  d->h = h;
  d->w = w;
  d->ns = ns;
  d->cs = cs;
  d->hs = hs;
  d->ws = ws;
  return CUDNN_STATUS_SUCCESS;
}

template <typename T>
cudnnStatus_t create(const char* fn, T** p) {
  if (!p) return fail(CUDNN_STATUS_BAD_PARAM, fn, "NULL output pointer");
  *p = new (std::nothrow) T();
  if (!*p) return fail(CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED, fn, "out of host memory");
  return CUDNN_STATUS_SUCCESS;
}

}  // namespace

extern "C" {

// ---- library / handle -------------------------------------------------------------------------

size_t CUDNNWINAPI cudnnGetVersion(void) { return CUDNN_VERSION; }

const char* CUDNNWINAPI cudnnGetErrorString(cudnnStatus_t s) {
  switch (s) {
#define S(x) \
  case x:    \
    return #x;
    S(CUDNN_STATUS_SUCCESS)
    S(CUDNN_STATUS_NOT_INITIALIZED)
    S(CUDNN_STATUS_SUBLIBRARY_VERSION_MISMATCH)
    S(CUDNN_STATUS_SERIALIZATION_VERSION_MISMATCH)
    S(CUDNN_STATUS_DEPRECATED)
    S(CUDNN_STATUS_LICENSE_ERROR)
    S(CUDNN_STATUS_RUNTIME_IN_PROGRESS)
    S(CUDNN_STATUS_RUNTIME_FP_OVERFLOW)
    S(CUDNN_STATUS_SUBLIBRARY_LOADING_FAILED)
    S(CUDNN_STATUS_BAD_PARAM)
    S(CUDNN_STATUS_BAD_PARAM_NULL_POINTER)
    S(CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER)
    S(CUDNN_STATUS_BAD_PARAM_NOT_FINALIZED)
    S(CUDNN_STATUS_BAD_PARAM_OUT_OF_BOUND)
    S(CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT)
    S(CUDNN_STATUS_BAD_PARAM_STREAM_MISMATCH)
    S(CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH)
    S(CUDNN_STATUS_BAD_PARAM_DUPLICATED_ENTRIES)
    S(CUDNN_STATUS_BAD_PARAM_ATTRIBUTE_TYPE)
    S(CUDNN_STATUS_NOT_SUPPORTED)
    S(CUDNN_STATUS_NOT_SUPPORTED_GRAPH_PATTERN)
    S(CUDNN_STATUS_NOT_SUPPORTED_SHAPE)
    S(CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE)
    S(CUDNN_STATUS_NOT_SUPPORTED_LAYOUT)
    S(CUDNN_STATUS_NOT_SUPPORTED_ARCH_MISMATCH)
    S(CUDNN_STATUS_INTERNAL_ERROR)
    S(CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED)
    S(CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED)
    S(CUDNN_STATUS_EXECUTION_FAILED)
#undef S
    default:
      return "CUDNN_STATUS_UNKNOWN";
  }
}

void CUDNNWINAPI cudnnGetLastErrorString(char* message, size_t max_size) {
  if (!message || max_size == 0) return;
  const size_t n = std::min(max_size - 1, g_last_error.size());
  std::memcpy(message, g_last_error.data(), n);
  message[n] = '\0';
  g_last_error.clear();
}

cudnnStatus_t CUDNNWINAPI cudnnCreate(cudnnHandle_t* handle) { return create(__func__, handle); }

cudnnStatus_t CUDNNWINAPI cudnnDestroy(cudnnHandle_t handle) {
  if (!handle) return BAD("handle is NULL");
  delete handle;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnSetStream(cudnnHandle_t handle, cudaStream_t streamId) {
  if (!handle) return BAD("handle is NULL");
  handle->stream = streamId;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnGetStream(cudnnHandle_t handle, cudaStream_t* streamId) {
  if (!handle || !streamId) return BAD("NULL argument");
  *streamId = handle->stream;
  return CUDNN_STATUS_SUCCESS;
}

// ---- tensor / filter descriptors --------------------------------------------------------------

cudnnStatus_t CUDNNWINAPI cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t* d) { return create(__func__, d); }

cudnnStatus_t CUDNNWINAPI cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t d) {
  delete d;  // NULL is a no-op, as in cuDNN
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t d, cudnnTensorFormat_t format,
                                                     cudnnDataType_t dataType, int n, int c, int h, int w) {
  if (format == CUDNN_TENSOR_NCHW)
    return set_tensor(__func__, d, dataType, n, c, h, w, int64_t(c) * h * w, int64_t(h) * w, w, 1);
  if (format == CUDNN_TENSOR_NHWC)
    return set_tensor(__func__, d, dataType, n, c, h, w, int64_t(h) * w * c, 1, int64_t(w) * c, c);
  if (format == CUDNN_TENSOR_NCHW_VECT_C) return UNSUP("CUDNN_TENSOR_NCHW_VECT_C");
  return BAD("invalid format %d", int(format));
}

cudnnStatus_t CUDNNWINAPI cudnnSetTensor4dDescriptorEx(cudnnTensorDescriptor_t d, cudnnDataType_t dataType, int n,
                                                       int c, int h, int w, int nStride, int cStride, int hStride,
                                                       int wStride) {
  return set_tensor(__func__, d, dataType, n, c, h, w, nStride, cStride, hStride, wStride);
}

cudnnStatus_t CUDNNWINAPI cudnnGetTensor4dDescriptor(const cudnnTensorDescriptor_t d, cudnnDataType_t* dataType,
                                                     int* n, int* c, int* h, int* w, int* nStride, int* cStride,
                                                     int* hStride, int* wStride) {
  if (!d || !d->set) return BAD("descriptor NULL or not set");
  if (dataType) *dataType = d->dt;
  if (n) *n = d->n;
  if (c) *c = d->c;
  if (h) *h = d->h;
  if (w) *w = d->w;
  if (nStride) *nStride = int(d->ns);
  if (cStride) *cStride = int(d->cs);
  if (hStride) *hStride = int(d->hs);
  if (wStride) *wStride = int(d->ws);
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t* d) { return create(__func__, d); }

cudnnStatus_t CUDNNWINAPI cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t d, cudnnDataType_t dataType,
                                                     cudnnTensorFormat_t format, int k, int c, int h, int w) {
  if (!d) return BAD("descriptor is NULL");
  if (!valid_dtype(dataType)) return BAD("invalid data type %d", int(dataType));
  if (format == CUDNN_TENSOR_NCHW_VECT_C) return UNSUP("CUDNN_TENSOR_NCHW_VECT_C");
  if (format != CUDNN_TENSOR_NCHW && format != CUDNN_TENSOR_NHWC) return BAD("invalid format %d", int(format));
  if (k <= 0 || c <= 0 || h <= 0 || w <= 0) return BAD("dims %dx%dx%dx%d must be positive", k, c, h, w);
  d->set = true;
  d->dt = dataType;
  d->fmt = format;
  d->k = k;
  d->c = c;
  d->h = h;
  d->w = w;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnGetFilter4dDescriptor(const cudnnFilterDescriptor_t d, cudnnDataType_t* dataType,
                                                     cudnnTensorFormat_t* format, int* k, int* c, int* h, int* w) {
  if (!d || !d->set) return BAD("descriptor NULL or not set");
  if (dataType) *dataType = d->dt;
  if (format) *format = d->fmt;
  if (k) *k = d->k;
  if (c) *c = d->c;
  if (h) *h = d->h;
  if (w) *w = d->w;
  return CUDNN_STATUS_SUCCESS;
}

// ---- convolution descriptor -------------------------------------------------------------------

cudnnStatus_t CUDNNWINAPI cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t* d) {
  return create(__func__, d);
}

cudnnStatus_t CUDNNWINAPI cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t d, int pad_h, int pad_w, int u,
                                                          int v, int dilation_h, int dilation_w,
                                                          cudnnConvolutionMode_t mode, cudnnDataType_t computeType) {
  if (!d) return BAD("descriptor is NULL");
  if (pad_h < 0 || pad_w < 0) return BAD("negative padding %d,%d", pad_h, pad_w);
  if (u <= 0 || v <= 0) return BAD("stride %d,%d must be positive", u, v);
  if (dilation_h <= 0 || dilation_w <= 0) return BAD("dilation %d,%d must be positive", dilation_h, dilation_w);
  if (mode != CUDNN_CONVOLUTION && mode != CUDNN_CROSS_CORRELATION) return BAD("invalid mode %d", int(mode));
  if (!valid_dtype(computeType)) return BAD("invalid compute type %d", int(computeType));
  d->set = true;
  d->ph = pad_h;
  d->pw = pad_w;
  d->sh = u;
  d->sw = v;
  d->dh = dilation_h;
  d->dw = dilation_w;
  d->mode = mode;
  d->compute = computeType;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnGetConvolution2dDescriptor(const cudnnConvolutionDescriptor_t d, int* pad_h,
                                                          int* pad_w, int* u, int* v, int* dilation_h,
                                                          int* dilation_w, cudnnConvolutionMode_t* mode,
                                                          cudnnDataType_t* computeType) {
  if (!d || !d->set) return BAD("descriptor NULL or not set");
  if (pad_h) *pad_h = d->ph;
  if (pad_w) *pad_w = d->pw;
  if (u) *u = d->sh;
  if (v) *v = d->sw;
  if (dilation_h) *dilation_h = d->dh;
  if (dilation_w) *dilation_w = d->dw;
  if (mode) *mode = d->mode;
  if (computeType) *computeType = d->compute;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnSetConvolutionGroupCount(cudnnConvolutionDescriptor_t d, int groupCount) {
  if (!d) return BAD("descriptor is NULL");
  if (groupCount <= 0) return BAD("group count %d", groupCount);
  d->groups = groupCount;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnGetConvolutionGroupCount(cudnnConvolutionDescriptor_t d, int* groupCount) {
  if (!d || !groupCount) return BAD("NULL argument");
  *groupCount = d->groups;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t d, cudnnMathType_t mathType) {
  if (!d) return BAD("descriptor is NULL");
  if (mathType != CUDNN_DEFAULT_MATH && mathType != CUDNN_TENSOR_OP_MATH &&
      mathType != CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION && mathType != CUDNN_FMA_MATH)
    return BAD("invalid math type %d", int(mathType));
  d->math = mathType;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnGetConvolutionMathType(cudnnConvolutionDescriptor_t d, cudnnMathType_t* mathType) {
  if (!d || !mathType) return BAD("NULL argument");
  *mathType = d->math;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnGetConvolution2dForwardOutputDim(const cudnnConvolutionDescriptor_t convDesc,
                                                                const cudnnTensorDescriptor_t inputTensorDesc,
                                                                const cudnnFilterDescriptor_t filterDesc, int* n,
                                                                int* c, int* h, int* w) {
  if (!n || !c || !h || !w) return BAD("NULL output pointer");
  ConvGeom g;
  TRY(geom(__func__, convDesc, inputTensorDesc, filterDesc, &g));
  *n = g.N;
  *c = g.K;
  *h = g.OH;
  *w = g.OW;
  return CUDNN_STATUS_SUCCESS;
}

// ---- convolution algorithms -------------------------------------------------------------------

cudnnStatus_t CUDNNWINAPI cudnnGetConvolutionForwardAlgorithmMaxCount(cudnnHandle_t handle, int* count) {
  if (!handle || !count) return BAD("NULL argument");
  *count = CUDNN_CONVOLUTION_FWD_ALGO_COUNT;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnGetConvolutionBackwardDataAlgorithmMaxCount(cudnnHandle_t handle, int* count) {
  if (!handle || !count) return BAD("NULL argument");
  *count = CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(cudnnHandle_t handle, int* count) {
  if (!handle || !count) return BAD("NULL argument");
  *count = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnGetConvolutionForwardAlgorithm_v7(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t srcDesc, const cudnnFilterDescriptor_t filterDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnTensorDescriptor_t destDesc, const int requestedAlgoCount,
    int* returnedAlgoCount, cudnnConvolutionFwdAlgoPerf_t* perfResults) {
  ConvGeom g;
  TRY(conv_check(__func__, convDesc, srcDesc, filterDesc, destDesc, &g));
  return list_algos(__func__, kFwd, handle, g, convDesc, requestedAlgoCount, returnedAlgoCount, perfResults);
}

cudnnStatus_t CUDNNWINAPI cudnnFindConvolutionForwardAlgorithm(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc, const cudnnFilterDescriptor_t wDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnTensorDescriptor_t yDesc, const int requestedAlgoCount,
    int* returnedAlgoCount, cudnnConvolutionFwdAlgoPerf_t* perfResults) {
  ConvGeom g;
  TRY(conv_check(__func__, convDesc, xDesc, wDesc, yDesc, &g));
  return list_algos(__func__, kFwd, handle, g, convDesc, requestedAlgoCount, returnedAlgoCount, perfResults);
}

cudnnStatus_t CUDNNWINAPI cudnnGetConvolutionBackwardDataAlgorithm_v7(
    cudnnHandle_t handle, const cudnnFilterDescriptor_t filterDesc, const cudnnTensorDescriptor_t diffDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnTensorDescriptor_t gradDesc, const int requestedAlgoCount,
    int* returnedAlgoCount, cudnnConvolutionBwdDataAlgoPerf_t* perfResults) {
  ConvGeom g;
  TRY(conv_check(__func__, convDesc, gradDesc, filterDesc, diffDesc, &g));
  return list_algos(__func__, kBwdData, handle, g, convDesc, requestedAlgoCount, returnedAlgoCount, perfResults);
}

cudnnStatus_t CUDNNWINAPI cudnnFindConvolutionBackwardDataAlgorithm(
    cudnnHandle_t handle, const cudnnFilterDescriptor_t wDesc, const cudnnTensorDescriptor_t dyDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnTensorDescriptor_t dxDesc, const int requestedAlgoCount,
    int* returnedAlgoCount, cudnnConvolutionBwdDataAlgoPerf_t* perfResults) {
  ConvGeom g;
  TRY(conv_check(__func__, convDesc, dxDesc, wDesc, dyDesc, &g));
  return list_algos(__func__, kBwdData, handle, g, convDesc, requestedAlgoCount, returnedAlgoCount, perfResults);
}

cudnnStatus_t CUDNNWINAPI cudnnGetConvolutionBackwardFilterAlgorithm_v7(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t srcDesc, const cudnnTensorDescriptor_t diffDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnFilterDescriptor_t gradDesc, const int requestedAlgoCount,
    int* returnedAlgoCount, cudnnConvolutionBwdFilterAlgoPerf_t* perfResults) {
  ConvGeom g;
  TRY(conv_check(__func__, convDesc, srcDesc, gradDesc, diffDesc, &g));
  return list_algos(__func__, kBwdFilter, handle, g, convDesc, requestedAlgoCount, returnedAlgoCount, perfResults);
}

cudnnStatus_t CUDNNWINAPI cudnnFindConvolutionBackwardFilterAlgorithm(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc, const cudnnTensorDescriptor_t dyDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnFilterDescriptor_t dwDesc, const int requestedAlgoCount,
    int* returnedAlgoCount, cudnnConvolutionBwdFilterAlgoPerf_t* perfResults) {
  ConvGeom g;
  TRY(conv_check(__func__, convDesc, xDesc, dwDesc, dyDesc, &g));
  return list_algos(__func__, kBwdFilter, handle, g, convDesc, requestedAlgoCount, returnedAlgoCount, perfResults);
}

cudnnStatus_t CUDNNWINAPI cudnnGetConvolutionForwardWorkspaceSize(cudnnHandle_t handle,
                                                                  const cudnnTensorDescriptor_t xDesc,
                                                                  const cudnnFilterDescriptor_t wDesc,
                                                                  const cudnnConvolutionDescriptor_t convDesc,
                                                                  const cudnnTensorDescriptor_t yDesc,
                                                                  cudnnConvolutionFwdAlgo_t algo, size_t* sizeInBytes) {
  if (!handle) return BAD("handle is NULL");
  ConvGeom g;
  TRY(conv_check(__func__, convDesc, xDesc, wDesc, yDesc, &g));
  return ws_size(__func__, kFwd, g, algo, sizeInBytes);
}

cudnnStatus_t CUDNNWINAPI cudnnGetConvolutionBackwardDataWorkspaceSize(
    cudnnHandle_t handle, const cudnnFilterDescriptor_t wDesc, const cudnnTensorDescriptor_t dyDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnTensorDescriptor_t dxDesc,
    cudnnConvolutionBwdDataAlgo_t algo, size_t* sizeInBytes) {
  if (!handle) return BAD("handle is NULL");
  ConvGeom g;
  TRY(conv_check(__func__, convDesc, dxDesc, wDesc, dyDesc, &g));
  return ws_size(__func__, kBwdData, g, algo, sizeInBytes);
}

cudnnStatus_t CUDNNWINAPI cudnnGetConvolutionBackwardFilterWorkspaceSize(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc, const cudnnTensorDescriptor_t dyDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnFilterDescriptor_t gradDesc,
    cudnnConvolutionBwdFilterAlgo_t algo, size_t* sizeInBytes) {
  if (!handle) return BAD("handle is NULL");
  ConvGeom g;
  TRY(conv_check(__func__, convDesc, xDesc, gradDesc, dyDesc, &g));
  return ws_size(__func__, kBwdFilter, g, algo, sizeInBytes);
}

// ---- convolution compute ----------------------------------------------------------------------

cudnnStatus_t CUDNNWINAPI cudnnConvolutionForward(cudnnHandle_t handle, const void* alpha,
                                                  const cudnnTensorDescriptor_t xDesc, const void* x,
                                                  const cudnnFilterDescriptor_t wDesc, const void* w,
                                                  const cudnnConvolutionDescriptor_t convDesc,
                                                  cudnnConvolutionFwdAlgo_t algo, void* workSpace,
                                                  size_t workSpaceSizeInBytes, const void* beta,
                                                  const cudnnTensorDescriptor_t yDesc, void* y) {
  if (!handle || !alpha || !beta || !x || !w || !y) return BAD("NULL handle, scaling factor or data pointer");
  ConvGeom g;
  TRY(conv_check(__func__, convDesc, xDesc, wDesc, yDesc, &g));
  std::vector<double> xb = gather_nhwc(*xDesc, pf(x));
  std::vector<double> wb = gather_krsc(*wDesc, pf(w), g.flip);
  TRY(use_ws(__func__, kFwd, g, algo, workSpace, workSpaceSizeInBytes));
  std::vector<double> yb(static_cast<size_t>(yDesc->count()));
  conv_fwd(g, xb.data(), wb.data(), yb.data());
  scatter_nhwc(*yDesc, pf(y), yb, rd(alpha), rd(beta));
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnConvolutionBackwardData(cudnnHandle_t handle, const void* alpha,
                                                       const cudnnFilterDescriptor_t wDesc, const void* w,
                                                       const cudnnTensorDescriptor_t dyDesc, const void* dy,
                                                       const cudnnConvolutionDescriptor_t convDesc,
                                                       cudnnConvolutionBwdDataAlgo_t algo, void* workSpace,
                                                       size_t workSpaceSizeInBytes, const void* beta,
                                                       const cudnnTensorDescriptor_t dxDesc, void* dx) {
  if (!handle || !alpha || !beta || !w || !dy || !dx) return BAD("NULL handle, scaling factor or data pointer");
  ConvGeom g;
  TRY(conv_check(__func__, convDesc, dxDesc, wDesc, dyDesc, &g));
  std::vector<double> dyb = gather_nhwc(*dyDesc, pf(dy));
  std::vector<double> wb = gather_krsc(*wDesc, pf(w), g.flip);
  TRY(use_ws(__func__, kBwdData, g, algo, workSpace, workSpaceSizeInBytes));
  std::vector<double> dxb(static_cast<size_t>(dxDesc->count()));
  conv_bwd_data(g, dyb.data(), wb.data(), dxb.data());
  scatter_nhwc(*dxDesc, pf(dx), dxb, rd(alpha), rd(beta));
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnConvolutionBackwardFilter(cudnnHandle_t handle, const void* alpha,
                                                         const cudnnTensorDescriptor_t xDesc, const void* x,
                                                         const cudnnTensorDescriptor_t dyDesc, const void* dy,
                                                         const cudnnConvolutionDescriptor_t convDesc,
                                                         cudnnConvolutionBwdFilterAlgo_t algo, void* workSpace,
                                                         size_t workSpaceSizeInBytes, const void* beta,
                                                         const cudnnFilterDescriptor_t dwDesc, void* dw) {
  if (!handle || !alpha || !beta || !x || !dy || !dw) return BAD("NULL handle, scaling factor or data pointer");
  ConvGeom g;
  TRY(conv_check(__func__, convDesc, xDesc, dwDesc, dyDesc, &g));
  std::vector<double> xb = gather_nhwc(*xDesc, pf(x));
  std::vector<double> dyb = gather_nhwc(*dyDesc, pf(dy));
  TRY(use_ws(__func__, kBwdFilter, g, algo, workSpace, workSpaceSizeInBytes));
  std::vector<double> dwb(size_t(g.K) * g.R * g.S * g.Cg);
  conv_bwd_filter(g, xb.data(), dyb.data(), dwb.data());
  scatter_krsc(*dwDesc, pf(dw), dwb, g.flip, rd(alpha), rd(beta));
  return CUDNN_STATUS_SUCCESS;
}

// ---- pooling ----------------------------------------------------------------------------------

cudnnStatus_t CUDNNWINAPI cudnnCreatePoolingDescriptor(cudnnPoolingDescriptor_t* d) { return create(__func__, d); }

cudnnStatus_t CUDNNWINAPI cudnnDestroyPoolingDescriptor(cudnnPoolingDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnSetPooling2dDescriptor(cudnnPoolingDescriptor_t d, cudnnPoolingMode_t mode,
                                                      cudnnNanPropagation_t maxpoolingNanOpt, int windowHeight,
                                                      int windowWidth, int verticalPadding, int horizontalPadding,
                                                      int verticalStride, int horizontalStride) {
  if (!d) return BAD("descriptor is NULL");
  if (mode != CUDNN_POOLING_MAX && mode != CUDNN_POOLING_MAX_DETERMINISTIC &&
      mode != CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING && mode != CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING)
    return BAD("invalid mode %d", int(mode));
  if (maxpoolingNanOpt != CUDNN_NOT_PROPAGATE_NAN && maxpoolingNanOpt != CUDNN_PROPAGATE_NAN)
    return BAD("invalid NaN option %d", int(maxpoolingNanOpt));
  if (windowHeight <= 0 || windowWidth <= 0 || verticalStride <= 0 || horizontalStride <= 0 || verticalPadding < 0 ||
      horizontalPadding < 0)
    return BAD("window %dx%d, padding %d,%d, stride %d,%d", windowHeight, windowWidth, verticalPadding,
               horizontalPadding, verticalStride, horizontalStride);
  d->set = true;
  d->mode = mode;
  d->nan = maxpoolingNanOpt;
  d->kh = windowHeight;
  d->kw = windowWidth;
  d->ph = verticalPadding;
  d->pw = horizontalPadding;
  d->sh = verticalStride;
  d->sw = horizontalStride;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnGetPooling2dDescriptor(const cudnnPoolingDescriptor_t d, cudnnPoolingMode_t* mode,
                                                      cudnnNanPropagation_t* maxpoolingNanOpt, int* windowHeight,
                                                      int* windowWidth, int* verticalPadding, int* horizontalPadding,
                                                      int* verticalStride, int* horizontalStride) {
  if (!d || !d->set) return BAD("descriptor NULL or not set");
  if (mode) *mode = d->mode;
  if (maxpoolingNanOpt) *maxpoolingNanOpt = d->nan;
  if (windowHeight) *windowHeight = d->kh;
  if (windowWidth) *windowWidth = d->kw;
  if (verticalPadding) *verticalPadding = d->ph;
  if (horizontalPadding) *horizontalPadding = d->pw;
  if (verticalStride) *verticalStride = d->sh;
  if (horizontalStride) *horizontalStride = d->sw;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnGetPooling2dForwardOutputDim(const cudnnPoolingDescriptor_t poolingDesc,
                                                            const cudnnTensorDescriptor_t inputTensorDesc, int* n,
                                                            int* c, int* h, int* w) {
  if (!n || !c || !h || !w) return BAD("NULL output pointer");
  PoolGeom g;
  TRY(pool_out(__func__, poolingDesc, inputTensorDesc, &g));
  *n = inputTensorDesc->n;
  *c = inputTensorDesc->c;
  *h = g.OH;
  *w = g.OW;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnPoolingForward(cudnnHandle_t handle, const cudnnPoolingDescriptor_t pd,
                                              const void* alpha, const cudnnTensorDescriptor_t xDesc, const void* x,
                                              const void* beta, const cudnnTensorDescriptor_t yDesc, void* y) {
  if (!handle || !alpha || !beta || !x || !y) return BAD("NULL handle, scaling factor or data pointer");
  TRY(pool_check(__func__, pd, xDesc, yDesc));
  const cudnnTensorStruct &xd = *xDesc, &yd = *yDesc;
  const double a = rd(alpha), b = rd(beta);
  const bool mx = is_max(pd->mode), prop = pd->nan == CUDNN_PROPAGATE_NAN;
  for (int n = 0; n < yd.n; ++n)
    for (int c = 0; c < yd.c; ++c)
      for (int oh = 0; oh < yd.h; ++oh)
        for (int ow = 0; ow < yd.w; ++ow) {
          const int h0 = oh * pd->sh - pd->ph, w0 = ow * pd->sw - pd->pw;
          const int hb = std::max(h0, 0), he = std::min(h0 + pd->kh, xd.h);
          const int wb = std::max(w0, 0), we = std::min(w0 + pd->kw, xd.w);
          double v;
          if (mx) {
            float best = -std::numeric_limits<float>::infinity();
            bool nan = false;
            for (int ih = hb; ih < he && !nan; ++ih)
              for (int iw = wb; iw < we; ++iw) {
                const float t = elem_load(x, xd.off(n, c, ih, iw), xd.dt);
                if (prop && std::isnan(t)) {
                  best = t;
                  nan = true;
                  break;
                }
                if (t > best) best = t;
              }
            v = best;
          } else {
            double s = 0;
            for (int ih = hb; ih < he; ++ih)
              for (int iw = wb; iw < we; ++iw) s += elem_load(x, xd.off(n, c, ih, iw), xd.dt);
            const int cnt = pd->mode == CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING ? pd->kh * pd->kw
                                                                                     : (he - hb) * (we - wb);
            v = s / cnt;
          }
          elem_blend(y, yd.off(n, c, oh, ow), yd.dt, v, a, b);
        }
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnPoolingBackward(cudnnHandle_t handle, const cudnnPoolingDescriptor_t pd,
                                               const void* alpha, const cudnnTensorDescriptor_t yDesc, const void* y,
                                               const cudnnTensorDescriptor_t dyDesc, const void* dy,
                                               const cudnnTensorDescriptor_t xDesc, const void* x, const void* beta,
                                               const cudnnTensorDescriptor_t dxDesc, void* dx) {
  if (!handle || !alpha || !beta || !dy || !dx) return BAD("NULL handle, scaling factor or data pointer");
  TRY(pool_check(__func__, pd, xDesc, yDesc));
  if (!dyDesc || !dyDesc->set || !dxDesc || !dxDesc->set) return BAD("dy / dx descriptor NULL or not set");
  if (dyDesc->dt != yDesc->dt || dxDesc->dt != xDesc->dt || xDesc->dt != yDesc->dt)
    return fail(CUDNN_STATUS_NOT_SUPPORTED, __func__, "x, y, dy and dx must have one data type");
  if (!same_dims(*dyDesc, *yDesc)) return BAD("dy and y dims differ");
  if (!same_dims(*dxDesc, *xDesc)) return BAD("dx and x dims differ");
  const bool mx = is_max(pd->mode);
  if (mx && (!x || !y)) return BAD("max pooling backward needs x and y");
  const cudnnTensorStruct &xd = *xDesc, &yd = *yDesc, &dyd = *dyDesc, &dxd = *dxDesc;
  std::vector<double> acc(static_cast<size_t>(xd.count()), 0.0);  // dense NCHW
  auto ai = [&](int n, int c, int h, int w) { return ((size_t(n) * xd.c + c) * xd.h + h) * xd.w + w; };
  for (int n = 0; n < yd.n; ++n)
    for (int c = 0; c < yd.c; ++c)
      for (int oh = 0; oh < yd.h; ++oh)
        for (int ow = 0; ow < yd.w; ++ow) {
          const int h0 = oh * pd->sh - pd->ph, w0 = ow * pd->sw - pd->pw;
          const int hb = std::max(h0, 0), he = std::min(h0 + pd->kh, xd.h);
          const int wb = std::max(w0, 0), we = std::min(w0 + pd->kw, xd.w);
          const double g = elem_load(dy, dyd.off(n, c, oh, ow), dyd.dt);
          if (mx) {
            // the first element of the window (row-major) equal to y
            const float yv = elem_load(y, yd.off(n, c, oh, ow), yd.dt);
            bool done = false;
            for (int ih = hb; ih < he && !done; ++ih)
              for (int iw = wb; iw < we; ++iw) {
                const float t = elem_load(x, xd.off(n, c, ih, iw), xd.dt);
                if (t == yv || (std::isnan(t) && std::isnan(yv))) {
                  acc[ai(n, c, ih, iw)] += g;
                  done = true;
                  break;
                }
              }
          } else {
            const int cnt = pd->mode == CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING ? pd->kh * pd->kw
                                                                                     : (he - hb) * (we - wb);
            const double gv = g / cnt;
            for (int ih = hb; ih < he; ++ih)
              for (int iw = wb; iw < we; ++iw) acc[ai(n, c, ih, iw)] += gv;
          }
        }
  const double a = rd(alpha), b = rd(beta);
  for (int n = 0; n < xd.n; ++n)
    for (int c = 0; c < xd.c; ++c)
      for (int h = 0; h < xd.h; ++h)
        for (int w = 0; w < xd.w; ++w) elem_blend(dx, dxd.off(n, c, h, w), dxd.dt, acc[ai(n, c, h, w)], a, b);
  return CUDNN_STATUS_SUCCESS;
}

// ---- batch norm -------------------------------------------------------------------------------

cudnnStatus_t CUDNNWINAPI cudnnDeriveBNTensorDescriptor(cudnnTensorDescriptor_t derivedBnDesc,
                                                        const cudnnTensorDescriptor_t xDesc, cudnnBatchNormMode_t mode) {
  if (!derivedBnDesc || !xDesc || !xDesc->set) return BAD("NULL or unset descriptor");
  const cudnnDataType_t dt = xDesc->dt == CUDNN_DATA_DOUBLE ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT;
  const int c = xDesc->c;
  if (mode == CUDNN_BATCHNORM_SPATIAL || mode == CUDNN_BATCHNORM_SPATIAL_PERSISTENT)
    return set_tensor(__func__, derivedBnDesc, dt, 1, c, 1, 1, c, 1, 1, 1);
  if (mode == CUDNN_BATCHNORM_PER_ACTIVATION) {
    const int h = xDesc->h, w = xDesc->w;
    return set_tensor(__func__, derivedBnDesc, dt, 1, c, h, w, int64_t(c) * h * w, int64_t(h) * w, w, 1);
  }
  return BAD("invalid mode %d", int(mode));
}

cudnnStatus_t CUDNNWINAPI cudnnBatchNormalizationForwardInference(
    cudnnHandle_t handle, cudnnBatchNormMode_t mode, const void* alpha, const void* beta,
    const cudnnTensorDescriptor_t xDesc, const void* x, const cudnnTensorDescriptor_t yDesc, void* y,
    const cudnnTensorDescriptor_t bnScaleBiasMeanVarDesc, const void* bnScale, const void* bnBias,
    const void* estimatedMean, const void* estimatedVariance, double epsilon) {
  if (!handle || !alpha || !beta || !x || !y || !bnScale || !bnBias || !estimatedMean || !estimatedVariance)
    return BAD("NULL handle, scaling factor or data pointer");
  TRY(bn_check(__func__, mode, xDesc, yDesc, bnScaleBiasMeanVarDesc));
  if (epsilon < CUDNN_BN_MIN_EPSILON) return BAD("epsilon %g < CUDNN_BN_MIN_EPSILON", epsilon);
  const cudnnTensorStruct &xd = *xDesc, &yd = *yDesc, &pd = *bnScaleBiasMeanVarDesc;
  const double a = rd(alpha), b = rd(beta);
  for (int c = 0; c < xd.c; ++c) {
    const int64_t po = pd.off(0, c, 0, 0);
    const double sc = pf(bnScale)[po], sh = pf(bnBias)[po], m = pf(estimatedMean)[po];
    const double inv = 1.0 / std::sqrt(double(pf(estimatedVariance)[po]) + epsilon);
    for (int n = 0; n < xd.n; ++n)
      for (int h = 0; h < xd.h; ++h)
        for (int w = 0; w < xd.w; ++w)
          blend(pf(y) + yd.off(n, c, h, w), sc * (pf(x)[xd.off(n, c, h, w)] - m) * inv + sh, a, b);
  }
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnBatchNormalizationForwardTraining(
    cudnnHandle_t handle, cudnnBatchNormMode_t mode, const void* alpha, const void* beta,
    const cudnnTensorDescriptor_t xDesc, const void* x, const cudnnTensorDescriptor_t yDesc, void* y,
    const cudnnTensorDescriptor_t bnScaleBiasMeanVarDesc, const void* bnScale, const void* bnBias,
    double exponentialAverageFactor, void* resultRunningMean, void* resultRunningVariance, double epsilon,
    void* resultSaveMean, void* resultSaveInvVariance) {
  if (!handle || !alpha || !beta || !x || !y || !bnScale || !bnBias)
    return BAD("NULL handle, scaling factor or data pointer");
  TRY(bn_check(__func__, mode, xDesc, yDesc, bnScaleBiasMeanVarDesc));
  if (epsilon < CUDNN_BN_MIN_EPSILON) return BAD("epsilon %g < CUDNN_BN_MIN_EPSILON", epsilon);
  if (!resultRunningMean != !resultRunningVariance)
    return BAD("exactly one of resultRunningMean / resultRunningVariance is NULL");
  if (!resultSaveMean != !resultSaveInvVariance)
    return BAD("exactly one of resultSaveMean / resultSaveInvVariance is NULL");
  const cudnnTensorStruct &xd = *xDesc, &yd = *yDesc, &pd = *bnScaleBiasMeanVarDesc;
  std::vector<double> mean, var;
  bn_stats(xd, pf(x), &mean, &var);
  const double M = double(xd.n) * xd.h * xd.w;
  const double a = rd(alpha), b = rd(beta), f = exponentialAverageFactor;
  for (int c = 0; c < xd.c; ++c) {
    const int64_t po = pd.off(0, c, 0, 0);
    const double sc = pf(bnScale)[po], sh = pf(bnBias)[po];
    const double inv = 1.0 / std::sqrt(var[c] + epsilon);
    for (int n = 0; n < xd.n; ++n)
      for (int h = 0; h < xd.h; ++h)
        for (int w = 0; w < xd.w; ++w)
          blend(pf(y) + yd.off(n, c, h, w), sc * (pf(x)[xd.off(n, c, h, w)] - mean[c]) * inv + sh, a, b);
    if (resultRunningMean) {
      float* rm = pf(resultRunningMean) + po;
      float* rv = pf(resultRunningVariance) + po;
      const double unbiased = var[c] * M / (M - 1.0);  // M = 1: 0/0 = NaN
      *rm = static_cast<float>((1.0 - f) * *rm + f * mean[c]);
      *rv = static_cast<float>((1.0 - f) * *rv + f * unbiased);
    }
    if (resultSaveMean) {
      pf(resultSaveMean)[po] = static_cast<float>(mean[c]);
      pf(resultSaveInvVariance)[po] = static_cast<float>(inv);
    }
  }
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t CUDNNWINAPI cudnnBatchNormalizationBackward(
    cudnnHandle_t handle, cudnnBatchNormMode_t mode, const void* alphaDataDiff, const void* betaDataDiff,
    const void* alphaParamDiff, const void* betaParamDiff, const cudnnTensorDescriptor_t xDesc, const void* x,
    const cudnnTensorDescriptor_t dyDesc, const void* dy, const cudnnTensorDescriptor_t dxDesc, void* dx,
    const cudnnTensorDescriptor_t dBnScaleBiasDesc, const void* bnScale, void* dBnScaleResult, void* dBnBiasResult,
    double epsilon, const void* savedMean, const void* savedInvVariance) {
  if (!handle || !alphaDataDiff || !betaDataDiff || !alphaParamDiff || !betaParamDiff || !x || !dy || !dx ||
      !bnScale || !dBnScaleResult || !dBnBiasResult)
    return BAD("NULL handle, scaling factor or data pointer");
  TRY(bn_check(__func__, mode, xDesc, dyDesc, dBnScaleBiasDesc));
  TRY(tensor_ok(__func__, dxDesc, "dx"));
  if (!same_dims(*xDesc, *dxDesc)) return BAD("x and dx dims differ");
  if (epsilon < CUDNN_BN_MIN_EPSILON) return BAD("epsilon %g < CUDNN_BN_MIN_EPSILON", epsilon);
  if (!savedMean != !savedInvVariance) return BAD("exactly one of savedMean / savedInvVariance is NULL");
  const cudnnTensorStruct &xd = *xDesc, &dyd = *dyDesc, &dxd = *dxDesc, &pd = *dBnScaleBiasDesc;
  std::vector<double> mean, inv;
  if (savedMean) {
    mean.resize(xd.c);
    inv.resize(xd.c);
    for (int c = 0; c < xd.c; ++c) {
      mean[c] = pf(savedMean)[pd.off(0, c, 0, 0)];
      inv[c] = pf(savedInvVariance)[pd.off(0, c, 0, 0)];
    }
  } else {
    std::vector<double> var;
    bn_stats(xd, pf(x), &mean, &var);
    inv.resize(xd.c);
    for (int c = 0; c < xd.c; ++c) inv[c] = 1.0 / std::sqrt(var[c] + epsilon);
  }
  const double M = double(xd.n) * xd.h * xd.w;
  const double aD = rd(alphaDataDiff), bD = rd(betaDataDiff), aP = rd(alphaParamDiff), bP = rd(betaParamDiff);
  const float* xp = pf(x);
  const float* dyp = pf(dy);
  for (int c = 0; c < xd.c; ++c) {
    double sdy = 0, sdyx = 0;
    for (int n = 0; n < xd.n; ++n)
      for (int h = 0; h < xd.h; ++h)
        for (int w = 0; w < xd.w; ++w) {
          const double g = dyp[dyd.off(n, c, h, w)];
          sdy += g;
          sdyx += g * (xp[xd.off(n, c, h, w)] - mean[c]) * inv[c];
        }
    const int64_t po = pd.off(0, c, 0, 0);
    const double sc = pf(bnScale)[po];
    for (int n = 0; n < xd.n; ++n)
      for (int h = 0; h < xd.h; ++h)
        for (int w = 0; w < xd.w; ++w) {
          const double xh = (xp[xd.off(n, c, h, w)] - mean[c]) * inv[c];
          const double g = dyp[dyd.off(n, c, h, w)];
          blend(pf(dx) + dxd.off(n, c, h, w), sc * inv[c] * (g - sdy / M - xh * sdyx / M), aD, bD);
        }
    blend(pf(dBnScaleResult) + po, sdyx, aP, bP);
    blend(pf(dBnBiasResult) + po, sdy, aP, bP);
  }
  return CUDNN_STATUS_SUCCESS;
}

}  // extern "C"

// ---- test API ---------------------------------------------------------------------------------
#ifdef FAKE_CUDNN_TEST_API
namespace {
struct Descs {
  cudnnHandle_t h = nullptr;
  cudnnTensorDescriptor_t t[4] = {nullptr, nullptr, nullptr, nullptr};
  cudnnFilterDescriptor_t f = nullptr;
  cudnnConvolutionDescriptor_t cd = nullptr;
  cudnnPoolingDescriptor_t pd = nullptr;
  Descs() {
    cudnnCreate(&h);
    for (auto& d : t) cudnnCreateTensorDescriptor(&d);
    cudnnCreateFilterDescriptor(&f);
    cudnnCreateConvolutionDescriptor(&cd);
    cudnnCreatePoolingDescriptor(&pd);
  }
  ~Descs() {
    cudnnDestroyPoolingDescriptor(pd);
    cudnnDestroyConvolutionDescriptor(cd);
    cudnnDestroyFilterDescriptor(f);
    for (auto& d : t) cudnnDestroyTensorDescriptor(d);
    cudnnDestroy(h);
  }
};

// data types of the test convolutions: x/y, filter, compute (fake_cudnn_test_conv_types);
// the first is also the pooling tests' tensor type
cudnnDataType_t g_conv_dt[3] = {CUDNN_DATA_FLOAT, CUDNN_DATA_FLOAT, CUDNN_DATA_FLOAT};

// p: N, C, H, W, K, R, S, ph, pw, sh, sw, dh, dw, groups, mode, math
cudnnStatus_t conv_setup(Descs& D, int xfmt, int wfmt, const int* p, int* out) {
  TRY(cudnnSetTensor4dDescriptor(D.t[0], cudnnTensorFormat_t(xfmt), g_conv_dt[0], p[0], p[1], p[2], p[3]));
  TRY(cudnnSetFilter4dDescriptor(D.f, g_conv_dt[1], cudnnTensorFormat_t(wfmt), p[4], p[13] > 0 ? p[1] / p[13] : p[1], p[5], p[6]));
  TRY(cudnnSetConvolution2dDescriptor(D.cd, p[7], p[8], p[9], p[10], p[11], p[12], cudnnConvolutionMode_t(p[14]),
                                      g_conv_dt[2]));
  TRY(cudnnSetConvolutionGroupCount(D.cd, p[13]));
  TRY(cudnnSetConvolutionMathType(D.cd, cudnnMathType_t(p[15])));
  TRY(cudnnGetConvolution2dForwardOutputDim(D.cd, D.t[0], D.f, out, out + 1, out + 2, out + 3));
  return cudnnSetTensor4dDescriptor(D.t[1], cudnnTensorFormat_t(xfmt), g_conv_dt[0], out[0], out[1], out[2],
                                    out[3]);
}
}  // namespace

extern "C" {

// the data types the next fake_cudnn_test_conv* calls use (default FLOAT, FLOAT, FLOAT)
void fake_cudnn_test_conv_types(int data, int filter, int compute) {
  g_conv_dt[0] = cudnnDataType_t(data);
  g_conv_dt[1] = cudnnDataType_t(filter);
  g_conv_dt[2] = cudnnDataType_t(compute);
}

// output dims (NCHW order) of the convolution
int fake_cudnn_test_conv_dims(int xfmt, int wfmt, const int* p, int* out) {
  Descs D;
  return conv_setup(D, xfmt, wfmt, p, out);
}

// dir 0: y = conv(x, w); 1: x = bwd_data(w, y); 2: w = bwd_filter(x, y). ws_bytes < 0: the
// workspace size the fake asks for (a buffer is allocated); else that many bytes of `ws`.
int fake_cudnn_test_conv(int dir, int xfmt, int wfmt, const int* p, int algo, float alpha, float beta, float* x,
                         float* w, float* y, long long ws_bytes, void* ws) {
  Descs D;
  int out[4];
  TRY(conv_setup(D, xfmt, wfmt, p, out));
  size_t need = 0;
  std::vector<unsigned char> buf;
  if (dir == 0)
    TRY(cudnnGetConvolutionForwardWorkspaceSize(D.h, D.t[0], D.f, D.cd, D.t[1], cudnnConvolutionFwdAlgo_t(algo),
                                                &need));
  else if (dir == 1)
    TRY(cudnnGetConvolutionBackwardDataWorkspaceSize(D.h, D.f, D.t[1], D.cd, D.t[0],
                                                     cudnnConvolutionBwdDataAlgo_t(algo), &need));
  else
    TRY(cudnnGetConvolutionBackwardFilterWorkspaceSize(D.h, D.t[0], D.t[1], D.cd, D.f,
                                                       cudnnConvolutionBwdFilterAlgo_t(algo), &need));
  size_t wsz = need;
  if (ws_bytes < 0) {
    buf.resize(need);
    ws = need ? buf.data() : nullptr;
  } else {
    wsz = size_t(ws_bytes);
  }
  if (dir == 0)
    return cudnnConvolutionForward(D.h, &alpha, D.t[0], x, D.f, w, D.cd, cudnnConvolutionFwdAlgo_t(algo), ws, wsz,
                                   &beta, D.t[1], y);
  if (dir == 1)
    return cudnnConvolutionBackwardData(D.h, &alpha, D.f, w, D.t[1], y, D.cd, cudnnConvolutionBwdDataAlgo_t(algo), ws,
                                        wsz, &beta, D.t[0], x);
  return cudnnConvolutionBackwardFilter(D.h, &alpha, D.t[0], x, D.t[1], y, D.cd,
                                        cudnnConvolutionBwdFilterAlgo_t(algo), ws, wsz, &beta, D.f, w);
}

// the algorithm list of a direction (find: cudnnFind*, else cudnnGet*_v7); per result:
// algo, status, determinism, mathType, memory
int fake_cudnn_test_conv_algos(int dir, int find, int xfmt, int wfmt, const int* p, int requested, int* max_count,
                               int* returned, int* algo, int* status, int* det, int* math, long long* mem) {
  Descs D;
  int out[4];
  TRY(conv_setup(D, xfmt, wfmt, p, out));
  auto copy = [&](const auto* r) {
    for (int i = 0; i < *returned; ++i) {
      algo[i] = int(r[i].algo);
      status[i] = int(r[i].status);
      det[i] = int(r[i].determinism);
      math[i] = int(r[i].mathType);
      mem[i] = (long long)r[i].memory;
    }
  };
  if (dir == 0) {
    TRY(cudnnGetConvolutionForwardAlgorithmMaxCount(D.h, max_count));
    std::vector<cudnnConvolutionFwdAlgoPerf_t> r(std::max(1, requested));
    TRY(find ? cudnnFindConvolutionForwardAlgorithm(D.h, D.t[0], D.f, D.cd, D.t[1], requested, returned, r.data())
             : cudnnGetConvolutionForwardAlgorithm_v7(D.h, D.t[0], D.f, D.cd, D.t[1], requested, returned, r.data()));
    copy(r.data());
  } else if (dir == 1) {
    TRY(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(D.h, max_count));
    std::vector<cudnnConvolutionBwdDataAlgoPerf_t> r(std::max(1, requested));
    TRY(find ? cudnnFindConvolutionBackwardDataAlgorithm(D.h, D.f, D.t[1], D.cd, D.t[0], requested, returned, r.data())
             : cudnnGetConvolutionBackwardDataAlgorithm_v7(D.h, D.f, D.t[1], D.cd, D.t[0], requested, returned,
                                                           r.data()));
    copy(r.data());
  } else {
    TRY(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(D.h, max_count));
    std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> r(std::max(1, requested));
    TRY(find ? cudnnFindConvolutionBackwardFilterAlgorithm(D.h, D.t[0], D.t[1], D.cd, D.f, requested, returned,
                                                           r.data())
             : cudnnGetConvolutionBackwardFilterAlgorithm_v7(D.h, D.t[0], D.t[1], D.cd, D.f, requested, returned,
                                                             r.data()));
    copy(r.data());
  }
  return CUDNN_STATUS_SUCCESS;
}

// kind 0: training forward, 1: inference forward, 2: backward. dims: N, C, H, W. mode: BN mode.
// f: running pointers (training) / estimated statistics (inference); s: saved mean / inv std.
int fake_cudnn_test_bn(int kind, int fmt, int mode, const int* dims, const float* ab, float* x, float* y, float* dy,
                       float* scale, float* bias, float* dscale, float* dbias, double factor, float* rmean,
                       float* rvar, double eps, float* smean, float* sinv) {
  Descs D;
  TRY(cudnnSetTensor4dDescriptor(D.t[0], cudnnTensorFormat_t(fmt), CUDNN_DATA_FLOAT, dims[0], dims[1], dims[2],
                                 dims[3]));
  TRY(cudnnDeriveBNTensorDescriptor(D.t[1], D.t[0], cudnnBatchNormMode_t(mode)));
  const cudnnBatchNormMode_t m = cudnnBatchNormMode_t(mode);
  if (kind == 0)
    return cudnnBatchNormalizationForwardTraining(D.h, m, ab, ab + 1, D.t[0], x, D.t[0], y, D.t[1], scale, bias,
                                                  factor, rmean, rvar, eps, smean, sinv);
  if (kind == 1)
    return cudnnBatchNormalizationForwardInference(D.h, m, ab, ab + 1, D.t[0], x, D.t[0], y, D.t[1], scale, bias,
                                                   rmean, rvar, eps);
  // backward: y is dx
  return cudnnBatchNormalizationBackward(D.h, m, ab, ab + 1, ab + 2, ab + 3, D.t[0], x, D.t[0], dy, D.t[0], y, D.t[1],
                                         scale, dscale, dbias, eps, smean, sinv);
}

// dir 0: forward (x -> y), 1: backward (y, dy, x -> dx). p: N, C, H, W, kh, kw, ph, pw, sh, sw.
// out: the output dims (NCHW order).
int fake_cudnn_test_pool(int dir, int fmt, int mode, int nan, const int* p, float alpha, float beta, float* x,
                         float* y, float* dy, float* dx, int* out) {
  Descs D;
  TRY(cudnnSetTensor4dDescriptor(D.t[0], cudnnTensorFormat_t(fmt), g_conv_dt[0], p[0], p[1], p[2], p[3]));
  TRY(cudnnSetPooling2dDescriptor(D.pd, cudnnPoolingMode_t(mode), cudnnNanPropagation_t(nan), p[4], p[5], p[6], p[7],
                                  p[8], p[9]));
  TRY(cudnnGetPooling2dForwardOutputDim(D.pd, D.t[0], out, out + 1, out + 2, out + 3));
  TRY(cudnnSetTensor4dDescriptor(D.t[1], cudnnTensorFormat_t(fmt), g_conv_dt[0], out[0], out[1], out[2], out[3]));
  if (dir == 0 && !x) return CUDNN_STATUS_SUCCESS;  // dims only
  if (dir == 0) return cudnnPoolingForward(D.h, D.pd, &alpha, D.t[0], x, &beta, D.t[1], y);
  return cudnnPoolingBackward(D.h, D.pd, &alpha, D.t[1], y, D.t[1], dy, D.t[0], x, &beta, D.t[0], dx);
}

}  // extern "C"
#endif  // FAKE_CUDNN_TEST_API
