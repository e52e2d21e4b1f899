"""The engine's per-op timer and the inference residual fusion (docs/performance.md).

- The timer is off by default (nothing recorded), records per fused node type when on, for
  apply ("infer:") and for a train step ("train_fwd:", "train_bwd:"), and stops when off.
- Inference fuses conv → bn → add → relu into one convolution with sum + relu post-ops
  accumulating in place into the residual's buffer; HALCDL_NO_FUSE=sum (read when a plan is
  built) keeps the separate add. Both give the same confidences, and those equal the PyTorch
  twin's; the fused plan actually contains the fused node (seen through the timer's keys).
- Kept layers (introspection) stop the sum fusion only where they are involved: outputs and
  kept activations equal the unfused plan's, for chosen places in and around resnet18/50
  blocks and for random keep sets.
- Training passes gradients through adds in place (HALCDL_NO_FUSE=grad_share: copies):
  bit-identical.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import assert_close, make_samples
from torch_twin import from_model, images_to_nchw

import halcdl as ha
from halcdl import _native

CLASS_IDS = [0, 1, 2]


def _model(name="resnet18", size=32, batch=2):
    ha.set_system("seed_rand", 5)
    m = ha.read_dl_model(f"pretrained_dl_classifier_{name}.hdl")
    ha.set_dl_model_param(m, "image_dimensions", [size, size, 3])
    ha.set_dl_model_param(m, "class_ids", CLASS_IDS)
    ha.set_dl_model_param(m, "batch_size", batch)
    return m


def _timed(fn):
    core = _native.core
    core.reset_op_times()
    core.set_op_timer(True)
    try:
        fn()
    finally:
        core.set_op_timer(False)
    t = core.op_times()
    core.reset_op_times()
    return t


def _conf(res):
    return np.array([[dict(zip(r["classification_class_ids"], r["classification_confidences"]))[c]
                      for c in CLASS_IDS] for r in res])


def test_timer_off_by_default_and_on_records_per_op():
    core = _native.core
    assert core.op_timer() is False
    m = _model()
    samples = make_samples(2, 32, 32, 3, CLASS_IDS, np.random.default_rng(0))
    core.reset_op_times()
    ha.apply_dl_model(m, samples, [])
    assert core.op_times() == {}
    t = _timed(lambda: (ha.apply_dl_model(m, samples, []), ha.train_dl_model_batch(m, samples)))
    assert core.op_timer() is False
    phases = {k.split(":", 1)[0] for k in t}
    assert phases == {"infer", "train_fwd", "train_bwd", "train_step"}  # + check, update
    # resnet18: 20 convolutions; apply runs each once, folded with its bn (and relu / add)
    convs = sum(c for k, (s, c) in t.items() if k.startswith("infer:conv"))
    assert convs == 20
    assert sum(c for k, (s, c) in t.items() if k.startswith("train_fwd:conv")) == 20
    assert t["infer:conv+bn+add+relu"][1] == 8        # every residual add of the 8 blocks
    assert all(s >= 0 for s, _ in t.values())
    ha.apply_dl_model(m, samples, [])
    assert core.op_times() == {}


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_residual_fusion_matches_unfused_and_twin(name, monkeypatch):
    samples = make_samples(2, 32, 32, 3, CLASS_IDS, np.random.default_rng(1))
    fused = _model(name)
    t = _timed(lambda: ha.apply_dl_model(fused, samples, []))
    assert any("+add" in k for k in t)
    got = _conf(ha.apply_dl_model(fused, samples, []))
    monkeypatch.setenv("HALCDL_NO_FUSE", "sum")
    plain = _model(name)
    t = _timed(lambda: ha.apply_dl_model(plain, samples, []))
    assert not any("+add" in k for k in t) and "infer:add+relu" in t  # add → relu still fused
    ref = _conf(ha.apply_dl_model(plain, samples, []))
    # fp32 sums in another order (in place vs binary add): not bit-identical
    assert_close(got, ref, atol=3e-5, rtol=3e-4, what=f"{name}: fused vs unfused")
    twin = from_model(fused, dtype=torch.float64)
    twin.eval()
    with torch.no_grad():
        want = torch.softmax(twin(images_to_nchw(samples, torch.float64)), dim=1).numpy()
    assert_close(got, want, atol=1e-5, rtol=1e-3, what=f"{name}: fused vs twin")


def test_training_add_relu_fusion_is_bit_identical(monkeypatch):
    """Training fuses add → relu (post-op forward, relu_use_dst backward): the losses and every
    parameter after two steps equal the unfused plan's exactly (the golden tests rely on it)."""
    samples = make_samples(2, 32, 32, 3, CLASS_IDS, np.random.default_rng(2))

    def run():
        m = _model("resnet18")
        ha.set_dl_model_param(m, "learning_rate", 0.01)
        t = _timed(lambda: ha.train_dl_model_batch(m, samples))
        losses = [ha.train_dl_model_batch(m, samples)["total_loss"]]
        params = {n: np.array(m.core.get_param(n)) for n in m.core.param_names()}
        return t, losses, params
    t, losses, params = run()
    assert t["train_fwd:add+relu"][1] == 8 and "train_fwd:add" not in t
    monkeypatch.setenv("HALCDL_NO_FUSE", "add_relu")
    t0, losses0, params0 = run()
    assert "train_fwd:add+relu" not in t0 and t0["train_fwd:add"][1] == 8
    assert losses == losses0
    for n in params:
        assert np.array_equal(params[n], params0[n]), n


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_training_grads_shared_through_adds_are_bit_identical(name, monkeypatch):
    """Training: the inputs of an add use its gradient buffer in place (no copies in the add's
    backward). Two steps give the same losses and parameters bit for bit as plans built under
    HALCDL_NO_FUSE=grad_share (and the same kept gradients, with kept layers around the adds:
    they keep buffers of their own); the timer shows which add backwards ran in place."""
    samples = make_samples(2, 32, 32, 3, CLASS_IDS, np.random.default_rng(2))
    m0 = _model(name)
    adds = [n for n in m0.spec if n["op"] == "add"]
    assert adds
    keeps = [[], [adds[0]["name"], adds[0]["inputs"][1], adds[-1]["inputs"][0]]]

    def run(keep):
        m = _model(name)
        ha.set_dl_model_param(m, "learning_rate", 0.001)
        ha.set_dl_model_param(m, "keep_layer_outputs", keep)
        losses = []
        t = _timed(lambda: losses.append(ha.train_dl_model_batch(m, samples)["total_loss"]))
        losses.append(ha.train_dl_model_batch(m, samples)["total_loss"])
        grads = {k: _nchw(ha.get_dl_model_layer_gradients(m, k)) for k in keep}
        in_place = sum(c for k, (_, c) in t.items() if k.startswith("train_bwd:add") and "(in place)" in k)
        return losses, {n: np.array(m.core.get_param(n)) for n in m.core.param_names()}, grads, \
            m.core.cpu_plan_bytes(), in_place
    for keep in keeps:
        monkeypatch.delenv("HALCDL_NO_FUSE", raising=False)
        losses, params, grads, nbytes, in_place = run(keep)
        monkeypatch.setenv("HALCDL_NO_FUSE", "grad_share")
        losses0, params0, grads0, nbytes0, in_place0 = run(keep)
        # an add whose output is itself passed on in place by a later add (a ResNet block's
        # output into the next block's add) keeps its copies (no chains): about half run in place
        assert len(adds) // 2 - len(keep) <= in_place <= len(adds) and in_place0 == 0, (keep, in_place)
        assert losses == losses0, keep
        for n in params:
            assert np.array_equal(params[n], params0[n]), (keep, n)
        for k in keep:
            assert np.array_equal(grads[k], grads0[k]), (keep, k)
        # the workspace's peak is not above the copying plan's (it lies where the adds'
        # gradients are not live: equal for these models at this size)
        assert 0 < nbytes <= nbytes0, (keep, nbytes, nbytes0)


# --------------------------------------------------------------------------------------------
# the residual sum fusion with kept layers (introspection) cutting its chains
# --------------------------------------------------------------------------------------------
def _blocks(m):
    """The residual blocks' name prefixes ('layer1.0', ...) in network order."""
    return list(dict.fromkeys(n["name"].rsplit(".", 1)[0] for n in m.spec if n["op"] == "add"))


def _fused_sums(t):
    return sum(c for k, (s, c) in t.items() if k.startswith("infer:conv") and "+add" in k)


def _check_kept(m, samples, keep, want_conf, twin_rec, monkeypatch, what):
    """Keep `keep`: the fused plan's outputs equal those of the plan without kept layers, its
    kept activations those of the plan built under HALCDL_NO_FUSE=sum (and the twin's).
    Returns the number of residual sums the fused plan still fused."""
    def rebuild():  # the same keep set again: the next apply builds a new plan
        ha.set_dl_model_param(m, "keep_layer_outputs", [])
        ha.set_dl_model_param(m, "keep_layer_outputs", keep)
    rebuild()
    monkeypatch.setenv("HALCDL_NO_FUSE", "sum")
    ha.apply_dl_model(m, samples, [])
    monkeypatch.delenv("HALCDL_NO_FUSE")
    refs = {layer: _nchw(ha.get_dl_model_layer_activations(m, layer)) for layer in keep}
    rebuild()
    res = []
    t = _timed(lambda: res.append(ha.apply_dl_model(m, samples, [])))
    assert_close(_conf(res[0]), want_conf, atol=3e-5, rtol=3e-4, what=f"{what}: outputs with kept {keep}")
    for layer in keep:
        a, ref = _nchw(ha.get_dl_model_layer_activations(m, layer)), refs[layer]
        scale = float(np.abs(ref).max())
        assert scale > 0, layer
        assert_close(a, ref, atol=2e-6 * scale, rtol=1e-4, what=f"{what}: {layer} (kept {keep}) vs unfused")
        if twin_rec is not None:
            assert_close(a, twin_rec[layer], atol=1e-5 * scale, rtol=1e-3, what=f"{what}: {layer} vs twin")
    return _fused_sums(t)


def _nchw(obj):
    return np.stack([np.asarray(im).transpose(2, 0, 1) for im in obj])


_ZOO = {}


def _setup(name, monkeypatch, seed):
    """One model per zoo network for this module (reading resnet50 takes seconds), its keep
    set emptied; the samples and its fused plan's confidences without kept layers."""
    samples = make_samples(2, 32, 32, 3, CLASS_IDS, np.random.default_rng(seed))
    monkeypatch.delenv("HALCDL_NO_FUSE", raising=False)
    if name not in _ZOO:
        _ZOO[name] = _model(name)
    m = _ZOO[name]
    ha.set_dl_model_param(m, "keep_layer_outputs", [])
    res = []
    t = _timed(lambda: res.append(ha.apply_dl_model(m, samples, [])))
    n_blocks = len(_blocks(m))
    assert _fused_sums(t) == n_blocks  # without kept layers every residual block is fused
    return samples, m, _conf(res[0]), n_blocks


@pytest.mark.parametrize("name", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow)])
def test_residual_fusion_with_kept_layers_inside_and_around_blocks(name, monkeypatch):
    """A kept layer stops the sum fusion only where it is involved (the block whose conv, bn,
    add or shortcut it is, and the next block when it is a block's last layer); the plan cut
    there still builds (it indexed node -1 before, 7791), gives the same outputs, and every
    kept activation equals the unfused plan's and the PyTorch twin's."""
    samples, fused, conf, n_blocks = _setup(name, monkeypatch, 3)
    twin = from_model(fused, dtype=torch.float64).eval()
    twin.record = {}
    with torch.no_grad():
        twin(images_to_nchw(samples, torch.float64))
    rec = {k: v.float().numpy() for k, v in twin.record.items()}
    blocks = _blocks(fused)
    names = [n["name"] for n in fused.spec]
    # the first block (its shortcut is the stem's pooling), the first projection block, one in
    # the middle of a chain and the last one (its output feeds the head)
    picked = [blocks[0], next(b for b in blocks if f"{b}.downsample.0" in names and b != blocks[0]),
              blocks[len(blocks) // 2 + 1], blocks[-1]]
    keeps = [["maxpool"], [names[names.index(f"{blocks[-1]}.add") + 1]]]
    for b in picked:
        members = [n for n in names if n.startswith(b + ".")]
        add = next(n for n in fused.spec if n["name"] == f"{b}.add")
        # each conv, the shortcut, the bn(s) feeding the add, the add
        keeps += [[n] for n in members if n.split(".")[-2:][-1].startswith(("conv", "add"))
                  or ".downsample." in n or n in add["inputs"]]
        keeps.append([members[-1]])  # the block's last layer (its relu after the add)
    keeps.append([f"{blocks[0]}.conv2", f"{blocks[1]}.add", names[names.index(f"{blocks[2]}.add") + 1]])
    for keep in keeps:
        n_fused = _check_kept(fused, samples, keep, conf, rec, monkeypatch, name)
        # each kept layer cuts at most two blocks' sums; the others stay fused
        assert n_blocks - 2 * len(keep) <= n_fused <= n_blocks, (keep, n_fused)
        if any(k.endswith(".add") for k in keep):
            assert n_fused < n_blocks, keep  # a kept add is not fused away


def test_residual_fusion_with_random_kept_layer_sets(monkeypatch):
    """Random keep sets (fixed seed) over every layer of resnet18 and resnet50: the fused plan
    builds, its outputs do not change, its kept activations equal the unfused plan's."""
    rng = np.random.default_rng(16)
    for name, trials in (("resnet18", 8), ("resnet50", 4)):
        samples, fused, conf, n_blocks = _setup(name, monkeypatch, 4)
        names = [n["name"] for n in fused.spec if n["op"] != "input"]
        for _ in range(trials):
            keep = sorted(rng.choice(names, size=int(rng.integers(1, 6)), replace=False).tolist())
            n_fused = _check_kept(fused, samples, keep, conf, None, monkeypatch, name)
            assert n_blocks - 2 * len(keep) <= n_fused <= n_blocks, (keep, n_fused)
