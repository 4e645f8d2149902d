"""Command line: argv -> config -> logging -> the command. Owns the exit codes.

0 success, 1 a job failed, 2 bad usage or config (SPEC §2). ``main(argv)`` returns the
code instead of exiting, so tests call it directly. torch is imported only by the
commands that need it, so ``--help``, ``presets`` and config checks stay fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import Config, ConfigError, load_config
from .presets import Preset, PresetError, PresetLibrary

__all__ = ["main", "build_parser", "parse_set"]

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stylefold", description="Neural style transfer as a hot-folder service (Gatys et al., VGG19)."
    )
    parser.add_argument("--version", action="version", version=f"stylefold {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="stylise images once, writing the same outputs as the daemon")
    run.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    run.add_argument("--preset", "-p", required=True, help="built-in or presets-dir name, or a preset JSON file")
    run.add_argument("--out", type=Path, default=Path("stylefold-out"),
                     help="output folder (results; loss logs in OUT/logs). Default: ./stylefold-out")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                     help="override a preset key, e.g. --set steps=50 --set output.format=png (repeatable)")
    _add_engine_options(run)
    run.set_defaults(func=cmd_run)

    serve = sub.add_parser("serve", help="run the hot-folder daemon")
    serve.add_argument("--root", type=Path, default=None, help="hot-folder root (default ./hotfolders, or $STYLEFOLD_ROOT)")
    serve.add_argument("--once", action="store_true", help="process what is in the inbox, then exit")
    _add_engine_options(serve)
    serve.set_defaults(func=cmd_serve)

    init = sub.add_parser("init", help="create the hot-folder tree and a commented stylefold.toml")
    init.add_argument("root", nargs="?", type=Path, default=None, metavar="DIR")
    init.set_defaults(func=cmd_init)

    submit = sub.add_parser("submit", help="place images into the inbox safely (temp name, then rename)")
    submit.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    submit.add_argument("--preset", "-p", default=None, help="a preset name (inbox/NAME/) or a preset JSON file (sidecar)")
    submit.add_argument("--root", type=Path, default=None)
    submit.set_defaults(func=cmd_submit)

    status = sub.add_parser("status", help="queue, running job with progress, recent results and failures")
    status.add_argument("--root", type=Path, default=None)
    status.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    status.set_defaults(func=cmd_status)

    doctor = sub.add_parser("doctor", help="check device, weights, folder permissions, inotify limits, disk space")
    doctor.add_argument("--root", type=Path, default=None)
    doctor.add_argument("--config", type=Path, default=None)
    doctor.add_argument("--device", default=None)
    doctor.add_argument("--weights", default=None)
    doctor.set_defaults(func=cmd_doctor)

    presets = sub.add_parser("presets", help="list, show, validate presets; print their JSON schema")
    psub = presets.add_subparsers(dest="presets_command", metavar="ACTION", required=True)
    plist = psub.add_parser("list", help="built-in and presets-dir presets")
    pshow = psub.add_parser("show", help="a preset's effective keys (extends applied) as JSON")
    pshow.add_argument("name")
    pval = psub.add_parser("validate", help="check preset JSON files (keys, ranges, style found)")
    pval.add_argument("files", nargs="+", type=Path, metavar="FILE")
    psub.add_parser("schema", help="the preset JSON schema")
    psheet = psub.add_parser("sheet", help="render one photo through every preset, side by side")
    psheet.add_argument("image", type=Path)
    psheet.add_argument("--out", type=Path, default=None, help="sheet file (default: NAME-presets.jpg here)")
    psheet.add_argument("--size", type=int, default=256, help="working size of each preview (default 256)")
    psheet.add_argument("--steps", type=int, default=None, help="steps per preset (default: each preset's own)")
    psheet.add_argument("--only", default=None, help="comma-separated preset names (default: all)")
    _add_engine_options(psheet)
    psheet.add_argument("--root", type=Path, default=None, help="hot-folder root (for its styles/)")
    for p in (plist, pshow, pval):
        p.add_argument("--root", type=Path, default=None, help="hot-folder root (for its styles/)")
        p.add_argument("--config", type=Path, default=None)
    presets.set_defaults(func=cmd_presets)

    bench = sub.add_parser("bench", help="seconds per optimisation step on this machine, by size and precision")
    bench.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N, mps (default auto)")
    bench.add_argument("--weights", default="random",
                       help="weights do not change the speed; default random (no download)")
    bench.add_argument("--sizes", default="128,512", help="comma-separated short sides (default 128,512)")
    bench.add_argument("--precisions", default=None, help="comma-separated: fp32,bf16,fp16 (default: what the device supports)")
    bench.add_argument("--presets", default="book,gatys", help="comma-separated built-in presets")
    bench.add_argument("--steps", type=int, default=5, help="timed steps per case (default 5, after 2 warm-up)")
    bench.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    bench.set_defaults(func=cmd_bench)
    return parser


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--weights", default=None,
                   help="imagenet (default; downloaded once), a .pth state dict of torchvision's vgg19, or random")
    p.add_argument("--config", type=Path, default=None, help="stylefold.toml (default: $STYLEFOLD_CONFIG)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or bad usage (2)
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    from .progress import configure_logging

    configure_logging(args.verbose)
    try:
        return int(args.func(args))
    except (ConfigError, PresetError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


def _error(message: str) -> None:
    print(f"stylefold: error: {message}", file=sys.stderr)


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


def _load_preset(library: PresetLibrary, name_or_file: str, overrides: dict[str, Any]) -> tuple[Preset, str]:
    path = Path(name_or_file)
    if path.suffix.lower() == ".json" or path.is_file():
        if not path.is_file():
            raise PresetError(f"preset file {path} does not exist")
        return library.load_file(path, overrides), str(path)
    found = library.find(name_or_file)
    if found is None:
        raise PresetError(f"unknown preset {name_or_file!r} (known: {', '.join(library.names())})")
    return library.load_file(found, overrides), name_or_file


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config, {"device": args.device, "weights": args.weights})
    library = PresetLibrary.for_config(config)
    preset, source = _load_preset(library, args.preset, parse_set(args.sets))
    preset_dir = [Path(source).parent] if Path(source).is_file() else []
    styles = [(library.resolve_style(ref.path, operator_path_ok=True, operator_dirs=preset_dir), ref.weight)
              for ref in preset.style_refs()]
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        _error(f"no such image: {', '.join(missing)}")
        return EXIT_USAGE

    from .engine import WeightsError, build_extractor, resolve_device
    from .pipeline import JobFailure, Limits, Stylist
    from .progress import step_reporter

    limits = _limits(config)
    try:
        limits.check(preset)
        device = resolve_device(config.device)
        _tune_cpu(device, config)
        extractor = build_extractor(config.weights, device)
    except JobFailure as exc:
        _error(f"{exc.kind}: {exc.message}")
        return EXIT_JOB_FAILED
    except (ValueError, WeightsError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    stylist = Stylist(extractor, limits)
    failed = 0
    for image in args.images:
        try:
            with step_reporter(image.name, preset.steps, config.log_every_s) as report:
                result = stylist.process(image, preset, styles, args.out, args.out / "logs",
                                         preset_source=source, on_step=report)
        except JobFailure as exc:
            failed += 1
            logger.error("%s failed (%s): %s", image, exc.kind, exc.message)
            continue
        except Exception:  # one bad job must not stop the others
            failed += 1
            logger.exception("%s failed (internal)", image)
            continue
        print(result.paths.image)
    return EXIT_JOB_FAILED if failed else EXIT_OK


def _limits(config: Config) -> Any:
    from .pipeline import Limits

    return Limits(config.max_steps, config.max_size, config.max_input_pixels, config.memory_budget_mb)


def _tune_cpu(device: Any, config: Config) -> None:
    import torch

    from .engine import tune_cpu_allocator

    if config.threads:
        torch.set_num_threads(config.threads)
    if device.type == "cpu":
        tune_cpu_allocator()


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    config = load_config(args.config, {"root": args.root, "device": args.device, "weights": args.weights})
    # Handlers first, so a SIGTERM during the model load is a clean exit 0 too. They
    # only set flags (warm stop); a second signal is a cold stop: the running job's
    # claim survives it and resumes from its last checkpoint.
    stop = threading.Event()
    service_ref: list[Any] = []

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():
            os._exit(130)
        stop.set()
        logger.info("signal %d: finishing the current step, then stopping", signum)
        for service in service_ref:
            service.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    from .engine import WeightsError, build_extractor, resolve_device
    from .pipeline import Limits, Stylist
    from .progress import ServeConsole
    from .sdnotify import Notifier
    from .service import Service
    from .worker import FatalDeviceError

    try:
        device = resolve_device(config.device)
        _tune_cpu(device, config)
        logger.info("loading VGG19 (%s) on %s", config.weights, device)
        extractor = build_extractor(config.weights, device)
    except (ValueError, WeightsError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    stylist = Stylist(extractor, _limits(config))
    with ServeConsole(config.log_every_s) as view:
        service = Service(config, stylist, view=view, notifier=Notifier.from_env())
        service_ref.append(service)
        if stop.is_set():
            service.request_stop()
        try:
            return service.run(once=args.once)
        except FatalDeviceError as exc:
            logger.critical("device error, exiting for a restart: %s", exc)
            return EXIT_JOB_FAILED


def cmd_init(args: argparse.Namespace) -> int:
    from .admin import init_root

    root = args.root or load_config(None).root
    created = init_root(root)
    for path in created:
        print(f"created {path}")
    print(f"hot folder ready at {root.absolute()}; start it with: stylefold serve --root {root}")
    return EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    from .admin import submit_files

    config = load_config(None, {"root": args.root})
    try:
        placed = submit_files(args.images, config.root, args.preset)
    except (OSError, ValueError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    for path in placed:
        print(path)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from .admin import status_report

    config = load_config(None, {"root": args.root})
    report = status_report(config.root)
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    print(f"{report['root']}: {len(report['waiting'])} waiting in the inbox")
    for job in report["running"]:
        progress = job["progress"] or {}
        step = f" step {progress['step']}/{progress['steps']}" if progress else ""
        print(f"  {job['state']:<8} {job['source']}{step} (attempt {job['attempts']})")
    for job in report["recent_done"]:
        print(f"  done     {job['source']} -> {job['output']}")
    for job in report["recent_failed"]:
        print(f"  failed   {job['source']} ({job['kind']}): {job['error']}")
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import exit_code, format_checks, run_doctor

    config = load_config(args.config, {"root": args.root, "device": args.device, "weights": args.weights})
    checks = run_doctor(config)
    print(format_checks(checks))
    return exit_code(checks)


def cmd_presets(args: argparse.Namespace) -> int:
    if args.presets_command == "schema":
        print(json.dumps(Preset.model_json_schema(), indent=2))
        return EXIT_OK
    config = load_config(args.config, {"root": args.root, "device": getattr(args, "device", None),
                                       "weights": getattr(args, "weights", None)})
    library = PresetLibrary.for_config(config)
    if args.presets_command == "list":
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
    if args.presets_command == "sheet":
        return _presets_sheet(args, config, library)
    if args.presets_command == "show":
        preset = library.load(args.name)
        print(json.dumps(preset.effective(), indent=2))
        return EXIT_OK
    bad = 0
    for path in args.files:
        try:
            preset = library.load_file(path)
            for ref in preset.style_refs():
                library.resolve_style(ref.path)
        except PresetError as exc:
            bad += 1
            print(f"INVALID {exc}")
        else:
            print(f"OK {path}")
    return EXIT_USAGE if bad else EXIT_OK


def _presets_sheet(args: argparse.Namespace, config: Config, library: PresetLibrary) -> int:
    if not args.image.is_file():
        _error(f"no such image: {args.image}")
        return EXIT_USAGE
    if not 16 <= args.size <= config.max_size:
        _error(f"--size must be within 16 to {config.max_size}")
        return EXIT_USAGE
    from .engine import WeightsError, build_extractor, resolve_device
    from .imageio import ImageError, save_image_atomic
    from .pipeline import Stylist
    from .sheet import preset_sheet

    try:
        device = resolve_device(config.device)
        _tune_cpu(device, config)
        stylist = Stylist(build_extractor(config.weights, device), _limits(config))
    except (ValueError, WeightsError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    names = [n for n in args.only.split(",") if n] if args.only else None
    try:
        sheet = preset_sheet(stylist, library, args.image, names=names, size=args.size, steps=args.steps,
                             on_preset=lambda name, steps: logger.info("preset %s (%d steps)", name, steps))
    except ImageError as exc:
        _error(str(exc))
        return EXIT_JOB_FAILED
    out = args.out or Path(f"{args.image.stem}-presets.jpg")
    save_image_atomic(sheet, out, quality=92)
    print(out)
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
