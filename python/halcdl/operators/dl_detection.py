"""create_dl_model_detection and the detection parts of apply_dl_model (docs/detection.md)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .. import io as model_io
from ..errors import (
    H_ERR_DL_DETECTOR_INVALID_PARAM_VALUE,
    H_ERR_DL_FPN_INVALID_BACKBONE,
    H_ERR_FNF,
    HOperatorError,
)
from ..models import detection as D
from ..models.handle import DLModel, copy_matching_params
from ..models.zoo import ARCHITECTURES, get_architecture
from ._tuple import as_str, is_int, operator, to_scalar, wrong_type
from .system import next_model_seed

__all__ = ["create_dl_model_detection"]

DETECTION_RESULT_KEYS = ("bbox_row1", "bbox_col1", "bbox_row2", "bbox_col2", "bbox_class_id",
                         "bbox_class_name", "bbox_confidence")
DETECTION_RESULT_KEYS_RECT2 = ("bbox_row", "bbox_col", "bbox_phi", "bbox_length1", "bbox_length2",
                               "bbox_class_id", "bbox_class_name", "bbox_confidence")


def result_keys(m: DLModel) -> tuple:
    """The DLResult keys of detection model ``m`` (by its instance_type)."""
    return DETECTION_RESULT_KEYS_RECT2 if m.params.get("instance_type") == "rectangle2" \
        else DETECTION_RESULT_KEYS


def _backbone(backbone: Any) -> tuple[str, list, Any, dict]:
    """(name, classifier spec, engine model with its weights or None, arch fields)."""
    if isinstance(backbone, (list, tuple)) and len(backbone) == 1:
        backbone = backbone[0]
    if isinstance(backbone, DLModel):
        if backbone.cleared:
            raise HOperatorError(H_ERR_DL_FPN_INVALID_BACKBONE, "the backbone model was cleared")
        m = backbone
        name = m.arch.file_name
    else:
        if isinstance(backbone, os.PathLike):
            backbone = os.fspath(backbone)
        name = as_str(to_scalar(backbone, 1, "one backbone file name"), 1, "backbone")
        if not name:
            raise HOperatorError(H_ERR_DL_FPN_INVALID_BACKBONE, "backbone must not be empty")
        path = name if os.path.isfile(name) else (
            name + ".hdl" if not os.path.splitext(name)[1] and os.path.isfile(name + ".hdl")
            else None)
        arch = get_architecture(name)
        if path is None and arch is None:
            raise HOperatorError(H_ERR_FNF,
                                 f"File not found: backbone {name!r} (built-in backbones: "
                                 f"{', '.join(a for a in ARCHITECTURES if 'classifier' in a)})")
        if path is not None:
            m = model_io.read_file(path, next_model_seed())
        else:
            m = DLModel(arch, next_model_seed())
    if m.params["type"] != "classification":
        raise HOperatorError(H_ERR_DL_FPN_INVALID_BACKBONE,
                             f"backbone {name!r} is a {m.params['type']} model; a detector needs "
                             f"a classification network as backbone")
    fields = {"image_width": m.params["image_width"], "image_height": m.params["image_height"],
              "image_num_channels": m.params["image_num_channels"],
              "image_range_min": m.params["image_range_min"],
              "image_range_max": m.params["image_range_max"]}
    return os.path.basename(name), m.spec, m.core, fields


@operator
def create_dl_model_detection(backbone: Any, num_classes: Any,
                              dlmodel_detection_param: Any) -> DLModel:
    """A detection model: ``backbone`` (a built-in classifier name such as
    'pretrained_dl_classifier_resnet18.hdl', a model file written by halcdl, or an ONNX
    classifier) with its classification head removed, a feature pyramid over its feature
    maps at min_level … max_level, and class and box heads shared across the levels.
    ``dlmodel_detection_param``: dict of HALCON's detection parameters (or []), defaults in
    docs/detection.md.  Errors: 7821 unknown parameter, 7822 bad value (num_classes < 1,
    min_level > max_level, a ratio <= 0, ...), 7824 unknown instance_type, 7813 levels the
    backbone cannot provide, 7811 unusable backbone, 7730 image size not divisible by
    2^max_level, 5200 backbone file not found."""
    if isinstance(num_classes, (list, tuple)) and len(num_classes) == 1:
        num_classes = num_classes[0]
    if not is_int(num_classes):
        raise wrong_type(2, f"num_classes must be an integer, got {num_classes!r}")
    k = int(num_classes)
    if k < 1:
        raise HOperatorError(H_ERR_DL_DETECTOR_INVALID_PARAM_VALUE,
                             f"num_classes must be >= 1, got {k}")
    given = dlmodel_detection_param
    if isinstance(given, (list, tuple)) and len(given) == 1 and isinstance(given[0], dict):
        given = given[0]
    if isinstance(given, (list, tuple)) and len(given) == 0:
        given = {}
    if not isinstance(given, dict):
        raise wrong_type(3, f"dlmodel_detection_param must be a dict, got "
                            f"{type(given).__name__}")
    p = D.validate_detection_params(given, k)
    name, bspec, bcore, fields = _backbone(backbone)
    for key in ("image_width", "image_height", "image_num_channels"):
        if key not in given:
            p[key] = fields[key]
    spec, info = D.build_detection_spec(bspec, k, p)  # 7811 / 7813
    D.check_image_size(p, p["image_width"], p["image_height"])  # 7730
    arch = D.detection_architecture(f"detection:{name}", spec, k, p["image_width"],
                                    p["image_height"], fields["image_num_channels"],
                                    fields["image_range_min"], fields["image_range_max"])
    model = DLModel(arch, next_model_seed(), num_classes=k)
    core = model.core
    copy_matching_params(bcore, core)  # the backbone's weights (names are kept)
    D.init_head_params(core, spec, model.seed)
    params = model.params
    params["type"] = "detection"
    class_ids = p.pop("class_ids", list(range(k)))
    class_names = p.pop("class_names", [str(c) for c in class_ids])
    params.update(p)
    params["backbone"] = name
    params["class_ids"] = class_ids
    params["class_names"] = class_names
    params["meta_data"] = dict(params["meta_data"], architecture=arch.file_name,
                               backbone_levels=" ".join(str(x) for x in info["backbone_levels"]))
    core.set_class_ids(class_ids)
    if p["image_num_channels"] != fields["image_num_channels"]:
        from .dl_model import _set_channels  # noqa: PLC0415

        params["image_num_channels"] = fields["image_num_channels"]
        _set_channels(model, p["image_num_channels"])
    core.output_shape(int(params["image_height"]), int(params["image_width"]))  # 7722
    model.mark_hparams_dirty()
    model.push_hparams()
    core.det_anchors(int(params["image_height"]), int(params["image_width"]))  # 7730
    if params["freeze_backbone_level"]:
        set_frozen(model)
    return model


def backbone_param_names(model: DLModel, level: int) -> list[str]:
    """Parameters of the backbone nodes that feed its feature map of ``level`` (frozen by
    freeze_backbone_level = level)."""
    spec = model.spec
    by = {n["name"]: n for n in spec}
    taps = {}
    shapes = None
    h, w = int(model.params["image_height"]), int(model.params["image_width"])
    shapes = dict(model.core.node_shapes(h, w))
    for n in spec:
        if n["name"].startswith(("fpn.", "cls_head", "box_head")) or n["op"] == "detection_output":
            continue
        d = shapes[n["name"]]
        if len(d) == 4 and d[2] and h % d[2] == 0 and (h // d[2]) == (1 << level):
            taps[level] = n["name"]
    if level not in taps:  # deeper than the backbone: all of it
        names = [n["name"] for n in spec if not n["name"].startswith(("fpn.", "cls_head",
                                                                       "box_head"))]
    else:
        need, stack = set(), [taps[level]]
        while stack:
            x = stack.pop()
            if x not in need:
                need.add(x)
                stack.extend(by[x]["inputs"])
        names = list(need)
    pset = set(model.core.param_names())
    return sorted(f"{nm}.{role}" for nm in names for role in ("weight", "bias", "scale", "shift")
                  if f"{nm}.{role}" in pset)


def set_frozen(model: DLModel) -> None:
    level = int(model.params["freeze_backbone_level"])
    model.core.set_frozen(backbone_param_names(model, level) if level > 0 else [])


def apply_detection(m: DLModel, samples: list, keys: tuple) -> list:
    """apply_dl_model of a detection model (the caller holds the lock)."""
    p = m.params
    try:
        dets = m.core.infer_detection(samples, p["batch_size"], p["image_height"],
                                      p["image_width"], p["image_num_channels"])
    except TypeError as err:
        raise wrong_type(2, f"dlsample_batch must be a list of DLSample dicts ({err})") \
            from None
    ids = np.asarray(p["class_ids"], dtype=np.int64)
    names = np.asarray(p["class_names"], dtype=object)
    out = []
    r2 = p.get("instance_type") == "rectangle2"
    for boxes, cls, score in dets:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5 if r2 else 4)
        cls = np.asarray(cls, dtype=np.int64)
        cols = {
            "bbox_class_id": ids[cls].tolist(), "bbox_class_name": names[cls].tolist(),
            "bbox_confidence": np.asarray(score, dtype=np.float64).tolist(),
        }
        if r2:  # the engine's order: row, col, length1, length2, phi
            cols.update({"bbox_row": boxes[:, 0].tolist(), "bbox_col": boxes[:, 1].tolist(),
                         "bbox_length1": boxes[:, 2].tolist(),
                         "bbox_length2": boxes[:, 3].tolist(), "bbox_phi": boxes[:, 4].tolist()})
        else:
            cols.update({"bbox_row1": boxes[:, 0].tolist(), "bbox_col1": boxes[:, 1].tolist(),
                         "bbox_row2": boxes[:, 2].tolist(), "bbox_col2": boxes[:, 3].tolist()})
        out.append({k: cols[k] for k in keys})
    return out
