"""The model zoo against its PyTorch twins.

For every classifier file: the number of trainable parameters equals torchvision's for the
architectures that copy torchvision (at 1000 classes) and the twin's; apply_dl_model's
confidences equal softmax(twin(x)) in eval mode; and for the dropout-free networks the first
train_dl_model_batch loss equals the twin's training-mode cross-entropy (batch statistics).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import assert_close, make_samples
from torch_twin import from_model, images_to_nchw

import halcdl as ha

TORCHVISION_PARAMS = {          # torchvision.models.*(num_classes=1000), trainable
    "resnet18": 11689512,
    "resnet50": 25557032,
    "mobilenet_v2": 3504872,
    "alexnet": 61100840,
}
SIZES = {"compact": 32, "enhanced": 64, "resnet18": 64, "resnet50": 64, "mobilenet_v2": 64,
         "alexnet": 224}
CLASS_IDS = [0, 1, 2, 3, 4]


def file_of(name):
    return f"pretrained_dl_classifier_{name}.hdl"


def _model(name, batch):
    ha.set_system("seed_rand", 3)
    m = ha.read_dl_model(file_of(name))
    if name != "alexnet":
        ha.set_dl_model_param(m, "image_dimensions", [SIZES[name], SIZES[name], 3])
    ha.set_dl_model_param(m, "class_ids", CLASS_IDS)
    ha.set_dl_model_param(m, "batch_size", batch)
    ha.set_dl_model_param(m, "weight_prior", 0.0)
    return m


@pytest.mark.parametrize("name", list(TORCHVISION_PARAMS))
def test_num_trainable_params_as_torchvision(name):
    m = ha.read_dl_model(file_of(name))
    n = ha.get_dl_model_param_s(m, "num_trainable_params")
    assert int(n) == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name", list(SIZES))
def test_apply_matches_twin(name):
    m = _model(name, 2)
    twin = from_model(m, dtype=torch.float64)
    assert int(ha.get_dl_model_param_s(m, "num_trainable_params")) == \
        sum(p.numel() for _, _, p in twin.named_trainable())
    samples = make_samples(3, SIZES[name], SIZES[name], 3, CLASS_IDS,
                           np.random.default_rng(0))
    res = ha.apply_dl_model(m, samples, [])
    twin.eval()
    with torch.no_grad():
        ref = torch.softmax(twin(images_to_nchw(samples, torch.float64)), dim=1).numpy()
    for i, r in enumerate(res):
        got = dict(zip(r["classification_class_ids"], r["classification_confidences"]))
        assert_close([got[c] for c in CLASS_IDS], ref[i], atol=1e-5, rtol=1e-3,
                     what=f"{name}: confidences of sample {i}")


@pytest.mark.parametrize("name", ["compact", "resnet18", "resnet50"])
def test_first_train_loss_matches_twin(name):
    m = _model(name, 4)
    twin = from_model(m, dtype=torch.float64)
    samples = make_samples(4, SIZES[name], SIZES[name], 3, CLASS_IDS, np.random.default_rng(1))
    loss = float(np.ravel(ha.train_dl_model_batch(m, samples)["total_loss"])[0])
    twin.train()
    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(
            twin(images_to_nchw(samples, torch.float64)),
            torch.tensor([CLASS_IDS.index(s["image_label_id"]) for s in samples]))
    assert_close([loss], [float(ref)], atol=1e-5, rtol=1e-4, what=f"{name}: first loss")
