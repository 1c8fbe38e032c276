"""dlib's face-recognition ResNet as a differentiable PyTorch module.

The privacy meter and the trainer need the *same* identity descriptor that dlib computes
(``dlib.face_recognition_model_v1``), but as a torch graph so an identity loss can
back-propagate to the image. This module reads dlib's own weight file,
``dlib_face_recognition_resnet_model_v1.dat`` from the ``face_recognition_models``
package, and rebuilds the network layer by layer; it needs neither dlib nor network
access (dlib itself is only used by the recogniser wrapper and the parity test).

The network (``anet_type`` of dlib's ``examples/dnn_face_recognition_ex.cpp``)
------------------------------------------------------------------------------
``input_rgb_image_sized<150>`` -> con 32 7x7/2 -> affine -> relu -> max_pool 3x3/2 ->
4 levels of residual blocks (32, 64, 128, 256 filters, then one more 256 level; every
level but the first starts with a down-sampling block) -> avg_pool_everything ->
``fc_no_bias`` 128. Each residual block is ``relu(block(x) + shortcut(x))`` with
``block = affine(con3x3(relu(affine(con3x3/stride(x)))))``. The batch norms of training are
frozen into per-channel ``affine`` layers (``y = gamma * x + beta``). Two dlib details
matter for exact parity and are reproduced here:

* strided convolutions and pools have **no padding** (dlib's default padding is 0 when the
  stride is not 1), so sizes go 150 -> 72 -> 35 -> 18 -> 9 -> 4 -> 2;
* in a down-sampling block the shortcut is ``avg_pool 2x2/2`` of the block input, and
  ``add_prev`` adds tensors of different shapes: the result takes the larger size in each
  dimension and the missing entries count as zero (more channels on the block side, and on
  the 18 -> 9 level a 9x9 shortcut against an 8x8 block output).

The output is dlib's descriptor itself: the raw 128-d ``fc`` output, *not* re-normalised
(``loss_metric`` returns it as is; its norm is close to, but not exactly, 1).

File format (dlib ``serialize``)
--------------------------------
Integers are a length byte (low nibble: number of bytes that follow, bit 7: negative)
then the magnitude's bytes, little-endian. Strings are an integer length then the bytes.
Scalar floats/doubles are two such integers, a mantissa and a base-2 exponent
(``dlib/float_details.h``). Bools are the characters ``'0'``/``'1'``. Tensors (version 2)
are four integer dims ``(n, k, nr, nc)`` then raw little-endian float32s. A network
serialises recursively, outermost layer first: ``add_loss_layer`` writes its loss then
its subnet; every ``add_layer`` writes its version, its subnet, then its layer details and
book-keeping; ``tag``/``skip`` layers write only a version and their subnet. So the file is
all the versions top-down, the input layer, then each computational layer's details
bottom-up. Tag and skip *ids* are template arguments and are not in the file, so the
topology comes from :func:`_anet_layers` (the example's C++ type) and the reader checks
every version number, layer name and shape in the file against it.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from livedeid.core.errors import UserError

CHIP_SIZE = 150
CHIP_PADDING = 0.25
DESCRIPTOR_DIM = 128
MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"


def default_model_path() -> Path:
    """Path of the ResNet weights inside the installed ``face_recognition_models``.

    The package is located, not imported: its ``__init__`` imports ``pkg_resources``,
    which newer setuptools no longer ships."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "face_recognition_models is not installed; install the 'recognizers' extra "
            "(pip install face-recognition-models)"
        )
    path = Path(spec.submodule_search_locations[0]) / "models" / MODEL_FILE
    if not path.is_file():
        raise UserError(f"{MODEL_FILE} not found in {path.parent}")
    return path


# --------------------------------------------------------------------------------------
# dlib serialisation primitives


class _Reader:
    """Sequential reader of dlib's ``serialize`` encoding over an in-memory buffer."""

    def __init__(self, data: bytes, name: str):
        self.data = data
        self.pos = 0
        self.name = name

    def _fail(self, what: str) -> ValueError:
        return ValueError(f"{self.name}: {what} at byte {self.pos}")

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise self._fail(f"unexpected end of file reading {n} bytes")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def read_int(self) -> int:
        head = self.raw(1)[0]
        size = head & 0x0F
        if size > 8 or head & 0x70:
            raise self._fail(f"bad integer header 0x{head:02x}")
        value = int.from_bytes(self.raw(size), "little") if size else 0
        return -value if head & 0x80 else value

    def read_float(self) -> float:
        mantissa = self.read_int()
        exponent = self.read_int()
        # float_details reserves these exponents for inf, -inf and nan.
        special = {32000: float("inf"), 32001: float("-inf"), 32002: float("nan")}
        if exponent in special:
            return special[exponent]
        return float(np.ldexp(np.float64(mantissa), exponent))

    def read_bool(self) -> bool:
        ch = self.raw(1)
        if ch not in (b"0", b"1"):
            raise self._fail(f"bad bool {ch!r}")
        return ch == b"1"

    def read_str(self) -> str:
        return self.raw(self.read_int()).decode("latin-1")

    def expect_string(self, expected: str) -> None:
        start = self.pos
        got = self.read_str()
        if got != expected:
            self.pos = start
            raise self._fail(f"expected {expected!r}, found {got!r}")

    def expect_int(self, expected: int, what: str) -> None:
        start = self.pos
        got = self.read_int()
        if got != expected:
            self.pos = start
            raise self._fail(f"expected {what} {expected}, found {got}")

    def tensor(self) -> np.ndarray:
        """A ``resizable_tensor``: version 2 stores raw little-endian float32s."""
        self.expect_int(2, "tensor version")
        shape = tuple(self.read_int() for _ in range(4))
        count = int(np.prod(shape))
        values = np.frombuffer(self.raw(4 * count), dtype="<f4")
        return values.reshape(shape).astype(np.float32)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        self.expect_int(1, "alias_tensor version")
        return tuple(self.read_int() for _ in range(4))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------
# The network's topology (outermost layer first), as the C++ type spells it.


@dataclass
class _Node:
    kind: str  # "con", "affine", "relu", "max_pool", "avg_pool", "add_prev", "fc", "tag", "skip"
    tag: int = 0  # the tag id for tag / skip / add_prev
    filters: int = 0  # con / fc outputs
    size: int = 0  # kernel or pool window (0: the whole input)
    stride: int = 1
    params: dict = field(default_factory=dict)  # filled from the file


def _block(n: int, stride: int) -> list[_Node]:
    # BN<con<N,3,3,1,1,relu<BN<con<N,3,3,stride,stride,SUBNET>>>>>
    return [
        _Node("affine"),
        _Node("con", filters=n, size=3, stride=1),
        _Node("relu"),
        _Node("affine"),
        _Node("con", filters=n, size=3, stride=stride),
    ]


def _ares(n: int) -> list[_Node]:
    # relu<add_prev1<block<N,affine,1,tag1<SUBNET>>>>
    return [_Node("relu"), _Node("add_prev", tag=1), *_block(n, 1), _Node("tag", tag=1)]


def _ares_down(n: int) -> list[_Node]:
    # relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,affine,2,tag1<SUBNET>>>>>>>
    return [
        _Node("relu"),
        _Node("add_prev", tag=2),
        _Node("avg_pool", size=2, stride=2),
        _Node("skip", tag=1),
        _Node("tag", tag=2),
        *_block(n, 2),
        _Node("tag", tag=1),
    ]


def _anet_layers() -> list[_Node]:
    """``anet_type`` below its loss layer, outermost first."""
    return [
        _Node("fc", filters=DESCRIPTOR_DIM),
        _Node("avg_pool", size=0, stride=1),  # avg_pool_everything
        *_ares_down(256),  # alevel0
        *_ares(256), *_ares(256), *_ares_down(256),  # alevel1
        *_ares(128), *_ares(128), *_ares_down(128),  # alevel2
        *_ares(64), *_ares(64), *_ares(64), *_ares_down(64),  # alevel3
        *_ares(32), *_ares(32), *_ares(32),  # alevel4
        _Node("max_pool", size=3, stride=2),
        _Node("relu"),
        _Node("affine"),
        _Node("con", filters=32, size=7, stride=2),
    ]


_COMPUTATIONAL = {"con", "affine", "relu", "max_pool", "avg_pool", "add_prev", "fc"}


def _read_details(r: _Reader, node: _Node) -> None:
    """One layer's details, checked against the expected node; weights go to node.params."""
    p = node.params
    if node.kind == "con":
        r.expect_string("con_4")
        params = r.tensor().reshape(-1)
        num_filters, nr, nc, sy, sx, py, px = (r.read_int() for _ in range(7))
        filters = r.alias_tensor()
        biases = r.alias_tensor()
        for _ in range(4):  # learning-rate and weight-decay multipliers: training only
            r.read_float()
        if (num_filters, nr, nc, sy, sx) != (node.filters, node.size, node.size, node.stride, node.stride):
            raise ValueError(f"{r.name}: con layer {(num_filters, nr, nc, sy, sx)} does not match the ResNet")
        n_w = int(np.prod(filters))
        if n_w + int(np.prod(biases)) != params.size or biases[1] != num_filters:
            raise ValueError(f"{r.name}: con parameter sizes do not add up")
        # dlib filters are (num_filters, k, nr, nc), torch's OIHW order.
        p["weight"] = params[:n_w].reshape(filters)
        p["bias"] = params[n_w:].reshape(num_filters)
        p["padding"] = (py, px)
    elif node.kind == "affine":
        r.expect_string("affine_")
        params = r.tensor().reshape(-1)
        gamma = r.alias_tensor()
        beta = r.alias_tensor()
        mode = r.read_int()
        # CONV_MODE (0): one gamma/beta per channel, shaped (1, k, 1, 1).
        if mode != 0 or gamma != beta or gamma[0] != 1 or gamma[2:] != (1, 1):
            raise ValueError(f"{r.name}: unexpected affine layer mode {mode} / shape {gamma}")
        k = gamma[1]
        if params.size != 2 * k:
            raise ValueError(f"{r.name}: affine parameter size {params.size} != 2*{k}")
        p["gamma"] = params[:k]
        p["beta"] = params[k:]
    elif node.kind == "relu":
        r.expect_string("relu_")
    elif node.kind == "add_prev":
        r.expect_string("add_prev_")
    elif node.kind in ("max_pool", "avg_pool"):
        r.expect_string(f"{node.kind}_2")
        nr, nc, sy, sx, py, px = (r.read_int() for _ in range(6))
        if (nr, nc, sy, sx) != (node.size, node.size, node.stride, node.stride):
            raise ValueError(f"{r.name}: {node.kind} {(nr, nc, sy, sx)} does not match the ResNet")
        p["padding"] = (py, px)
    elif node.kind == "fc":
        r.expect_string("fc_2")
        num_outputs = r.read_int()
        num_inputs = r.read_int()
        params = r.tensor().reshape(-1)
        weights = r.alias_tensor()
        r.alias_tensor()  # biases: empty for fc_no_bias
        bias_mode = r.read_int()
        for _ in range(4):
            r.read_float()
        if num_outputs != node.filters or bias_mode != 1 or params.size != num_inputs * num_outputs:
            raise ValueError(f"{r.name}: fc layer does not match fc_no_bias<{node.filters}>")
        if weights[:2] != (num_inputs, num_outputs):
            raise ValueError(f"{r.name}: fc weight shape {weights}")
        # dlib computes out = in @ W with W (num_inputs, num_outputs); torch wants W.T.
        p["weight"] = params.reshape(num_inputs, num_outputs).T.copy()
    else:  # pragma: no cover - the topology table only holds the kinds above
        raise AssertionError(node.kind)


def _read_bookkeeping(r: _Reader, bottom: bool) -> None:
    """``add_layer``'s training state after its details: flags and (empty) tensors."""
    for _ in range(3):  # this_layer_setup_called, gradient_input_is_stale, output disabled
        r.read_bool()
    r.tensor()  # x_grad
    r.tensor()  # cached_output
    r.tensor()  # params_grad, or grad_final for the layer on the input
    if bottom:
        r.read_int()  # _sample_expansion_factor


def read_dlib_resnet(path: str | Path) -> tuple[list[_Node], np.ndarray]:
    """Parse the .dat file. Returns the layers (outermost first, weights in ``params``) and
    the input layer's per-channel mean in 0..255 units (R, G, B)."""
    path = Path(path)
    r = _Reader(path.read_bytes(), path.name)
    r.expect_int(1, "add_loss_layer version")
    r.expect_string("loss_metric_2")
    r.read_float()  # margin
    r.read_float()  # distance threshold
    nodes = _anet_layers()
    for i, node in enumerate(nodes):
        if node.kind in _COMPUTATIONAL:
            # The layer directly on the input layer is a separate add_layer specialisation.
            r.expect_int(3 if i == len(nodes) - 1 else 2, f"add_layer version ({node.kind})")
        else:
            r.expect_int(1, f"{node.kind} layer version")
    r.expect_string("input_rgb_image_sized")
    mean = np.array([r.read_float(), r.read_float(), r.read_float()], dtype=np.float64)
    if (r.read_int(), r.read_int()) != (CHIP_SIZE, CHIP_SIZE):
        raise ValueError(f"{r.name}: input size is not {CHIP_SIZE}x{CHIP_SIZE}")
    for i in range(len(nodes) - 1, -1, -1):
        if nodes[i].kind in _COMPUTATIONAL:
            _read_details(r, nodes[i])
            _read_bookkeeping(r, bottom=i == len(nodes) - 1)
    if r.pos != len(r.data):
        raise ValueError(f"{r.name}: {len(r.data) - r.pos} trailing bytes")
    return nodes, mean


# --------------------------------------------------------------------------------------
# torch modules


class _Affine(nn.Module):
    """A frozen batch norm: per-channel ``gamma * x + beta``."""

    def __init__(self, gamma: np.ndarray, beta: np.ndarray):
        super().__init__()
        self.gamma = nn.Parameter(torch.from_numpy(gamma).view(1, -1, 1, 1))
        self.beta = nn.Parameter(torch.from_numpy(beta).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma + self.beta


class _Stateless(nn.Module):
    """tag / skip / add_prev: they act on the tag table, which the parent loop holds."""

    def __init__(self, kind: str, tag: int):
        super().__init__()
        self.kind = kind
        self.tag = tag

    def extra_repr(self) -> str:
        return f"{self.kind}{self.tag}"


def _add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``tt::add`` for tensors of different shapes: the output takes the larger size
    of each dimension, and entries outside the smaller tensor count as zero."""
    if a.shape == b.shape:
        return a + b
    shape = [max(x, y) for x, y in zip(a.shape, b.shape)]

    def grow(t: torch.Tensor) -> torch.Tensor:
        # F.pad takes (last dim lo, hi, previous dim lo, hi, ...); pad only at the end.
        pads: list[int] = []
        for have, want in zip(reversed(t.shape), reversed(shape)):
            pads += [0, want - have]
        return F.pad(t, pads) if any(pads) else t

    return grow(a) + grow(b)


class DlibResNet(nn.Module):
    """dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``).

    ``forward(x)``: ``x`` float32 ``(N, 3, 150, 150)``, **RGB**, values in [0, 1] (a dlib face
    chip, uint8 / 255, e.g. from the dlib recogniser's own alignment). Returns float32 ``(N, 128)``, the same
    descriptors dlib's ``face_recognition_model_v1.compute_face_descriptor`` gives for that
    chip, not re-normalised. Differentiable with respect to ``x``.

    Build it with :func:`load_dlib_resnet`.
    """

    def __init__(self, nodes: list[_Node], mean_rgb: np.ndarray):
        super().__init__()
        # dlib's input layer feeds (pixel - mean) / 256 with pixels in 0..255.
        self.register_buffer("mean", torch.tensor(mean_rgb, dtype=torch.float32).view(1, 3, 1, 1))
        layers: list[nn.Module] = []
        for node in reversed(nodes):  # execution order: input side first
            p = node.params
            if node.kind == "con":
                conv = nn.Conv2d(
                    p["weight"].shape[1], node.filters, node.size, stride=node.stride, padding=p["padding"]
                )
                conv.weight.data = torch.from_numpy(p["weight"].copy())
                conv.bias.data = torch.from_numpy(p["bias"].copy())
                layers.append(conv)
            elif node.kind == "affine":
                layers.append(_Affine(p["gamma"].copy(), p["beta"].copy()))
            elif node.kind == "relu":
                layers.append(nn.ReLU())
            elif node.kind == "max_pool":
                # torch pads max pooling with -inf, so padding never wins the max.
                layers.append(nn.MaxPool2d(node.size, node.stride, padding=p["padding"]))
            elif node.kind == "avg_pool":
                if node.size == 0:
                    layers.append(nn.AdaptiveAvgPool2d(1))  # avg_pool_everything
                else:
                    # dlib averages only over the window's pixels inside the image.
                    layers.append(
                        nn.AvgPool2d(node.size, node.stride, padding=p["padding"], count_include_pad=False)
                    )
            elif node.kind == "fc":
                fc = nn.Linear(p["weight"].shape[1], node.filters, bias=False)
                fc.weight.data = torch.from_numpy(p["weight"])
                layers.append(fc)
            else:
                layers.append(_Stateless(node.kind, node.tag))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, CHIP_SIZE, CHIP_SIZE):
            raise ValueError(f"DlibResNet expects (N, 3, {CHIP_SIZE}, {CHIP_SIZE}) RGB, got {tuple(x.shape)}")
        x = (x * 255.0 - self.mean) / 256.0
        tags: dict[int, torch.Tensor] = {}
        for layer in self.layers:
            if isinstance(layer, _Stateless):
                # dlib's layer<tagN>(sub) is the nearest tagN below, i.e. the latest one set.
                if layer.kind == "tag":
                    tags[layer.tag] = x
                elif layer.kind == "skip":
                    x = tags[layer.tag]
                else:  # add_prev
                    x = _add_padded(x, tags[layer.tag])
            elif isinstance(layer, nn.Linear):
                x = layer(x.flatten(1))
            else:
                x = layer(x)
        return x


def load_dlib_resnet(path: str | Path | None = None) -> DlibResNet:
    """Build :class:`DlibResNet` from dlib's .dat file (default: the one shipped in
    ``face_recognition_models``). Offline and uncached. Returned in eval mode with its
    weights frozen (``requires_grad=False``): it is a fixed identity reference; gradients
    still flow to the input."""
    nodes, mean = read_dlib_resnet(default_model_path() if path is None else path)
    net = DlibResNet(nodes, mean)
    net.requires_grad_(False)
    return net.eval()


def chip_to_tensor(chips: np.ndarray) -> torch.Tensor:
    """uint8 chips ``(N, 150, 150, 3)`` or one ``(150, 150, 3)`` -> float32 ``(N, 3, 150, 150)``
    in [0, 1], the input of :class:`DlibResNet`."""
    arr = np.asarray(chips, dtype=np.uint8)
    if arr.ndim == 3:
        arr = arr[None]
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
