"""determine_dl_model_detection_param: levels and anchors for create_dl_model_detection from
a dataset's boxes (docs/detection.md, "determine_dl_model_detection_param")."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from ..errors import H_ERR_CNN_INVALID_INPUT_DATA, H_ERR_DL_INPUTS_MISSING, HOperatorError
from ..operators._tuple import operator, to_scalar, wrong_type, wrong_value

__all__ = ["determine_dl_model_detection_param"]

ANCHOR_SCALE = 4.0   # the engine's anchor size at level l: 4·2^l (csrc/engine/detection.h)
SUBSCALES = 3


def _image_size(path: str, i: int) -> tuple[int, int]:
    from PIL import Image  # noqa: PLC0415

    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, ValueError) as err:
        raise HOperatorError(H_ERR_CNN_INVALID_INPUT_DATA,
                             f"sample {i}: cannot read image {path!r}: {err}") from None
    return int(w), int(h)


@operator
def determine_dl_model_detection_param(dldataset: Any, image_width_target: Any,
                                       image_height_target: Any, gen_param: Any) -> dict:
    """Detection parameters (min_level, max_level, anchor_num_subscales,
    anchor_aspect_ratios, image_width, image_height) for a detector whose images are resized
    to image_width_target × image_height_target, from the boxes of ``dldataset`` (all samples,
    or gen_param 'split' = a split name).  Every box is scaled like its image; with object
    sizes z = sqrt(h·w) and ratios h / w:
    min_level = max(1, floor(log2(min z / 4))), max_level = the smallest level whose
    largest anchor 4·2^l·2^((S−1)/S) reaches max z (at least min_level, at most the largest l
    with 2^l dividing both target sizes), S = 3 subscales, aspect ratios [1.0] when all
    ratios lie in [0.8, 1.25], else the 10 %, 50 % and 90 % quantiles of the ratios (two
    decimals).  rectangle2 datasets (bbox_row, bbox_col, bbox_phi, bbox_length1,
    bbox_length2): z = 2·sqrt(l1·l2), ratio l2 / l1 (the anchor's height / width at its own
    angle), each length scaled by the image's scale along its axis; the result adds
    instance_type 'rectangle2' and anchor_angles: the axial mean of the angles (modulo π,
    two decimals) when they are concentrated (mean resultant length of 2φ ≥ 0.9), else
    [−π/4, 0, π/4, π/2].  Errors: 7783 no boxes (or a sample without bbox keys), 7736
    unreadable image files or invalid boxes."""
    if not isinstance(dldataset, dict) or not isinstance(dldataset.get("samples"), list):
        raise wrong_type(1, "dldataset must be a DLDataset dict with 'samples'")
    from ..operators.dl_model import MAX_IMAGE_SIDE  # noqa: PLC0415  (the model's bound)

    tw = to_scalar(image_width_target, 2, "one width")
    th = to_scalar(image_height_target, 3, "one height")
    for pos, v in ((2, tw), (3, th)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or \
                not 1 <= int(v) <= MAX_IMAGE_SIDE:
            raise wrong_value(pos, f"the target image size must be an integer in "
                                   f"1..{MAX_IMAGE_SIDE}, got {v!r}")
    tw, th = int(tw), int(th)
    gp = gen_param if isinstance(gen_param, dict) else {}
    if not isinstance(gen_param, dict) and not (
            gen_param is None or isinstance(gen_param, (list, tuple)) and len(gen_param) == 0):
        raise wrong_type(4, "gen_param must be a dict or []")
    split = gp.get("split", "all")
    if not isinstance(split, str):
        raise wrong_value(4, f"gen_param 'split' must be a split name, got {split!r}")
    image_dir = str(dldataset.get("image_dir", ""))
    sizes, ratios, angles = [], [], []
    rect2 = None
    r2keys = ("bbox_row", "bbox_col", "bbox_phi", "bbox_length1", "bbox_length2")
    for i, s in enumerate(dldataset["samples"]):
        if not isinstance(s, dict) or (split != "all" and not (
                isinstance(s.get("split"), str) and s["split"] == split)):
            continue
        if rect2 is None:
            rect2 = "bbox_row1" not in s and all(k in s for k in r2keys)
        if rect2:
            if any(k not in s for k in r2keys):
                raise HOperatorError(H_ERR_DL_INPUTS_MISSING,
                                     f"sample {i} has no rectangle2 bbox keys {r2keys}")
            try:
                b = np.stack([np.asarray(s[k], np.float64).reshape(-1) for k in r2keys], 1)
            except (TypeError, ValueError, OverflowError):
                raise HOperatorError(H_ERR_CNN_INVALID_INPUT_DATA,
                                     f"sample {i}: invalid bbox lists") from None
            if len(b) == 0:
                continue
            phi, l1, l2 = b[:, 2], b[:, 3], b[:, 4]
            if not (np.isfinite(b).all() and (l1 > 0).all() and (l2 > 0).all()):
                raise HOperatorError(H_ERR_CNN_INVALID_INPUT_DATA,
                                     f"sample {i}: boxes must be finite with positive lengths")
            iw, ih = _image_size(os.path.join(image_dir, str(s.get("image_file_name", ""))), i)
            fy, fx = th / ih, tw / iw
            sn, cs = np.sin(phi), np.cos(phi)
            l1 = l1 * np.hypot(fy * sn, fx * cs)   # length1 runs along (−sin φ, cos φ)
            l2 = l2 * np.hypot(fy * cs, fx * sn)
            sizes.append(2.0 * np.sqrt(l1 * l2))
            ratios.append(l2 / l1)
            angles.append(phi)
            continue
        keys = ("bbox_row1", "bbox_col1", "bbox_row2", "bbox_col2")
        if any(k not in s for k in keys):
            raise HOperatorError(H_ERR_DL_INPUTS_MISSING,
                                 f"sample {i} has no rectangle1 bbox keys {keys}")
        try:
            b = np.stack([np.asarray(s[k], np.float64).reshape(-1) for k in keys], 1)
        except (TypeError, ValueError, OverflowError):
            raise HOperatorError(H_ERR_CNN_INVALID_INPUT_DATA,
                                 f"sample {i}: invalid bbox lists") from None
        if len(b) == 0:
            continue
        h, w = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        if not (np.isfinite(b).all() and (h > 0).all() and (w > 0).all()):
            raise HOperatorError(H_ERR_CNN_INVALID_INPUT_DATA,
                                 f"sample {i}: boxes must be finite with row2 > row1, col2 > col1")
        iw, ih = _image_size(os.path.join(image_dir, str(s.get("image_file_name", ""))), i)
        h, w = h * th / ih, w * tw / iw
        sizes.append(np.sqrt(h * w))
        ratios.append(h / w)
    if not sizes:
        raise HOperatorError(H_ERR_DL_INPUTS_MISSING, "the dataset holds no boxes")
    z = np.concatenate(sizes)
    r = np.concatenate(ratios)
    top = 1
    while tw % (1 << (top + 1)) == 0 and th % (1 << (top + 1)) == 0 and top < 10:
        top += 1
    lo = max(1, int(math.floor(math.log2(max(z.min(), 1e-9) / ANCHOR_SCALE))))
    largest = ANCHOR_SCALE * 2.0 ** ((SUBSCALES - 1) / SUBSCALES)
    hi = max(lo, int(math.ceil(math.log2(z.max() / largest))))
    hi = min(hi, top)
    lo = min(lo, hi)
    if r.min() >= 0.8 and r.max() <= 1.25:
        ar = [1.0]
    else:
        ar = sorted({round(float(q), 2) for q in np.quantile(r, [0.1, 0.5, 0.9])})
    out = {"min_level": lo, "max_level": hi, "anchor_num_subscales": SUBSCALES,
           "anchor_aspect_ratios": ar, "image_width": tw, "image_height": th}
    if rect2:
        phi = np.concatenate(angles)
        c2, s2 = np.cos(2 * phi).mean(), np.sin(2 * phi).mean()
        if math.hypot(c2, s2) >= 0.9:
            mean = 0.5 * math.atan2(s2, c2)        # in (−π/2, π/2]
            out["anchor_angles"] = [round(mean, 2)]
        else:
            out["anchor_angles"] = [round(-math.pi / 4, 4), 0.0, round(math.pi / 4, 4),
                                    round(math.pi / 2, 4)]
        out["instance_type"] = "rectangle2"
    return out
