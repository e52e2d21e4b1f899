"""Semantic segmentation: the decoder ops, the per-pixel loss, training against plain PyTorch,
the zoo's segmentation models through the operators, real data, and bad input.

The loss (DESIGN.md, docs/operators.md): per pixel softmax cross-entropy l_p, pixels whose
ground truth is in ignore_class_ids skipped, the rest weighted by the class weight w_y of
their class and by weight_image (1 where absent):

    L_sub = Σ_p w_{y_p}·ω_p·l_p / Σ_p w_{y_p}·ω_p        (over one sub-batch's pixels)
    L     = (1/m) Σ_sub L_sub + (weight_prior/2) Σ w²     (m = batch_size_multiplier)

Without weight_image this is exactly PyTorch's
`cross_entropy(weight=w, ignore_index=…, reduction='mean')`; test_loss_* check both forms.
"""
from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import assert_close
from test_ops import check_op, make_node, randn
from test_training_golden import BN_MOMENTUM, HPARAMS, LOSS_TOL, PARAM_TOL, _scalar
from torch_twin import TorchTwin, from_model, images_to_nchw

import halcdl as ha
from halcdl._native import core
from halcdl.workflow import evaluate_segmentation

IGNORE = 255


# =========================================================================================
# 1. the decoder ops against PyTorch (forward and backward, core.run_op)
DECONV_CASES = [
    dict(cin=4, out_channels=3, kernel=2, stride=2),
    dict(cin=3, out_channels=5, kernel=3, stride=2, pad=1, output_padding=1),
    dict(cin=6, out_channels=4, kernel=4, stride=2, pad=1, bias=False),
    dict(cin=2, out_channels=3, kernel=[3, 2], stride=[2, 1], pad=[1, 0]),
    dict(cin=3, out_channels=2, kernel=3, stride=1, pad=2, dilation=2),
    dict(cin=5, out_channels=5, kernel=3, stride=3),
]


@pytest.mark.parametrize("case", DECONV_CASES, ids=lambda c: str(c))
def test_deconv(case):
    case = dict(case)
    cin = case.pop("cin")
    rng = np.random.default_rng(7)
    kh, kw = case["kernel"] if isinstance(case["kernel"], list) else (case["kernel"],) * 2
    o = case["out_channels"]
    params = {"weight": randn(rng, cin, o, kh, kw, scale=1.0 / np.sqrt(cin * kh * kw))}
    if case.get("bias", True):
        params["bias"] = randn(rng, o, scale=0.5)
    x = randn(rng, 2, cin, 5, 6)

    def pair(v):
        return tuple(v) if isinstance(v, list) else (v, v)

    def fn(t_in, t_par):
        return F.conv_transpose2d(t_in[0], t_par["weight"], t_par.get("bias"),
                                  stride=pair(case.get("stride", 1)),
                                  padding=pair(case.get("pad", 0)),
                                  output_padding=pair(case.get("output_padding", 0)),
                                  dilation=pair(case.get("dilation", 1)))

    check_op(make_node("deconv", **case), [x], params, fn, rng=rng)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("scale,shape", [(2, (2, 3, 4, 5)), (3, (1, 2, 3, 3)),
                                         (4, (2, 1, 5, 2)), (2, (1, 4, 1, 1))])
def test_upsample(mode, scale, shape):
    rng = np.random.default_rng(scale)
    x = randn(rng, *shape)

    def fn(t_in, _):
        if mode == "nearest":
            return F.interpolate(t_in[0], scale_factor=scale, mode="nearest")
        return F.interpolate(t_in[0], scale_factor=scale, mode="bilinear", align_corners=False)

    check_op(make_node(f"upsample_{mode}", scale=scale), [x], {}, fn, rng=rng)


def test_upsample_default_scale_is_2():
    x = randn(np.random.default_rng(0), 1, 2, 3, 4)
    for op in ("upsample_nearest", "upsample_bilinear"):
        out, _, _ = core.run_op(make_node(op), [x], {}, None, False)
        assert np.asarray(out).shape == (1, 2, 6, 8), op


# =========================================================================================
# 2. the per-pixel loss and its gradient against PyTorch
#    A network of one 1×1 convolution: logits z = W x + b per pixel.  One SGD step with
#    learning rate 1, momentum 0 and weight_prior 0 moves the parameters by −∇L, so the
#    gradient is read back as (before − after); the loss is the step's loss_cls.
LH, LW, LC = 5, 7, 3                  # non-square: a transposed H/W would show
LOSS_IDS = [2, 5, 7]


def _linear_model(class_weights, ignore_ids):
    spec = [{"name": "data", "op": "input", "inputs": [], "channels": LC},
            {"name": "cls", "op": "conv", "inputs": ["data"], "out_channels": len(LOSS_IDS),
             "kernel": 1, "bias": True}]
    m = core.Model(spec, 5)
    m.set_class_ids(LOSS_IDS)
    m.set_ignore_ids(ignore_ids)
    m.set_hparams(dict(solver="sgd", learning_rate=1.0, momentum=0.0, weight_prior=0.0,
                       class_weights=class_weights))
    rng = np.random.default_rng(11)     # logits of a few units: a non-trivial softmax
    m.set_param("cls.weight", rng.normal(0, 0.05, (len(LOSS_IDS), LC, 1, 1)).astype(np.float32))
    m.set_param("cls.bias", rng.normal(0, 0.5, len(LOSS_IDS)).astype(np.float32))
    return m


def _loss_samples(n, rng, ignore_ids, weight_image):
    """weight_image: 'all', 'some' (every other sample) or None."""
    ids = LOSS_IDS + list(ignore_ids)
    out = []
    for i in range(n):
        s = {"image": rng.uniform(-20, 20, (LH, LW, LC)).astype(np.float32),
             "segmentation_image": rng.choice(ids, size=(LH, LW)).astype(np.uint8)}
        if weight_image == "all" or (weight_image == "some" and i % 2 == 0):
            w = rng.uniform(0, 3, (LH, LW)).astype(np.float32)
            w[0, :2] = 0.0                                     # zero weights are allowed
            s["weight_image"] = w if i % 3 else w[:, :, None]  # (H, W) or (H, W, 1)
        out.append(s)
    return out


def _reference_loss(W, b, samples, class_weights, ignore_ids, batch, mult):
    """(loss, dW, db) in float64 from the formula in the module docstring."""
    W = torch.tensor(W, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    cw = torch.tensor(class_weights or [1.0] * len(LOSS_IDS), dtype=torch.float64)
    total = 0.0
    for k in range(mult):
        sub = samples[k * batch:(k + 1) * batch]
        z = F.conv2d(images_to_nchw(sub, torch.float64), W, b)
        seg = np.stack([np.asarray(s["segmentation_image"]).reshape(LH, LW) for s in sub])
        y = torch.tensor(np.vectorize(lambda v: LOSS_IDS.index(v) if v in LOSS_IDS else -100)
                         (seg.astype(np.int64)))
        pw = torch.tensor(np.stack([np.asarray(s["weight_image"], np.float64).reshape(LH, LW)
                                    if "weight_image" in s else np.ones((LH, LW))
                                    for s in sub]))
        wl = F.cross_entropy(z, y, weight=cw, ignore_index=-100, reduction="none")  # w_y·l
        wy = torch.where(y >= 0, cw[y.clamp(min=0)], torch.zeros((), dtype=torch.float64))
        denom = (wy * pw).sum()
        total = total + ((wl * pw).sum() / denom if denom > 0 else 0.0 * wl.sum()) / mult
    dW, db = torch.autograd.grad(total, [W, b])
    return float(total.detach()), dW.numpy(), db.numpy()


def _case(case_id, *args, marks=()):
    return pytest.param(case_id, *args, marks=marks, id=case_id)


LOSS_CASES = [
    # (id, class_weights, ignore ids, weight_image, batch, multiplier)
    _case("weights+ignore+weight_image", [1.0, 2.5, 0.5], [9, IGNORE], "all", 3, 1),
    # samples without weight_image in a batch with some: their pixels weigh 1
    _case("some_weight_images+multiplier", [0.3, 1.0, 4.0], [IGNORE], "some", 2, 2),
    _case("all_weight_images+multiplier", [0.3, 1.0, 4.0], [IGNORE], "all", 2, 2),
    _case("zero_class_weight", [1.0, 0.0, 2.0], [], "all", 2, 1),
    _case("uniform_no_ignore", [], [], None, 2, 1),
    _case("ignore_only", [], [9], None, 4, 1),
]


@pytest.mark.parametrize("case_id,cw,ignore,wimg,batch,mult", LOSS_CASES)
def test_loss_and_gradient_match_torch(case_id, cw, ignore, wimg, batch, mult):
    m = _linear_model(cw, ignore)
    samples = _loss_samples(batch * mult, np.random.default_rng(len(case_id)), ignore, wimg)
    W0, b0 = np.array(m.get_param("cls.weight")), np.array(m.get_param("cls.bias"))
    r = m.train_step(samples, batch, mult, LH, LW, LC)
    dW = W0 - np.asarray(m.get_param("cls.weight"))
    db = b0 - np.asarray(m.get_param("cls.bias"))
    ref_loss, ref_dW, ref_db = _reference_loss(W0, b0, samples, cw, ignore, batch, mult)
    print(f"\n{case_id}: loss halcdl {_scalar(r['loss_cls']):.6f} torch {ref_loss:.6f}")
    assert_close([_scalar(r["loss_cls"])], [ref_loss], what=f"{case_id}: loss", **LOSS_TOL)
    assert_close([_scalar(r["total_loss"])], [ref_loss], what=f"{case_id}: total_loss",
                 **LOSS_TOL)
    assert_close(dW, ref_dW, atol=2e-6, rtol=1e-4, what=f"{case_id}: dL/dW")
    assert_close(db, ref_db, atol=2e-6, rtol=1e-4, what=f"{case_id}: dL/db")


def test_loss_without_weight_image_is_torch_cross_entropy():
    """The weighted mean without weight_image is PyTorch's own weighted mean."""
    cw = [0.5, 2.0, 1.5]
    m = _linear_model(cw, [IGNORE])
    samples = _loss_samples(3, np.random.default_rng(3), [IGNORE], None)
    W0, b0 = np.array(m.get_param("cls.weight")), np.array(m.get_param("cls.bias"))
    loss = _scalar(m.train_step(samples, 3, 1, LH, LW, LC)["loss_cls"])
    z = F.conv2d(images_to_nchw(samples, torch.float64), torch.tensor(W0, dtype=torch.float64),
                 torch.tensor(b0, dtype=torch.float64))
    seg = np.stack([s["segmentation_image"] for s in samples]).astype(np.int64)
    y = torch.tensor(np.vectorize(lambda v: LOSS_IDS.index(v) if v in LOSS_IDS else -100)(seg))
    ref = F.cross_entropy(z, y, weight=torch.tensor(cw, dtype=torch.float64), ignore_index=-100)
    assert_close([loss], [float(ref)], what="loss vs F.cross_entropy", **LOSS_TOL)


@pytest.mark.parametrize("how", ["all_ignored", "all_weights_zero"])
def test_no_counted_pixel_gives_zero_loss_and_no_update(how):
    m = _linear_model([], [IGNORE])
    samples = _loss_samples(2, np.random.default_rng(0), [IGNORE], "all")
    for s in samples:
        if how == "all_ignored":
            s["segmentation_image"] = np.full((LH, LW), IGNORE, np.uint8)
        else:
            s["weight_image"] = np.zeros((LH, LW), np.float32)
    before = {n: np.array(m.get_param(n)) for n in m.param_names()}
    r = m.train_step(samples, 2, 1, LH, LW, LC)
    assert _scalar(r["loss_cls"]) == 0.0
    for n, v in before.items():
        assert np.array_equal(np.asarray(m.get_param(n)), v), n


# =========================================================================================
# 3. a 5-step train sequence of a small segmentation network against plain PyTorch
SH, SW, SC = 16, 12, 3
S_IDS = [2, 5, 7]
S_WEIGHTS = [1.0, 2.5, 0.5]
S_BATCH, S_MULT, S_STEPS = 2, 2, 5

SEG_SPEC = [
    {"name": "data", "op": "input", "inputs": [], "channels": SC},
    {"name": "c1", "op": "conv", "inputs": ["data"], "out_channels": 8, "kernel": 3, "pad": 1,
     "bias": False},
    {"name": "bn1", "op": "bn", "inputs": ["c1"]},
    {"name": "r1", "op": "relu", "inputs": ["bn1"]},                        # 16×12 skip
    {"name": "p1", "op": "maxpool", "inputs": ["r1"], "kernel": 2},          # 8×6
    {"name": "c2", "op": "conv", "inputs": ["p1"], "out_channels": 12, "kernel": 3, "pad": 1},
    {"name": "r2", "op": "relu", "inputs": ["c2"]},                          # 8×6 skip
    {"name": "p2", "op": "avgpool", "inputs": ["r2"], "kernel": 2},          # 4×3
    {"name": "c3", "op": "conv", "inputs": ["p2"], "out_channels": 12, "kernel": 3, "pad": 1,
     "bias": False},
    {"name": "bn3", "op": "bn", "inputs": ["c3"]},
    {"name": "r3", "op": "relu", "inputs": ["bn3"]},
    {"name": "u3", "op": "upsample_bilinear", "inputs": ["r3"], "scale": 2},  # 8×6
    {"name": "cat2", "op": "concat", "inputs": ["u3", "r2"]},                # 24 channels
    {"name": "d2", "op": "deconv", "inputs": ["cat2"], "out_channels": 8, "kernel": 2,
     "stride": 2},                                                           # 16×12
    {"name": "cat1", "op": "concat", "inputs": ["d2", "r1"]},                # 16 channels
    {"name": "c4", "op": "conv", "inputs": ["cat1"], "out_channels": 8, "kernel": 3, "pad": 1},
    {"name": "r4", "op": "relu", "inputs": ["c4"]},
    {"name": "p4", "op": "maxpool", "inputs": ["r4"], "kernel": 2},
    {"name": "u4", "op": "upsample_nearest", "inputs": ["p4"], "scale": 2},
    {"name": "res", "op": "add", "inputs": ["u4", "r4"]},
    {"name": "cls", "op": "conv", "inputs": ["res"], "out_channels": len(S_IDS), "kernel": 1},
]


def seg_batches(seed, n_steps, n, h, w, c, ids, ignore=(IGNORE,), weights="some",
                lo=-127.0, hi=128.0):
    """n_steps batches of n segmentation samples: random images, blocky label images (ids
    and ignored ids), a weight_image on every other sample ('some'), on all ('all') or on
    none (None)."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(n_steps):
        batch = []
        for i in range(n):
            coarse = rng.choice(list(ids) + list(ignore), size=(h // 4 + 1, w // 4 + 1),
                                p=None if not ignore else
                                [0.9 / len(ids)] * len(ids) + [0.1 / len(ignore)] * len(ignore))
            seg = np.kron(coarse, np.ones((4, 4), np.int64))[:h, :w]
            s = {"image": rng.uniform(lo, hi, (h, w, c)).astype(np.float32),
                 "segmentation_image": seg}
            if weights == "all" or (weights == "some" and i % 2 == 0):
                s["weight_image"] = rng.uniform(0.0, 2.0, (h, w)).astype(np.float32)
            batch.append(s)
        batches.append(batch)
    return batches


def seg_reference_run(twin, batches, ids, class_weights, batch, mult, hp):
    """Plain-PyTorch replay (float64) of DESIGN.md's mathematics for segmentation: the
    loss of the module docstring, the regulariser, multiplier averaging, HALCON's SGD or
    Adam.  Returns (total losses, per-pixel losses, final {name: array})."""
    twin.train()
    twin.bn_momentum = BN_MOMENTUM
    params = [p for _, _, p in twin.named_trainable()]
    is_weight = [role == "weight" for _, role, _ in twin.named_trainable()]
    cw = torch.tensor(class_weights or [1.0] * len(ids), dtype=torch.float64)
    lut = {v: i for i, v in enumerate(ids)}
    wp, lr = hp["weight_prior"], hp["learning_rate"]
    s1 = [torch.zeros_like(p) for p in params]
    s2 = [torch.zeros_like(p) for p in params]
    totals, pix = [], []
    for t, samples in enumerate(batches, start=1):
        grad = [torch.zeros_like(p) for p in params]
        tot = px = 0.0
        for k in range(mult):
            sub = samples[k * batch:(k + 1) * batch]
            z = twin(images_to_nchw(sub, torch.float64))
            y = torch.tensor(np.vectorize(lambda v: lut.get(int(v), -1))(
                np.stack([s["segmentation_image"] for s in sub])))
            pw = torch.tensor(np.stack([s["weight_image"].astype(np.float64)
                                        if "weight_image" in s else np.ones(y.shape[1:])
                                        for s in sub]))
            keep = y >= 0
            nll = -torch.log_softmax(z, dim=1).gather(1, y.clamp(min=0)[:, None])[:, 0]
            w = torch.where(keep, cw[y.clamp(min=0)] * pw, torch.zeros((), dtype=torch.float64))
            ce = (w * nll).sum() / w.sum() if float(w.sum()) > 0 else 0.0 * nll.sum()
            reg = sum((p * p).sum() for p, is_w in zip(params, is_weight) if is_w)
            loss = ce + 0.5 * wp * reg
            for acc, g in zip(grad, torch.autograd.grad(loss, params)):
                acc += g / mult
            tot += loss.item() / mult
            px += ce.item() / mult
        totals.append(tot)
        pix.append(px)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grad)):
                if hp["solver"] == "sgd":
                    s1[i] = hp["momentum"] * s1[i] - lr * g
                    p += s1[i]
                else:
                    b1, b2, eps = hp["adam_beta1"], hp["adam_beta2"], hp["adam_epsilon"]
                    s1[i] = b1 * s1[i] + (1 - b1) * g
                    s2[i] = b2 * s2[i] + (1 - b2) * g * g
                    p -= lr * (s1[i] / (1 - b1 ** t)) / ((s2[i] / (1 - b2 ** t)).sqrt() + eps)
    return totals, pix, twin.state_numpy()


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_golden_small_segmentation_net(solver):
    hp = HPARAMS[solver]
    model = core.Model(SEG_SPEC, 4321)
    model.set_class_ids(S_IDS)
    model.set_ignore_ids([IGNORE])
    model.set_hparams(dict(hp, class_weights=S_WEIGHTS, batchnorm_momentum=BN_MOMENTUM))
    assert model.is_segmentation(SH, SW)
    twin = TorchTwin(SEG_SPEC, image_hw=(SH, SW), dtype=torch.float64)
    twin.load_from_halcdl(model)
    batches = seg_batches(99, S_STEPS, S_BATCH * S_MULT, SH, SW, SC, S_IDS, weights="all")
    got_total, got_pix = [], []
    for b in batches:
        r = model.train_step(b, S_BATCH, S_MULT, SH, SW, SC)
        got_total.append(_scalar(r["total_loss"]))
        got_pix.append(_scalar(r["loss_cls"]))
    ref_total, ref_pix, ref_state = seg_reference_run(twin, batches, S_IDS, S_WEIGHTS,
                                                      S_BATCH, S_MULT, hp)
    print(f"\n{solver}: total_loss halcdl {np.round(got_total, 6).tolist()}\n"
          f"{solver}: total_loss torch  {np.round(ref_total, 6).tolist()}")
    assert_close(got_pix, ref_pix, what=f"{solver}: per-pixel loss per step", **LOSS_TOL)
    assert_close(got_total, ref_total, what=f"{solver}: total_loss per step", **LOSS_TOL)
    assert got_total[-1] != got_total[0]
    for name in model.param_names():
        assert_close(model.get_param(name), ref_state[name],
                     what=f"{solver}: {name} after {S_STEPS} steps", **PARAM_TOL)


def test_infer_segmentation_matches_twin():
    """After training, infer_segmentation = argmax / max of the twin's softmax (eval mode)."""
    model = core.Model(SEG_SPEC, 17)
    model.set_class_ids(S_IDS)
    model.set_ignore_ids([IGNORE])
    model.set_hparams(dict(HPARAMS["sgd"], class_weights=S_WEIGHTS))
    for b in seg_batches(1, 3, 4, SH, SW, SC, S_IDS, weights=None):
        model.train_step(b, 4, 1, SH, SW, SC)
    samples = seg_batches(2, 1, 5, SH, SW, SC, S_IDS)[0]
    index, conf = model.infer_segmentation(samples, 2, SH, SW, SC)
    twin = TorchTwin(SEG_SPEC, image_hw=(SH, SW), dtype=torch.float64)
    twin.load_from_halcdl(model)
    twin.eval()
    with torch.no_grad():
        prob = torch.softmax(twin(images_to_nchw(samples, torch.float64)), dim=1)
    ref_conf, ref_index = prob.max(dim=1)
    assert np.asarray(index).shape == (5, SH, SW)
    assert_close(np.asarray(conf), ref_conf, atol=1e-5, rtol=1e-4, what="confidence")
    top2 = torch.topk(prob, 2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]).numpy() > 1e-4     # argmax well defined
    assert np.array_equal(np.asarray(index)[clear], ref_index.numpy()[clear])


# =========================================================================================
# 4. the zoo's segmentation models through the operators
SEG_FILES = ["pretrained_dl_segmentation_compact.hdl", "pretrained_dl_segmentation_enhanced.hdl"]


def seg_model(file_name, size, channels, class_ids, ignore=(IGNORE,), batch=2, mult=1,
              seed=3, **params):
    ha.set_system("seed_rand", seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ha.NotPretrainedWarning)
        m = ha.read_dl_model(file_name)
    h, w = (size, size) if isinstance(size, int) else size
    for name, value in [("image_dimensions", [w, h, channels]), ("class_ids", class_ids),
                        ("ignore_class_ids", list(ignore)), ("batch_size", batch),
                        ("batch_size_multiplier", mult), *params.items()]:
        ha.set_dl_model_param(m, name, value)
    return m


@pytest.mark.parametrize("file_name,factor,default_size", [(SEG_FILES[0], 8, 256),
                                                           (SEG_FILES[1], 16, 256)])
def test_zoo_segmentation_parameters(file_name, factor, default_size):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ha.NotPretrainedWarning)
        m = ha.read_dl_model(file_name)
        m2 = ha.read_dl_model(file_name.replace(".hdl", ""))      # .hdl optional
    assert ha.get_dl_model_param_s(m, "type") == "segmentation"
    assert ha.get_dl_model_param_s(m2, "type") == "segmentation"
    assert ha.get_dl_model_param(m, "image_dimensions") == [default_size, default_size, 3]
    assert ha.get_dl_model_param(m, "image_range_min") == [-127.0]
    assert ha.get_dl_model_param(m, "image_range_max") == [128.0]
    assert ha.get_dl_model_param(m, "class_ids") == [0, 1]
    assert ha.get_dl_model_param(m, "ignore_class_ids") == []
    assert ha.get_dl_model_param_s(m, "meta_data")["pretrained"] == "false"
    # the network: skip connections (concat) and a decoder, output at the input resolution
    ops = [n["op"] for n in m.spec]
    assert "concat" in ops and ("deconv" in ops or "upsample_bilinear" in ops)
    assert m.spec[-1]["op"] == "conv" and m.spec[-1]["kernel"] == 1
    # fully convolutional: any multiple of the downsampling factor
    for w, h in [(factor, factor), (3 * factor, 5 * factor), (default_size + factor, factor)]:
        ha.set_dl_model_param(m, "image_dimensions", [w, h, 1])
        assert ha.get_dl_model_param(m, "image_dimensions") == [w, h, 1]
        assert m.core.output_shape(h, w)[2:] == [h, w]
    for name, value in [("image_width", factor + 1), ("image_height", factor * 3 - 2),
                        ("image_dimensions", [factor // 2, factor, 1]),
                        ("image_width", factor // 2)]:
        with pytest.raises(ha.HOperatorError) as info:
            ha.set_dl_model_param(m, name, value)
        assert info.value.error_code == 7722, info.value
        assert f"multiples of {factor}" in str(info.value), str(info.value)
    # class ids, names, weights, ignore ids
    ha.set_dl_model_param(m, "class_ids", [3, 1, 8])
    assert m.core.output_shape(factor, factor)[1] == 3
    assert ha.get_dl_model_param(m, "class_names") == ["3", "1", "8"]
    ha.set_dl_model_param(m, "class_names", ["a", "b", "c"])
    ha.set_dl_model_param(m, "class_weights", [1.0, 2.0, 0.5])
    assert ha.get_dl_model_param(m, "class_weights") == [1.0, 2.0, 0.5]
    ha.set_dl_model_param(m, "ignore_class_ids", [255, 0])
    assert ha.get_dl_model_param(m, "ignore_class_ids") == [255, 0]
    ha.set_dl_model_param(m, "ignore_class_ids", 7)                  # a single value
    assert ha.get_dl_model_param(m, "ignore_class_ids") == [7]
    ha.set_dl_model_param(m, "ignore_class_ids", [])
    assert ha.get_dl_model_param(m, "ignore_class_ids") == []


def test_ignore_class_ids_is_for_segmentation_models_only():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ha.NotPretrainedWarning)
        c = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    assert ha.get_dl_model_param_s(c, "type") == "classification"
    for call in (lambda: ha.get_dl_model_param(c, "ignore_class_ids"),
                 lambda: ha.set_dl_model_param(c, "ignore_class_ids", [255])):
        with pytest.raises(ha.HOperatorError) as info:
            call()
        assert info.value.error_code == 7911


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_golden_operators_segmentation_compact(solver):
    """The zoo's compact segmentation network through the public operators, against its
    PyTorch twin replaying the same 5 steps (class weights, ignored ids, weight_image,
    multiplier 2)."""
    hp = HPARAMS[solver]
    ids, size, batch, mult = [0, 4, 9], 16, 2, 2
    m = seg_model(SEG_FILES[0], size, 3, ids, batch=batch, mult=mult,
                  class_weights=[1.0, 2.0, 0.5], solver_type=solver,
                  learning_rate=hp["learning_rate"], momentum=hp["momentum"],
                  weight_prior=hp["weight_prior"])
    if solver == "adam":
        for name in ("adam_beta1", "adam_beta2", "adam_epsilon"):
            ha.set_dl_model_param(m, name, hp[name])
    twin = from_model(m, dtype=torch.float64, bn_momentum=BN_MOMENTUM)
    batches = seg_batches(5, 5, batch * mult, size, size, 3, ids)
    got = [_scalar(ha.train_dl_model_batch(m, b)["total_loss"]) for b in batches]
    ref, _, ref_state = seg_reference_run(twin, batches, ids, [1.0, 2.0, 0.5], batch, mult, hp)
    print(f"\ncompact segmentation {solver}: halcdl {np.round(got, 6).tolist()}\n"
          f"compact segmentation {solver}: torch  {np.round(ref, 6).tolist()}")
    assert_close(got, ref, what=f"{solver}: total_loss per step", **LOSS_TOL)
    for name in m.core.param_names():
        assert_close(m.core.get_param(name), ref_state[name], what=f"{solver}: {name}",
                     **PARAM_TOL)


@pytest.mark.parametrize("file_name", SEG_FILES)
def test_apply_any_number_of_samples(file_name):
    """apply_dl_model: 1, batch_size, batch_size + 1 and 2·batch_size + 3 samples; each
    result the same as for the sample alone, equal to the twin (eval mode)."""
    ids, size, bs = [1, 3], 16, 3
    m = seg_model(file_name, (size, 2 * size), 1, ids, batch=bs)
    ha.train_dl_model_batch(m, seg_batches(0, 1, bs, size, 2 * size, 1, ids)[0])
    pool = seg_batches(1, 1, 2 * bs + 3, size, 2 * size, 1, ids)[0]
    samples = [{"image": s["image"]} for s in pool]
    alone = [ha.apply_dl_model(m, [s], [])[0] for s in samples]
    for n in (1, bs, bs + 1, 2 * bs + 3):
        res = ha.apply_dl_model(m, samples[:n], [])
        assert len(res) == n
        for i, r in enumerate(res):
            assert sorted(r) == ["segmentation_confidence", "segmentation_image"]
            assert r["segmentation_image"].shape == (size, 2 * size)
            assert r["segmentation_confidence"].shape == (size, 2 * size)
            assert r["segmentation_image"].dtype == np.int32
            assert r["segmentation_confidence"].dtype == np.float32
            assert set(np.unique(r["segmentation_image"])) <= set(ids)
            assert np.all(r["segmentation_confidence"] >= 1.0 / len(ids) - 1e-6)
            assert np.all(r["segmentation_confidence"] <= 1.0 + 1e-6)
            assert np.array_equal(r["segmentation_image"], alone[i]["segmentation_image"])
            assert_close(r["segmentation_confidence"], alone[i]["segmentation_confidence"],
                         atol=1e-6, rtol=1e-5, what=f"n={n} sample {i} vs alone")
    twin = from_model(m, dtype=torch.float64)
    twin.eval()
    with torch.no_grad():
        prob = torch.softmax(twin(images_to_nchw(samples, torch.float64)), dim=1)
    conf = np.stack([r["segmentation_confidence"] for r in alone])
    assert_close(conf, prob.max(dim=1).values, atol=1e-5, rtol=1e-3, what="confidence vs twin")
    top2 = torch.topk(prob, 2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]).numpy() > 1e-4
    ref_ids = np.asarray(ids)[prob.argmax(dim=1).numpy()]
    got_ids = np.stack([r["segmentation_image"] for r in alone])
    assert np.array_equal(got_ids[clear], ref_ids[clear])
    # outputs: a subset, and a single sample as a dict
    one = ha.apply_dl_model(m, samples[0], ["segmentation_confidence"])
    assert len(one) == 1 and list(one[0]) == ["segmentation_confidence"]
    assert list(ha.apply_dl_model_s(m, samples[:1], "segmentation_image")) == \
        ["segmentation_image"]


def test_enhanced_first_loss_matches_twin():
    ids = [0, 2]
    m = seg_model(SEG_FILES[1], 32, 3, ids, batch=2, weight_prior=0.0)
    twin = from_model(m, dtype=torch.float64)
    batch = seg_batches(4, 1, 2, 32, 32, 3, ids)[0]
    loss = _scalar(ha.train_dl_model_batch(m, batch)["loss_cls"])
    ref, _, _ = seg_reference_run(twin, [batch], ids, [], 2, 1,
                                  dict(solver="sgd", learning_rate=0.0, momentum=0.0,
                                       weight_prior=0.0))
    assert_close([loss], ref, what="enhanced: first loss", atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not hasattr(ha, "write_dl_model"), reason="no model files in this build")
def test_segmentation_model_file_round_trip(tmp_path):
    ids = [1, 2]
    m = seg_model(SEG_FILES[0], 16, 1, ids, batch=2, class_weights=[1.0, 3.0])
    batches = seg_batches(8, 2, 2, 16, 16, 1, ids)
    ha.train_dl_model_batch(m, batches[0])
    path = str(tmp_path / "seg.hdl")
    ha.write_dl_model(m, path)
    r = ha.read_dl_model(path)
    for name in ("type", "class_ids", "ignore_class_ids", "class_weights", "image_dimensions"):
        assert ha.get_dl_model_param(r, name) == ha.get_dl_model_param(m, name), name
    la = ha.train_dl_model_batch(m, batches[1])["total_loss"]
    lb = ha.train_dl_model_batch(r, batches[1])["total_loss"]
    assert la == lb
    a = ha.apply_dl_model(m, batches[0], [])
    b = ha.apply_dl_model(r, batches[0], [])
    for x, y in zip(a, b):
        assert np.array_equal(x["segmentation_image"], y["segmentation_image"])
        assert np.array_equal(x["segmentation_confidence"], y["segmentation_confidence"])


# =========================================================================================
# 5. the evaluation helper
def test_evaluate_segmentation_by_hand():
    gt = [np.array([[0, 0, 1], [1, 2, 255]]), np.array([[2, 2, 0]])]
    pred = [np.array([[0, 1, 1], [1, 1, 0]]), np.array([[2, 0, 0]])]
    r = evaluate_segmentation([{"segmentation_image": p} for p in pred],
                              [{"segmentation_image": g, "image": None} for g in gt],
                              [0, 1, 2], [255])
    # counted pixels (255 excluded): gt 0: (0→0, 0→1, 0→0); gt 1: (1→1, 1→1); gt 2: (2→1,
    # 2→2, 2→0)
    cm = np.array([[2, 1, 0], [0, 2, 0], [1, 1, 1]])
    assert np.array_equal(r["confusion_matrix"], cm)
    assert r["pixel_accuracy"] == pytest.approx(5 / 8)
    iou = [2 / (3 + 3 - 2), 2 / (2 + 4 - 2), 1 / (3 + 1 - 1)]
    assert r["class_iou"] == pytest.approx(iou)
    assert r["mean_iou"] == pytest.approx(np.mean(iou))
    assert r["class_pixel_accuracy"] == pytest.approx([2 / 3, 1.0, 1 / 3])
    assert r["mean_accuracy"] == pytest.approx(np.mean([2 / 3, 1.0, 1 / 3]))
    assert r["frequency_weighted_iou"] == pytest.approx(3 / 8 * iou[0] + 2 / 8 * iou[1]
                                                        + 3 / 8 * iou[2])
    # a class absent from both: NaN, left out of the mean
    r2 = evaluate_segmentation(pred[:1], [np.where(gt[0] == 2, 1, gt[0])], [0, 1, 2, 5], [255])
    assert np.isnan(r2["class_iou"][3]) and not np.isnan(r2["mean_iou"])
    assert r2["mean_iou"] == pytest.approx(np.nanmean(r2["class_iou"]))


def test_evaluate_segmentation_errors():
    with pytest.raises(ha.HOperatorError) as info:      # 7 is neither class nor ignored
        evaluate_segmentation([np.zeros((2, 2))], [np.full((2, 2), 7)], [0, 1])
    assert info.value.error_code == 7714
    with pytest.raises(ha.HOperatorError) as info:
        evaluate_segmentation([np.zeros((2, 2))], [np.zeros((2, 3))], [0, 1])
    assert info.value.error_code == 7735
    with pytest.raises(ha.HOperatorError) as info:
        evaluate_segmentation([np.zeros((2, 2))], [np.zeros((2, 2))], [0, 1], [1])
    assert info.value.error_code == 7797


# =========================================================================================
# 6. real data: scikit-image's `coins`
TILE = 48                 # a multiple of compact's downsampling factor 8
COINS_STEPS = 80
COINS_TARGET = 0.85


def coins_tiles():
    """The 303×384 `coins` photograph and its labels, cut into 48×48 tiles (6 × 8 = 48
    tiles); a fixed random quarter (12 tiles) is held out for testing.

    Labels (1 = coin, 0 = background), a classical pipeline: the illumination varies
    across the photograph, so the background is estimated by a grey-level opening with a
    disk of radius 30 (larger than a coin's radius) and subtracted (white top-hat);
    Otsu's threshold on the top-hat separates coins from background; a closing with a
    disk of radius 2, hole filling and an opening with a disk of radius 2 clean the masks;
    objects of at most 150 px are removed.  Images are mapped to the model's range
    −127 … 128 by subtracting 127.
    """
    from scipy import ndimage as ndi
    from skimage import data, filters, morphology

    im = data.coins()
    tophat = im.astype(np.float64) - morphology.opening(im, morphology.disk(30))
    fg = tophat > filters.threshold_otsu(tophat)
    fg = morphology.closing(fg, morphology.disk(2))
    fg = ndi.binary_fill_holes(fg)
    fg = morphology.opening(fg, morphology.disk(2))
    lab, n = ndi.label(fg)
    sizes = np.bincount(lab.ravel())
    fg = (sizes > 150)[lab] & fg                     # remove objects of ≤ 150 px
    label = fg.astype(np.uint8)
    image = im.astype(np.float32) - 127.0
    tiles = [{"image": image[r:r + TILE, c:c + TILE],
              "segmentation_image": label[r:r + TILE, c:c + TILE]}
             for r in range(0, im.shape[0] - TILE + 1, TILE)
             for c in range(0, im.shape[1] - TILE + 1, TILE)]
    order = np.random.default_rng(0).permutation(len(tiles))
    n_test = len(tiles) // 4
    return [tiles[i] for i in order[n_test:]], [tiles[i] for i in order[:n_test]]


def _augment(sample, k):
    """One of the 8 flips/rotations (labels follow the image)."""
    im, seg = sample["image"], sample["segmentation_image"]
    if k & 4:
        im, seg = im.T, seg.T
    return {"image": np.ascontiguousarray(np.rot90(im, k & 3)),
            "segmentation_image": np.ascontiguousarray(np.rot90(seg, k & 3))}


@pytest.mark.slow
def test_compact_segments_coins():
    train, test = coins_tiles()
    assert len(train) == 36 and len(test) == 12
    fg = np.mean([s["segmentation_image"].mean() for s in train + test])
    assert 0.2 < fg < 0.5, f"label pipeline broken: {fg:.2f} of the pixels are coins"
    bs = 8
    m = seg_model(SEG_FILES[0], TILE, 1, [0, 1], ignore=(), batch=bs, seed=42,
                  solver_type="adam", learning_rate=1e-3, weight_prior=1e-4)
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    losses = []
    for _ in range(COINS_STEPS):
        batch = [_augment(train[i], int(rng.integers(8)))
                 for i in rng.integers(0, len(train), bs)]
        losses.append(_scalar(ha.train_dl_model_batch(m, batch)["total_loss"]))
    results = ha.apply_dl_model(m, [{"image": s["image"]} for s in test], [])
    elapsed = time.perf_counter() - t0
    r = evaluate_segmentation(results, test, m)
    print(f"\ncoins: held-out mean IoU {r['mean_iou']:.4f} (class IoU "
          f"{np.round(r['class_iou'], 4).tolist()}, pixel accuracy "
          f"{r['pixel_accuracy']:.4f}) after {COINS_STEPS} steps of {bs} tiles in "
          f"{elapsed:.1f} s ({ha.get_system_s('thread_num')} threads); loss "
          f"{np.mean(losses[:5]):.3f} -> {np.mean(losses[-5:]):.3f}")
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert r["mean_iou"] >= COINS_TARGET, f"mean IoU {r['mean_iou']:.4f} < {COINS_TARGET}"


# =========================================================================================
# 7. bad input: HOperatorError with HALCON's number, model unchanged
BAD_SEED, BAD_SIZE, BAD_C = 77, 16, 3
BAD_IDS = [0, 3, 5]
BAD_BATCH, BAD_MULT = 2, 2


def bad_fresh_model():
    return seg_model(SEG_FILES[0], BAD_SIZE, BAD_C, BAD_IDS, ignore=(IGNORE,), batch=BAD_BATCH,
                     mult=BAD_MULT, seed=BAD_SEED, learning_rate=0.01, momentum=0.9,
                     weight_prior=1e-4, class_weights=[1.0, 2.0, 0.5])


_B = seg_batches(21, 2, BAD_BATCH * BAD_MULT, BAD_SIZE, BAD_SIZE, BAD_C, BAD_IDS)
B1, B2 = _B
A = [{"image": s["image"]} for s in seg_batches(22, 1, 5, BAD_SIZE, BAD_SIZE, BAD_C,
                                                   BAD_IDS)[0]]
WATCHED = ["class_ids", "class_names", "class_weights", "ignore_class_ids", "image_dimensions",
           "batch_size", "learning_rate", "type"]


def bad_state(m):
    return {n: np.array(m.core.get_param(n), copy=True) for n in m.core.param_names()}


def bad_predictions(m):
    return [(r["segmentation_image"].copy(), r["segmentation_confidence"].copy())
            for r in ha.apply_dl_model(m, A, [])]


@pytest.fixture(scope="module")
def bad_reference():
    m = bad_fresh_model()
    ha.train_dl_model_batch(m, B1)
    after_b1 = bad_state(m)
    ha.train_dl_model_batch(m, B2)
    return after_b1, bad_state(m), bad_predictions(m)


def edit(i, **changes):
    """B2 with sample i changed (a value None removes the key)."""
    batch = [dict(s) for s in B2]
    for k, v in changes.items():
        if v is None:
            del batch[i][k]
        else:
            batch[i][k] = v
    return batch


def _seg(fn, i=1):
    return fn(np.array(B2[i]["segmentation_image"]))


def _with(arr, r, c, v):
    arr = np.array(arr, dtype=np.float32 if isinstance(v, float) else arr.dtype)
    arr[r, c] = v
    return arr


W_OK = np.ones((BAD_SIZE, BAD_SIZE), np.float32)
BAD_CASES = [
    ("train/segmentation_image_missing", lambda m: ha.train_dl_model_batch(
        m, edit(1, segmentation_image=None)), 7783),
    ("train/only_image_label_id", lambda m: ha.train_dl_model_batch(
        m, edit(3, segmentation_image=None, image_label_id=0)), 7783),
    ("train/segmentation_image_too_short", lambda m: ha.train_dl_model_batch(
        m, edit(1, segmentation_image=_seg(lambda a: a[:-1]))), 7735),
    ("train/segmentation_image_too_wide", lambda m: ha.train_dl_model_batch(
        m, edit(0, segmentation_image=_seg(lambda a: np.concatenate([a, a], 1), 0))), 7735),
    ("train/segmentation_image_2_channels", lambda m: ha.train_dl_model_batch(
        m, edit(1, segmentation_image=_seg(lambda a: np.stack([a, a], 2)))), 7735),
    ("train/segmentation_image_1d", lambda m: ha.train_dl_model_batch(
        m, edit(2, segmentation_image=_seg(lambda a: a.ravel(), 2))), 7735),
    ("train/id_not_a_class", lambda m: ha.train_dl_model_batch(
        m, edit(1, segmentation_image=_with(B2[1]["segmentation_image"], 3, 4, 4))), 7714),
    ("train/id_neither_class_nor_ignored", lambda m: ha.train_dl_model_batch(
        m, edit(3, segmentation_image=_with(B2[3]["segmentation_image"], 15, 15, 254))),
     7714),
    ("train/weight_image_wrong_size", lambda m: ha.train_dl_model_batch(
        m, edit(1, weight_image=W_OK[:, :-1])), 7736),
    ("train/weight_image_transposed", lambda m: ha.train_dl_model_batch(
        m, edit(0, weight_image=np.ones((BAD_SIZE, BAD_SIZE + 8), np.float32))), 7736),
    ("train/weight_image_negative", lambda m: ha.train_dl_model_batch(
        m, edit(2, weight_image=_with(B2[2]["weight_image"], 0, 0, -0.5))), 7736),
    ("train/weight_image_nan", lambda m: ha.train_dl_model_batch(
        m, edit(1, weight_image=_with(W_OK, 5, 5, float("nan")))), 7736),
    ("train/weight_image_inf", lambda m: ha.train_dl_model_batch(
        m, edit(3, weight_image=_with(W_OK, 5, 5, float("inf")))), 7736),
    ("train/too_few_samples", lambda m: ha.train_dl_model_batch(m, B2[:-1]), 7800),
    ("set/ignore_overlaps_class_id", lambda m: ha.set_dl_model_param(
        m, "ignore_class_ids", [IGNORE, 3]), 7797),
    ("set/class_ids_overlap_ignore_same_count", lambda m: ha.set_dl_model_param(
        m, "class_ids", [0, IGNORE, 5]), 7797),
    ("set/class_ids_overlap_ignore_new_count", lambda m: ha.set_dl_model_param(
        m, "class_ids", [0, IGNORE]), 7797),
    ("set/ignore_negative", lambda m: ha.set_dl_model_param(m, "ignore_class_ids", [-1]),
     7791),
    ("set/ignore_not_int", lambda m: ha.set_dl_model_param(m, "ignore_class_ids", ["x"]),
     7790),
    ("set/ignore_duplicate", lambda m: ha.set_dl_model_param(
        m, "ignore_class_ids", [IGNORE, IGNORE]), 7792),
    ("set/image_width_not_multiple", lambda m: ha.set_dl_model_param(m, "image_width", 20),
     7722),
    ("set/image_dimensions_not_multiple", lambda m: ha.set_dl_model_param(
        m, "image_dimensions", [24, 12, 1]), 7722),
    ("set/image_height_too_small", lambda m: ha.set_dl_model_param(m, "image_height", 4),
     7722),
    ("apply/missing_image", lambda m: ha.apply_dl_model(m, [A[0], {}], []), 7783),
    ("apply/image_wrong_size", lambda m: ha.apply_dl_model(
        m, [A[0], {"image": A[1]["image"][:8]}], []), 7735),
    ("apply/classification_output", lambda m: ha.apply_dl_model(
        m, A, ["classification_class_ids"]), 1303),
]


@pytest.mark.parametrize("case_id,call,code", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input(bad_reference, case_id, call, code):
    ref_after_b1, ref_final, ref_pred = bad_reference
    m = bad_fresh_model()
    ha.train_dl_model_batch(m, B1)
    params_before = {n: ha.get_dl_model_param(m, n) for n in WATCHED}
    with pytest.raises(ha.HOperatorError) as info:
        call(m)
    assert info.value.error_code == code, f"{case_id}: {info.value.error_code} ({info.value})"
    assert str(info.value)
    # unchanged: weights and statistics bit-identical, parameters equal ...
    got = bad_state(m)
    assert got.keys() == ref_after_b1.keys()
    for n in got:
        assert np.array_equal(got[n], ref_after_b1[n]), f"{case_id}: {n} changed"
    for n, v in params_before.items():
        assert ha.get_dl_model_param(m, n) == v, f"{case_id}: parameter {n} changed"
    # ... and it trains and predicts exactly like the model that never saw the bad call
    ha.train_dl_model_batch(m, B2)
    got = bad_state(m)
    for n in got:
        assert np.array_equal(got[n], ref_final[n]), f"{case_id}: {n} after the next step"
    for i, ((ids, conf), (rids, rconf)) in enumerate(zip(bad_predictions(m), ref_pred)):
        assert np.array_equal(ids, rids), f"{case_id}: sample {i}: segmentation_image"
        assert np.array_equal(conf, rconf), f"{case_id}: sample {i}: confidence"
