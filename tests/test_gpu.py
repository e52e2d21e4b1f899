"""GPU twin vs CPU twin (skipped unless halcdl reports a GPU).

The same seed, data and hyperparameters on 'cpu' and 'gpu': inference probabilities and a
short train sequence (losses, final parameters) agree within float32 tolerances.
"""
from __future__ import annotations

import numpy as np
import pytest

from helpers import assert_close, make_samples

import halcdl as ha
pytestmark = pytest.mark.gpu

SIZE, BATCH, STEPS = 48, 4, 3
CLASS_IDS = [0, 1, 2]


def _model(runtime):
    ha.set_system("seed_rand", 5)
    ha.set_system("cudnn_deterministic", "true")
    m = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    for k, v in [("image_dimensions", [SIZE, SIZE, 3]), ("class_ids", CLASS_IDS),
                 ("class_weights", [1.0, 2.0, 0.5]), ("batch_size", BATCH),
                 ("batch_size_multiplier", 2), ("learning_rate", 0.01), ("momentum", 0.9),
                 ("weight_prior", 1e-3), ("runtime", runtime)]:
        ha.set_dl_model_param(m, k, v)
    return m


def test_gpu_train_sequence_matches_cpu():
    rng = np.random.default_rng(0)
    batches = [make_samples(2 * BATCH, SIZE, SIZE, 3, CLASS_IDS, rng) for _ in range(STEPS)]
    test = make_samples(5, SIZE, SIZE, 3, CLASS_IDS, rng)
    cpu, gpu = _model("cpu"), _model("gpu")
    for b in batches:
        lc = ha.train_dl_model_batch(cpu, b)["total_loss"]
        lg = ha.train_dl_model_batch(gpu, b)["total_loss"]
        assert_close(np.ravel(lg), np.ravel(lc), atol=1e-5, rtol=1e-4, what="gpu total_loss")
    for name in cpu.core.param_names():
        assert_close(gpu.core.get_param(name), cpu.core.get_param(name), atol=1e-4, rtol=1e-3,
                     what=f"gpu {name}")
    pc = ha.apply_dl_model(cpu, test, [])
    pg = ha.apply_dl_model(gpu, test, [])
    for rc, rg in zip(pc, pg):
        conf_c = dict(zip(rc["classification_class_ids"], rc["classification_confidences"]))
        conf_g = dict(zip(rg["classification_class_ids"], rg["classification_confidences"]))
        assert_close([conf_g[c] for c in CLASS_IDS], [conf_c[c] for c in CLASS_IDS],
                     atol=1e-4, rtol=1e-3, what="gpu confidences")
