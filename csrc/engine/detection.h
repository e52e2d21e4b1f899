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
// - instance_type 'rectangle2' (Config::oriented): boxes are (row, col, length1, length2, phi),
//   HALCON's rectangle2 (phi in radians counter-clockwise from the column axis, length1 the
//   half length along phi; its direction in (row, col) is (−sin phi, cos phi)). The output
//   tensor is (N, A_total, K + 5), the encoded box (t_r, t_c, t_l1, t_l2, t_phi) relative to an
//   oriented anchor (see encode2). Anchors: aspect ratio major, subscale, then angle minor.
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
  // rectangle2
  bool oriented = false;                // instance_type 'rectangle2'
  std::vector<float> angles{0.f};       // anchor_angles (radians)
  bool ignore_direction = false;        // phi and phi + pi are the same box (angles modulo pi)
  std::vector<int> no_orientation;      // label indices (not class ids) without orientation
  int box_dim() const { return oriented ? 5 : 4; }
  int anchors_per_position() const {
    return static_cast<int>(aspect_ratios.size()) * num_subscales * (oriented ? static_cast<int>(angles.size()) : 1);
  }
  bool has_orientation(int label) const;
};

struct Level {
  int64_t h, w;
  int stride;
};

// (Σ h·w·A, box_dim) anchors, level by level. rectangle2: (row, col, length1, length2, phi)
// with length1 = width / 2, length2 = height / 2 of the rectangle1 anchor and phi an anchor angle.
std::vector<float> make_anchors(const Config& c, const std::vector<Level>& levels);

float iou(const float* a, const float* b);
void encode(const float* anchor, const float* box, float* t);
void decode(const float* anchor, const float* t, float* box);

// ---- rectangle2 (all host-side, plain functions: reusable by a device twin) ----
// phi into (−π/2, π/2] (ignore_direction, period π) or (−π, π] (period 2π).
float wrap_angle(float phi, bool ignore_direction);
// The 4 corners (row, col) of a rectangle2, counter-clockwise in the (x, y) = (col, row) plane.
void corners2(const float* box, double* rc);
// IoU of two rectangle2 boxes: convex polygon clipping (Sutherland–Hodgman) of the two
// rectangles, areas by the shoelace formula (double precision); 0 without clipping when the
// axis-parallel bounding boxes of the corners do not overlap.
float iou2(const float* a, const float* b);
// The same with the corners prepared once per box (matching and NMS prepare each box once).
struct Rect2Geom {
  double x[4], y[4];      // corners, (x, y) = (col, row), counter-clockwise
  double x0, x1, y0, y1;  // their bounding box
  double area;            // 4·l1·l2
};
void prepare2(const float* box, Rect2Geom& g);
float iou2(const Rect2Geom& a, const Rect2Geom& b);
// IoU of either kind (dim 4: rectangle1, dim 5: rectangle2).
inline float iou_d(const float* a, const float* b, int dim) { return dim == 5 ? iou2(a, b) : iou(a, b); }
// Encoding relative to an oriented anchor (row_a, col_a, l1_a, l2_a, phi_a): the centre offset
// projected on the anchor's axes, u1 = (−sin phi_a, cos phi_a) (length1) and
// u2 = (cos phi_a, sin phi_a) (length2):
//   t_r = <Δ, u2> / (2 l2_a), t_c = <Δ, u1> / (2 l1_a),  (at phi_a = 0: Δrow/h_a, Δcol/w_a)
//   t_l1 = log(l1_g / l1_a), t_l2 = log(l2_g / l2_a), t_phi = wrap(phi_g − phi_a).
// Decoding inverts it (log-lengths clamped at log(1000/16)), phi = wrap(phi_a + t_phi).
void encode2(const float* anchor, const float* box, float* t, bool ignore_direction);
void decode2(const float* anchor, const float* t, float* box, bool ignore_direction);
// A box of a class without orientation as HALCON's axis-parallel rectangle2 (phi 0): the
// axis-parallel bounding rectangle of the given box.
void axis_parallel2(const float* box, float* out);
// The target of a class without orientation for an anchor: its axis-parallel box written with
// the angle k·π/2 nearest the anchor's angle (lengths swapped for odd k), so that only centre
// and lengths are regressed. Decoding of such a class: phi := that angle (no angle offset), then
// back to phi 0.
void no_orientation_target(const float* anchor, const float* axis_box, float* out);
void no_orientation_decode(const float* anchor, const float* t, float* box);

// Per anchor: index of the matched box (foreground), kBackground or kIgnored.
constexpr int kBackground = -1, kIgnored = -2;
// Boxes and anchors have c.box_dim() values each (rectangle2: oriented IoU).
void match(const float* anchors, int64_t na, const float* boxes, int nb, const Config& c, int* out);

struct LossResult {
  double cls = 0, box = 0;               // weighted by class_heads_weight / bbox_heads_weight
  std::vector<double> cls_level, box_level;
  int64_t num_fg = 0;
};

// Loss of a (sub-)batch of `bs` images: out (bs, na, k + D), D = c.box_dim(); per image i its
// boxes boxes[D·box_off[i] .. D·box_off[i+1]) and label indices labels[box_off[i] ..); class_w
// (k) or null; level_start (nlevels + 1) anchor offsets of the levels. Writes the gradient
// (times `scale`) into dout (same shape) and returns the losses (not scaled).
//   focal = Σ_{anchors not ignored} Σ_k w_k (1 − p_t)^γ BCE(z, t) / max(1, #fg)
//   huber = Σ_{fg anchors} Σ_D smooth_l1_β(pred − target) / max(1, #fg)
// rectangle2: the angle term is left out (and its gradient 0) for classes without orientation,
// whose boxes are replaced by their axis-parallel rectangles first (no_orientation_target).
LossResult loss(const float* out, int bs, int64_t na, int k, const float* anchors, const int64_t* level_start,
                int nlevels, const float* boxes, const int* labels, const int64_t* box_off, const float* class_w,
                const Config& c, float scale, float* dout);

struct Detection {
  float box[5];  // rectangle1: row1, col1, row2, col2 (box[4] unused); rectangle2: row, col, l1, l2, phi
  int cls;
  float score;
};

// Greedy NMS over candidates `order` (indices into boxes, by descending score): keeps a box
// unless it overlaps a kept one by IoU > thr. Returns the kept indices in order.
std::vector<int> nms(const float* boxes, const std::vector<int>& order, float thr);
// The same for boxes of `dim` values (5: rectangle2, oriented IoU).
std::vector<int> nms(const float* boxes, int dim, const std::vector<int>& order, float thr);

// Detections of one image: sigmoid scores ≥ min_confidence (top pre_nms_top_n per level),
// decoded and clipped to the image (rectangle2: not clipped), per-class NMS (max_overlap), class-agnostic NMS
// (max_overlap_class_agnostic, skipped at 1), at most max_num_detections, by confidence.
std::vector<Detection> detect(const float* out, int64_t na, int k, const float* anchors, const int64_t* level_start,
                              int nlevels, const Config& c, int h, int w);

}  // namespace halcdl::det
