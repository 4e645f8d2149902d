"""VGG19 feature extractor with activations tapped by their standard names.

torchvision's ``vgg19().features`` is a flat ``Sequential`` of 37 modules. We give each
index its name from Simonyan & Zisserman's table (``conv1_1``, ``relu1_1``, ...,
``pool5``) so that presets never speak in magic indices.

``convX_Y`` is the convolution's output *before* its ReLU, ``reluX_Y`` after it. The
chapter taps ``model[:conv_index + 1](x)``, i.e. pre-ReLU conv outputs, which is what
its ``book`` preset means by "the first five convolutional layers". torchvision builds
its ReLUs with ``inplace=True``, which would silently turn a tapped conv output into its
ReLU; we therefore apply ReLU functionally, in place only when nobody tapped the conv.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .conv_methods import METHODS, Method
from .layers import LAYER_NAMES, TAPPABLE_LAYERS
from .losses import relu_and_gram
from .winograd import Winograd3x3

__all__ = [
    "LAYER_NAMES",
    "TAPPABLE_LAYERS",
    "FeatureExtractor",
    "WeightsError",
    "WeightsInfo",
    "avg_pool_2x2",
    "build_extractor",
    "load_vgg19_features",
]

logger = logging.getLogger(__name__)

_INDEX = {name: i for i, name in enumerate(LAYER_NAMES)}

Pooling = Literal["avg", "max"]


class WeightsError(Exception):
    """The VGG19 weights could not be had: missing, unreadable or of the wrong shape."""


@dataclass(frozen=True)
class WeightsInfo:
    """What the report records about the weights a result was made with."""

    source: Literal["imagenet", "file", "random"]
    name: str
    sha256: str | None


class FeatureExtractor(nn.Module):
    """Frozen VGG19 convolutions; ``forward`` returns ``{layer: activation}``.

    The network is held once per process. Each call runs only as deep as the deepest
    requested layer, which is the chapter's "trim the model after the last loss layer"
    without building a new module per preset. Pooling is chosen per call (the pooling
    layers have no parameters), so ``avg`` and ``max`` presets share one model.
    """

    def __init__(self, features: nn.Sequential, weights: WeightsInfo) -> None:
        super().__init__()
        if len(features) != len(LAYER_NAMES):
            raise WeightsError(f"expected VGG19 features with {len(LAYER_NAMES)} modules, got {len(features)}")
        # Each conv may run as Winograd F(4x4, 3x3) (the CPU, fp32, the wide layers),
        # where measured faster: same weights, a quarter of the multiplications (winograd.py).
        self.convs = nn.ModuleDict(
            {name: Winograd3x3(_conv(features[i])) for name, i in _INDEX.items() if name.startswith("conv")}
        )
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        self.weights = weights

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def conv_method(self) -> str:
        """How the wide convs run: ``"auto"`` (the default: each shape by the method
        measured fastest, conv_methods.py) or one of ``conv_methods.METHODS``, forced for A/B runs."""
        return self._winograd_convs()[0].method

    @conv_method.setter
    def conv_method(self, method: Method | Literal["auto"]) -> None:
        if method != "auto" and method not in METHODS:
            raise ValueError(f"conv method must be auto or one of {', '.join(METHODS)}, got {method!r}")
        for conv in self._winograd_convs():
            conv.method = method

    def conv_methods(self) -> dict[str, str]:
        """What each conv that has run since ``forget_conv_methods`` ran at its last call."""
        return {name: conv.last_method for name, conv in self.convs.items()
                if isinstance(conv, Winograd3x3) and conv.last_method is not None}

    def forget_conv_methods(self) -> None:
        for conv in self._winograd_convs():
            conv.last_method = None

    def _winograd_convs(self) -> list[Winograd3x3]:
        return [conv for conv in self.convs.values() if isinstance(conv, Winograd3x3)]

    def forward(
        self, image: torch.Tensor, layers: Iterable[str], pooling: Pooling = "avg"
    ) -> dict[str, torch.Tensor]:
        return self.with_grams(image, layers, pooling)[0]

    def with_grams(
        self, image: torch.Tensor, layers: Iterable[str], pooling: Pooling = "avg", grams: Iterable[str] = ()
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``forward``, and the Gram matrix (``gram_matrix``) of each fp32 conv tap in
        ``grams`` that a ReLU follows, made together with that ReLU (``relu_and_gram``:
        one backward for both). The other taps of ``grams`` are left to the caller."""
        wanted, fused = frozenset(layers), frozenset(grams)
        unknown = (wanted | fused) - set(TAPPABLE_LAYERS)
        if unknown:
            raise ValueError(f"unknown VGG19 layers: {sorted(unknown)}")
        if not wanted:
            return {}, {}
        deepest = max(_INDEX[name] for name in wanted)
        out: dict[str, torch.Tensor] = {}
        gram_of: dict[str, torch.Tensor] = {}
        x = image
        for name in LAYER_NAMES[: deepest + 1]:
            if name.startswith("conv"):
                x = self.convs[name](x)
            elif name.startswith("relu"):
                conv_name = "conv" + name[4:]
                if conv_name in fused and x.dtype == torch.float32:
                    x, gram_of[conv_name] = relu_and_gram(x)
                else:
                    # In place only when the conv output feeding it is not a tap: an
                    # in-place ReLU would overwrite the tapped pre-activation.
                    x = F.relu(x, inplace=conv_name not in wanted)
            elif pooling == "avg":
                # The chapter's nn.AvgPool2d(kernel_size=2, stride=2, padding=0).
                x = avg_pool_2x2(x)
            else:
                x = F.max_pool2d(x, kernel_size=2, stride=2)
            if name in wanted:
                out[name] = x
        return out, gram_of


def avg_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """The chapter's ``nn.AvgPool2d(kernel_size=2, stride=2, padding=0)``. On the CPU its
    backward is one pass, a quarter of the gradient written to each input pixel: aten's
    zero-fills the input-sized gradient and then adds into it, which took 34 ms at
    ``pool1`` of a 512-px image against 17 (the values are the same)."""
    if x.device.type != "cpu":
        return F.avg_pool2d(x, kernel_size=2, stride=2)
    pooled: torch.Tensor = _AvgPool2x2.apply(x)
    return pooled


class _AvgPool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.shape, ctx.layout = x.shape, _layout(x)
        return F.avg_pool2d(x, kernel_size=2, stride=2)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        n, c, h, w = ctx.shape
        ho, wo = h // 2, w // 2
        out = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.layout)
        if h % 2:  # floor mode: an odd last row or column is not pooled
            out[:, :, -1].zero_()
        if w % 2:
            out[..., -1].zero_()
        blocks = out[:, :, :2 * ho, :2 * wo].view(n, c, ho, 2, wo, 2)
        blocks.copy_(grad.mul(0.25)[:, :, :, None, :, None].expand(n, c, ho, 2, wo, 2))
        return out


def _layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def _conv(module: nn.Module) -> nn.Conv2d:
    if not isinstance(module, nn.Conv2d):
        raise WeightsError(f"expected a Conv2d in VGG19's features, got {type(module).__name__}")
    return module


def build_extractor(weights: str | Path, device: torch.device | str = "cpu", *, seed: int = 0) -> FeatureExtractor:
    """Load VGG19 features once and move them to ``device``.

    ``weights``: ``"imagenet"`` (torchvision's download into the torch hub cache),
    ``"random"`` (seeded, for tests and smoke runs only) or a path to a state dict.
    """
    features, info = load_vgg19_features(weights, seed=seed)
    extractor = FeatureExtractor(features, info)
    return extractor.to(device)


def load_vgg19_features(weights: str | Path, *, seed: int = 0) -> tuple[nn.Sequential, WeightsInfo]:
    from torchvision.models import vgg19

    if str(weights) == "random":
        logger.warning(
            "using RANDOM VGG19 weights (seed %d): results are not style transfer, "
            "only for tests and smoke runs",
            seed,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = vgg19(weights=None)
        return model.features, WeightsInfo("random", f"random(seed={seed})", None)
    if str(weights) == "imagenet":
        state, info = _imagenet_state_dict()
    else:
        state, info = _file_state_dict(Path(weights))
    model = vgg19(weights=None)
    _load_features(model, state, info.name)
    return model.features, info


def _load_features(model: nn.Module, state: Mapping[str, torch.Tensor], name: str) -> None:
    expected = {k: v.shape for k, v in model.state_dict().items() if k.startswith("features.")}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise WeightsError(
            f"{name} is not a torchvision VGG19 state dict: missing {len(missing)} keys "
            f"such as {missing[0]!r} (expected features.N.weight/bias)"
        )
    for key, shape in expected.items():
        got = tuple(state[key].shape)
        if got != tuple(shape):
            raise WeightsError(f"{name}: {key} has shape {got}, VGG19 needs {tuple(shape)}")
    features_state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    features = model.features
    assert isinstance(features, nn.Module)
    features.load_state_dict(features_state, strict=True)


def _file_state_dict(path: Path) -> tuple[Mapping[str, torch.Tensor], WeightsInfo]:
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        # weights_only: a .pth is a pickle; never execute code from one.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise WeightsError(f"cannot read weights file {path}: {exc}") from exc
    if isinstance(state, nn.Module):  # pragma: no cover - weights_only forbids modules
        state = state.state_dict()
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} is not a state dict of tensors (torch.save(model.state_dict(), ...))")
    return state, WeightsInfo("file", str(path), _sha256(path))


def _imagenet_state_dict() -> tuple[Mapping[str, torch.Tensor], WeightsInfo]:
    from torchvision.models import VGG19_Weights

    w = VGG19_Weights.IMAGENET1K_V1
    file_name = w.url.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    if not cached.is_file():
        logger.info("downloading VGG19 ImageNet weights (%.0f MB) to %s", w.meta["_file_size"], cached)
    try:
        # check_hash: torchvision's file names carry a sha256 prefix (dcbb9e9d).
        state = torch.hub.load_state_dict_from_url(w.url, progress=True, check_hash=True, weights_only=True)
    except Exception as exc:  # URLError, socket errors, RuntimeError on a bad hash
        raise WeightsError(
            f"cannot get the VGG19 ImageNet weights ({exc}). Download {w.url} "
            f"({w.meta['_file_size']:.0f} MB) on a machine with internet access and place it "
            f"at {cached}, or pass --weights PATH to a torchvision vgg19 state dict"
        ) from exc
    return state, WeightsInfo("imagenet", file_name, _sha256(cached) if cached.is_file() else None)



def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
