"""Bad input: every operator x every class of bad argument raises HOperatorError with
HALCON's error number, and leaves the model exactly as it was.

Each case runs on a fresh model (fixed seed) that has already done one training step:
    step(B1) -> bad call (must raise CODE) -> [state unchanged] -> step(B2) -> apply(A)
and the final weights, running statistics and apply_dl_model results must be *bit-equal*
to those of a reference model that did the same without the bad call. Equality is exact:
the engine is deterministic for one thread count and one shape, and a bad call may not
touch weights, optimizer state, running statistics or hyperparameters.

The expected codes live in CODES (one line per class of bad argument) so they can follow
docs/operators.md where HALCON's number is not fixed by the issue.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import halcdl as ha

# --- expected error numbers per class of bad argument ------------------------------------
CODES = {
    "sample_count": 7800,        # len(samples) != batch_size * batch_size_multiplier
    "no_samples": 7915,          # apply_dl_model with an empty batch
    "unknown_param": 7911,       # unsupported generic parameter name (docs/operators.md)
    "read_only_param": 7911,     # setting a read-only parameter
    "bad_value": 1303,           # wrong value of control parameter 3 (gen_param_value)
    "bad_type": 1203,            # wrong type of control parameter 3
    "bad_count": 1403,           # wrong number of values of control parameter 3
    "multiplier": 7799,          # batch_size_multiplier <= 0
    "solver": 7840,              # unknown solver_type
    "tuple_length": 7789,        # class_weights / class_names of the wrong length
    "tuple_type": 7790,          # class_weights / class_names of the wrong element type
    "tuple_values": 7791,        # class_weights negative or all 0
    "system_name": 1301,         # set_system / get_system: unknown parameter
    "system_value": 1302,        # set_system: bad value (thread_num 0)
    "fixed_size": 7775,          # AlexNet: the image size cannot change
    "class_ids_invalid": 7793,   # class_ids empty or not non-negative integers
    "channels_value": 7724,      # image_num_channels not 1 or 3
    "too_small": 7722,           # image smaller than the network's minimum
    "image_size": 7735,          # image of wrong height/width
    "image_data": 7736,          # wrong channel count, NaN or Inf
    "missing_key": 7783,         # 'image' or 'image_label_id' missing
    "label": 7714,               # label not in class_ids
    "duplicate_ids": 7792,       # class_ids not unique
    "diverged": 7720,            # loss became non-finite
}

SEED = 321
SIZE, CHANNELS = 32, 3
CLASS_IDS = [0, 1, 2]
BATCH, MULT = 2, 2
CONFIG = [
    ("image_width", SIZE), ("image_height", SIZE), ("image_num_channels", CHANNELS),
    ("class_ids", CLASS_IDS), ("batch_size", BATCH), ("batch_size_multiplier", MULT),
    ("learning_rate", 0.01), ("momentum", 0.9), ("weight_prior", 1e-4),
    ("solver_type", "sgd"),
]


def fresh_model():
    ha.set_system("seed_rand", SEED)
    model = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    for name, value in CONFIG:
        ha.set_dl_model_param(model, name, value)
    return model


def _samples(seed, n):
    rng = np.random.default_rng(seed)
    return [{"image": rng.uniform(-127, 128, (SIZE, SIZE, CHANNELS)).astype(np.float32),
             "image_label_id": CLASS_IDS[i % len(CLASS_IDS)]} for i in range(n)]


B1 = _samples(1, BATCH * MULT)
B2 = _samples(2, BATCH * MULT)
A = _samples(3, 5)            # 5 samples: more than batch_size, not a multiple of it


def state_of(model):
    return {n: np.array(model.core.get_param(n), copy=True) for n in model.core.param_names()}


def predictions(model):
    res = ha.apply_dl_model(model, A, [])
    assert len(res) == len(A)
    return [(list(r["classification_class_ids"]),
             np.asarray(r["classification_confidences"], dtype=np.float32)) for r in res]


def assert_state_equal(got, ref, what):
    assert got.keys() == ref.keys(), f"{what}: parameter names differ"
    bad = [n for n in ref if not np.array_equal(got[n], ref[n])]
    if bad:
        n = bad[0]
        diff = float(np.max(np.abs(got[n].astype(np.float64) - ref[n])))
        raise AssertionError(f"{what}: {len(bad)} tensors differ, e.g. {n} (max |diff| "
                             f"{diff:.3e}); all: {bad[:10]}")


def assert_predictions_equal(got, ref, what):
    for i, ((ids, conf), (rids, rconf)) in enumerate(zip(got, ref)):
        assert ids == rids, f"{what}: sample {i}: class order {ids} != {rids}"
        assert np.array_equal(conf, rconf), \
            f"{what}: sample {i}: confidences {conf.tolist()} != {rconf.tolist()}"


@pytest.fixture(scope="module")
def reference():
    """The trajectory without any bad call: state after B1, state after B2, predictions."""
    model = fresh_model()
    ha.train_dl_model_batch(model, B1)
    after_b1 = state_of(model)
    ha.train_dl_model_batch(model, B2)
    return after_b1, state_of(model), predictions(model)


# --- bad calls ----------------------------------------------------------------------------
def with_image(img_fn, i=1):
    """B2-like batch whose sample i has image img_fn(original)."""
    batch = [dict(s) for s in B2]
    batch[i]["image"] = img_fn(batch[i]["image"].copy())
    return batch


def without(key, i=0):
    batch = [dict(s) for s in B2]
    del batch[i][key]
    return batch


def set_nan(im):
    im[3, 4, 1] = np.nan
    return im


def set_inf(im, sign=1.0):
    im[0, 0, 0] = sign * np.inf
    return im


def huge(im):
    return np.full_like(im, np.finfo(np.float32).max)


def train(batch):
    return lambda m: ha.train_dl_model_batch(m, batch)


def apply(batch):
    return lambda m: ha.apply_dl_model(m, batch, [])


def setp(name, value):
    return lambda m: ha.set_dl_model_param(m, name, value)


def getp(name):
    return lambda m: ha.get_dl_model_param(m, name)


wrong = np.zeros((SIZE, SIZE, CHANNELS), np.float32)
CASES = [
    # train_dl_model_batch: sample count
    ("train/too_few", train(B2[:-1]), "sample_count"),
    ("train/too_many", train(B2 + B1[:1]), "sample_count"),
    ("train/one_batch_only", train(B2[:BATCH]), "sample_count"),
    ("train/empty", train([]), "sample_count"),
    # train: image shape / data
    ("train/image_height", train(with_image(lambda im: im[:-1])), "image_size"),
    ("train/image_width", train(with_image(lambda im: np.concatenate([im, im[:, :1]], 1))),
     "image_size"),
    ("train/image_1_channel", train(with_image(lambda im: im[:, :, :1])), "image_data"),
    ("train/image_2d", train(with_image(lambda im: im[:, :, 0])), "image_data"),
    ("train/image_4_channels", train(with_image(lambda im: np.concatenate([im, im[:, :, :1]], 2))),
     "image_data"),
    ("train/image_nan", train(with_image(set_nan)), "image_data"),
    ("train/image_inf", train(with_image(set_inf)), "image_data"),
    ("train/image_minus_inf", train(with_image(lambda im: set_inf(im, -1.0), i=3)), "image_data"),
    ("train/missing_image", train(without("image")), "missing_key"),
    ("train/missing_label", train(without("image_label_id", 3)), "missing_key"),
    ("train/label_not_a_class", train([dict(s, image_label_id=7) if i == 2 else s
                                       for i, s in enumerate(B2)]), "label"),
    ("train/loss_not_finite", train(with_image(huge, i=0)), "diverged"),
    # apply_dl_model
    ("apply/image_height", apply(with_image(lambda im: im[:-2])), "image_size"),
    ("apply/image_1_channel", apply(with_image(lambda im: im[:, :, :1])), "image_data"),
    ("apply/image_nan", apply(with_image(set_nan)), "image_data"),
    ("apply/missing_image", apply(without("image")), "missing_key"),
    ("apply/no_samples", apply([]), "no_samples"),
    # set_dl_model_param
    ("set/unknown_name", setp("no_such_param", 1), "unknown_param"),
    ("set/read_only_type", setp("type", "segmentation"), "read_only_param"),
    ("set/batch_size_0", setp("batch_size", 0), "bad_value"),
    ("set/batch_size_negative", setp("batch_size", -3), "bad_value"),
    ("set/batch_size_str", setp("batch_size", "x"), "bad_type"),
    ("set/learning_rate_negative", setp("learning_rate", -0.1), "bad_value"),
    ("set/learning_rate_str", setp("learning_rate", "fast"), "bad_type"),
    ("set/momentum_str", setp("momentum", "x"), "bad_type"),
    ("set/weight_prior_negative", setp("weight_prior", -1.0), "bad_value"),
    ("set/multiplier_0", setp("batch_size_multiplier", 0), "multiplier"),
    ("set/multiplier_negative", setp("batch_size_multiplier", -2), "multiplier"),
    ("set/solver_rmsprop", setp("solver_type", "rmsprop"), "solver"),
    ("set/class_ids_duplicate", setp("class_ids", [0, 1, 1]), "duplicate_ids"),
    ("set/momentum_above_1", setp("momentum", 1.5), "bad_value"),
    ("set/adam_epsilon_0", setp("adam_epsilon", 0.0), "bad_value"),
    ("set/batch_size_two_values", setp("batch_size", [2, 4]), "bad_count"),
    ("set/class_ids_empty", setp("class_ids", []), "class_ids_invalid"),
    ("set/class_ids_negative", setp("class_ids", [0, -1, 2]), "class_ids_invalid"),
    ("set/class_weights_length", setp("class_weights", [1.0, 2.0]), "tuple_length"),
    ("set/class_weights_negative", setp("class_weights", [1.0, -2.0, 1.0]), "tuple_values"),
    ("set/class_weights_type", setp("class_weights", ["a", 1.0, 1.0]), "tuple_type"),
    ("set/class_names_length", setp("class_names", ["a", "b"]), "tuple_length"),
    ("set/class_names_type", setp("class_names", ["a", 2, "c"]), "tuple_type"),
    ("set/image_num_channels_2", setp("image_num_channels", 2), "channels_value"),
    ("set/image_too_small", setp("image_width", 8), "too_small"),
    # get_dl_model_param
    ("get/unknown_name", getp("no_such_param"), "unknown_param"),
    # set_system / get_system (the model must not notice)
    ("set_system/unknown_name", lambda m: ha.set_system("no_such_param", 1), "system_name"),
    ("set_system/thread_num_0", lambda m: ha.set_system("thread_num", 0), "system_value"),
    ("get_system/unknown_name", lambda m: ha.get_system("no_such_param"), "system_name"),
]

# parameters a set_dl_model_param case could have changed: checked unchanged afterwards
WATCHED = ["batch_size", "batch_size_multiplier", "learning_rate", "momentum", "weight_prior",
           "solver_type", "class_ids", "class_names", "class_weights", "adam_epsilon",
           "image_width", "image_height", "image_num_channels"]


@pytest.mark.parametrize("case_id,call,kind", CASES, ids=[c[0] for c in CASES])
def test_bad_input(reference, case_id, call, kind):
    ref_after_b1, ref_final, ref_pred = reference
    model = fresh_model()
    ha.train_dl_model_batch(model, B1)
    params_before = {n: ha.get_dl_model_param(model, n) for n in WATCHED}

    with pytest.raises(ha.HOperatorError) as info:
        call(model)
    err = info.value
    assert err.error_code == CODES[kind], (
        f"{case_id}: error_code {err.error_code} ({err}), expected {CODES[kind]} ({kind})")
    assert str(err), f"{case_id}: empty error message"

    assert_state_equal(state_of(model), ref_after_b1, f"{case_id}: state right after the bad call")
    for n, v in params_before.items():
        assert ha.get_dl_model_param(model, n) == v, f"{case_id}: parameter {n} changed"

    ha.train_dl_model_batch(model, B2)
    assert_state_equal(state_of(model), ref_final, f"{case_id}: state after the next step")
    assert_predictions_equal(predictions(model), ref_pred, f"{case_id}: predictions")


def test_error_is_a_halcon_error():
    """HOperatorError derives from HError (HALCON's binding) and carries code + message."""
    model = fresh_model()
    with pytest.raises(ha.HError) as info:
        ha.set_dl_model_param(model, "batch_size_multiplier", 0)
    assert isinstance(info.value, ha.HOperatorError)
    assert info.value.error_code == CODES["multiplier"]
    assert info.value.message


def test_diverging_learning_rate_leaves_weights_of_last_good_step():
    """A huge learning rate makes the loss non-finite within a few steps: the failing call
    raises 7720 and leaves every parameter at its value before that call; the model still
    trains once the learning rate is sane again... from those (large) weights."""
    model = fresh_model()
    ha.set_dl_model_param(model, "learning_rate", 1e30)
    batches = [B1, B2]
    for step in range(12):
        before = state_of(model)
        try:
            ha.train_dl_model_batch(model, batches[step % 2])
        except ha.HOperatorError as err:
            assert err.error_code == CODES["diverged"], f"step {step}: {err.error_code} ({err})"
            assert_state_equal(state_of(model), before, f"diverged at step {step}")
            break
    else:
        pytest.fail("12 steps at learning_rate 1e30 never raised 7720")
    assert step >= 1, "the very first step diverged: the test needs a step that updated"
    # the same failing call fails the same way again, state still untouched
    with pytest.raises(ha.HOperatorError) as info:
        ha.train_dl_model_batch(model, batches[step % 2])
    assert info.value.error_code == CODES["diverged"]
    assert_state_equal(state_of(model), before, "second failing call")


def test_bad_call_on_one_model_does_not_touch_another():
    """Two models built with the same seed: a rejected call on one leaves both identical."""
    m1, m2 = fresh_model(), fresh_model()
    with pytest.raises(ha.HOperatorError):
        ha.train_dl_model_batch(m1, B1[:-1])
    for m in (m1, m2):
        ha.train_dl_model_batch(m, B1)
    assert_state_equal(state_of(m1), state_of(m2), "twin models")
    assert_predictions_equal(predictions(m1), predictions(m2), "twin models")


def test_confidences_are_sorted_and_sum_to_one(reference):
    _, _, pred = reference
    for ids, conf in pred:
        assert sorted(ids) == CLASS_IDS
        assert np.all(np.diff(conf) <= 0), f"confidences not sorted: {conf}"
        assert math.isclose(float(conf.sum()), 1.0, rel_tol=1e-5)


def test_alexnet_image_size_is_fixed():
    ha.set_system("seed_rand", SEED)
    model = ha.read_dl_model("pretrained_dl_classifier_alexnet.hdl")
    for name, value in [("image_width", 200), ("image_dimensions", [256, 256, 3])]:
        with pytest.raises(ha.HOperatorError) as info:
            ha.set_dl_model_param(model, name, value)
        assert info.value.error_code == CODES["fixed_size"], f"{name}: {info.value}"
    assert ha.get_dl_model_param(model, "image_dimensions") == [224, 224, 3]
