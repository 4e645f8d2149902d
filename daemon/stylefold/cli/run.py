"""``stylefold run IMAGE... --preset P``: stylise files once, with the daemon's outputs."""

from __future__ import annotations

import argparse
import json
import logging
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import load_config
from ..failures import JobFailure
from ..hotfolder.layout import is_image, unsupported_reason
from ..presets import Preset, PresetError, PresetLibrary
from .common import EXIT_JOB_FAILED, EXIT_OK, CommandError, add_engine_options, error, load_resident

__all__ = ["add_parser", "parse_set"]

logger = logging.getLogger(__name__)


def add_parser(sub: Any) -> None:
    run = sub.add_parser("run", help="stylise images once, writing the same outputs as the daemon")
    run.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    run.add_argument("--preset", "-p", required=True, help="built-in or presets-dir name, or a preset JSON file")
    run.add_argument("--out", type=Path, default=Path("stylefold-out"),
                     help="output folder (results; loss logs in OUT/logs). Default: ./stylefold-out")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                     help="override a preset key, e.g. --set steps=50 --set output.format=png (repeatable)")
    add_engine_options(run)
    run.set_defaults(func=cmd_run)


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs to preset overrides; VALUE is JSON when it parses as JSON,
    else a string (so ``style=ink.png`` needs no quotes); ``a.b=V`` sets a nested key."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise PresetError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        except RecursionError:
            raise PresetError(f"--set {key}: value nested too deeply") from None
        target = overrides
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise PresetError(f"--set {item!r}: {part} is not an object")
        target[leaf] = value
    return overrides


def load_preset(library: PresetLibrary, name_or_file: str, overrides: dict[str, Any]) -> tuple[Preset, str]:
    """A preset named on the command line (a name or a file), with ``--set`` applied."""
    path = Path(name_or_file)
    if path.suffix.lower() == ".json" or path.is_file():
        if not path.is_file():
            raise PresetError(f"preset file {path} does not exist")
        return library.load_file(path, overrides), str(path)
    found = library.find(name_or_file)
    if found is None:
        raise PresetError(library.unknown(name_or_file))
    return library.load_file(found, overrides), name_or_file


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config, {"device": args.device, "weights": args.weights})
    library = PresetLibrary.for_config(config)
    preset, source = load_preset(library, args.preset, parse_set(args.sets))
    preset_dir = [Path(source).parent] if Path(source).is_file() else []
    styles = [(library.resolve_style(ref.path, operator_path_ok=True, operator_dirs=preset_dir), ref.weight)
              for ref in preset.style_refs()]
    # Every input checked before VGG19 loads, with the daemon's sentence for each.
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        raise CommandError(f"no such image: {', '.join(missing)}")
    unsupported = [unsupported_reason(str(p)) for p in args.images if not is_image(p.name)]
    if unsupported:
        raise CommandError("\n".join(f"unsupported_file: {reason}" for reason in unsupported), EXIT_JOB_FAILED)

    from ..hotfolder.console import step_reporter
    from ..hotfolder.service import caps_of
    from ..job.publish import publish
    from ..job.run import Done, Failed, JobCallbacks, PreviewImage, run_job
    from ..job.spec import JobSpec
    from ..media.outputs import publish_preview

    caps = caps_of(config)
    try:
        caps.check(preset)
    except JobFailure as exc:
        raise CommandError(f"{exc.kind.value}: {exc}", EXIT_JOB_FAILED) from exc
    resident = load_resident(config)
    failed = 0
    for image in args.images:
        try:
            spec = JobSpec.for_files(uuid.uuid4().hex, image, preset, source, styles, caps)
        except OSError as exc:
            failed += 1
            logger.error("%s failed (unreadable_image): cannot be read (%s)", image, exc.strerror or exc)
            continue
        def on_preview(preview: PreviewImage, name: str = image.name) -> str:
            path = publish_preview(preview.image, args.out, args.out / "logs", preview.base, exif=preview.exif)
            logger.info("preview of %s: %s (%.1f s)", name, path, preview.seconds)
            return str(path)

        with step_reporter(image.name, preset.steps, config.log_every_s) as report:
            outcome = run_job(spec, resident, JobCallbacks(on_step=report, on_preview=on_preview))
        if isinstance(outcome, Failed):
            failed += 1
            logger.error("%s failed (%s): %s", image, outcome.kind.value, outcome.message)
            continue
        assert isinstance(outcome, Done)
        paths = publish(outcome.rendered, args.out, args.out / "logs")
        print(paths.image)
    if failed:
        error(f"{failed} of {len(args.images)} images failed")
    return EXIT_JOB_FAILED if failed else EXIT_OK
