// halcdl._core: the Model handle, batch assembly from sample dicts, and run_op for tests.
// Every halcdl::Error becomes the Python class registered with set_error_class (halcdl's
// HOperatorError) called as cls(error_code, message).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <dnnl.hpp>
#include <cmath>
#include <memory>
#include <new>
#include <stdexcept>
#include <system_error>
#include <numeric>
#include <tuple>

#include "core/error.h"
#include "engine/detection.h"
#include "engine/device.h"
#include "engine/kernels.h"
#include "engine/model.h"

namespace py = pybind11;
using namespace halcdl;

namespace {

py::object& error_class() {
  static py::object* cls = new py::object();  // leaked on purpose: lives until interpreter exit
  return *cls;
}

void raise(int code, const char* msg) {
  if (error_class()) {
    py::object e = error_class()(code, msg);
    PyErr_SetObject(error_class().ptr(), e.ptr());
  } else {
    PyErr_SetString(PyExc_RuntimeError, msg);
  }
}

// The model's mutex, taken without holding the GIL while waiting: train_step, infer and
// set_device release the GIL while they hold the mutex, so a thread that waited for the mutex
// with the GIL held would deadlock with them.
std::unique_lock<std::mutex> lock_model(Model& md) {
  std::unique_lock<std::mutex> lk(md.mutex(), std::try_to_lock);
  if (!lk.owns_lock()) {
    py::gil_scoped_release nogil;
    lk.lock();
  }
  return lk;
}

// ---- data parallelism -----------------------------------------------------------------

// Calls the Python `reduce(grad, stats, stats_before, scalars, multiplier, bn_momentum,
// device)` of a data-parallel train step (engine/hparams.h StepReduce, halcdl/distributed.py)
// from inside the engine, which runs without the GIL. On the CPU grad, stats and stats_before
// (read-only) are zero-copy float32 views of the engine's arenas; on the GPU (pointer, count)
// tuples of device memory. scalars is a float64 view. The views are valid during the call only.
// A Python exception becomes a halcdl::Error: an HOperatorError keeps its number, anything
// else is 7720; the engine then commits nothing.
void call_reduce(const py::object& reduce, const StepReduce& a) {
  py::gil_scoped_acquire gil;
  try {
    py::capsule owner(a.scalars, [](void*) {});  // a base: numpy views the memory, no copy
    py::object grad, stats, before;
    const auto view = [&owner](float* p, size_t n) -> py::object {
      return py::array_t<float>({static_cast<py::ssize_t>(n)}, {static_cast<py::ssize_t>(sizeof(float))}, p, owner);
    };
    const auto dev = [](const float* p, size_t n) -> py::object {
      return py::make_tuple(reinterpret_cast<uintptr_t>(p), n);
    };
    if (a.on_device) {
      grad = dev(a.grad, a.n_grad);
      stats = dev(a.stats, a.n_stats);
      before = dev(a.stats_before, a.n_stats);
    } else {
      grad = view(a.grad, a.n_grad);
      stats = view(a.stats, a.n_stats);
      before = view(const_cast<float*>(a.stats_before), a.n_stats);
      before.attr("setflags")(py::arg("write") = false);
    }
    py::array_t<double> scalars({static_cast<py::ssize_t>(a.n_scalars)}, {static_cast<py::ssize_t>(sizeof(double))},
                                a.scalars, owner);
    reduce(grad, stats, before, scalars, a.multiplier, a.bn_momentum, a.on_device ? a.device : -1);
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_Exception)) throw;  // KeyboardInterrupt, SystemExit: as they are
    int code = kErrTrainingFailed;
    std::string msg;
    if (error_class() && e.matches(error_class())) {
      code = py::cast<int>(e.value().attr("error_code"));
      msg = py::str(e.value().attr("_text"));
    } else {
      msg = "data-parallel reduce failed: " + std::string(py::str(e.type().attr("__name__"))) + ": " +
            std::string(py::str(e.value()));
    }
    throw Error(code, msg);
  }
}

// ---- spec ------------------------------------------------------------------------------

std::vector<double> attr_values(const std::string& node, const std::string& key, py::handle v) {
  std::vector<double> out;
  auto one = [&](py::handle x) {
    if (py::isinstance<py::bool_>(x) || py::isinstance<py::int_>(x) || py::isinstance<py::float_>(x) ||
        py::hasattr(x, "__index__") || py::hasattr(x, "__float__")) {
      double d = 0;
      try {
        d = py::cast<double>(py::float_(py::reinterpret_borrow<py::object>(x)));
      } catch (py::error_already_set&) {  // 10**400: beyond a double
        HALCDL_THROW(kErrInvalidInputShape, "node '", node, "': attribute '", key, "' is out of range");
      }
      out.push_back(d);
    } else {
      HALCDL_THROW(kErrInvalidInputShape, "node '", node, "': attribute '", key, "' must be a number or a list of numbers");
    }
  };
  if (py::isinstance<py::list>(v) || py::isinstance<py::tuple>(v)) {
    for (auto x : v) one(x);
  } else {
    one(v);
  }
  return out;
}

std::vector<NodeSpec> to_spec(const py::list& spec) {
  std::vector<NodeSpec> out;
  for (auto item : spec) {
    HALCDL_CHECK(py::isinstance<py::dict>(item), kErrInvalidInputShape, "every node of the graph spec must be a dict");
    auto d = py::reinterpret_borrow<py::dict>(item);
    NodeSpec s;
    HALCDL_CHECK(d.contains("name") && d.contains("op"), kErrInvalidInputShape, "a node needs 'name' and 'op'");
    s.name = py::str(d["name"]);
    s.op = py::str(d["op"]);
    if (d.contains("inputs"))
      for (auto x : d["inputs"]) s.inputs.push_back(py::str(x));
    if (d.contains("share") && !d["share"].is_none()) {
      HALCDL_CHECK(py::isinstance<py::str>(d["share"]), kErrInvalidInputShape, "node '", s.name,
                   "': 'share' must be a node name");
      s.share = py::str(d["share"]);
    }
    for (auto kv : d) {
      std::string k = py::str(kv.first);
      if (k == "name" || k == "op" || k == "inputs" || k == "comment" || k == "share") continue;
      s.attrs[k] = attr_values(s.name, k, kv.second);
    }
    out.push_back(std::move(s));
  }
  return out;
}

// ---- batch assembly --------------------------------------------------------------------

using FArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using IArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

struct Batch {
  std::vector<FArray> images;
  std::vector<int> labels;          // classification: one index per sample
  std::vector<IArray> seg;          // segmentation: (H, W) class ids per sample
  std::vector<FArray> weights;      // segmentation: (H, W) pixel weights (valid where has_weights)
  std::vector<bool> has_weights;
  bool any_weights = false;
};

enum class Labels { None, Class, Pixel };

// Ensures `obj` is a numeric array (never a str); empty array on failure.
template <typename A>
A numeric_array(py::handle obj) {
  if (py::isinstance<py::str>(obj) || py::isinstance<py::bytes>(obj)) return A();
  try {
    return A(py::reinterpret_borrow<py::object>(obj));  // unlike A::ensure, keeps the error
  } catch (py::error_already_set& e) {
    // KeyboardInterrupt (Ctrl-C while the samples are read) or SystemExit: not a bad image
    if (!e.matches(PyExc_Exception)) throw;
    return A();
  }
}

// Reads and checks the samples while holding the GIL; pixel copies happen later without it.
// `with_images` false: the images are already on the GPU (the caller checked them).
Batch gather(Model& m, const py::list& samples, int c, int h, int w, Labels labels, bool with_images = true) {
  Batch b;
  b.images.reserve(samples.size());
  for (size_t i = 0; i < samples.size(); ++i) {
    py::handle s = samples[i];
    HALCDL_CHECK(py::isinstance<py::dict>(s), kErrInputsMissing, "sample ", i, " is not a dict (DLSample)");
    auto d = py::reinterpret_borrow<py::dict>(s);
    HALCDL_CHECK(d.contains("image"), kErrInputsMissing, "sample ", i, " has no key 'image'");
    if (with_images) {
      FArray a = numeric_array<FArray>(d["image"]);
      HALCDL_CHECK(a && a.size() > 0, kErrInvalidInputData, "sample ", i, ": 'image' is not a numeric image array");
      HALCDL_CHECK(a.ndim() == 2 || a.ndim() == 3, kErrInvalidInputShape, "sample ", i,
                   ": 'image' must have shape (H, W) or (H, W, C), got ", a.ndim(), " dimensions");
      const int64_t ih = a.shape(0), iw = a.shape(1), ic = a.ndim() == 3 ? a.shape(2) : 1;
      HALCDL_CHECK(ih == h && iw == w, kErrInvalidInputShape, "sample ", i, ": image size ", iw, "x", ih,
                   " does not match the model's image size ", w, "x", h);
      HALCDL_CHECK(ic == c, kErrInvalidInputData, "sample ", i, ": image has ", ic, " channel(s), the model takes ", c);
      b.images.push_back(std::move(a));
    }
    if (labels == Labels::Class) {
      HALCDL_CHECK(d.contains("image_label_id"), kErrInputsMissing, "sample ", i, " has no key 'image_label_id'");
      py::object l = d["image_label_id"];
      if ((py::isinstance<py::list>(l) || py::isinstance<py::tuple>(l)) && py::len(l) == 1) l = l[py::int_(0)];
      if (py::isinstance<py::array>(l) && py::array(l).size() == 1) l = py::array(l).attr("item")();
      int64_t id = 0;
      bool ok = !py::isinstance<py::bool_>(l) && py::hasattr(l, "__index__");
      if (ok) {
        // beyond int64 (2**70, a uint64 max): no class id can be that, so the label is invalid
        int overflow = 0;
        const long long v = PyLong_AsLongLongAndOverflow(py::int_(l).ptr(), &overflow);
        if (v == -1 && PyErr_Occurred()) PyErr_Clear();
        ok = overflow == 0;
        id = v;
      }
      int idx = ok ? m.label_index(id) : Model::kUnknown;
      HALCDL_CHECK(idx >= 0, kErrInvalidLabels, "sample ", i, ": image_label_id ", std::string(py::repr(l)),
                   " is not one of the model's class_ids");
      b.labels.push_back(idx);
    } else if (labels == Labels::Pixel) {
      HALCDL_CHECK(d.contains("segmentation_image"), kErrInputsMissing, "sample ", i,
                   " has no key 'segmentation_image'");
      IArray sg = numeric_array<IArray>(d["segmentation_image"]);
      HALCDL_CHECK(sg && (sg.ndim() == 2 || (sg.ndim() == 3 && sg.shape(2) == 1)) && sg.shape(0) == h &&
                       sg.shape(1) == w,
                   kErrInvalidInputShape, "sample ", i, ": 'segmentation_image' must be a (", h, ", ", w,
                   ") array of class ids at the model's image size");
      b.seg.push_back(std::move(sg));
      FArray wi;
      if (d.contains("weight_image")) {
        wi = numeric_array<FArray>(d["weight_image"]);
        HALCDL_CHECK(wi && (wi.ndim() == 2 || (wi.ndim() == 3 && wi.shape(2) == 1)) && wi.shape(0) == h &&
                         wi.shape(1) == w,
                     kErrInvalidInputData, "sample ", i, ": 'weight_image' must be a (", h, ", ", w,
                     ") array of pixel weights");
        b.any_weights = true;
      }
      b.has_weights.push_back(static_cast<bool>(wi) && wi.size() > 0);
      b.weights.push_back(std::move(wi));
    }
  }
  return b;
}

// Copies HWC images into NCHW staging (GIL released by the caller).
void assemble(const Batch& b, float* dst, int c, int h, int w) {
  const size_t img = static_cast<size_t>(c) * h * w;
  const int64_t n = static_cast<int64_t>(b.images.size());
  std::vector<const float*> src(n);
  for (int64_t i = 0; i < n; ++i) src[i] = b.images[i].data();
  int64_t bad = -1;
#pragma omp parallel for
  for (int64_t i = 0; i < n; ++i)
    if (!kern::hwc_to_chw(src[i], dst + i * img, h, w, c)) {
#pragma omp critical
      bad = bad < 0 ? i : std::min(bad, i);
    }
  HALCDL_CHECK(bad < 0, kErrInvalidInputData, "sample ", bad, ": the image holds NaN or Inf values");
}

// Maps segmentation ids to output indices and copies pixel weights (GIL released).
void assemble_pixels(const Model& m, const Batch& b, int64_t hw, int* labels, float* weights) {
  const int64_t n = static_cast<int64_t>(b.seg.size());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t* ids = b.seg[i].data();
    int* out = labels + i * hw;
    for (int64_t p = 0; p < hw; ++p) {
      int k = m.label_index(ids[p]);
      HALCDL_CHECK(k != Model::kUnknown, kErrInvalidLabels, "sample ", i, ": segmentation_image holds id ", ids[p],
                   ", which is neither a class id nor an ignore class id");
      out[p] = k;
    }
    if (!weights) continue;
    float* wo = weights + i * hw;
    if (!b.has_weights[i]) {  // a sample without weight_image in a batch with some: weight 1
      std::fill(wo, wo + hw, 1.f);
      continue;
    }
    const float* wi = b.weights[i].data();
    for (int64_t p = 0; p < hw; ++p) {
      HALCDL_CHECK(std::isfinite(wi[p]) && wi[p] >= 0, kErrInvalidInputData, "sample ", i,
                   ": weight_image holds a negative or non-finite weight (", wi[p], ")");
      wo[p] = wi[p];
    }
  }
}

py::array_t<float> to_array(const std::vector<float>& v, const Dims& shape) {
  std::vector<py::ssize_t> s(shape.begin(), shape.end());
  py::array_t<float> a(s);
  std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(float));
  return a;
}

HParams parse_hparams(const HParams& cur, const py::dict& d) {
  HParams hp = cur;
  for (auto kv : d) {
    std::string k = py::str(kv.first);
    py::handle v = kv.second;
    if (k == "solver") hp.solver = py::str(v);
    else if (k == "class_weights") hp.class_weights = py::cast<std::vector<float>>(v);
    else if (k == "learning_rate") hp.learning_rate = py::cast<float>(v);
    else if (k == "momentum") hp.momentum = py::cast<float>(v);
    else if (k == "weight_prior") hp.weight_prior = py::cast<float>(v);
    else if (k == "adam_beta1") hp.adam_beta1 = py::cast<float>(v);
    else if (k == "adam_beta2") hp.adam_beta2 = py::cast<float>(v);
    else if (k == "adam_epsilon") hp.adam_epsilon = py::cast<float>(v);
    else if (k == "batchnorm_momentum") hp.batchnorm_momentum = py::cast<float>(v);
    else HALCDL_THROW(kErrUnsupportedParam, "unknown hyperparameter '", k, "'");
  }
  return hp;
}


// ---- detection ---------------------------------------------------------------------------

det::Config parse_det_config(const det::Config& cur, const py::dict& d) {
  det::Config c = cur;
  for (auto kv : d) {
    std::string k = py::str(kv.first);
    py::handle v = kv.second;
    if (k == "min_level") c.min_level = py::cast<int>(v);
    else if (k == "max_level") c.max_level = py::cast<int>(v);
    else if (k == "anchor_num_subscales") c.num_subscales = py::cast<int>(v);
    else if (k == "anchor_aspect_ratios") c.aspect_ratios = py::cast<std::vector<float>>(v);
    else if (k == "anchor_scale") c.anchor_scale = py::cast<float>(v);
    else if (k == "fg_iou") c.fg_iou = py::cast<float>(v);
    else if (k == "bg_iou") c.bg_iou = py::cast<float>(v);
    else if (k == "low_quality_matches") c.low_quality_matches = py::cast<bool>(v);
    else if (k == "gamma") c.gamma = py::cast<float>(v);
    else if (k == "beta") c.beta = py::cast<float>(v);
    else if (k == "class_heads_weight") c.class_heads_weight = py::cast<float>(v);
    else if (k == "bbox_heads_weight") c.bbox_heads_weight = py::cast<float>(v);
    else if (k == "min_confidence") c.min_confidence = py::cast<float>(v);
    else if (k == "max_overlap") c.max_overlap = py::cast<float>(v);
    else if (k == "max_overlap_class_agnostic") c.max_overlap_class_agnostic = py::cast<float>(v);
    else if (k == "max_num_detections") c.max_num_detections = py::cast<int>(v);
    else if (k == "pre_nms_top_n") c.pre_nms_top_n = py::cast<int>(v);
    else if (k == "oriented") c.oriented = py::cast<bool>(v);
    else if (k == "anchor_angles") c.angles = py::cast<std::vector<float>>(v);
    else if (k == "ignore_direction") c.ignore_direction = py::cast<bool>(v);
    else if (k == "no_orientation") c.no_orientation = py::cast<std::vector<int>>(v);
    else HALCDL_THROW(kErrUnsupportedParam, "unknown detection setting '", k, "'");
  }
  return c;
}

struct BoxBatch {
  std::vector<float> boxes;   // 4 per box
  std::vector<int> labels;    // label index per box
  std::vector<int64_t> off;   // per image, plus the end
};

// One bbox key of a sample as a flat list of doubles (a number is a list of one).
std::vector<double> box_values(py::handle s, size_t i, const char* key) {
  auto d = py::reinterpret_borrow<py::dict>(s);
  HALCDL_CHECK(d.contains(key), kErrInputsMissing, "sample ", i, " has no key '", key, "'");
  py::handle v = d[key];
  auto a = numeric_array<py::array_t<double, py::array::c_style | py::array::forcecast>>(v);
  HALCDL_CHECK(a && a.ndim() <= 1, kErrInvalidInputData, "sample ", i, ": '", key,
               "' must be a list of numbers");
  return std::vector<double>(a.data(), a.data() + a.size());
}

BoxBatch gather_boxes(const Model& m, const py::list& samples) {
  BoxBatch b;
  b.off.push_back(0);
  static const char* keys1[4] = {"bbox_row1", "bbox_col1", "bbox_row2", "bbox_col2"};
  static const char* keys2[5] = {"bbox_row", "bbox_col", "bbox_length1", "bbox_length2", "bbox_phi"};
  const bool r2 = m.detection().oriented;
  const int D = r2 ? 5 : 4;
  const char* const* keys = r2 ? keys2 : keys1;
  for (size_t i = 0; i < samples.size(); ++i) {
    py::handle s = samples[i];
    HALCDL_CHECK(py::isinstance<py::dict>(s), kErrInputsMissing, "sample ", i, " is not a dict (DLSample)");
    std::vector<double> v[5];
    for (int k = 0; k < D; ++k) v[k] = box_values(s, i, keys[k]);
    std::vector<double> lab = box_values(s, i, "bbox_label_id");
    const size_t n = lab.size();
    for (int k = 0; k < D; ++k)
      HALCDL_CHECK(v[k].size() == n, kErrInvalidInputData, "sample ", i, ": '", keys[k], "' holds ", v[k].size(),
                   " values but 'bbox_label_id' ", n, " (the bbox lists must have equal lengths)");
    for (size_t j = 0; j < n; ++j) {
      for (int k = 0; k < D; ++k)
        HALCDL_CHECK(std::isfinite(v[k][j]), kErrInvalidInputData, "sample ", i, ": box ", j, " has a NaN or infinite ",
                     keys[k]);
      if (r2)
        HALCDL_CHECK(v[2][j] > 0 && v[3][j] > 0, kErrInvalidInputData, "sample ", i, ": box ", j,
                     " has bbox_length1 or bbox_length2 <= 0 (", v[2][j], ", ", v[3][j], ")");
      else
        HALCDL_CHECK(v[2][j] > v[0][j] && v[3][j] > v[1][j], kErrInvalidInputData, "sample ", i, ": box ", j,
                     " has bbox_row2 <= bbox_row1 or bbox_col2 <= bbox_col1 (", v[0][j], ", ", v[1][j], ", ", v[2][j],
                     ", ", v[3][j], ")");
      const double id = lab[j];
      int idx = (std::isfinite(id) && id == std::floor(id)) ? m.label_index(static_cast<int64_t>(id)) : Model::kUnknown;
      HALCDL_CHECK(idx >= 0, kErrInvalidLabels, "sample ", i, ": bbox_label_id ", id,
                   " is not one of the model's class_ids");
      for (int k = 0; k < D; ++k) b.boxes.push_back(static_cast<float>(v[k][j]));
      b.labels.push_back(idx);
    }
    b.off.push_back(static_cast<int64_t>(b.labels.size()));
  }
  return b;
}

py::array_t<float> farray2(const std::vector<float>& v, int64_t rows, int64_t cols) {
  py::array_t<float> a({rows, cols});
  if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(float));
  return a;
}

std::vector<float> rows4(const FArray& a, const char* what) {
  HALCDL_CHECK(a && a.ndim() == 2 && a.shape(1) == 4, kErrInvalidInputShape, what, " must be an (n, 4) array");
  return std::vector<float>(a.data(), a.data() + a.size());
}

// (n, 4) rectangle1 or (n, 5) rectangle2 rows; `dim` 0 = either (set to the one found)
std::vector<float> rows_d(const FArray& a, const char* what, int& dim) {
  HALCDL_CHECK(a && a.ndim() == 2 && (dim ? a.shape(1) == dim : (a.shape(1) == 4 || a.shape(1) == 5)),
               kErrInvalidInputShape, what, " must be an (n, 4) or (n, 5) array");
  dim = static_cast<int>(a.shape(1));
  return std::vector<float>(a.data(), a.data() + a.size());
}

// ---- run_op (tests) --------------------------------------------------------------------

Precision parse_precision(const std::string& s) {
  if (s == "float32") return Precision::F32;
  if (s == "bfloat16") return Precision::BF16;
  HALCDL_THROW(kErrInvalidValue, "precision must be 'float32' or 'bfloat16', got '", s, "'");
}

// The GPU twin of the CPU part below (device >= 0): the same graph through the CUDA backend.
py::tuple run_op_gpu(const Graph& g, const std::vector<Dims>& in_dims,
                     const std::vector<py::array_t<float, py::array::c_style | py::array::forcecast>>& arrs,
                     const Buffer& P, const Buffer& S, py::object grad_output, bool training, Precision precision,
                     int device, bool deterministic, bool tf32) {
  RunRequest rq;
  rq.graph = &g;
  rq.input_dims = in_dims;
  for (auto& a : arrs) rq.inputs.push_back(a.data());
  rq.params = P.f();
  rq.state = S.f();
  rq.training = training;
  rq.device = device;
  rq.options.deterministic = deterministic;
  rq.options.tf32 = tf32;
  rq.precision = precision;
  py::array_t<float, py::array::c_style | py::array::forcecast> go;
  if (!grad_output.is_none()) {
    go = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(grad_output);
    HALCDL_CHECK(go, kErrInvalidInputData, "run_op: grad_output must be a numeric array");
    // the engine reads one value per output element: check the size as the CPU twin does
    size_t on = 1;
    const std::vector<Dims> shapes = g.infer_shapes(in_dims);
    for (auto d : shapes[g.output]) on *= static_cast<size_t>(d);
    HALCDL_CHECK(static_cast<size_t>(go.size()) == on, kErrInvalidInputShape, "run_op: grad_output needs ", on,
                 " values");
    rq.grad_output = go.data();
  }
  RunResult r;
  {
    py::gil_scoped_release nogil;
    cuda_api().run_graph(&rq, &r);
  }
  py::list gins;
  py::dict gparams;
  if (rq.grad_output) {
    for (size_t i = 0; i < r.input_grads.size(); ++i) gins.append(to_array(r.input_grads[i], in_dims[i]));
    for (auto& p : g.params) {
      if (p.kind == ParamKind::State) continue;
      std::vector<float> v(r.param_grads.begin() + p.offset, r.param_grads.begin() + p.offset + p.size);
      gparams[p.role.c_str()] = to_array(v, p.shape);
    }
  }
  if (!r.dropout_mask.empty()) gparams["mask"] = to_array(r.dropout_mask, r.output_dims);
  if (!r.bn_mean.empty()) {
    const int64_t c = static_cast<int64_t>(r.bn_mean.size());
    gparams["batch_mean"] = to_array(r.bn_mean, {c});
    gparams["batch_var"] = to_array(r.bn_var, {c});
  }
  return py::make_tuple(to_array(r.output, r.output_dims), gins, gparams);
}

py::tuple run_op(const py::dict& node, const py::list& inputs, const py::dict& params, py::object grad_output,
                 bool training, const std::string& precision, int device, bool deterministic, bool tf32) {
  std::vector<NodeSpec> spec;
  std::vector<Dims> in_dims;
  std::vector<py::array_t<float, py::array::c_style | py::array::forcecast>> arrs;
  NodeSpec op = to_spec(py::list(py::make_tuple(node)))[0];
  op.inputs.clear();
  for (size_t i = 0; i < inputs.size(); ++i) {
    auto a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(inputs[i]);
    HALCDL_CHECK(a && a.ndim() >= 2, kErrInvalidInputShape, "run_op: input ", i, " must be an array of rank >= 2");
    Dims d(a.shape(), a.shape() + a.ndim());
    HALCDL_CHECK(d.size() == 4, kErrInvalidInputShape, "run_op: inputs must be NCHW");
    NodeSpec s;
    s.name = "in" + std::to_string(i);
    s.op = "input";
    s.attrs["channels"] = {static_cast<double>(d[1])};
    spec.push_back(s);
    op.inputs.push_back(s.name);
    in_dims.push_back(d);
    arrs.push_back(a);
  }
  op.name = "op";
  spec.push_back(op);
  Graph g = build_graph(spec);
  Buffer P(g.n_trainable * sizeof(float) + 64), S(g.n_state * sizeof(float) + 64), G(g.n_trainable * sizeof(float) + 64);
  for (auto& p : g.params) {
    std::string role = p.role;
    HALCDL_CHECK(params.contains(role.c_str()), kErrInputsMissing, "run_op: missing param '", role, "'");
    auto a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(params[role.c_str()]);
    HALCDL_CHECK(a && static_cast<size_t>(a.size()) == p.size, kErrInvalidInputShape, "run_op: param '", role,
                 "' needs ", p.size, " values");
    std::memcpy((p.kind == ParamKind::State ? S.f() : P.f()) + p.offset, a.data(), p.size * sizeof(float));
  }
  if (device >= 0)
    return run_op_gpu(g, in_dims, arrs, P, S, grad_output, training, parse_precision(precision), device,
                      deterministic, tf32);
  uint64_t version = 1;
  const bool backward = !grad_output.is_none();
  auto plan = make_cpu_plan(g, in_dims, training, backward, ParamViews{P.f(), S.f(), &version},
                            parse_precision(precision));
  for (size_t i = 0; i < arrs.size(); ++i)
    std::memcpy(plan->input_buffer(static_cast<int>(i)), arrs[i].data(), arrs[i].size() * sizeof(float));
  plan->forward(12345);
  const Dims od = plan->output_dims();
  size_t on = 1;
  for (auto d : od) on *= d;
  std::vector<float> out(plan->output(), plan->output() + on);
  py::list gins;
  py::dict gparams;
  if (backward) {
    auto go = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(grad_output);
    HALCDL_CHECK(go && static_cast<size_t>(go.size()) == on, kErrInvalidInputShape, "run_op: grad_output needs ",
                 on, " values");
    plan->backward(go.data(), G.f());
    for (size_t i = 0; i < arrs.size(); ++i) {
      std::vector<float> gi(arrs[i].size());
      plan->input_grad(static_cast<int>(i), gi.data());
      gins.append(to_array(gi, in_dims[i]));
    }
    for (auto& p : g.params) {
      if (p.kind == ParamKind::State) continue;
      std::vector<float> v(G.f() + p.offset, G.f() + p.offset + p.size);
      gparams[p.role.c_str()] = to_array(v, p.shape);
    }
  }
  if (training && g.nodes.back().op == OpKind::Dropout) {
    std::vector<float> mask(on);
    plan->dropout_mask(static_cast<int>(g.nodes.size()) - 1, mask.data());
    gparams["mask"] = to_array(mask, od);
  }
  if (training && g.nodes.back().op == OpKind::BN) {
    auto st = plan->bn_stats().at(0);
    const int c = g.nodes.back().channels;
    gparams["batch_mean"] = to_array(std::vector<float>(st.mean, st.mean + c), {c});
    gparams["batch_var"] = to_array(std::vector<float>(st.var, st.var + c), {c});
  }
  return py::make_tuple(to_array(out, od), gins, gparams);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "halcdl's C++ engine (oneDNN CPU backend)";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const halcdl::Error& e) {
      raise(e.code(), e.what());
    } catch (const dnnl::error& e) {
      raise(kErrRuntimeUnsupported, (std::string("oneDNN error: ") + e.what()).c_str());
    } catch (const std::bad_alloc&) {
      raise(kErrNoMemory, "not enough memory");
    } catch (const py::cast_error& e) {
      // An argument the engine could not convert (wrong type, out of the C++ type's range).
      raise(7790, (std::string("wrong type or out-of-range value: ") + e.what()).c_str());
    } catch (const py::builtin_exception&) {
      throw;  // pybind11's own (stop_iteration, index_error, ...): its translator maps them
    } catch (const std::system_error& e) {
      // e.g. a thread that could not be created
      raise(kErrNoMemory, (std::string("system resources exhausted: ") + e.what()).c_str());
    } catch (const std::length_error& e) {
      raise(kErrNoMemory, (std::string("not enough memory: ") + e.what()).c_str());
    } catch (const std::exception& e) {
      raise(7791, (std::string("invalid input: ") + e.what()).c_str());
    }
  });

  m.def("set_error_class", [](py::object cls) { error_class() = cls; });
  // The parameters a spec declares, [(name, shape, kind)], from the graph alone: no arena is
  // allocated, so a model file's tensor table can be checked against it first.
  m.def("spec_params", [](const py::list& spec) {
    const Graph g = build_graph(to_spec(spec));
    py::list out;
    for (const auto& p : g.params)
      out.append(py::make_tuple(p.name, p.shape,
                                p.kind == ParamKind::State ? "state" : p.kind == ParamKind::Bias ? "bias" : "weight"));
    return out;
  });
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  // Per-op timer of the CPU plans (docs/performance.md): off unless HALCDL_OP_TIMER=1 or set on.
  m.def("set_op_timer", &set_op_timer, py::arg("on"));
  m.def("op_timer", &op_timer);
  m.def("op_times", [] {
    py::dict d;
    for (const auto& t : op_times()) d[py::str(t.key)] = py::make_tuple(t.seconds, t.calls);
    return d;
  });
  m.def("reset_op_times", &reset_op_times);
  // Benchmark switch (docs/performance.md): the CPU training step's divergence check on/off.
  // Returns the previous setting. Not a user option: off, a diverging step corrupts the model.
  m.def("_set_divergence_check", [](bool on) {
    const bool was = divergence_check();
    set_divergence_check(on);
    return was;
  }, py::arg("on"));
  m.def("get_num_threads", &get_num_threads);
  m.def("dnnl_version", [] {
    auto v = dnnl_version();
    return py::make_tuple(v->major, v->minor, v->patch);
  });
  m.def("run_op", &run_op, py::arg("node"), py::arg("inputs"), py::arg("params"), py::arg("grad_output") = py::none(),
        py::arg("training") = true, py::arg("precision") = "float32", py::arg("device") = -1,
        py::arg("deterministic") = false, py::arg("tf32") = false);
  // ---- the CUDA backend (loaded on first use; see engine/device.h) ----
  m.def("set_cuda_library_path", &set_cuda_library_path, py::arg("path"));
  m.def("cuda_backend_built", &cuda_backend_built);
  // dlopen and the driver's initialisation may take seconds: without the GIL
  m.def("load_cuda", [] {
    py::gil_scoped_release nogil;
    cuda_api();
  });
  m.def("gpu_device_count", [] {
    py::gil_scoped_release nogil;
    return cuda_api().device_count();
  });
  m.def("gpu_device_info", [](int i) {
    GpuInfo d;
    {
      py::gil_scoped_release nogil;
      d = cuda_api().device_info(i);
    }
    py::dict r;
    r["index"] = d.index;
    r["name"] = d.name;
    r["compute_capability"] = py::make_tuple(d.cc_major, d.cc_minor);
    r["total_bytes"] = d.total_bytes;
    r["bf16"] = d.bf16;
    return r;
  });
  m.def("bf16_supported", &bf16_supported);
  // ---- detection helpers (tests; the model methods below do the real work) ----
  m.def("det_anchors", [](const py::dict& cfg, const std::vector<std::tuple<int64_t, int64_t, int>>& levels) {
    det::Config c = parse_det_config(det::Config{}, cfg);
    std::vector<det::Level> lv;
    for (auto& [h, w, s] : levels) lv.push_back({h, w, s});
    auto a = det::make_anchors(c, lv);
    return farray2(a, static_cast<int64_t>(a.size() / c.box_dim()), c.box_dim());
  });
  m.def("det_encode", [](FArray anchors, FArray boxes, bool ignore_direction) {
    int D = 0;
    auto a = rows_d(anchors, "anchors", D);
    auto b = rows_d(boxes, "boxes", D);
    HALCDL_CHECK(a.size() == b.size(), kErrInvalidInputShape, "anchors and boxes need equal lengths");
    std::vector<float> t(a.size());
    for (size_t i = 0; i < a.size(); i += D)
      if (D == 5) det::encode2(a.data() + i, b.data() + i, t.data() + i, ignore_direction);
      else det::encode(a.data() + i, b.data() + i, t.data() + i);
    return farray2(t, static_cast<int64_t>(a.size() / D), D);
  }, py::arg("anchors"), py::arg("boxes"), py::arg("ignore_direction") = false);
  m.def("det_decode", [](FArray anchors, FArray deltas, bool ignore_direction) {
    int D = 0;
    auto a = rows_d(anchors, "anchors", D);
    auto t = rows_d(deltas, "deltas", D);
    HALCDL_CHECK(a.size() == t.size(), kErrInvalidInputShape, "anchors and deltas need equal lengths");
    std::vector<float> b(a.size());
    for (size_t i = 0; i < a.size(); i += D)
      if (D == 5) det::decode2(a.data() + i, t.data() + i, b.data() + i, ignore_direction);
      else det::decode(a.data() + i, t.data() + i, b.data() + i);
    return farray2(b, static_cast<int64_t>(a.size() / D), D);
  }, py::arg("anchors"), py::arg("deltas"), py::arg("ignore_direction") = false);
  // pairwise IoU matrix (n, m) of rectangle1 (…, 4) or rectangle2 (…, 5) boxes (evaluation)
  m.def("det_iou_matrix", [](FArray a_, FArray b_) {
    int D = 0;
    std::vector<float> a = a_.size() ? rows_d(a_, "boxes", D) : std::vector<float>();
    std::vector<float> b = b_.size() ? rows_d(b_, "boxes", D) : std::vector<float>();
    if (!D) D = 4;
    const int64_t n = static_cast<int64_t>(a.size() / D), mm = static_cast<int64_t>(b.size() / D);
    py::array_t<float> r({n, mm});
    float* o = r.mutable_data();
    {
      py::gil_scoped_release nogil;
      if (D == 5) {
        std::vector<det::Rect2Geom> ga(n), gb(mm);
        for (int64_t i = 0; i < n; ++i) det::prepare2(a.data() + 5 * i, ga[i]);
        for (int64_t j = 0; j < mm; ++j) det::prepare2(b.data() + 5 * j, gb[j]);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j < mm; ++j) o[i * mm + j] = det::iou2(ga[i], gb[j]);
      } else {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j < mm; ++j) o[i * mm + j] = det::iou(a.data() + 4 * i, b.data() + 4 * j);
      }
    }
    return r;
  });
  m.def("det_nms", [](FArray boxes, FArray scores, float thr) {
    int D = 0;
    auto b = rows_d(boxes, "boxes", D);
    const int n = static_cast<int>(b.size() / D);
    HALCDL_CHECK(scores && scores.size() == n, kErrInvalidInputShape, "one score per box");
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    const float* sc = scores.data();
    std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return sc[x] > sc[y]; });
    return det::nms(b.data(), D, order, thr);
  });
  m.def("det_match", [](FArray anchors, FArray boxes, const py::dict& cfg) {
    det::Config c = parse_det_config(det::Config{}, cfg);
    int D = c.box_dim();
    auto a = rows_d(anchors, "anchors", D);
    std::vector<float> b = boxes.size() ? rows_d(boxes, "boxes", D) : std::vector<float>();
    std::vector<int> out(a.size() / D);
    det::match(a.data(), static_cast<int64_t>(out.size()), b.data(), static_cast<int>(b.size() / D), c, out.data());
    return out;
  });
  m.def("det_detect", [](FArray out, FArray anchors, const std::vector<int64_t>& level_start, const py::dict& cfg,
                         int h, int w) {
    det::Config c = parse_det_config(det::Config{}, cfg);
    int D = c.box_dim();
    HALCDL_CHECK(out && out.ndim() == 2, kErrInvalidInputShape, "out must be (na, k + D)");
    const int64_t na = out.shape(0);
    const int k = static_cast<int>(out.shape(1)) - D;
    auto a = rows_d(anchors, "anchors", D);
    HALCDL_CHECK(static_cast<int64_t>(a.size() / D) == na && level_start.size() >= 2 && level_start.back() == na,
                 kErrInvalidInputShape, "anchors / level_start do not fit out");
    auto d = det::detect(out.data(), na, k, a.data(), level_start.data(), static_cast<int>(level_start.size()) - 1,
                         c, h, w);
    std::vector<float> bx;
    std::vector<int> cl;
    std::vector<float> sc;
    for (auto& x : d) {
      bx.insert(bx.end(), x.box, x.box + D);
      cl.push_back(x.cls);
      sc.push_back(x.score);
    }
    return py::make_tuple(farray2(bx, static_cast<int64_t>(d.size()), D), cl, sc);
  });
  m.def("det_loss", [](FArray out, FArray anchors, const std::vector<int64_t>& level_start, const py::list& boxes,
                       const py::list& labels, const py::dict& cfg, const std::vector<float>& class_w) {
    det::Config c = parse_det_config(det::Config{}, cfg);
    int D = c.box_dim();
    HALCDL_CHECK(out && out.ndim() == 3, kErrInvalidInputShape, "out must be (bs, na, k + D)");
    const int bs = static_cast<int>(out.shape(0));
    const int64_t na = out.shape(1);
    const int k = static_cast<int>(out.shape(2)) - D;
    auto a = rows_d(anchors, "anchors", D);
    HALCDL_CHECK(static_cast<int64_t>(a.size() / D) == na && level_start.size() >= 2 && level_start.back() == na,
                 kErrInvalidInputShape, "anchors / level_start do not fit out");
    HALCDL_CHECK(py::len(boxes) == static_cast<size_t>(bs) && py::len(labels) == static_cast<size_t>(bs),
                 kErrInvalidInputShape, "one box array and one label list per image");
    std::vector<float> bx;
    std::vector<int> lb;
    std::vector<int64_t> off{0};
    for (int i = 0; i < bs; ++i) {
      FArray b = FArray::ensure(boxes[i]);
      if (b && b.size()) {
        auto r = rows_d(b, "boxes", D);
        bx.insert(bx.end(), r.begin(), r.end());
      }
      auto l = py::cast<std::vector<int>>(labels[i]);
      lb.insert(lb.end(), l.begin(), l.end());
      off.push_back(static_cast<int64_t>(lb.size()));
      HALCDL_CHECK(bx.size() == static_cast<size_t>(D) * lb.size(), kErrInvalidInputShape, "image ", i, ": one label per box");
    }
    for (int l : lb) HALCDL_CHECK(l >= 0 && l < k, kErrInvalidLabels, "label index out of range");
    HALCDL_CHECK(class_w.empty() || static_cast<int>(class_w.size()) == k, kErrInvalidValue, "class weights: k values");
    py::array_t<float> grad({static_cast<int64_t>(bs), na, static_cast<int64_t>(k + D)});
    det::LossResult r = det::loss(out.data(), bs, na, k, a.data(), level_start.data(),
                                  static_cast<int>(level_start.size()) - 1, bx.data(), lb.data(), off.data(),
                                  class_w.empty() ? nullptr : class_w.data(), c, 1.f, grad.mutable_data());
    py::dict d;
    d["cls"] = r.cls;
    d["box"] = r.box;
    d["num_fg"] = r.num_fg;
    d["cls_level"] = r.cls_level;
    d["box_level"] = r.box_level;
    return py::make_tuple(d, grad);
  });


  py::class_<Model, std::shared_ptr<Model>>(m, "Model")
      .def(py::init([](const py::list& spec, uint64_t seed) { return std::make_shared<Model>(to_spec(spec), seed); }),
           py::arg("spec"), py::arg("seed") = 42)
      .def("param_names",
           [](const Model& md) {
             std::vector<std::string> r;
             for (auto& p : md.graph().params) r.push_back(p.name);
             return r;
           })
      .def("get_param",
           [](Model& md, const std::string& name) {
             auto lk = lock_model(md);
             int i = md.graph().param_index(name);
             auto v = md.get_param(name);
             return to_array(v, md.graph().params[i].shape);
           })
      .def("set_param",
           [](Model& md, const std::string& name, py::object arr) {
             auto a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(arr);
             HALCDL_CHECK(a, kErrInvalidInputData, "parameter '", name, "' must be a numeric array");
             int i = md.graph().param_index(name);
             HALCDL_CHECK(i >= 0, kErrUnsupportedParam, "the model has no parameter '", name, "'");
             const Dims& shape = md.graph().params[i].shape;
             HALCDL_CHECK(Dims(a.shape(), a.shape() + a.ndim()) == shape, kErrInvalidInputShape, "parameter '", name,
                          "' has another shape");
             HALCDL_CHECK(kern::all_finite(a.data(), a.size()), kErrInvalidInputData, "parameter '", name,
                          "' holds NaN or Inf");
             auto lk = lock_model(md);
             md.set_param(name, a.data(), a.size());
           })
      .def("copy_params_from",
           [](Model& md, Model& other) {
             HALCDL_CHECK(&md != &other, kErrInvalidValue, "copy_params_from: source and target are the same model");
             std::unique_lock<std::mutex> a(md.mutex(), std::defer_lock), b(other.mutex(), std::defer_lock);
             if (std::try_lock(a, b) != -1) {  // busy: wait without the GIL (see lock_model)
               py::gil_scoped_release nogil;
               std::lock(a, b);
             }
             return md.copy_params_from(other);
           },
           py::arg("other"))
      .def("num_trainable_params", &Model::num_trainable_params)
      .def("num_classes", &Model::num_classes)
      .def("output_shape", [](const Model& md, int64_t h, int64_t w) { return md.output_dims(h, w); })
      .def("set_class_ids",
           [](Model& md, const std::vector<int64_t>& ids) {
             auto lk = lock_model(md);
             md.set_class_ids(ids);
           })
      .def("set_hparams",
           [](Model& md, const py::dict& d) {
             auto lk = lock_model(md);
             md.set_hparams(parse_hparams(md.hparams(), d));
           })
      .def("reset_optimizer",
           [](Model& md) {
             auto lk = lock_model(md);
             md.reset_optimizer();
           })
      .def("get_state",
           [](Model& md) {
             auto lk = lock_model(md);
             Model::State st = md.get_state();
             const int64_t n = static_cast<int64_t>(st.m1.size());
             py::dict d;
             d["m1"] = to_array(st.m1, {n});
             d["m2"] = to_array(st.m2, {n});
             d["adam_t"] = st.adam_t;
             d["steps"] = st.steps;
             d["seed"] = st.seed;
             return d;
           })
      .def("set_state",
           [](Model& md, const py::dict& d) {
             for (const char* k : {"m1", "m2", "adam_t", "steps", "seed"})
               HALCDL_CHECK(d.contains(k), kErrInputsMissing, "set_state: missing '", k, "'");
             auto m1 = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(d["m1"]);
             auto m2 = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(d["m2"]);
             HALCDL_CHECK(m1 && m2, kErrInvalidInputData, "set_state: m1/m2 must be numeric arrays");
             Model::State st{std::vector<float>(m1.data(), m1.data() + m1.size()),
                             std::vector<float>(m2.data(), m2.data() + m2.size()), py::cast<int64_t>(d["adam_t"]),
                             py::cast<uint64_t>(d["steps"]), py::cast<uint64_t>(d["seed"])};
             auto lk = lock_model(md);
             md.set_state(st);
           })
      .def("set_precision",
           [](Model& md, const std::string& p) {
             Precision pr = parse_precision(p);
             auto lk = lock_model(md);
             md.set_precision(pr);
           })
      .def("release_training_plans",
           [](Model& md) {
             auto lk = lock_model(md);
             md.release_training_plans();
           })
      .def("set_device",
           [](Model& md, int gpu) {
             auto lk = lock_model(md);
             py::gil_scoped_release nogil;
             md.set_device(gpu);
           },
           py::arg("gpu"))
      .def("device", &Model::device)
      .def("set_gpu_options",
           [](Model& md, bool deterministic, bool tf32) {
             auto lk = lock_model(md);
             md.set_gpu_options(GpuOptions{deterministic, tf32});
           },
           py::arg("deterministic"), py::arg("tf32"))
      .def("cpu_plan_bytes",
           [](Model& md) -> size_t {
             auto lk = lock_model(md);
             return md.cpu_plan_bytes();
           })
      .def("gpu_plan_bytes",
           [](Model& md) -> size_t {
             auto lk = lock_model(md);
             return md.engine() ? md.engine()->plan_bytes() : 0;
           })
      // free memory of the model's GPU (cudaMemGetInfo in the engine's context: no CuPy needed);
      // 0 for a model on the CPU
      .def("gpu_free_bytes",
           [](Model& md) -> size_t {
             auto lk = lock_model(md);
             if (!md.engine()) return 0;
             py::gil_scoped_release nogil;
             return md.engine()->info().free_bytes;
           })
      .def("get_precision",
           [](const Model& md) { return md.precision() == Precision::BF16 ? "bfloat16" : "float32"; })
      .def("summary", &Model::summary)
      .def("train_step",
           [](Model& md, const py::list& samples, int batch_size, int multiplier, int height, int width,
              int channels, uintptr_t images_ptr, py::object reduce, int world_size, int sub_offset) {
             HALCDL_CHECK(batch_size > 0, kErrInvalidValue, "batch_size must be > 0");
             HALCDL_CHECK(multiplier > 0, kErrBatchSizeMultiplier, "batch_size_multiplier must be > 0");
             const size_t need = static_cast<size_t>(batch_size) * multiplier;
             HALCDL_CHECK(samples.size() == need, kErrWrongNumSamples, "the batch holds ", samples.size(),
                          " samples, but batch_size × batch_size_multiplier = ", batch_size, " × ", multiplier,
                          " = ", need);
             auto lk = lock_model(md);
             if (md.is_detection()) {
               HALCDL_CHECK(images_ptr == 0, kErrRuntimeUnsupported,
                            "object detection takes host images (numpy), not GPU (CuPy) images, yet");
               Batch b = gather(md, samples, channels, height, width, Labels::None);
               BoxBatch bb = gather_boxes(md, samples);
               TrainResult r;
               {
                 py::gil_scoped_release nogil;
                 float* host = md.staging(need * channels * height * width);
                 assemble(b, host, channels, height, width);
                 r = md.train_step_detection(host, bb.boxes.data(), bb.labels.data(), bb.off.data(), batch_size,
                                             multiplier, channels, height, width);
               }
               py::dict out;
               out["total_loss"] = r.total_loss;
               for (auto& t : r.terms) out[t.first.c_str()] = t.second;
               return out;
             }
             const int64_t per = md.labels_per_sample(height, width);
             const bool on_dev = images_ptr != 0;
             HALCDL_CHECK(!on_dev || md.device() >= 0, kErrInvalidInputData,
                          "GPU (CuPy) images need the model on the GPU: set 'runtime' to 'gpu'");
             Batch b = gather(md, samples, channels, height, width, per == 1 ? Labels::Class : Labels::Pixel,
                              !on_dev);
             StepHook hook;
             if (!reduce.is_none()) {
               HALCDL_CHECK(sub_offset >= 0, kErrInvalidValue, "sub_offset must be >= 0");
               HALCDL_CHECK(world_size >= 1, kErrInvalidValue, "world_size must be >= 1");
               hook.sub_offset = sub_offset;
               hook.world_size = world_size;
               hook.reduce = [&reduce](const StepReduce& a) { call_reduce(reduce, a); };
             }
             TrainResult r;
             {
               py::gil_scoped_release nogil;
               const float* st = reinterpret_cast<const float*>(images_ptr);
               if (!on_dev) {
                 float* host = md.staging(need * channels * height * width);
                 assemble(b, host, channels, height, width);
                 st = host;
               }
               const int* labels = b.labels.data();
               const float* pw = nullptr;
               if (per > 1) {
                 int* lab = md.label_staging(need * per);
                 float* w = b.any_weights ? md.weight_staging(need * per) : nullptr;
                 assemble_pixels(md, b, per, lab, w);
                 labels = lab;
                 pw = w;
               }
               r = md.train_step(st, labels, pw, batch_size, multiplier, channels, height, width, on_dev,
                                 hook.reduce ? &hook : nullptr);
             }
             py::dict out;
             out["total_loss"] = r.total_loss;
             out["loss_cls"] = r.loss_cls;
             return out;
           },
           py::arg("samples"), py::arg("batch_size"), py::arg("multiplier"), py::arg("height"), py::arg("width"),
           py::arg("channels"), py::arg("images_ptr") = 0, py::arg("reduce") = py::none(), py::arg("world_size") = 1,
           py::arg("sub_offset") = 0)
      .def("is_detection", &Model::is_detection)
      .def("num_shared_params", &Model::num_shared_params)
      .def("set_frozen",
           [](Model& md, const std::vector<std::string>& names) {
             auto lk = lock_model(md);
             md.set_frozen(names);
           })
      .def("node_shapes",
           [](const Model& md, int64_t h, int64_t w) {
             std::vector<Dims> in;
             for (int i : md.graph().input_nodes) in.push_back({1, md.graph().nodes[i].channels, h, w});
             auto d = md.graph().infer_shapes(in);
             py::dict r;
             for (size_t i = 0; i < d.size(); ++i) r[md.graph().nodes[i].name.c_str()] = d[i];
             return r;
           })
      .def("set_detection",
           [](Model& md, const py::dict& d) {
             det::Config c = parse_det_config(md.detection(), d);
             auto lk = lock_model(md);
             md.set_detection(c);
           })
      .def("det_anchors",
           [](Model& md, int h, int w) {
             auto lk = lock_model(md);
             std::vector<int64_t> ls;
             const auto& a = md.anchors(h, w, &ls);
             const int D = md.detection().box_dim();
             return py::make_tuple(farray2(a, static_cast<int64_t>(a.size() / D), D), ls);
           })
      .def("infer_detection",
           [](Model& md, const py::list& samples, int batch_size, int height, int width, int channels) {
             HALCDL_CHECK(batch_size > 0, kErrInvalidValue, "batch_size must be > 0");
             HALCDL_CHECK(samples.size() > 0, kErrInvalidValue, "no samples given");
             auto lk = lock_model(md);
             Batch b = gather(md, samples, channels, height, width, Labels::None);
             const int n = static_cast<int>(samples.size());
             std::vector<std::vector<det::Detection>> r;
             {
               py::gil_scoped_release nogil;
               float* st = md.staging(static_cast<size_t>(n) * channels * height * width);
               assemble(b, st, channels, height, width);
               r = md.infer_detection(st, n, batch_size, channels, height, width);
             }
             py::list out;
             const int D = md.detection().box_dim();
             for (auto& dets : r) {
               const int64_t k = static_cast<int64_t>(dets.size());
               py::array_t<float> bx({k, int64_t(D)});
               py::array_t<int32_t> cl(k);
               py::array_t<float> sc(k);
               for (int64_t i = 0; i < k; ++i) {
                 std::memcpy(bx.mutable_data() + D * i, dets[i].box, D * sizeof(float));
                 cl.mutable_data()[i] = dets[i].cls;
                 sc.mutable_data()[i] = dets[i].score;
               }
               out.append(py::make_tuple(bx, cl, sc));
             }
             return out;
           },
           py::arg("samples"), py::arg("batch_size"), py::arg("height"), py::arg("width"), py::arg("channels"))
      .def("infer_detection_raw",
           [](Model& md, const py::list& samples, int batch_size, int height, int width, int channels) {
             HALCDL_CHECK(batch_size > 0, kErrInvalidValue, "batch_size must be > 0");
             HALCDL_CHECK(samples.size() > 0, kErrInvalidValue, "no samples given");
             auto lk = lock_model(md);
             std::vector<int64_t> ls;
             md.anchors(height, width, &ls);
             Batch b = gather(md, samples, channels, height, width, Labels::None);
             const int n = static_cast<int>(samples.size());
             py::array_t<float> out({int64_t(n), ls.back(), int64_t(md.num_classes() + md.detection().box_dim())});
             float* o = out.mutable_data();
             {
               py::gil_scoped_release nogil;
               float* st = md.staging(static_cast<size_t>(n) * channels * height * width);
               assemble(b, st, channels, height, width);
               md.infer_detection_raw(st, n, batch_size, channels, height, width, o);
             }
             return out;
           },
           py::arg("samples"), py::arg("batch_size"), py::arg("height"), py::arg("width"), py::arg("channels"))
      .def("set_ignore_ids",
           [](Model& md, const std::vector<int64_t>& ids) {
             auto lk = lock_model(md);
             md.set_ignore_ids(ids);
           })
      .def("is_segmentation", [](const Model& md, int64_t h, int64_t w) { return md.labels_per_sample(h, w) > 1; })
      .def("infer_segmentation",
           [](Model& md, const py::list& samples, int batch_size, int height, int width, int channels,
              uintptr_t images_ptr, uintptr_t index_ptr, uintptr_t conf_ptr) -> py::object {
             HALCDL_CHECK(batch_size > 0, kErrInvalidValue, "batch_size must be > 0");
             HALCDL_CHECK(samples.size() > 0, kErrInvalidValue, "no samples given");
             const bool on_dev = images_ptr != 0;
             HALCDL_CHECK(on_dev == (index_ptr != 0) && on_dev == (conf_ptr != 0), kErrInvalidValue,
                          "device inference needs device images and device outputs together");
             auto lk = lock_model(md);
             HALCDL_CHECK(!on_dev || md.device() >= 0, kErrInvalidInputData,
                          "GPU (CuPy) images need the model on the GPU: set 'runtime' to 'gpu'");
             Batch b = gather(md, samples, channels, height, width, Labels::None, !on_dev);
             const int n = static_cast<int>(samples.size());
             if (on_dev) {
               {
                 py::gil_scoped_release nogil;
                 md.infer_segmentation(reinterpret_cast<const float*>(images_ptr), n, batch_size, channels, height,
                                       width, reinterpret_cast<int*>(index_ptr), reinterpret_cast<float*>(conf_ptr),
                                       true);
               }
               return py::none();
             }
             py::array_t<int32_t> index({n, height, width});
             py::array_t<float> conf({n, height, width});
             int32_t* ip = index.mutable_data();
             float* cp = conf.mutable_data();
             {
               py::gil_scoped_release nogil;
               float* st = md.staging(static_cast<size_t>(n) * channels * height * width);
               assemble(b, st, channels, height, width);
               md.infer_segmentation(st, n, batch_size, channels, height, width, ip, cp);
             }
             return py::make_tuple(index, conf);
           },
           py::arg("samples"), py::arg("batch_size"), py::arg("height"), py::arg("width"), py::arg("channels"),
           py::arg("images_ptr") = 0, py::arg("index_ptr") = 0, py::arg("conf_ptr") = 0)
      .def("set_keep",
           [](Model& md, const std::vector<std::string>& names) {
             auto lk = lock_model(md);
             md.set_keep(names);
           })
      .def("keep_names", [](Model& md) { auto lk = lock_model(md); return md.keep_names(); })
      .def("layer_tensor",
           [](Model& md, const std::string& name, bool grad) {
             auto lk = lock_model(md);
             Dims d;
             auto v = md.layer_tensor(name, grad, &d);
             return to_array(v, d);
           },
           py::arg("name"), py::arg("grad") = false)
      .def("grad_forward",
           [](Model& md, const py::list& samples, int height, int width, int channels, bool guided) {
             HALCDL_CHECK(samples.size() > 0, kErrInvalidValue, "no samples given");
             auto lk = lock_model(md);
             HALCDL_CHECK(md.device() < 0, kErrRuntimeUnsupported, "heatmaps (forward + backward without an update) "
                          "are not supported on the GPU yet (run the model on the CPU)");
             Batch b = gather(md, samples, channels, height, width, Labels::None, true);
             const int n = static_cast<int>(samples.size());
             Dims d;
             std::vector<float> out;
             {
               py::gil_scoped_release nogil;
               float* st = md.staging(static_cast<size_t>(n) * channels * height * width);
               assemble(b, st, channels, height, width);
               out = md.grad_forward(st, n, channels, height, width, &d, guided);
             }
             return to_array(out, d);
           },
           py::arg("samples"), py::arg("height"), py::arg("width"), py::arg("channels"),
           py::arg("guided") = false)
      .def("grad_input",
           [](Model& md) {
             auto lk = lock_model(md);
             Dims d;
             auto v = md.grad_input(&d);
             return to_array(v, d);
           })
      .def("grad_backward",
           [](Model& md, py::object grad) {
             auto a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(grad);
             HALCDL_CHECK(a, kErrInvalidInputData, "the output gradient must be a numeric array");
             auto lk = lock_model(md);
             py::gil_scoped_release nogil;
             md.grad_backward(a.data(), static_cast<size_t>(a.size()));
           })
      .def("infer",
           [](Model& md, const py::list& samples, int batch_size, int height, int width, int channels,
              uintptr_t images_ptr, uintptr_t out_ptr) -> py::object {
             HALCDL_CHECK(batch_size > 0, kErrInvalidValue, "batch_size must be > 0");
             HALCDL_CHECK(samples.size() > 0, kErrInvalidValue, "no samples given");
             const bool on_dev = images_ptr != 0;
             HALCDL_CHECK(on_dev == (out_ptr != 0), kErrInvalidValue,
                          "device inference needs device images and a device output together");
             auto lk = lock_model(md);
             HALCDL_CHECK(!on_dev || md.device() >= 0, kErrInvalidInputData,
                          "GPU (CuPy) images need the model on the GPU: set 'runtime' to 'gpu'");
             Batch b = gather(md, samples, channels, height, width, Labels::None, !on_dev);
             const int n = static_cast<int>(samples.size()), k = md.num_classes();
             if (on_dev) {
               {
                 py::gil_scoped_release nogil;
                 md.infer(reinterpret_cast<const float*>(images_ptr), n, batch_size, channels, height, width,
                          reinterpret_cast<float*>(out_ptr), true);
               }
               return py::none();
             }
             py::array_t<float> probs({n, k});
             float* out = probs.mutable_data();
             {
               py::gil_scoped_release nogil;
               float* st = md.staging(static_cast<size_t>(n) * channels * height * width);
               assemble(b, st, channels, height, width);
               md.infer(st, n, batch_size, channels, height, width, out);
             }
             return std::move(probs);
           },
           py::arg("samples"), py::arg("batch_size"), py::arg("height"), py::arg("width"), py::arg("channels"),
           py::arg("images_ptr") = 0, py::arg("out_ptr") = 0);
}
