"""``stylefold presets list | show | validate | schema | sheet``."""

from __future__ import annotations

import argparse
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config, load_config
from ..failures import JobFailure
from ..presets import Preset, PresetError, PresetLibrary
from .common import EXIT_JOB_FAILED, EXIT_OK, EXIT_USAGE, CommandError, add_engine_options, load_resident

if TYPE_CHECKING:
    from PIL import Image

    from ..job.run import Resident

__all__ = ["add_parser", "preset_sheet"]

logger = logging.getLogger(__name__)


def add_parser(sub: Any) -> None:
    presets = sub.add_parser("presets", help="list, show, validate presets; print their JSON schema")
    psub = presets.add_subparsers(dest="presets_command", metavar="ACTION", required=True)
    plist = psub.add_parser("list", help="built-in and presets-dir presets")
    pshow = psub.add_parser("show", help="a preset's effective keys (extends applied) as JSON")
    pshow.add_argument("name")
    pval = psub.add_parser("validate", help="check presets, files or names (keys, ranges, caps, style found)")
    pval.add_argument("files", nargs="+", metavar="FILE_OR_NAME")
    psub.add_parser("schema", help="the preset JSON schema")
    psheet = psub.add_parser("sheet", help="render one photo through every preset, side by side")
    psheet.add_argument("image", type=Path)
    psheet.add_argument("--out", type=Path, default=None, help="sheet file (default: NAME-presets.jpg here)")
    psheet.add_argument("--size", type=int, default=256, help="working size of each preview (default 256)")
    psheet.add_argument("--steps", type=int, default=None, help="steps per preset (default: each preset's own)")
    psheet.add_argument("--only", default=None, help="comma-separated preset names (default: all)")
    add_engine_options(psheet)
    psheet.add_argument("--root", type=Path, default=None, help="hot-folder root (for its styles/)")
    for p in (plist, pshow, pval):
        p.add_argument("--root", type=Path, default=None, help="hot-folder root (for its styles/)")
        p.add_argument("--config", type=Path, default=None)
    presets.set_defaults(func=cmd_presets)


def cmd_presets(args: argparse.Namespace) -> int:
    if args.presets_command == "schema":
        print(json.dumps(Preset.model_json_schema(), indent=2))
        return EXIT_OK
    config = load_config(args.config, {"root": args.root, "device": getattr(args, "device", None),
                                       "weights": getattr(args, "weights", None)})
    library = PresetLibrary.for_config(config)
    if args.presets_command == "list":
        return _list(library)
    if args.presets_command == "sheet":
        return _sheet(args, config, library)
    if args.presets_command == "show":
        print(json.dumps(library.load(args.name).effective(), indent=2))
        return EXIT_OK
    return _validate(library, config, args.files)


def _list(library: PresetLibrary) -> int:
    broken = 0
    for name in library.names():
        try:
            preset = library.load(name)
        except PresetError as exc:  # one broken studio preset must not hide the rest
            broken += 1
            print(f"{name:<16} INVALID: {exc}")
            continue
        style = ", ".join(r.path for r in preset.style_refs())
        print(f"{name:<16} size {preset.size:<5} steps {preset.steps:<5} style {style}  {preset.description}")
    return EXIT_USAGE if broken else EXIT_OK


def _validate(library: PresetLibrary, config: Config, items: Sequence[str]) -> int:
    """Each file (or preset name) as a job would see it: keys, ranges, its styles, and
    the caps of this configuration (a preset above one fails every job)."""
    from ..hotfolder.service import caps_of

    caps = caps_of(config)
    bad = 0
    for item in items:
        path = Path(item)
        try:
            if not path.is_file() and path.suffix.lower() != ".json":
                found = library.find(item)
                if found is None:
                    raise PresetError(f"{item}: no such file, and {library.unknown(item)}")
                path = found
            preset = library.load_file(path)
            for ref in preset.style_refs():
                library.resolve_style(ref.path)
            caps.check(preset)
        except JobFailure as exc:
            bad += 1
            print(f"INVALID {exc}" if str(exc).startswith(item) or str(exc).startswith(str(path))
                  else f"INVALID {item}: {exc}")
        else:
            print(f"OK {item}")
    return EXIT_USAGE if bad else EXIT_OK


def _sheet(args: argparse.Namespace, config: Config, library: PresetLibrary) -> int:
    if not args.image.is_file():
        raise CommandError(f"no such image: {args.image}")
    if not 16 <= args.size <= config.max_size:
        raise CommandError(f"--size must be within 16 to {config.max_size}")
    from ..media.imageio import ImageError, save_image_atomic

    resident = load_resident(config)
    names = [n for n in args.only.split(",") if n] if args.only else None
    try:
        sheet = preset_sheet(resident, library, config, args.image, names=names, size=args.size, steps=args.steps,
                             on_preset=lambda name, steps: logger.info("preset %s (%d steps)", name, steps))
    except ImageError as exc:
        raise CommandError(str(exc), EXIT_JOB_FAILED) from exc
    out = args.out or Path(f"{args.image.stem}-presets.jpg")
    save_image_atomic(sheet, out, quality=92)
    print(out)
    return EXIT_OK


def preset_sheet(resident: Resident, library: PresetLibrary, config: Config, image: Path, *,
                 names: Sequence[str] | None = None, size: int = 256, steps: int | None = None,
                 on_preset: Callable[[str, int], None] | None = None) -> Image.Image:
    """One photo through every preset, side by side. A preview, so each preset runs at
    a small working size and, if asked, fewer steps; every other key is the preset's
    own. The first cell is the photo; each other is captioned with its preset and the
    steps it ran, its style images small in a corner."""
    from ..hotfolder.service import caps_of
    from ..job.run import Done, run_job
    from ..job.spec import JobSpec
    from ..media import imageio, render

    caps = caps_of(config)
    loaded = imageio.load_image(image, max_pixels=caps.max_input_pixels)
    cells: list[render.Cell] = [render.Cell("original", imageio.fit_short_side(loaded.image, size))]
    for name in names or library.names():
        overrides: dict[str, object] = {"size": size, "snapshot_every": 0, **({"steps": steps} if steps else {})}
        try:
            preset = library.validate({**library.load(name).effective(), **overrides}, name)
            styles = [(library.resolve_style(r.path), r.weight) for r in preset.style_refs()]
            spec = JobSpec.for_files(uuid.uuid4().hex, image, preset, name, styles, caps)
        except JobFailure as exc:
            logger.error("preset %s: %s", name, exc)
            continue
        if on_preset is not None:
            on_preset(name, preset.steps)
        outcome = run_job(spec, resident)
        if not isinstance(outcome, Done):
            logger.error("preset %s: %s", name, getattr(outcome, "message", "stopped"))
            continue
        swatch = render.style_swatch([imageio.load_image(path, max_pixels=caps.max_input_pixels).image
                                      for path, _ in styles])
        ran = f"{preset.steps} step{'' if preset.steps == 1 else 's'}"
        cells.append(render.Cell(f"{name} · {ran}", outcome.rendered.image, inset=swatch))
    return render.contact_sheet(cells, columns=min(4, len(cells)), cell=size, title=image.name,
                                subtitle=f"previews at {size} px (shorter side)")
