#include "engine/detection.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace halcdl::det {

namespace {
const float kClip = std::log(1000.f / 16.f);
constexpr double kPi = 3.14159265358979323846;

inline float sigmoid(float z) {
  if (z >= 0) return 1.f / (1.f + std::exp(-z));
  const float e = std::exp(z);
  return e / (1.f + e);
}
}  // namespace

bool Config::has_orientation(int label) const {
  return oriented && std::find(no_orientation.begin(), no_orientation.end(), label) == no_orientation.end();
}

std::vector<float> make_anchors(const Config& c, const std::vector<Level>& levels) {
  const int A = c.anchors_per_position(), D = c.box_dim();
  int64_t total = 0;
  for (auto& l : levels) total += l.h * l.w * A;
  std::vector<float> out(static_cast<size_t>(total) * D);
  // per position: the A (height, width[, angle]) triples
  size_t o = 0;
  for (auto& l : levels) {
    std::vector<float> hh, ww, aa;
    for (float r : c.aspect_ratios)
      for (int j = 0; j < c.num_subscales; ++j) {
        const double size = c.anchor_scale * l.stride * std::pow(2.0, static_cast<double>(j) / c.num_subscales);
        const float h = static_cast<float>(size * std::sqrt(static_cast<double>(r)));
        const float w = static_cast<float>(size / std::sqrt(static_cast<double>(r)));
        if (!c.oriented) {
          hh.push_back(h);
          ww.push_back(w);
          continue;
        }
        for (float ang : c.angles) {
          hh.push_back(h);
          ww.push_back(w);
          aa.push_back(wrap_angle(ang, c.ignore_direction));
        }
      }
    for (int64_t y = 0; y < l.h; ++y)
      for (int64_t x = 0; x < l.w; ++x) {
        const float cy = (static_cast<float>(y) + 0.5f) * l.stride, cx = (static_cast<float>(x) + 0.5f) * l.stride;
        for (int a = 0; a < A; ++a) {
          if (c.oriented) {
            out[o++] = cy;
            out[o++] = cx;
            out[o++] = 0.5f * ww[a];
            out[o++] = 0.5f * hh[a];
            out[o++] = aa[a];
            continue;
          }
          out[o++] = cy - 0.5f * hh[a];
          out[o++] = cx - 0.5f * ww[a];
          out[o++] = cy + 0.5f * hh[a];
          out[o++] = cx + 0.5f * ww[a];
        }
      }
  }
  return out;
}

// ---- rectangle2 ----

float wrap_angle(float phi, bool ignore_direction) {
  // into (−period/2, period/2] (HALCON's (−π, π], or (−π/2, π/2] with ignore_direction)
  const double period = ignore_direction ? kPi : 2 * kPi;
  double x = std::fmod(0.5 * period - static_cast<double>(phi), period);
  if (x < 0) x += period;
  float r = static_cast<float>(0.5 * period - x);
  if (r <= static_cast<float>(-0.5 * period)) r = static_cast<float>(0.5 * period);
  return r;
}

void corners2(const float* b, double* rc) {
  const double s = std::sin(static_cast<double>(b[4])), co = std::cos(static_cast<double>(b[4]));
  // u1 = (−s, co) along length1, u2 = (co, s) along length2 (row, col)
  const double r1 = -s * b[2], c1 = co * b[2], r2 = co * b[3], c2 = s * b[3];
  const double sg[4][2] = {{1, 1}, {-1, 1}, {-1, -1}, {1, -1}};
  for (int i = 0; i < 4; ++i) {
    rc[2 * i] = b[0] + sg[i][0] * r1 + sg[i][1] * r2;
    rc[2 * i + 1] = b[1] + sg[i][0] * c1 + sg[i][1] * c2;
  }
}

namespace {
// polygons as (x, y) = (col, row): corners2's order is counter-clockwise there
inline double cross(double ax, double ay, double bx, double by) { return ax * by - ay * bx; }

double poly_area(const double* p, int n) {
  double a = 0;
  for (int i = 0; i < n; ++i) {
    const int j = (i + 1) % n;
    a += p[2 * i] * p[2 * j + 1] - p[2 * j] * p[2 * i + 1];
  }
  return 0.5 * a;
}
}  // namespace

void prepare2(const float* b, Rect2Geom& g) {
  double rc[8];
  corners2(b, rc);
  g.x0 = g.y0 = 1e300;
  g.x1 = g.y1 = -1e300;
  for (int i = 0; i < 4; ++i) {  // (x, y) = (col, row): counter-clockwise (u1 × u2 = +1)
    g.x[i] = rc[2 * i + 1];
    g.y[i] = rc[2 * i];
    g.x0 = std::min(g.x0, g.x[i]);
    g.x1 = std::max(g.x1, g.x[i]);
    g.y0 = std::min(g.y0, g.y[i]);
    g.y1 = std::max(g.y1, g.y[i]);
  }
  g.area = 4.0 * b[2] * b[3];
}

float iou2(const Rect2Geom& a, const Rect2Geom& b) {
  if (!(a.area > 0) || !(b.area > 0)) return 0.f;
  if (a.x1 <= b.x0 || b.x1 <= a.x0 || a.y1 <= b.y0 || b.y1 <= a.y0) return 0.f;
  double P[2 * 16], Q[2 * 16];
  int n = 4;
  for (int i = 0; i < 4; ++i) {
    P[2 * i] = a.x[i];
    P[2 * i + 1] = a.y[i];
  }
  // Sutherland–Hodgman: clip a by each edge of the convex, counter-clockwise b
  for (int e = 0; e < 4 && n > 0; ++e) {
    const double ex = b.x[e], ey = b.y[e];
    const double dx = b.x[(e + 1) % 4] - ex, dy = b.y[(e + 1) % 4] - ey;
    int m = 0;
    for (int i = 0; i < n; ++i) {
      const double* p = P + 2 * i;
      const double* q = P + 2 * ((i + 1) % n);
      const double sp = cross(dx, dy, p[0] - ex, p[1] - ey), sq = cross(dx, dy, q[0] - ex, q[1] - ey);
      if (sp >= 0) {
        Q[2 * m] = p[0];
        Q[2 * m + 1] = p[1];
        ++m;
      }
      if ((sp >= 0) != (sq >= 0)) {
        const double t = sp / (sp - sq);
        Q[2 * m] = p[0] + t * (q[0] - p[0]);
        Q[2 * m + 1] = p[1] + t * (q[1] - p[1]);
        ++m;
      }
    }
    n = m;
    std::copy(Q, Q + 2 * n, P);
  }
  if (n < 3) return 0.f;
  const double inter = std::max(0.0, poly_area(P, n));
  const double u = a.area + b.area - inter;
  return u > 0 ? static_cast<float>(std::min(1.0, inter / u)) : 0.f;
}

float iou2(const float* a, const float* b) {
  Rect2Geom ga, gb;
  prepare2(a, ga);
  prepare2(b, gb);
  return iou2(ga, gb);
}

void encode2(const float* a, const float* g, float* t, bool ignore_direction) {
  const float s = std::sin(a[4]), co = std::cos(a[4]);
  const float dr = g[0] - a[0], dc = g[1] - a[1];
  t[0] = (co * dr + s * dc) / (2.f * a[3]);
  t[1] = (-s * dr + co * dc) / (2.f * a[2]);
  t[2] = std::log(g[2] / a[2]);
  t[3] = std::log(g[3] / a[3]);
  t[4] = wrap_angle(g[4] - a[4], ignore_direction);
}

void decode2(const float* a, const float* t, float* b, bool ignore_direction) {
  const float s = std::sin(a[4]), co = std::cos(a[4]);
  const float d2 = t[0] * 2.f * a[3], d1 = t[1] * 2.f * a[2];
  // Δ = d1·u1 + d2·u2, u1 = (−s, co), u2 = (co, s)
  b[0] = a[0] - s * d1 + co * d2;
  b[1] = a[1] + co * d1 + s * d2;
  b[2] = std::exp(std::min(t[2], kClip)) * a[2];
  b[3] = std::exp(std::min(t[3], kClip)) * a[3];
  b[4] = wrap_angle(a[4] + t[4], ignore_direction);
}

void axis_parallel2(const float* b, float* o) {
  const float s = std::fabs(std::sin(b[4])), co = std::fabs(std::cos(b[4]));
  o[0] = b[0];
  o[1] = b[1];
  o[2] = co * b[2] + s * b[3];  // half extent along the columns
  o[3] = s * b[2] + co * b[3];  // half extent along the rows
  o[4] = 0.f;
}

namespace {
// the multiple of π/2 nearest phi, as k mod 4 and the angle
inline int quarter(float phi) {
  const long k = std::lround(static_cast<double>(phi) / (0.5 * kPi));
  return static_cast<int>(((k % 4) + 4) % 4);
}
}  // namespace

void no_orientation_target(const float* a, const float* ax, float* o) {
  const int q = quarter(a[4]);
  o[0] = ax[0];
  o[1] = ax[1];
  o[2] = q % 2 ? ax[3] : ax[2];
  o[3] = q % 2 ? ax[2] : ax[3];
  o[4] = a[4];  // the angle offset is not trained
}

void no_orientation_decode(const float* a, const float* t, float* b) {
  const float tt[5] = {t[0], t[1], t[2], t[3], 0.f};
  decode2(a, tt, b, false);
  const int q = quarter(a[4]);
  if (q % 2) std::swap(b[2], b[3]);
  b[4] = 0.f;
}

float iou(const float* a, const float* b) {
  const float ih = std::min(a[2], b[2]) - std::max(a[0], b[0]);
  const float iw = std::min(a[3], b[3]) - std::max(a[1], b[1]);
  if (ih <= 0 || iw <= 0) return 0.f;
  const float inter = ih * iw;
  const float ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
  return ua > 0 ? inter / ua : 0.f;
}

void encode(const float* a, const float* g, float* t) {
  const float ah = a[2] - a[0], aw = a[3] - a[1];
  const float acy = a[0] + 0.5f * ah, acx = a[1] + 0.5f * aw;
  const float gh = g[2] - g[0], gw = g[3] - g[1];
  const float gcy = g[0] + 0.5f * gh, gcx = g[1] + 0.5f * gw;
  t[0] = (gcy - acy) / ah;
  t[1] = (gcx - acx) / aw;
  t[2] = std::log(gh / ah);
  t[3] = std::log(gw / aw);
}

void decode(const float* a, const float* t, float* b) {
  const float ah = a[2] - a[0], aw = a[3] - a[1];
  const float acy = a[0] + 0.5f * ah, acx = a[1] + 0.5f * aw;
  const float cy = t[0] * ah + acy, cx = t[1] * aw + acx;
  const float h = std::exp(std::min(t[2], kClip)) * ah, w = std::exp(std::min(t[3], kClip)) * aw;
  b[0] = cy - 0.5f * h;
  b[1] = cx - 0.5f * w;
  b[2] = cy + 0.5f * h;
  b[3] = cx + 0.5f * w;
}

namespace {
// rectangle2 matching: the geometry of every box prepared once, the IoU matrix kept when it is
// small enough (else the low-quality pass recomputes its column)
void match2(const float* anchors, int64_t na, const float* boxes, int nb, const Config& c, int* out) {
  std::vector<Rect2Geom> gb(nb);
  for (int g = 0; g < nb; ++g) prepare2(boxes + 5 * g, gb[g]);
  const bool keep = static_cast<int64_t>(nb) * na <= (int64_t(1) << 23);
  std::vector<float> q(keep ? static_cast<size_t>(na) * nb : 0);
  std::vector<int> arg(na);
#pragma omp parallel for schedule(static)
  for (int64_t a = 0; a < na; ++a) {
    Rect2Geom ga;
    prepare2(anchors + 5 * a, ga);
    float bv = -1.f;
    int bi = 0;
    for (int g = 0; g < nb; ++g) {
      const float v = iou2(ga, gb[g]);
      if (keep) q[static_cast<size_t>(a) * nb + g] = v;
      if (v > bv) { bv = v; bi = g; }
    }
    arg[a] = bi;
    out[a] = bv >= c.fg_iou ? bi : bv < c.bg_iou ? kBackground : kIgnored;
  }
  if (!c.low_quality_matches) return;
  std::vector<float> v(keep ? 0 : na);
  for (int g = 0; g < nb; ++g) {
    if (!keep) {
#pragma omp parallel for schedule(static)
      for (int64_t a = 0; a < na; ++a) {
        Rect2Geom ga;
        prepare2(anchors + 5 * a, ga);
        v[a] = iou2(ga, gb[g]);
      }
    }
    auto at = [&](int64_t a) { return keep ? q[static_cast<size_t>(a) * nb + g] : v[a]; };
    float hv = 0.f;
    for (int64_t a = 0; a < na; ++a) hv = std::max(hv, at(a));
    if (hv <= 0.f) continue;
    for (int64_t a = 0; a < na; ++a)
      if (at(a) == hv) out[a] = arg[a];
  }
}
}  // namespace

void match(const float* anchors, int64_t na, const float* boxes, int nb, const Config& c, int* out) {
  if (nb == 0) {
    std::fill(out, out + na, kBackground);
    return;
  }
  if (c.oriented) return match2(anchors, na, boxes, nb, c, out);
  std::vector<float> best(na);
  std::vector<int> arg(na);
#pragma omp parallel for schedule(static)
  for (int64_t a = 0; a < na; ++a) {
    float bv = -1.f;
    int bi = 0;
    for (int g = 0; g < nb; ++g) {
      const float v = iou(anchors + 4 * a, boxes + 4 * g);
      if (v > bv) { bv = v; bi = g; }
    }
    best[a] = bv;
    arg[a] = bi;
    out[a] = bv >= c.fg_iou ? bi : bv < c.bg_iou ? kBackground : kIgnored;
  }
  if (!c.low_quality_matches) return;
  // torchvision's set_low_quality_matches_: the anchors with a box's highest IoU get their
  // own best box (here only where that IoU is > 0)
  for (int g = 0; g < nb; ++g) {
    float hv = 0.f;
    for (int64_t a = 0; a < na; ++a) hv = std::max(hv, iou(anchors + 4 * a, boxes + 4 * g));
    if (hv <= 0.f) continue;
    for (int64_t a = 0; a < na; ++a)
      if (iou(anchors + 4 * a, boxes + 4 * g) == hv) out[a] = arg[a];
  }
}

LossResult loss(const float* out, int bs, int64_t na, int k, const float* anchors, const int64_t* level_start,
                int nlevels, const float* boxes, const int* labels, const int64_t* box_off, const float* class_w,
                const Config& c, float scale, float* dout) {
  const int D = c.box_dim();
  const int64_t stride = k + D;
  // rectangle2: the boxes of classes without orientation become axis-parallel (phi 0)
  std::vector<float> ap;
  if (c.oriented && !c.no_orientation.empty()) {
    ap.assign(boxes, boxes + D * box_off[bs]);
    for (int64_t j = box_off[0]; j < box_off[bs]; ++j)
      if (!c.has_orientation(labels[j])) axis_parallel2(boxes + D * j, ap.data() + D * j);
    boxes = ap.data();
  }
  std::vector<int> m(static_cast<size_t>(bs) * na);
  int64_t fg = 0;
  for (int i = 0; i < bs; ++i) {
    const int nb = static_cast<int>(box_off[i + 1] - box_off[i]);
    match(anchors, na, boxes + D * box_off[i], nb, c, m.data() + static_cast<size_t>(i) * na);
    for (int64_t a = 0; a < na; ++a) fg += m[static_cast<size_t>(i) * na + a] >= 0;
  }
  const double norm = static_cast<double>(std::max<int64_t>(fg, 1));
  std::vector<double> lc(static_cast<size_t>(bs) * na), lb(static_cast<size_t>(bs) * na);
  const float gs = static_cast<float>(scale / norm);
  const float cwc = c.class_heads_weight, cwb = c.bbox_heads_weight, gamma = c.gamma, beta = c.beta;
  const int64_t total = static_cast<int64_t>(bs) * na;
#pragma omp parallel for schedule(static)
  for (int64_t ia = 0; ia < total; ++ia) {
    const int i = static_cast<int>(ia / na);
    const int64_t a = ia % na;
    const float* z = out + ia * stride;
    float* d = dout + ia * stride;
    const int mt = m[ia];
    double sc = 0, sb = 0;
    if (mt == kIgnored) {
      std::fill(d, d + stride, 0.f);
    } else {
      const int tgt = mt >= 0 ? labels[box_off[i] + mt] : -1;
      for (int j = 0; j < k; ++j) {
        const float x = z[j], t = j == tgt ? 1.f : 0.f, w = class_w ? class_w[j] : 1.f;
        const float p = sigmoid(x);
        const float ce = std::max(x, 0.f) - x * t + std::log1p(std::exp(-std::fabs(x)));
        const float pt = p * t + (1.f - p) * (1.f - t);
        const float q = 1.f - pt;
        const float mod = gamma == 2.f ? q * q : std::pow(q, gamma);
        sc += static_cast<double>(w) * mod * ce;
        // d/dx [(1−p_t)^γ ce] = (p − t)(1−p_t)^γ − γ (1−p_t)^(γ−1) p(1−p)(2t−1) ce
        const float dmod = gamma == 2.f ? 2.f * q : gamma * std::pow(q, gamma - 1.f);
        const float g = (p - t) * mod - dmod * p * (1.f - p) * (2.f * t - 1.f) * ce;
        d[j] = gs * cwc * w * g;
      }
      if (mt >= 0) {
        float tg[5];
        int nt = D;
        const float* gb = boxes + D * (box_off[i] + mt);
        if (!c.oriented) {
          encode(anchors + 4 * a, gb, tg);
        } else if (c.has_orientation(tgt)) {
          encode2(anchors + 5 * a, gb, tg, c.ignore_direction);
        } else {
          float nb[5];
          no_orientation_target(anchors + 5 * a, gb, nb);
          encode2(anchors + 5 * a, nb, tg, false);
          nt = 4;  // no angle term
          d[k + 4] = 0.f;
        }
        for (int j = 0; j < nt; ++j) {
          const float x = z[k + j] - tg[j], ax = std::fabs(x);
          sb += ax < beta ? 0.5 * x * x / beta : ax - 0.5 * beta;
          d[k + j] = gs * cwb * (ax < beta ? x / beta : (x > 0 ? 1.f : x < 0 ? -1.f : 0.f));
        }
      } else {
        std::fill(d + k, d + stride, 0.f);
      }
    }
    lc[ia] = sc;
    lb[ia] = sb;
  }
  LossResult r;
  r.num_fg = fg;
  r.cls_level.assign(nlevels, 0.0);
  r.box_level.assign(nlevels, 0.0);
  for (int l = 0; l < nlevels; ++l) {
    double sc = 0, sb = 0;
    for (int i = 0; i < bs; ++i)
      for (int64_t a = level_start[l]; a < level_start[l + 1]; ++a) {
        sc += lc[static_cast<size_t>(i) * na + a];
        sb += lb[static_cast<size_t>(i) * na + a];
      }
    r.cls_level[l] = cwc * sc / norm;
    r.box_level[l] = cwb * sb / norm;
    r.cls += r.cls_level[l];
    r.box += r.box_level[l];
  }
  return r;
}

std::vector<int> nms(const float* boxes, int dim, const std::vector<int>& order, float thr) {
  std::vector<int> keep;
  if (dim == 5) {  // the geometry of each candidate once
    std::vector<Rect2Geom> kg;
    for (int i : order) {
      Rect2Geom g;
      prepare2(boxes + 5 * i, g);
      bool ok = true;
      for (const Rect2Geom& k : kg)
        if (iou2(g, k) > thr) { ok = false; break; }
      if (ok) {
        keep.push_back(i);
        kg.push_back(g);
      }
    }
    return keep;
  }
  for (int i : order) {
    bool ok = true;
    for (int j : keep)
      if (iou(boxes + 4 * i, boxes + 4 * j) > thr) { ok = false; break; }
    if (ok) keep.push_back(i);
  }
  return keep;
}

std::vector<int> nms(const float* boxes, const std::vector<int>& order, float thr) { return nms(boxes, 4, order, thr); }

std::vector<Detection> detect(const float* out, int64_t na, int k, const float* anchors, const int64_t* level_start,
                              int nlevels, const Config& c, int h, int w) {
  (void)na;
  const int D = c.box_dim();
  const int64_t stride = k + D;
  // logit threshold: sigmoid(z) >= min_confidence
  struct Cand { int64_t a; int cls; float score; };
  std::vector<Cand> cands;
  for (int l = 0; l < nlevels; ++l) {
    std::vector<Cand> lv;
    for (int64_t a = level_start[l]; a < level_start[l + 1]; ++a)
      for (int j = 0; j < k; ++j) {
        const float s = sigmoid(out[a * stride + j]);
        if (s >= c.min_confidence) lv.push_back({a, j, s});
      }
    auto by_score = [](const Cand& x, const Cand& y) {
      return x.score != y.score ? x.score > y.score : (x.a != y.a ? x.a < y.a : x.cls < y.cls);
    };
    if (static_cast<int64_t>(lv.size()) > c.pre_nms_top_n) {
      std::partial_sort(lv.begin(), lv.begin() + c.pre_nms_top_n, lv.end(), by_score);
      lv.resize(c.pre_nms_top_n);
    }
    cands.insert(cands.end(), lv.begin(), lv.end());
  }
  std::stable_sort(cands.begin(), cands.end(), [](const Cand& x, const Cand& y) {
    return x.score != y.score ? x.score > y.score : (x.a != y.a ? x.a < y.a : x.cls < y.cls);
  });
  const int n = static_cast<int>(cands.size());
  std::vector<float> bx(static_cast<size_t>(n) * D);
  for (int i = 0; i < n; ++i) {
    float* b = bx.data() + D * i;
    if (c.oriented) {
      const float* an = anchors + 5 * cands[i].a;
      const float* t = out + cands[i].a * stride + k;
      if (c.has_orientation(cands[i].cls)) decode2(an, t, b, c.ignore_direction);
      else no_orientation_decode(an, t, b);
      continue;
    }
    decode(anchors + 4 * cands[i].a, out + cands[i].a * stride + k, b);
    b[0] = std::clamp(b[0], 0.f, static_cast<float>(h));
    b[1] = std::clamp(b[1], 0.f, static_cast<float>(w));
    b[2] = std::clamp(b[2], 0.f, static_cast<float>(h));
    b[3] = std::clamp(b[3], 0.f, static_cast<float>(w));
  }
  // per-class NMS (the candidates are already in descending score order)
  std::vector<std::vector<int>> per(k);
  for (int i = 0; i < n; ++i) per[cands[i].cls].push_back(i);
  std::vector<int> kept;
  for (int j = 0; j < k; ++j) {
    auto kj = nms(bx.data(), D, per[j], c.max_overlap);
    kept.insert(kept.end(), kj.begin(), kj.end());
  }
  std::sort(kept.begin(), kept.end());  // index order = score order
  if (c.max_overlap_class_agnostic < 1.f) kept = nms(bx.data(), D, kept, c.max_overlap_class_agnostic);
  if (c.max_num_detections >= 0 && static_cast<int>(kept.size()) > c.max_num_detections)
    kept.resize(c.max_num_detections);
  std::vector<Detection> r;
  r.reserve(kept.size());
  for (int i : kept) {
    Detection d;
    d.box[4] = 0.f;
    std::copy(bx.data() + D * i, bx.data() + D * i + D, d.box);
    d.cls = cands[i].cls;
    d.score = cands[i].score;
    r.push_back(d);
  }
  return r;
}

}  // namespace halcdl::det
