"""Generator of the hostile model-file corpus of issue 15 (docs/robustness.md).

    python tests/hostile_corpus.py OUT_DIR        # writes the corpus, prints one line per file

:func:`generate` writes, into a folder, native halcdl files (valid checksums, so each one
reaches the check it is aimed at) and ONNX files, each broken in one way the issue lists, and
returns ``{file name: what is wrong}``.  tests/test_hostile_files.py reads every one in a child
process under a memory limit and a timeout; each read must end with HOperatorError.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import warnings

import numpy as np

if __name__ == "__main__":  # run as a script from the repository
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import halcdl as ha  # noqa: E402
from halcdl.io import files, native  # noqa: E402


def _base_model():
    warnings.simplefilter("ignore")
    ha.set_system("seed_rand", 5)
    m = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    for k, v in [("image_width", 32), ("image_height", 32), ("class_ids", [0, 1, 2]),
                 ("batch_size", 2), ("solver_type", "adam")]:
        ha.set_dl_model_param(m, k, v)
    rng = np.random.default_rng(0)
    batch = [{"image": rng.uniform(-127, 128, (32, 32, 3)).astype(np.float32),
              "image_label_id": i % 3} for i in range(2)]
    ha.train_dl_model_batch(m, batch)  # optimizer state present (m1, m2)
    return m


class _Native:
    """The parts of a valid native file, re-assembled with a fresh checksum."""

    def __init__(self, path: str) -> None:
        data = open(path, "rb").read()
        meta, table, body = files.parse_safetensors(data)
        self.meta = dict(meta)
        self.meta.pop("checksum")
        self.model = json.loads(self.meta["model"])
        self.tensors = {n: np.array(files.tensor_view(table, body, n)) for n in table}
        # the optimizer moments only where a case is about them (keeps the corpus small)
        self.moments = {n: self.tensors.pop(n) for n in list(self.tensors)
                        if n.startswith("optimizer/")}
        self.model["optimizer"].update(m1=False, m2=False)

    def write(self, path: str, model=None, tensors=None, raw_model: str | None = None,
              table_patch=None) -> None:
        model = self.model if model is None else model
        tensors = self.tensors if tensors is None else tensors
        meta = dict(self.meta)
        meta["model"] = raw_model if raw_model is not None else json.dumps(model)
        table, arrays = files.tensor_table(list(tensors.items()))
        if table_patch:
            table_patch(table)
        meta["checksum"] = native.checksum(meta, table, arrays)
        header = {"__metadata__": meta, **table}
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(path, "wb") as f:
            f.write(len(raw).to_bytes(8, "little") + raw)
            for a in arrays:
                f.write(a.tobytes())


def _native_cases(src: _Native) -> dict:
    """{name: (description, writer(path))}"""
    M, T = src.model, src.tensors

    def mod(fn):
        def w(path):
            m = copy.deepcopy(M)
            fn(m)
            src.write(path, model=m)
        return w

    def params(**kv):
        return mod(lambda m: m["params"].update(kv))

    def tens(fn, moments=False):
        def w(path):
            t = {k: v.copy() for k, v in T.items()}
            m = M
            if moments:
                t.update({k: v.copy() for k, v in src.moments.items()})
                m = copy.deepcopy(M)
                m["optimizer"].update(m1=True, m2=True)
            fn(t)
            src.write(path, model=m, tensors=t)
        return w

    def spec_attr(op, key, value):
        def fn(m):
            for n in m["spec"]:
                if n["op"] == op:
                    n[key] = value
                    break
        return mod(fn)

    first_var = next(k for k in T if k.endswith(".running_var"))
    first_conv = next(n["name"] for n in M["spec"] if n["op"] == "conv")
    cases = {
        "nested_header_json": ("header JSON nested 100,000 deep", lambda p: _raw_header(
            p, b'{"__metadata__":{},"x":' + b"[" * 100000 + b"]" * 100000 + b"}")),
        "nested_model_json": ("model description nested 100,000 deep", lambda p: src.write(
            p, raw_model="[" * 100000 + "]" * 100000)),
        "nested_meta_data": ("meta_data nested 5,000 deep", lambda p: src.write(
            p, raw_model=json.dumps(dict(M, params=dict(M["params"], meta_data="@@")))
            .replace('"@@"', '{"a":' + "[" * 5000 + "]" * 5000 + "}"))),
        "shape_2_70": ("a tensor shape of 2**70", lambda p: _raw_header(p, json.dumps(
            {"__metadata__": {}, "w": {"dtype": "F32", "shape": [2**70],
                                       "data_offsets": [0, 4 * 2**70]}}).encode())),
        "header_length_huge": ("header length field 2**62", lambda p: open(p, "wb").write(
            (2**62).to_bytes(8, "little") + b"{}")),
        "header_past_end": ("header length past the end", lambda p: open(p, "wb").write(
            (4096).to_bytes(8, "little") + b'{"a":1}')),
        "wrong_magic": ("not a model at all", lambda p: open(p, "wb").write(b"\x89PNG" * 64)),
        "truncated": ("data section cut short", lambda p: (src.write(p), _truncate(p, 1000))),
        "learning_rate_10_400": ("learning_rate 10**400", params(learning_rate=10**400)),
        "learning_rate_1e39": ("learning_rate 1e39 (not float32)", params(learning_rate=1e39)),
        "adam_epsilon_1e_300": ("adam_epsilon 1e-300", params(adam_epsilon=1e-300)),
        "seed_1e999": ("seed 1e999", lambda p: src.write(p, raw_model=json.dumps(M).replace(
            f'"seed": {M["seed"]}', '"seed": 1e999', 1))),
        "seed_2_64": ("seed 2**64", mod(lambda m: m.update(seed=2**64))),
        "steps_negative": ("optimizer steps -1", mod(lambda m: m["optimizer"].update(steps=-1))),
        "adam_t_2_70": ("adam_t 2**70", mod(lambda m: m["optimizer"].update(adam_t=2**70))),
        "batch_size_2_40": ("batch_size 2**40", params(batch_size=2**40)),
        "image_width_2_40": ("image_width 2**40", params(image_width=2**40)),
        "class_weights_zero": ("class_weights all 0", params(class_weights=[0, 0, 0])),
        "class_weights_negative": ("class_weights negative", params(class_weights=[-1, 1, 1])),
        "class_weights_tiny": ("class_weights 1e-300", params(class_weights=[1e-300] * 3)),
        "class_ids_negative": ("negative class ids", params(class_ids=[-1, 0, 1])),
        "class_ids_2_70": ("class id 2**70", params(class_ids=[0, 1, 2**70])),
        "meta_data_nan": ("meta_data value NaN", lambda p: src.write(p, raw_model=json.dumps(
            dict(M, params=dict(M["params"], meta_data={"x": float("nan")}))))),
        "image_range_inf": ("image_range_max Infinity", lambda p: src.write(
            p, raw_model=json.dumps(dict(M, params=dict(M["params"],
                                                        image_range_max=float("inf"))))))
        ,
        "bn_eps_negative": ("bn eps -1", spec_attr("bn", "eps", -1)),
        "bn_eps_nan": ("bn eps NaN", lambda p: src.write(p, raw_model=json.dumps(
            _with_attr(M, "bn", "eps", float("nan"))))),
        "conv_stride_0": ("conv stride 0", spec_attr("conv", "stride", 0)),
        "conv_kernel_2_40": ("conv kernel 2**40", spec_attr("conv", "kernel", 2**40)),
        "spec_3e8_weights": ("1.6 KB-style spec declaring a 3e8-weight conv",
                             spec_attr("conv", "out_channels", 10**7)),
        "running_var_negative": ("negative running variance", tens(
            lambda t: t.__setitem__(first_var, -np.abs(t[first_var]) - 1))),
        "weights_nan": ("NaN weights", tens(
            lambda t: t[f"{first_conv}.weight"].reshape(-1).__setitem__(0, np.nan))),
        "optimizer_nan": ("optimizer state all NaN", tens(
            lambda t: t["optimizer/m1"].fill(np.nan), moments=True)),
        "optimizer_i32": ("optimizer state stored as I32", tens(
            lambda t: t.__setitem__("optimizer/m2", t["optimizer/m2"].view(np.int32)),
            moments=True)),
        "optimizer_wrong_shape": ("optimizer state of the wrong length", tens(
            lambda t: t.__setitem__("optimizer/m1", t["optimizer/m1"][:-1]), moments=True)),
        "optimizer_moments_valid_flags_off": ("moments present, flags say none", tens(
            lambda t: t.update({k: v.copy() for k, v in src.moments.items()}))),
        "tensor_missing": ("a weight tensor missing", tens(
            lambda t: t.pop(f"{first_conv}.weight"))),
        "tensor_extra": ("an unexpected tensor", tens(
            lambda t: t.__setitem__("evil", np.zeros(4, np.float32)))),
        "spec_not_list": ("spec is a string", mod(lambda m: m.update(spec="conv"))),
        "spec_unknown_op": ("unknown op", spec_attr("relu", "op", "exec")),
        "spec_cycle": ("a node consuming itself", mod(
            lambda m: m["spec"][2].update(inputs=[m["spec"][2]["name"]]))),
    }
    return cases


def _with_attr(M, op, key, value):
    m = copy.deepcopy(M)
    for n in m["spec"]:
        if n["op"] == op:
            n[key] = value
            break
    return m


def _raw_header(path: str, raw: bytes) -> None:
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)


def _truncate(path: str, nbytes: int) -> None:
    size = os.path.getsize(path)
    os.truncate(path, size - nbytes)


def _onnx_cases(valid: str) -> dict:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    base = onnx.load(valid)

    def variant(fn):
        def w(path):
            m = copy.deepcopy(base)
            fn(m)
            open(path, "wb").write(m.SerializeToString())
        return w

    def first(m, op):
        return next(n for n in m.graph.node if n.op_type == op)

    def set_attr(op, name, value):
        def fn(m):
            n = first(m, op)
            for a in list(n.attribute):
                if a.name == name:
                    n.attribute.remove(a)
            n.attribute.append(helper.make_attribute(name, value))
        return variant(fn)

    def clear_inputs(m):
        del first(m, "Conv").input[:]

    def drop_weight(m):
        n = first(m, "Conv")
        x = n.input[0]
        del n.input[:]
        n.input.append(x)

    def gather_oob(m):
        inp = m.graph.input[0].name
        m.graph.initializer.append(numpy_helper.from_array(np.array([10], np.int64), "gidx"))
        m.graph.node.insert(0, helper.make_node("Shape", [inp], ["shp"], name="shape_evil"))
        m.graph.node.insert(1, helper.make_node("Gather", ["shp", "gidx"], ["g"],
                                                name="gather_evil", axis=0))

    def init_short(m):
        w = next(i for i in m.graph.initializer if len(i.dims) == 4)
        w.dims[0] = w.dims[0] * 1000

    def init_dtype(m):
        w = next(i for i in m.graph.initializer if len(i.dims) == 4)
        w.data_type = 999

    def nested_meta(m):
        m.metadata_props.append(onnx.StringStringEntryProto(
            key="halcdl.meta_data", value="[" * 100000 + "]" * 100000))

    def range_inf(m):
        for p in list(m.metadata_props):
            if p.key == "halcdl.image_range_max":
                m.metadata_props.remove(p)
        m.metadata_props.append(onnx.StringStringEntryProto(key="halcdl.image_range_max",
                                                            value="1e999"))

    def negative_dims(m):
        w = next(i for i in m.graph.initializer if len(i.dims) == 4)
        w.dims[0] = -5

    def truncated(path):
        data = base.SerializeToString()
        open(path, "wb").write(data[: len(data) // 2])

    cases = {
        "onnx_stride_0": ("Conv strides [0, 0]", set_attr("Conv", "strides", [0, 0])),
        "onnx_dilation_0": ("Conv dilations [0, 0]", set_attr("Conv", "dilations", [0, 0])),
        "onnx_no_inputs": ("Conv without inputs", variant(clear_inputs)),
        "onnx_conv_no_weight": ("Conv without a weight", variant(drop_weight)),
        "onnx_gather_oob": ("Gather index out of range", variant(gather_oob)),
        "onnx_init_short": ("initializer dims promise more data", variant(init_short)),
        "onnx_init_dtype": ("initializer of an unknown data type", variant(init_dtype)),
        "onnx_init_negative_dims": ("initializer with negative dims", variant(negative_dims)),
        "onnx_nested_meta": ("halcdl metadata nested 100,000 deep", variant(nested_meta)),
        "onnx_range_inf": ("image_range_max 1e999", variant(range_inf)),
        "onnx_bn_eps_negative": ("BatchNormalization epsilon -1",
                                 set_attr("BatchNormalization", "epsilon", -1.0)),
        "onnx_pads_huge": ("Conv pads 2**40", set_attr("Conv", "pads", [2**40] * 4)),
        "onnx_truncated": ("protobuf cut in half", truncated),
        "onnx_garbage": ("random bytes named .onnx", lambda p: open(p, "wb").write(
            np.random.default_rng(1).bytes(5000))),
        "onnx_kernel_mismatch": ("kernel_shape not matching the weight",
                                 set_attr("Conv", "kernel_shape", [7, 7])),
        "onnx_elem_type": ("graph input of an unknown element type", variant(
            lambda m: setattr(m.graph.input[0].type.tensor_type, "elem_type", 999))),
    }
    del TensorProto
    return cases


def generate(folder: str, with_onnx: bool = True) -> dict:
    """Write the corpus into ``folder``; ``{file name: description}``."""
    os.makedirs(folder, exist_ok=True)
    m = _base_model()
    valid = os.path.join(folder, "valid.hdl")
    ha.write_dl_model(m, valid)
    out = {}
    src = _Native(valid)
    for name, (what, write) in _native_cases(src).items():
        write(os.path.join(folder, name + ".hdl"))
        out[name + ".hdl"] = what
    if with_onnx:
        try:
            import onnx  # noqa: F401
        except ImportError:
            return out
        vonnx = os.path.join(folder, "valid.onnx")
        ha.write_dl_model(m, vonnx)
        for name, (what, write) in _onnx_cases(vonnx).items():
            write(os.path.join(folder, name + ".onnx"))
            out[name + ".onnx"] = what
    return out


if __name__ == "__main__":
    for name, what in generate(sys.argv[1]).items():
        print(f"{name:32s} {os.path.getsize(os.path.join(sys.argv[1], name)):>10d}  {what}")
