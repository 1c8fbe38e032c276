"""TF.js graph models (``model.json`` + weight shards) read with numpy and run as
differentiable torch modules.

A TF.js graph model is a frozen TensorFlow GraphDef in JSON (``modelTopology.node``) whose
``Const`` values live in binary shards described by ``weightsManifest`` (float32 / int32,
optionally stored quantised as uint8 / uint16 with ``min`` and ``scale``, or as float16).
:func:`read_tfjs` reads both with numpy only; :func:`tfjs_to_torch` builds a torch module
that evaluates the graph with frozen weights. TensorFlow computes in NHWC; the module takes
and keeps every rank-4 tensor in NCHW (torch's native layout, so convolutions need no
transposes) and converts constants, axes and reshapes at the boundaries. Convolutions
followed by per-channel ``Mul`` / ``Add`` (batch norm folded by the converter into a scale
and a shift) are folded into the convolution's kernel and bias: fewer tensors to keep for
the backward pass of an adversarial optimisation.

Nothing here imports torch at module import time.
"""
from __future__ import annotations

import base64
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}
_QUANTISED = {"uint8": np.uint8, "uint16": np.uint16, "float16": np.float16}
# Activations fused into _FusedConv2D / FusedDepthwiseConv2dNative / _FusedMatMul.
_ACTIVATIONS = {"Relu", "Relu6", "Prelu", "LeakyRelu", "Elu", "Sigmoid", "Tanh"}
_CONV_OPS = {"Conv2D", "DepthwiseConv2dNative", "_FusedConv2D", "FusedDepthwiseConv2dNative"}
_UNARY = {"Relu", "Relu6", "Elu", "Sigmoid", "Tanh", "Identity", "Neg", "Sqrt", "Rsqrt", "Square", "Exp",
          "Log", "Abs", "LeakyRelu"}
_BINARY = {"Add", "AddV2", "BiasAdd", "Sub", "Mul", "RealDiv", "Maximum", "Minimum", "Prelu"}
_OTHER = {"Placeholder", "Const", "Mean", "MatMul", "_FusedMatMul", "Reshape", "Softmax", "AddN",
          "ConcatV2", "Pad", "MaxPool", "AvgPool", "Squeeze"}
SUPPORTED_OPS = frozenset(_CONV_OPS | _UNARY | _BINARY | _OTHER)


@dataclass
class TfjsGraph:
    """A TF.js graph model as numpy: nodes in file order, constants by node name."""

    nodes: list[dict]                 # {"name", "op", "inputs", "attrs"} (attrs decoded)
    weights: dict[str, np.ndarray]    # Const values, float32 / int32 / bool
    inputs: list[str]                 # Placeholder names
    meta: dict                        # the rest of model.json (format, signature, ...)


def _attr(value: dict):
    """One GraphDef attribute in the JSON form TF.js writes (``{"i": "1"}``, ``{"s": base64}``,
    ``{"list": {"i": [...]}}``...) as a plain Python value."""
    if "list" in value:
        lst = value["list"]
        if "i" in lst:
            return [int(v) for v in lst["i"]]
        if "f" in lst:
            return [float(v) for v in lst["f"]]
        if "s" in lst:
            return [base64.b64decode(v).decode() for v in lst["s"]]
        return []
    if "s" in value:
        return base64.b64decode(value["s"]).decode()
    if "i" in value:
        return int(value["i"])
    if "f" in value:
        return float(value["f"])
    if "b" in value:
        return bool(value["b"])
    if "type" in value:
        return value["type"]
    return value  # shape, tensor: kept raw (only Placeholder / Const carry them)


def read_weights(manifest: list[dict], folder: Path) -> dict[str, np.ndarray]:
    """The weights of a TF.js ``weightsManifest``: each group's shards are concatenated and
    read in order; quantised entries are restored to their original dtype
    (``q * scale + min`` for uint8/uint16, a cast for float16)."""
    out = {}
    for group in manifest:
        data = b"".join((folder / p).read_bytes() for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            shape = [int(d) for d in spec["shape"]]
            count = int(np.prod(shape, dtype=np.int64))
            quant = spec.get("quantization")
            if spec["dtype"] not in _DTYPES:
                raise NotImplementedError(f"TF.js weight dtype {spec['dtype']} ({spec['name']})")
            stored = np.dtype(_QUANTISED[quant["dtype"]] if quant else _DTYPES[spec["dtype"]]).newbyteorder("<")
            raw = np.frombuffer(data, stored, count, offset)
            offset += count * stored.itemsize
            if quant and quant["dtype"] != "float16":
                raw = raw.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"])
            out[spec["name"]] = raw.astype(_DTYPES[spec["dtype"]]).reshape(shape)
        if offset != len(data):
            raise ValueError(f"TF.js weights: manifest describes {offset} bytes, shards hold {len(data)}")
    return out


def read_tfjs(model_json: str | Path) -> TfjsGraph:
    """Read ``model.json`` and its weight shards (same folder) with numpy."""
    path = Path(model_json)
    model = json.loads(path.read_text())
    if model.get("format", "graph-model") != "graph-model":
        raise NotImplementedError(f"{path}: only TF.js graph models are supported, not {model['format']}")
    nodes = []
    for n in model["modelTopology"]["node"]:
        nodes.append({"name": n["name"], "op": n["op"], "inputs": [i for i in n.get("input", []) if not i.startswith("^")],
                      "attrs": {k: _attr(v) for k, v in n.get("attr", {}).items()}})
    weights = read_weights(model["weightsManifest"], path.parent)
    inputs = [n["name"] for n in nodes if n["op"] == "Placeholder"]
    meta = {k: v for k, v in model.items() if k not in ("modelTopology", "weightsManifest")}
    return TfjsGraph(nodes, weights, inputs, meta)


def _source(name: str) -> str:
    """Producer node of an input reference (``node``, ``node:0``); only first outputs occur in
    the supported ops."""
    base, _, port = name.partition(":")
    if port not in ("", "0"):
        raise NotImplementedError(f"TF.js graph: second outputs ({name}) are not supported")
    return base


def _needed_nodes(graph: TfjsGraph, outputs: list[str]) -> list[dict]:
    """The nodes the ``outputs`` depend on, in dependency order (model.json need not be
    topologically sorted)."""
    by_name = {n["name"]: n for n in graph.nodes}
    order, state = [], {}
    for out in outputs:
        stack = [(_source(out), False)]
        while stack:
            name, done = stack.pop()
            if done:
                state[name] = 2
                order.append(by_name[name])
                continue
            if state.get(name):
                continue
            if name not in by_name:
                raise KeyError(f"TF.js graph has no node {name!r}")
            state[name] = 1
            stack.append((name, True))
            stack.extend((_source(i), False) for i in reversed(by_name[name]["inputs"]) if not state.get(_source(i)))
    return order


def _conv_spec(node: dict, consts: dict) -> dict:
    """A convolution node as {kernel (TF layout), bias, activation, alpha, ...}; fused
    variants carry their BiasAdd and activation in ``fused_ops``."""
    a = node["attrs"]
    if a.get("data_format", "NHWC") != "NHWC":
        raise NotImplementedError(f"{node['name']}: data_format {a['data_format']}")
    ins = [_source(i) for i in node["inputs"]]
    fused = a.get("fused_ops", [])
    if any(f not in {"BiasAdd"} | _ACTIVATIONS for f in fused):
        raise NotImplementedError(f"{node['name']}: fused ops {fused}")
    spec = {"depthwise": "Depthwise" in node["op"], "kernel": consts[ins[1]], "bias": None,
            "activation": next((f for f in fused if f in _ACTIVATIONS), None), "alpha": None,
            "strides": a.get("strides", [1, 1, 1, 1])[1:3], "dilations": a.get("dilations", [1, 1, 1, 1])[1:3],
            "padding": a.get("padding", "VALID"), "explicit": a.get("explicit_paddings", []),
            "leak": a.get("leakyrelu_alpha", 0.2)}
    extra = ins[2:]
    if "BiasAdd" in fused:
        spec["bias"] = consts[extra.pop(0)]
    if spec["activation"] == "Prelu":
        spec["alpha"] = consts[extra.pop(0)]
    return spec


def _fold_affine(specs: dict, nodes: list[dict], consts: dict, keep: set) -> dict:
    """Fold per-channel ``Mul`` / ``Add`` consumers of activation-free convolutions into the
    convolution (kernel * s, bias * s + t), in place in ``specs``. Returns
    ``{eliminated node: convolution node}``."""
    consumers: dict[str, int] = {}
    for n in nodes:
        for i in n["inputs"]:
            consumers[_source(i)] = consumers.get(_source(i), 0) + 1
    tail = {name: name for name, spec in specs.items() if spec["activation"] is None}  # tensor -> its conv
    alias = {}
    for n in nodes:
        if n["op"] not in ("Mul", "Add", "AddV2", "BiasAdd") or len(n["inputs"]) != 2:
            continue
        a, b = (_source(i) for i in n["inputs"])
        src, other = (a, b) if a in tail else (b, a)
        if src not in tail or other not in consts or consumers.get(src, 0) != 1 or src in keep:
            continue
        spec, c = specs[tail[src]], consts[other].astype(np.float32)
        k = spec["kernel"]
        out_ch = k.shape[2] * k.shape[3] if spec["depthwise"] else k.shape[3]
        if c.size not in (1, out_ch) or (c.ndim > 1 and c.shape[:-1] != (1,) * (c.ndim - 1)):
            continue  # not a per-output-channel constant
        c = c.reshape(-1)
        if n["op"] == "Mul":
            spec["kernel"] = k * (c.reshape(k.shape[2], k.shape[3]) if spec["depthwise"] and c.size > 1 else c)
            if spec["bias"] is not None:
                spec["bias"] = spec["bias"] * c
        else:
            spec["bias"] = (spec["bias"] if spec["bias"] is not None else 0.0) + np.broadcast_to(c, (out_ch,))
        alias[n["name"]] = tail[n["name"]] = tail.pop(src)
    return alias


def tfjs_to_torch(graph: TfjsGraph, outputs: list[str] | str, fold: bool = True):
    """A torch ``nn.Module`` evaluating ``graph`` from its one Placeholder to ``outputs``
    (node names; only the nodes they need are kept). Input and rank-4 outputs are NCHW.
    ``forward(x)`` returns one tensor for a single output name, else a list. Weights are
    frozen float32 buffers; unknown ops raise NotImplementedError."""
    single = isinstance(outputs, str)
    outputs = [outputs] if single else list(outputs)
    nodes = _needed_nodes(graph, outputs)
    unknown = sorted({n["op"] for n in nodes} - SUPPORTED_OPS)
    if unknown:
        raise NotImplementedError(f"tfjs_to_torch: unsupported ops {unknown}")
    inputs = [n["name"] for n in nodes if n["op"] == "Placeholder"]
    if len(inputs) != 1:
        raise NotImplementedError("tfjs_to_torch handles graphs with one input")
    consts = {n["name"]: graph.weights[n["name"]] for n in nodes if n["op"] == "Const"}
    specs = {n["name"]: _conv_spec(n, consts) for n in nodes if n["op"] in _CONV_OPS}
    alias = _fold_affine(specs, nodes, consts, {_source(o) for o in outputs}) if fold else {}
    program = []
    for n in nodes:
        if n["op"] in ("Const", "Placeholder") or n["name"] in alias:
            continue
        ins = [alias.get(_source(i), _source(i)) for i in n["inputs"]]
        if n["op"] in _CONV_OPS:
            ins = ins[:1]  # kernel, bias and alpha are in the spec
        program.append((n["op"], n["name"], ins, n["attrs"], specs.get(n["name"])))
    used = {i for _, _, ins, _, _ in program for i in ins if i in consts}
    outs = [alias.get(_source(o), _source(o)) for o in outputs]
    return _make_module_class()(inputs[0], outs, program, {k: consts[k] for k in used}, single)


def _nchw_const(value: np.ndarray) -> np.ndarray:
    """A constant as it must look beside NCHW tensors: rank-4 values are transposed."""
    return value.transpose(0, 3, 1, 2) if value.ndim == 4 else value


def _torch_conv_weights(spec: dict) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(OIHW kernel, bias, groups) from TF's HWIO (Conv2D) or HWCM (depthwise) kernel."""
    k = np.asarray(spec["kernel"], np.float32)
    if spec["depthwise"]:
        h, w, c, m = k.shape
        # TF's depthwise output channel c*M + m is torch's grouped-conv channel c*M + m.
        return np.ascontiguousarray(k.transpose(2, 3, 0, 1).reshape(c * m, 1, h, w)), spec["bias"], c
    return np.ascontiguousarray(k.transpose(3, 2, 0, 1)), spec["bias"], 1


@functools.lru_cache(maxsize=None)
def _make_module_class():
    # Built on first use so that importing this module never imports torch.
    import torch

    from livedeid.recognizers.tfjs_ops import run_op

    class TfjsGraphModule(torch.nn.Module):
        def __init__(self, input_name, outputs, program, consts, single):
            super().__init__()
            self.input_name, self.outputs, self.single = input_name, outputs, single
            self.program = []
            self._buffer_of = {}
            for i, (name, value) in enumerate(sorted(consts.items())):
                self._add_buffer(f"c{i}", _nchw_const(value), name)
            for j, (op, name, ins, attrs, spec) in enumerate(program):
                params = {}
                if spec is not None:
                    kernel, bias, groups = _torch_conv_weights(spec)
                    params = {"groups": groups, **{k: spec[k] for k in
                              ("strides", "dilations", "padding", "explicit", "activation", "leak")}}
                    for key, value in (("kernel", kernel), ("bias", bias), ("alpha", spec["alpha"])):
                        if value is not None:
                            self._add_buffer(f"w{j}_{key}", np.asarray(value, np.float32), f"{name}/{key}")
                            params[key] = f"{name}/{key}"
                self.program.append((op, name, ins, attrs, params))

        def _add_buffer(self, buffer: str, value: np.ndarray, name: str):
            t = torch.from_numpy(np.ascontiguousarray(value))
            self.register_buffer(buffer, t.float() if t.is_floating_point() else t)
            self._buffer_of[name] = buffer

        def get(self, env, name):
            return env[name] if name in env else getattr(self, self._buffer_of[name])

        def forward(self, x):
            env = {self.input_name: x}
            for op, name, ins, attrs, params in self.program:
                env[name] = run_op(self, env, op, ins, attrs, params)
            outs = [env[o] for o in self.outputs]
            return outs[0] if self.single else outs

    return TfjsGraphModule
