"""ONNX files as ONNX Runtime sessions and as differentiable torch modules.

The recognisers' zoo files are weight-quantised (int8, some block-quantised). ONNX
Runtime rejects YuNet's block-quantised ``DequantizeLinear`` nodes (per-tensor scales
tagged with a block size), so such weights are de-quantised to float32 in memory first
(:func:`dequantize_onnx`); the SFace file runs unchanged once its stale graph inputs are
dropped (:func:`load_onnx`). :func:`onnx_to_torch` is a small interpreter of the ops the
SFace graph uses, so a training loop can back-propagate through the judge.

Nothing here imports onnx, onnxruntime or torch at module import time.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np


def load_onnx(path: str | Path):
    """Load an ONNX file and drop graph inputs that no node reads or that shadow an
    initializer. The SFace file (old IR 6 export, then quantised) still lists the original
    float weights as graph inputs; ONNX Runtime would demand them as feeds."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    initialised = {t.name for t in graph.initializer}
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [i for i in graph.input if i.name in used and i.name not in initialised]
    del graph.input[:]
    graph.input.extend(keep)
    return model


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def dequantize_linear(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None,
                      axis: int = 1, block_size: int = 0) -> np.ndarray:
    """ONNX ``DequantizeLinear`` (opset 21, incl. blocked quantisation) in numpy:
    ``(x - zero_point) * scale`` with per-tensor, per-axis or per-block scales."""
    xf = x.astype(np.float32)
    s = np.asarray(scale, np.float32)
    z = np.zeros_like(s) if zero_point is None else np.asarray(zero_point).astype(np.float32)
    if s.size == 1 and not block_size:
        return (xf - z.reshape(())) * s.reshape(())
    ax = axis % x.ndim
    if block_size:
        # Blocked: scale has x's rank, with ceil(dim / block_size) entries along `axis`;
        # every block of `block_size` consecutive elements shares one scale.
        idx = np.arange(x.shape[ax]) // block_size
        s = np.take(s, idx, axis=ax)
        z = np.take(z, idx, axis=ax)
    else:
        shape = [1] * x.ndim
        shape[ax] = -1
        s = s.reshape(shape)
        z = z.reshape(shape)
    return (xf - z) * s


def _dequantize_node(node, consts: dict[str, np.ndarray]) -> np.ndarray:
    """The value of a ``DequantizeLinear`` node whose inputs are all in ``consts``."""
    a = _attrs(node)
    zp = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else None
    return dequantize_linear(consts[node.input[0]], consts[node.input[1]], zp,
                             a.get("axis", 1), a.get("block_size", 0))


def _const_fold(model) -> tuple[dict[str, np.ndarray], list]:
    """Evaluate in numpy every node whose inputs are all constant (de-quantisation, weight
    reshapes, Constant). Returns the constants and the nodes left to run."""
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    remaining = []
    for node in model.graph.node:
        op = node.op_type
        inputs = [n for n in node.input if n]
        if op == "Constant":
            if "value" not in _attrs(node):
                raise NotImplementedError("Constant nodes other than tensor 'value'")
            consts[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
        elif op == "DequantizeLinear" and all(n in consts for n in inputs):
            consts[node.output[0]] = _dequantize_node(node, consts)
        elif op == "Reshape" and all(n in consts for n in inputs):
            data, shape = consts[node.input[0]], consts[node.input[1]].astype(np.int64)
            shape = [data.shape[i] if d == 0 else int(d) for i, d in enumerate(shape)]
            consts[node.output[0]] = data.reshape(shape)
        else:
            remaining.append(node)
    return consts, remaining


def dequantize_onnx(model):
    """A float32 copy of a weight-quantised ONNX model: every ``DequantizeLinear`` on
    constant weights is replaced by its float result (an initializer)."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    new_nodes, new_inits = [], []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and all(n in consts for n in node.input if n):
            new_inits.append(numpy_helper.from_array(_dequantize_node(node, consts), node.output[0]))
        else:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {n for node in new_nodes for n in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    return out



def ort_session(model):
    """A CPU ONNX Runtime session of an in-memory model."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # the zoo files trigger harmless "unused initializer" warnings
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def onnx_to_torch(model):
    """A torch ``nn.Module`` that evaluates an ONNX graph (one input, one output) with
    differentiable torch ops. Constant sub-graphs (de-quantisation, weight reshapes) are
    folded to float32 buffers first. Supports the ops of the SFace graph (Conv,
    BatchNormalization, PRelu, Gemm, Flatten, Dropout, Sub/Mul/Add, Relu, Reshape) and raises
    NotImplementedError for anything else; weights are frozen buffers (the judge is not
    trained). Inference semantics: Dropout is the identity, BatchNorm uses running stats."""
    consts, nodes = _const_fold(model)
    graph_inputs = [i.name for i in model.graph.input if i.name not in consts]
    if len(graph_inputs) != 1 or len(model.graph.output) != 1:
        raise NotImplementedError("onnx_to_torch handles one input and one output")
    supported = {"Conv", "BatchNormalization", "PRelu", "Gemm", "Flatten", "Dropout", "Sub", "Mul",
                 "Add", "Relu", "Reshape"}
    unknown = sorted({n.op_type for n in nodes} - supported)
    if unknown:
        raise NotImplementedError(f"onnx_to_torch: unsupported ops {unknown}")
    needed = {n for node in nodes for n in node.input if n in consts}
    return _make_graph_module_class()(
        graph_inputs[0],
        model.graph.output[0].name,
        [(n.op_type, list(n.input), list(n.output), _attrs(n)) for n in nodes],
        {name: consts[name] for name in needed},
    )



def _conv(F, args, a):
    pads = a.get("pads", [0, 0, 0, 0])
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise NotImplementedError("Conv auto_pad")
    h0, w0, h1, w1 = pads
    inp = args[0]
    if (h0, w0) != (h1, w1):
        inp, h0, w0 = F.pad(inp, (w0, w1, h0, h1)), 0, 0
    return F.conv2d(inp, args[1], args[2] if len(args) > 2 else None,
                    stride=tuple(a.get("strides", [1, 1])), padding=(h0, w0),
                    dilation=tuple(a.get("dilations", [1, 1])), groups=a.get("group", 1))


def _gemm(args, a):
    A = args[0].transpose(-1, -2) if a.get("transA", 0) else args[0]
    B = args[1].transpose(-1, -2) if a.get("transB", 0) else args[1]
    y = a.get("alpha", 1.0) * (A @ B)
    if len(args) > 2 and args[2] is not None:
        y = y + a.get("beta", 1.0) * args[2]
    return y


def _run_node(op: str, args: list, a: dict):
    """One ONNX node in torch (inference semantics)."""
    import torch
    import torch.nn.functional as F

    if op == "Conv":
        return _conv(F, args, a)
    if op == "BatchNormalization":
        return F.batch_norm(args[0], args[3], args[4], args[1], args[2], False, 0.0, a.get("epsilon", 1e-5))
    if op == "PRelu":
        x, slope = args
        # A per-channel slope is F.prelu's own case: one fused kernel, forward and backward
        # (the where/mul form below was ~45 % of SFace's training step on the CPU).
        if tuple(slope.shape) == (x.shape[1],) + (1,) * (x.dim() - 2):
            return F.prelu(x, slope.reshape(-1))
        return torch.where(x >= 0, x, x * slope)
    if op == "Relu":
        return F.relu(args[0])
    if op == "Gemm":
        return _gemm(args, a)
    if op == "Flatten":
        axis = a.get("axis", 1)
        return args[0].reshape(int(np.prod(args[0].shape[:axis])), -1)
    if op == "Reshape":
        shape = [args[0].shape[i] if int(d) == 0 else int(d) for i, d in enumerate(args[1].tolist())]
        return args[0].reshape(shape)
    if op == "Dropout":
        return args[0]
    if op == "Sub":
        return args[0] - args[1]
    if op == "Mul":
        return args[0] * args[1]
    if op == "Add":
        return args[0] + args[1]
    raise NotImplementedError(op)  # guarded in onnx_to_torch


@functools.lru_cache(maxsize=None)
def _make_graph_module_class():
    # Built on first use so that importing this module never imports torch.
    import torch

    class OnnxGraphModule(torch.nn.Module):
        def __init__(self, input_name, output_name, nodes, consts):
            super().__init__()
            self.input_name = input_name
            self.output_name = output_name
            self.nodes = nodes
            self._buffer_of = {}
            for i, (name, value) in enumerate(sorted(consts.items())):
                t = torch.from_numpy(np.ascontiguousarray(value))
                if t.is_floating_point():
                    t = t.float()
                self.register_buffer(f"c{i}", t)
                self._buffer_of[name] = f"c{i}"

        def _get(self, env, name):
            if name in env:
                return env[name]
            return getattr(self, self._buffer_of[name])

        def forward(self, x, taps=()):
            """The graph's output, or, with ``taps`` (node output names), those
            intermediate tensors (the graph runs only as far as they need)."""
            env = {self.input_name: x}
            wanted = set(taps)
            for op, ins, outs, a in self.nodes:
                if taps and wanted.issubset(env):
                    break
                args = [self._get(env, n) if n else None for n in ins]
                env[outs[0]] = _run_node(op, args, a)
            if taps:
                return [env[n] for n in taps]
            return env[self.output_name]

    return OnnxGraphModule
