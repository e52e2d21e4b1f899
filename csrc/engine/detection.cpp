#include "engine/detection.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace halcdl::det {

namespace {
const float kClip = std::log(1000.f / 16.f);

inline float sigmoid(float z) {
  if (z >= 0) return 1.f / (1.f + std::exp(-z));
  const float e = std::exp(z);
  return e / (1.f + e);
}
}  // namespace

std::vector<float> make_anchors(const Config& c, const std::vector<Level>& levels) {
  const int A = c.anchors_per_position();
  int64_t total = 0;
  for (auto& l : levels) total += l.h * l.w * A;
  std::vector<float> out(static_cast<size_t>(total) * 4);
  // per position: the A (height, width) pairs
  size_t o = 0;
  for (auto& l : levels) {
    std::vector<float> hh, ww;
    for (float r : c.aspect_ratios)
      for (int j = 0; j < c.num_subscales; ++j) {
        const double size = c.anchor_scale * l.stride * std::pow(2.0, static_cast<double>(j) / c.num_subscales);
        hh.push_back(static_cast<float>(size * std::sqrt(static_cast<double>(r))));
        ww.push_back(static_cast<float>(size / std::sqrt(static_cast<double>(r))));
      }
    for (int64_t y = 0; y < l.h; ++y)
      for (int64_t x = 0; x < l.w; ++x) {
        const float cy = (static_cast<float>(y) + 0.5f) * l.stride, cx = (static_cast<float>(x) + 0.5f) * l.stride;
        for (int a = 0; a < A; ++a) {
          out[o++] = cy - 0.5f * hh[a];
          out[o++] = cx - 0.5f * ww[a];
          out[o++] = cy + 0.5f * hh[a];
          out[o++] = cx + 0.5f * ww[a];
        }
      }
  }
  return out;
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

void match(const float* anchors, int64_t na, const float* boxes, int nb, const Config& c, int* out) {
  if (nb == 0) {
    std::fill(out, out + na, kBackground);
    return;
  }
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
  const int64_t stride = k + 4;
  std::vector<int> m(static_cast<size_t>(bs) * na);
  int64_t fg = 0;
  for (int i = 0; i < bs; ++i) {
    const int nb = static_cast<int>(box_off[i + 1] - box_off[i]);
    match(anchors, na, boxes + 4 * box_off[i], nb, c, m.data() + static_cast<size_t>(i) * na);
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
        float tg[4];
        encode(anchors + 4 * a, boxes + 4 * (box_off[i] + mt), tg);
        for (int j = 0; j < 4; ++j) {
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

std::vector<int> nms(const float* boxes, const std::vector<int>& order, float thr) {
  std::vector<int> keep;
  for (int i : order) {
    bool ok = true;
    for (int j : keep)
      if (iou(boxes + 4 * i, boxes + 4 * j) > thr) { ok = false; break; }
    if (ok) keep.push_back(i);
  }
  return keep;
}

std::vector<Detection> detect(const float* out, int64_t na, int k, const float* anchors, const int64_t* level_start,
                              int nlevels, const Config& c, int h, int w) {
  (void)na;
  const int64_t stride = k + 4;
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
  std::vector<float> bx(static_cast<size_t>(n) * 4);
  for (int i = 0; i < n; ++i) {
    float* b = bx.data() + 4 * i;
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
    auto kj = nms(bx.data(), per[j], c.max_overlap);
    kept.insert(kept.end(), kj.begin(), kj.end());
  }
  std::sort(kept.begin(), kept.end());  // index order = score order
  if (c.max_overlap_class_agnostic < 1.f) kept = nms(bx.data(), kept, c.max_overlap_class_agnostic);
  if (c.max_num_detections >= 0 && static_cast<int>(kept.size()) > c.max_num_detections)
    kept.resize(c.max_num_detections);
  std::vector<Detection> r;
  r.reserve(kept.size());
  for (int i : kept) {
    Detection d;
    std::copy(bx.data() + 4 * i, bx.data() + 4 * i + 4, d.box);
    d.cls = cands[i].cls;
    d.score = cands[i].score;
    r.push_back(d);
  }
  return r;
}

}  // namespace halcdl::det
