"""The TensorFlow ops of :mod:`livedeid.recognizers.tfjs_torch` in torch, on NCHW tensors.

Every rank-4 tensor is NCHW here while the graph's attributes speak NHWC: axes, paddings,
reshapes and broadcasting constants are translated op by op (``_NHWC_TO_NCHW``). Inference
semantics throughout; everything is differentiable (the recogniser is attacked through it).
torch is imported at module level: only the torch module built by ``tfjs_torch`` imports this.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_NHWC_TO_NCHW = {0: 0, 1: 2, 2: 3, 3: 1}


def _axis(axis: int, rank: int) -> int:
    axis = int(axis) % rank
    return _NHWC_TO_NCHW[axis] if rank == 4 else axis


def _to_nhwc(x):
    return x.permute(0, 2, 3, 1) if x.dim() == 4 else x


def _to_nchw(x):
    return x.permute(0, 3, 1, 2) if x.dim() == 4 else x


def _broadcastable(a, b):
    """(a, b) with a lower-rank operand of a rank-4 (NCHW) one laid out as NCHW: TF
    broadcasts trailing NHWC dimensions, i.e. a length-C vector runs along channels."""
    if a.dim() == 4 and 0 < b.dim() < 4:
        b = _to_nchw(b.reshape((1,) * (4 - b.dim()) + tuple(b.shape)))
    elif b.dim() == 4 and 0 < a.dim() < 4:
        a = _to_nchw(a.reshape((1,) * (4 - a.dim()) + tuple(a.shape)))
    return a, b


def _same_pads(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF 'SAME' padding of one dimension: output ceil(size / stride), the odd pixel of
    padding at the end (bottom / right)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _padded(x, k_hw, strides, dilations, padding, explicit):
    """x padded for a TF convolution or pooling ('SAME', 'VALID' or 'EXPLICIT')."""
    if padding == "VALID":
        return x
    if padding == "EXPLICIT":
        (t, b), (l, r) = explicit[2:4], explicit[4:6]
    else:
        t, b = _same_pads(x.shape[2], k_hw[0], strides[0], dilations[0])
        l, r = _same_pads(x.shape[3], k_hw[1], strides[1], dilations[1])
    return F.pad(x, (l, r, t, b)) if (t, b, l, r) != (0, 0, 0, 0) else x


def _activation(x, name, alpha=None, leak=0.2):
    if name is None:
        return x
    if name == "Relu":
        return F.relu(x)
    if name == "Relu6":
        return F.hardtanh(x, 0.0, 6.0)
    if name == "Prelu":
        a, x = _broadcastable(alpha, x)
        if x.dim() == 4 and a.numel() == x.shape[1]:
            return F.prelu(x, a.reshape(-1))
        return torch.where(x >= 0, x, x * a)
    if name == "LeakyRelu":
        return F.leaky_relu(x, leak)
    if name == "Elu":
        return F.elu(x)
    if name == "Sigmoid":
        return torch.sigmoid(x)
    if name == "Tanh":
        return torch.tanh(x)
    raise NotImplementedError(name)


def _conv(module, x, p):
    w = module.get({}, p["kernel"])
    b = module.get({}, p["bias"]) if "bias" in p else None
    x = _padded(x, w.shape[2:], p["strides"], p["dilations"], p["padding"], p["explicit"])
    y = F.conv2d(x, w, b, stride=tuple(p["strides"]), dilation=tuple(p["dilations"]), groups=p["groups"])
    return _activation(y, p["activation"], module.get({}, p["alpha"]) if "alpha" in p else None, p["leak"])


def _matmul(args, attrs):
    a, b = args[0], args[1]
    a = a.transpose(-1, -2) if attrs.get("transpose_a") else a
    b = b.transpose(-1, -2) if attrs.get("transpose_b") else b
    y = a @ b
    fused = attrs.get("fused_ops", [])
    extra = list(args[2:])
    if "BiasAdd" in fused:
        y = y + extra.pop(0)
    act = next((f for f in fused if f != "BiasAdd"), None)
    return _activation(y, act, extra[0] if act == "Prelu" else None, attrs.get("leakyrelu_alpha", 0.2))


def _reshape(x, shape):
    y = _to_nhwc(x).reshape([int(d) for d in shape.tolist()])
    return _to_nchw(y)


def _reduce_mean(x, axes, keep):
    axes = [int(a) for a in axes.reshape(-1).tolist()]
    rank = x.dim()
    if rank == 4 and not keep:
        # Dropping axes leaves a tensor whose layout no longer matches NCHW unless the
        # channel axis is kept last; reduce in NHWC so the result is TF's.
        return _to_nhwc(x).mean(dim=[a % rank for a in axes])
    return x.mean(dim=[_axis(a, rank) for a in axes], keepdim=bool(keep))


def _pool(op, x, attrs):
    k, s = attrs["ksize"][1:3], attrs["strides"][1:3]
    if op == "MaxPool":
        if attrs["padding"] == "SAME":  # TF's max ignores the padding: pad with -inf
            t, b = _same_pads(x.shape[2], k[0], s[0], 1)
            l, r = _same_pads(x.shape[3], k[1], s[1], 1)
            x = F.pad(x, (l, r, t, b), value=float("-inf"))
        return F.max_pool2d(x, k, s)
    if attrs["padding"] == "SAME":
        # TF averages over the valid pixels only.
        xp = _padded(x, k, s, (1, 1), "SAME", [])
        ones = _padded(torch.ones_like(x[:, :1]), k, s, (1, 1), "SAME", [])
        return F.avg_pool2d(xp, k, s) / F.avg_pool2d(ones, k, s)
    return F.avg_pool2d(x, k, s)


def _binary(op, a, b):
    a, b = _broadcastable(a, b)
    if op in ("Add", "AddV2", "BiasAdd"):
        return a + b
    if op == "Sub":
        return a - b
    if op == "Mul":
        return a * b
    if op == "RealDiv":
        return a / b
    if op == "Maximum":
        return torch.maximum(a, b.to(a.dtype)) if b.dim() else torch.clamp(a, min=float(b))
    if op == "Minimum":
        return torch.minimum(a, b.to(a.dtype)) if b.dim() else torch.clamp(a, max=float(b))
    if op == "Prelu":
        return _activation(a, "Prelu", b)
    raise NotImplementedError(op)


_UNARY = {"Relu": F.relu, "Relu6": lambda x: F.hardtanh(x, 0.0, 6.0), "Elu": F.elu, "Sigmoid": torch.sigmoid,
          "Tanh": torch.tanh, "Identity": lambda x: x, "Neg": torch.neg, "Sqrt": torch.sqrt, "Rsqrt": torch.rsqrt,
          "Square": torch.square, "Exp": torch.exp, "Log": torch.log, "Abs": torch.abs}


def run_op(module, env: dict, op: str, ins: list[str], attrs: dict, params: dict):
    """One graph node: ``op`` on the tensors named ``ins`` (from ``env`` or the module's
    constant buffers), NCHW in, NCHW out."""
    if params:  # a convolution, weights in the module
        return _conv(module, module.get(env, ins[0]), params)
    args = [module.get(env, n) for n in ins]
    if op in _UNARY:
        return _UNARY[op](args[0])
    if op == "LeakyRelu":
        return F.leaky_relu(args[0], attrs.get("alpha", 0.2))
    if len(args) == 2 and op in ("Add", "AddV2", "BiasAdd", "Sub", "Mul", "RealDiv", "Maximum", "Minimum", "Prelu"):
        return _binary(op, args[0], args[1])
    if op == "AddN":
        return sum(args[1:], args[0])
    if op in ("MatMul", "_FusedMatMul"):
        return _matmul(args, attrs)
    if op == "Mean":
        return _reduce_mean(args[0], args[1], attrs.get("keep_dims", False))
    if op == "Reshape":
        return _reshape(args[0], args[1])
    if op == "Softmax":
        return torch.softmax(args[0], dim=_axis(-1, args[0].dim()))
    if op == "ConcatV2":
        return torch.cat(args[:-1], dim=_axis(int(args[-1]), args[0].dim()))
    if op == "Squeeze":
        dims = attrs.get("squeeze_dims", [])
        y = _to_nhwc(args[0])
        y = y.squeeze() if not dims else y.squeeze(tuple(int(d) for d in dims))
        return _to_nchw(y) if y.dim() == 4 else y
    if op == "Pad":
        pads = args[1].tolist()
        if args[0].dim() != 4 or pads[0] != [0, 0] or pads[3] != [0, 0]:
            raise NotImplementedError("Pad other than spatial padding of an NHWC tensor")
        return F.pad(args[0], (pads[2][0], pads[2][1], pads[1][0], pads[1][1]))
    if op in ("MaxPool", "AvgPool"):
        return _pool(op, args[0], attrs)
    raise NotImplementedError(f"tfjs op {op}")
