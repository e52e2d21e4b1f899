// Object detection on the host: anchors, IoU matching, box coding, the focal and Huber
// losses over a detection_output tensor, decoding and non-maximum suppression.
//
// Conventions (docs/detection.md):
// - Boxes are (row1, col1, row2, col2) in continuous image coordinates; area = Δrow·Δcol.
// - The detection_output tensor is (N, A_total, K + 4): per anchor K class logits then the
//   encoded box (dy, dx, dh, dw). Anchors run level by level (min_level first), then row,
//   column, then the A anchors of a position: aspect ratio major, subscale minor.
// - Anchor of level l (stride s = 2^l) at cell (y, x): centre ((y + 0.5)·s, (x + 0.5)·s),
//   size anchor_scale·s·2^(j/S) for subscale j of S, height size·sqrt(r), width size/sqrt(r)
//   for aspect ratio r (= height / width).
// - Encoding (torchvision's BoxCoder, weights 1): dy = (cy_g − cy_a)/h_a,
//   dx = (cx_g − cx_a)/w_a, dh = log(h_g/h_a), dw = log(w_g/w_a); decoding clamps dh, dw at
//   log(1000/16).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace halcdl::det {

struct Config {
  int min_level = 2, max_level = 4;
  int num_subscales = 3;
  std::vector<float> aspect_ratios{1.f, 2.f, 0.5f};
  float anchor_scale = 4.f;
  float fg_iou = 0.5f, bg_iou = 0.4f;   // foreground ≥ fg_iou, background < bg_iou, else ignored
  bool low_quality_matches = true;      // each box's best anchors become foreground too
  float gamma = 2.f, beta = 0.11f;
  float class_heads_weight = 1.f, bbox_heads_weight = 1.f;
  float min_confidence = 0.5f, max_overlap = 0.5f, max_overlap_class_agnostic = 1.f;
  int max_num_detections = 100;
  int pre_nms_top_n = 1000;             // candidates per level before NMS
  int anchors_per_position() const { return static_cast<int>(aspect_ratios.size()) * num_subscales; }
};

struct Level {
  int64_t h, w;
  int stride;
};

// (Σ h·w·A, 4) anchors, level by level.
std::vector<float> make_anchors(const Config& c, const std::vector<Level>& levels);

float iou(const float* a, const float* b);
void encode(const float* anchor, const float* box, float* t);
void decode(const float* anchor, const float* t, float* box);

// Per anchor: index of the matched box (foreground), kBackground or kIgnored.
constexpr int kBackground = -1, kIgnored = -2;
void match(const float* anchors, int64_t na, const float* boxes, int nb, const Config& c, int* out);

struct LossResult {
  double cls = 0, box = 0;               // weighted by class_heads_weight / bbox_heads_weight
  std::vector<double> cls_level, box_level;
  int64_t num_fg = 0;
};

// Loss of a (sub-)batch of `bs` images: out (bs, na, k + 4); per image i its boxes
// boxes[4·box_off[i] .. 4·box_off[i+1]) and label indices labels[box_off[i] ..); class_w
// (k) or null; level_start (nlevels + 1) anchor offsets of the levels. Writes the gradient
// (times `scale`) into dout (same shape) and returns the losses (not scaled).
//   focal = Σ_{anchors not ignored} Σ_k w_k (1 − p_t)^γ BCE(z, t) / max(1, #fg)
//   huber = Σ_{fg anchors} Σ_4 smooth_l1_β(pred − target) / max(1, #fg)
LossResult loss(const float* out, int bs, int64_t na, int k, const float* anchors, const int64_t* level_start,
                int nlevels, const float* boxes, const int* labels, const int64_t* box_off, const float* class_w,
                const Config& c, float scale, float* dout);

struct Detection {
  float box[4];
  int cls;
  float score;
};

// Greedy NMS over candidates `order` (indices into boxes, by descending score): keeps a box
// unless it overlaps a kept one by IoU > thr. Returns the kept indices in order.
std::vector<int> nms(const float* boxes, const std::vector<int>& order, float thr);

// Detections of one image: sigmoid scores ≥ min_confidence (top pre_nms_top_n per level),
// decoded and clipped to the image, per-class NMS (max_overlap), class-agnostic NMS
// (max_overlap_class_agnostic, skipped at 1), at most max_num_detections, by confidence.
std::vector<Detection> detect(const float* out, int64_t na, int k, const float* anchors, const int64_t* level_start,
                              int nlevels, const Config& c, int h, int w);

}  // namespace halcdl::det
