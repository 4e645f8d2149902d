"""Presets: the pydantic model (single source of truth), built-in lookup, loading with
``extends``, and confinement of style paths to the allowed folders.

A preset JSON comes from anyone who can write to the hot folder, so everything here is
bounded: file size, nesting, ``extends`` depth, value ranges, and style paths that must
resolve (symlinks followed) inside an allowed folder. No torch import: ``--help`` and
``presets validate`` stay fast.
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from .config import Config
from .engine.layers import TAPPABLE_LAYERS
from .failures import FailureKind, JobFailure
from .preset_options import _OPTION_FORMS, CoarseToFineOptions, EarlyStopOptions, PreviewOptions, _Strict
from .safeopen import read_regular

__all__ = [
    "PRESET_SUFFIX",
    "CoarseToFineOptions",
    "EarlyStopOptions",
    "Preset",
    "PresetError",
    "PresetLibrary",
    "PreviewOptions",
    "StyleNotFound",
    "StyleRef",
    "builtin_dir",
    "merge_preset",
]

logger = logging.getLogger(__name__)

PRESET_SUFFIX = ".json"
MAX_PRESET_BYTES = 64 * 1024
MAX_EXTENDS_DEPTH = 8
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")

LayerName = Literal[TAPPABLE_LAYERS]  # type: ignore[valid-type]
LayerWeight = Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]
Layers = (
    Annotated[list[LayerName], Field(min_length=0, max_length=len(TAPPABLE_LAYERS))]
    | Annotated[dict[LayerName, LayerWeight], Field(max_length=len(TAPPABLE_LAYERS))]
)
Weight = Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False)]
StylePath = Annotated[str, Field(min_length=1, max_length=1024)]


class PresetError(JobFailure, ValueError):
    """A preset that cannot be used; ``str()`` names the file, the key and the rule."""

    kind = FailureKind.INVALID_PRESET


class StyleNotFound(PresetError):
    kind = FailureKind.STYLE_NOT_FOUND


class StyleRef(_Strict):
    path: StylePath
    weight: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)] = 1.0


class OutputOptions(_Strict):
    format: Literal["same", "jpeg", "png", "tiff", "webp"] = "same"
    quality: Annotated[int, Field(ge=1, le=100)] = 95


class Preset(_Strict):
    """The keys of SPEC §4. Defaults are the ``book`` preset: the chapter's numbers."""

    extends: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    description: Annotated[str, Field(max_length=500)] = ""
    style: StylePath | Annotated[list[StyleRef], Field(min_length=1, max_length=8)] = "brushstrokes.png"
    style_scale: Annotated[float, Field(ge=0.1, le=4.0, allow_inf_nan=False)] = 1.0
    preserve_color: Literal["off", "luminance", "histogram"] = "off"
    style_weight: Weight = 1e6
    content_weight: Weight = 1.0
    tv_weight: Weight = 0.0
    steps: Annotated[int, Field(ge=1, le=100_000)] = 300
    lr: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] = 0.1
    optimizer: Literal["adam", "lbfgs"] = "adam"
    init: Literal["noise", "content", "style"] = "noise"
    size: Annotated[int, Field(ge=16, le=16384)] = 128
    style_layers: Layers = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1"]
    content_layers: Layers = ["conv2_2"]
    pooling: Literal["avg", "max"] = "avg"
    normalize: bool = False
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"
    snapshot_every: Annotated[int, Field(ge=0, le=100_000)] = 0
    output: OutputOptions = OutputOptions()
    # Off in book: the chapter runs all its steps and writes one picture.
    preview: PreviewOptions | Literal[False] = False
    early_stop: EarlyStopOptions | Literal[False] = False
    coarse_to_fine: CoarseToFineOptions | Literal[False] = False

    @field_validator("preview", "early_stop", "coarse_to_fine", mode="before")
    @classmethod
    def _object_or_false(cls, v: Any, info: Any) -> Any:
        if v is False or isinstance(v, Mapping | BaseModel):
            return v
        raise ValueError(f"must be {_OPTION_FORMS[info.field_name]}")

    @field_validator("style_layers")
    @classmethod
    def _style_layers_not_empty(cls, v: Any) -> Any:
        if not v:
            raise ValueError("at least one style layer is needed")
        return v

    @model_validator(mode="after")
    def _some_loss_weighted(self) -> Preset:
        if not any(w for _, w in self.style_layer_weights()):
            raise ValueError("style_layers: at least one layer needs a weight above 0")
        return self

    def style_layer_weights(self) -> tuple[tuple[str, float], ...]:
        return _as_weights(self.style_layers)

    def content_layer_weights(self) -> tuple[tuple[str, float], ...]:
        return _as_weights(self.content_layers)

    def style_refs(self) -> tuple[StyleRef, ...]:
        if isinstance(self.style, str):
            return (StyleRef(path=self.style),)
        return tuple(self.style)

    def effective(self) -> dict[str, Any]:
        """The fully resolved keys, as recorded in reports (``extends`` already applied)."""
        return self.model_dump(mode="json", exclude={"extends"})


def _as_weights(layers: Sequence[str] | Mapping[str, float]) -> tuple[tuple[str, float], ...]:
    if isinstance(layers, Mapping):
        return tuple((name, float(w)) for name, w in layers.items())
    # A plain list means weight 1 each, as in the chapter; duplicates count once.
    return tuple((name, 1.0) for name in dict.fromkeys(layers))


def builtin_dir() -> Path:
    """Folder of the built-in presets and their style images (shipped in the wheel)."""
    return Path(str(resources.files("stylefold.builtin_presets")))


def read_preset_json(path: Path, *, follow_symlinks: bool = True) -> dict[str, Any]:
    """Read a preset file with the limits a hostile file needs; errors name the file."""
    try:
        raw = read_regular(path, MAX_PRESET_BYTES, follow_symlinks=follow_symlinks)  # never a FIFO, never blocks
    except OSError as exc:
        raise PresetError(f"{path}: cannot read the preset ({exc.strerror or exc})") from exc
    if len(raw) > MAX_PRESET_BYTES:
        raise PresetError(f"{path}: a preset may be at most {MAX_PRESET_BYTES // 1024} KB")
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, >4300-digit ints
        raise PresetError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise PresetError(f"{path}: a preset must be a JSON object, got {type(data).__name__}")
    return data


def validation_message(source: str, exc: ValidationError, overridden: Collection[str] = ()) -> str:
    """One line per problem, each naming the source, the key and the allowed values.
    A key in ``overridden`` came from the command line: its line names ``--set KEY``,
    not the preset file it was applied to."""
    problems: dict[str, str] = {}
    for err in exc.errors():
        # Drop pydantic's union-branch labels ("list[...]", "constrained-str", ...).
        key = ".".join(str(p) for p in err["loc"] if isinstance(p, int) or _is_field_part(str(p))) or "(preset)"
        top = str(err["loc"][0]) if err["loc"] else ""
        where = f"--set {key}" if top in overridden else f"{source}: {key}"
        if err["type"] == "extra_forbidden":
            where = f"--set {key}" if top in overridden else source
            problems.setdefault(key, f"{where}: unknown key {key[:60]!r}{_did_you_mean(key, Preset.model_fields)}")
            continue
        got = err.get("input")
        shown = json.dumps(got)[:60] if isinstance(got, str | int | float | bool | None) else type(got).__name__
        if err["type"] == "literal_error" and top in _LAYER_FIELDS:
            # One sentence, not pydantic's enumeration of all 32 names.
            where = f"--set {top}" if top in overridden else f"{source}: {top}"
            problems.setdefault(key, f"{where}: {shown} is not a VGG19 layer; {_LAYER_FORM}")
            continue
        message = str(err["msg"]).removeprefix("Value error, ")
        problems.setdefault(key, f"{where}: {message}{_allowed(key)} (got {shown})")
    # When one branch of a union got further ("style.0.weight"), the other branch's
    # type complaint about the parent ("style: not a string") is noise.
    keys = list(problems)
    lines = [problems[k] for k in keys if not any(o != k and o.startswith(k + ".") for o in keys)]
    if any(e["type"] == "extra_forbidden" for e in exc.errors()):
        # The list of known keys once, however many unknown keys a file has.
        lines.append(f"known keys: {', '.join(Preset.model_fields)}")
    return "\n".join(lines)


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


_LAYER_FIELDS = ("style_layers", "content_layers")
_LAYER_FORM = ("a layer is convB_N (before its ReLU) or reluB_N (after it), with block B 1-5 and N up to 2 "
               "in blocks 1-2, up to 4 in blocks 3-5, e.g. relu4_2")


def _is_field_part(part: str) -> bool:
    # Class names are pydantic's union-branch labels (``preview.PreviewOptions.size``).
    return (part.isidentifier() and not part[:1].isupper()) or part in TAPPABLE_LAYERS


def _allowed(key: str) -> str:
    """The field's whole allowed range, e.g. " (allowed: 1 to 100000)"."""
    field = Preset.model_fields.get(key.split(".")[0]) if "." not in key else None
    if field is None:
        return ""
    low = high = None
    for rule in field.metadata:
        low = getattr(rule, "ge", None) if getattr(rule, "ge", None) is not None else low
        low = getattr(rule, "gt", None) if getattr(rule, "gt", None) is not None else low
        high = getattr(rule, "le", None) if getattr(rule, "le", None) is not None else high
    if low is None and high is None:
        return ""
    return f" (allowed: {low if low is not None else '-inf'} to {high if high is not None else 'inf'})"


_MERGED_OBJECTS = ("output", "preview", "early_stop", "coarse_to_fine")


def merge_preset(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Keys of ``override`` replace ``base``'s; the objects ``output``, ``preview``,
    ``early_stop`` and ``coarse_to_fine`` merge key by key (``false`` replaces one)."""
    merged = dict(base)
    for key, value in override.items():
        if key in _MERGED_OBJECTS and isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


@dataclass(frozen=True)
class PresetLibrary:
    """Where presets and style images are looked up.

    ``preset_dirs``: folders of ``NAME.json`` presets, searched in order; the built-ins
    come last, so a studio can shadow one. ``style_dirs``: folders a style path may
    resolve into, in lookup order (root's styles/, presets' styles/, config style_dirs).
    """

    preset_dirs: tuple[Path, ...]
    style_dirs: tuple[Path, ...]

    @classmethod
    def default(cls, root_styles: Path | None = None, extra_presets: Iterable[Path] = (),
                extra_styles: Iterable[Path] = ()) -> PresetLibrary:
        preset_dirs = (*extra_presets, builtin_dir())
        styles = [root_styles] if root_styles is not None else []
        styles += [d / "styles" for d in preset_dirs]
        styles += list(extra_styles)
        return cls(tuple(preset_dirs), tuple(styles))

    @classmethod
    def for_config(cls, config: Config) -> PresetLibrary:
        """The library a daemon or command with ``config`` uses: the root's styles/,
        the config's presets_dir and style_dirs, then the built-ins."""
        extra = [config.presets_dir] if config.presets_dir else []
        return cls.default(root_styles=config.root / "styles", extra_presets=extra,
                           extra_styles=config.style_dirs)

    def names(self) -> list[str]:
        found: dict[str, Path] = {}
        for folder in self.preset_dirs:
            if folder.is_dir():
                for p in sorted(folder.glob(f"*{PRESET_SUFFIX}")):
                    found.setdefault(p.stem, p)
        return sorted(found)

    def find(self, name: str) -> Path | None:
        if not _is_plain_name(name):
            return None
        for folder in self.preset_dirs:
            candidate = folder / f"{name}{PRESET_SUFFIX}"
            if candidate.is_file():
                return candidate
        return None

    def load(self, name: str) -> Preset:
        path = self.find(name)
        if path is None:
            raise PresetError(self.unknown(name))
        return self.load_file(path)

    def unknown(self, name: str, what: str = "preset") -> str:
        """The sentence for a preset name that does not exist: the known ones, and the
        closest of them."""
        names = self.names()
        return f"unknown {what} {name!r}{_did_you_mean(name, names)}; known presets: {', '.join(names)}"

    def load_file(self, path: Path, overrides: Mapping[str, Any] | None = None) -> Preset:
        """Load a preset file, apply its ``extends`` chain, then ``overrides`` (from the
        command line: their errors name ``--set KEY``)."""
        data = read_preset_json(path)
        if overrides:
            # Before resolving: an override of `extends` must change the base.
            data = merge_preset(data, overrides)
        resolved = self._resolved_data(data, str(path), depth=0, seen=(path.stem,))
        return self.validate(resolved, str(path), overridden=tuple(overrides or ()))

    def from_data(self, data: Mapping[str, Any], source: str) -> Preset:
        return self.validate(self._resolved_data(data, source, depth=0, seen=()), source)

    @staticmethod
    def validate(data: Mapping[str, Any], source: str, overridden: Collection[str] = ()) -> Preset:
        try:
            return Preset.model_validate(data)
        except ValidationError as exc:
            raise PresetError(validation_message(source, exc, overridden)) from None

    def _resolved_data(self, data: Mapping[str, Any], source: str, depth: int,
                       seen: tuple[str, ...]) -> dict[str, Any]:
        parent = data.get("extends")
        if parent is None:
            return {k: v for k, v in data.items() if k != "extends"}
        if not isinstance(parent, str):
            raise PresetError(f"{source}: extends: must be the name of a preset (got {type(parent).__name__})")
        if parent in seen:
            raise PresetError(f"{source}: extends: the chain {' -> '.join((*seen, parent))} loops")
        if depth >= MAX_EXTENDS_DEPTH:
            raise PresetError(f"{source}: extends: more than {MAX_EXTENDS_DEPTH} levels")
        parent_path = self.find(parent)
        if parent_path is None:
            raise PresetError(f"{source}: extends: {self.unknown(parent)}")
        base = self._resolved_data(read_preset_json(parent_path), str(parent_path), depth + 1, (*seen, parent))
        return merge_preset(base, {k: v for k, v in data.items() if k != "extends"})

    def resolve_style(self, name: str, *, operator_path_ok: bool = False,
                      operator_dirs: Sequence[Path] = ()) -> Path:
        """Find a style image; it must resolve (symlinks followed) inside a style folder.

        ``operator_path_ok``: ``stylefold run`` may name any existing file the operator
        gives (relative to the working directory, then to ``operator_dirs``, such as the
        folder of the preset file given); presets from the hot folder never get this.
        """
        if "\x00" in name:
            raise StyleNotFound(f"style {name!r}: not a valid file name")
        if operator_path_ok:
            for base in (Path.cwd(), *operator_dirs):
                direct = base / Path(name).expanduser()
                if direct.is_file():
                    return direct.resolve()
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise StyleNotFound(
                f"style {name!r}: must be a file name or a relative path inside a styles folder "
                f"({', '.join(str(d) for d in self.style_dirs)})"
            )
        shown = name if len(name) <= 120 else name[:117] + "..."
        for folder in self.style_dirs:
            candidate = folder / relative
            try:
                if not candidate.is_file():
                    continue
            except OSError as exc:  # ENAMETOOLONG and friends: the name cannot exist
                raise StyleNotFound(f"style {shown!r}: not a usable file name ({exc.strerror})") from None
            resolved = candidate.resolve()
            if _inside(resolved, folder.resolve()):
                return resolved
            logger.warning("style %s resolves to %s, outside %s: refused", name, resolved, folder)
            raise StyleNotFound(f"style {shown!r}: resolves outside the allowed style folders")
        raise StyleNotFound(
            f"style {shown!r} not found in {', '.join(str(d) for d in self.style_dirs)}"
        )


def _is_plain_name(name: str) -> bool:
    return 0 < len(name) <= 64 and set(name) <= _NAME_CHARS and not name.startswith(".")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents
