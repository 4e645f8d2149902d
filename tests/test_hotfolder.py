"""The daemon in-process: real files dropped into a ``tmp_path`` hot folder, drained with
``Service.run(once=True)``, then ``outbox/``, ``done/``, ``failed/`` and the log checked.

Every test ends with ``rig.assert_nothing_lost()``: SPEC §6 promise 1, every non-ignored
file dropped ends byte-identical in exactly one of done/ or failed/ and leaves the inbox.
Random VGG19 weights, 16–32 px, 1–5 steps. No threads and no sleeps: writers that simulate
a slow copy or a late sidecar run in the service's thread, hooked to its scans
(``Rig.before_scans``, ``Rig.after_ready``), and the service is waited for by
``run(once=True)`` returning.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import struct
import tomllib
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from stylefold.cli import main
from stylefold.config import Config
from stylefold.hotfolder.journal import Journal
from stylefold.hotfolder.layout import HotFolder, is_ignored
from stylefold.hotfolder.origins import SidecarPreset
from stylefold.hotfolder.service import Service
from stylefold.hotfolder.watcher import Candidate, Inbox
from stylefold.hotfolder.worker import Worker
from stylefold.job.run import Resident

from .conftest import write_photo, write_texture

STYLE = "tex"  # the style of the `tiny` preset: results are NAME-tex.EXT


# ---------------------------------------------------------------- the rig


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def photo_bytes(suffix: str = ".jpg", width: int = 40, height: int = 32, seed: int = 0) -> bytes:
    """A smooth photo-like gradient encoded by ``suffix``; each seed tints it, so gives other bytes."""
    buf = io.BytesIO()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".webp": "WEBP"}[suffix.lower()]
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin((x + y) / 9.0)], axis=-1)
    img += rng.uniform(-0.2, 0.2, (1, 1, 3)).astype(np.float32)
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


class Rig:
    """A hot folder under ``tmp_path``, the files dropped into it, and a way to drain it."""

    def __init__(self, tmp_path: Path, extractor: Any) -> None:
        self.root = tmp_path / "hot"
        self.hot = HotFolder(self.root)
        self.hot.ensure()
        self.extractor = extractor
        self.presets = tmp_path / "presets"
        self.presets.mkdir()
        write_texture(self.hot.styles / f"{STYLE}.png", size=32, seed=1)
        for name, seed in (("side", 2), ("folder", 3), ("named", 4), ("default", 5)):
            write_texture(self.hot.styles / f"{name}.png", size=32, seed=seed)
        self.preset("tiny", {"steps": 3, "size": 32, "style": f"{STYLE}.png"})
        self.preset("one", {"steps": 1, "size": 16, "style": f"{STYLE}.png"})
        self.preset("five", {"extends": "tiny", "steps": 5})
        self.preset("named", {"extends": "tiny", "style": "named.png"})
        self.preset("deflt", {"extends": "tiny", "style": "default.png"})
        self.dropped: list[tuple[str, str]] = []  # (path relative to the inbox, sha256)
        self.service: Service | None = None

    @property
    def inbox(self) -> Path:
        return self.hot.inbox

    def preset(self, name: str, data: dict[str, Any]) -> None:
        (self.presets / f"{name}.json").write_text(json.dumps(data))

    # -------------------------------------------------------- dropping files

    def drop(self, rel: str, data: bytes) -> Path:
        """Write ``data`` to ``inbox/rel`` and remember it for promise 1."""
        path = self.inbox / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.record(rel)
        return path

    def drop_photo(self, rel: str, seed: int = 0, width: int = 40, height: int = 32) -> bytes:
        data = photo_bytes(Path(rel).suffix, width, height, seed)
        self.drop(rel, data)
        return data

    def drop_json(self, rel: str, data: Any) -> Path:
        return self.drop(rel, json.dumps(data).encode())

    def record(self, rel: str, data: bytes | None = None) -> None:
        """Remember a file that got into the inbox some other way (rename, slow writer);
        ``data``: its bytes, when it may have left the inbox already."""
        self.dropped.append((rel, sha256(data if data is not None else (self.inbox / rel).read_bytes())))

    # -------------------------------------------------------- running

    def config(self, **overrides: Any) -> Config:
        values: dict[str, Any] = {
            "root": self.root, "weights": "random", "device": "cpu", "presets_dir": self.presets,
            "settle_s": 0.05, "pair_timeout_s": 1.0,
        }
        return Config(**{**values, **overrides})

    def make_service(self, **overrides: Any) -> Service:
        config = self.config(**overrides)
        journal = Journal(self.hot.journal)
        worker = Worker(self.hot, journal, Resident(self.extractor), config.checkpoint_every)
        self.service = Service(config, self.hot, journal, worker, view=None, notifier=None)
        return self.service

    def serve(self, **overrides: Any) -> int:
        """Drain the inbox once, as ``stylefold serve --once`` does."""
        return self.make_service(**overrides).run(once=True)

    @staticmethod
    def stop_at_step(service: Service, step: int) -> None:
        """Request a warm stop (what the SIGTERM handler does) once the running job has
        done ``step`` steps."""
        on_step = service.runner.events.on_step
        assert on_step is not None

        def stop(claim: Any, info: Any) -> None:
            on_step(claim, info)
            if info.step == step:
                service.request_stop()

        service.runner.events.on_step = stop

    @staticmethod
    def before_scans(service: Service, hook: Callable[[float], None]) -> None:
        """Call ``hook(now)`` in the service's thread right before each ``scan(now)`` of its
        inbox: a writer hooked there decides what each scan finds, however slow or loaded
        the machine is."""
        inbox = service.inbox
        scan = inbox.scan

        def hook_then_scan(now: float, *args: Any, **kwargs: Any) -> None:
            hook(now)
            scan(now, *args, **kwargs)

        inbox.scan = hook_then_scan  # type: ignore[method-assign]

    @staticmethod
    def after_ready(service: Service, hook: Callable[[float, list[Candidate]], None]) -> None:
        """Call ``hook(now, handed_out)`` in the service's thread once it has gone through
        everything ``ready(now)`` handed out (not when it stopped early to claim one)."""
        inbox = service.inbox
        ready = inbox.ready

        def ready_then_hook(now: float, *args: Any, **kwargs: Any) -> Iterator[Candidate]:
            handed_out: list[Candidate] = []
            for candidate in ready(now, *args, **kwargs):
                handed_out.append(candidate)
                yield candidate
            hook(now, handed_out)

        inbox.ready = ready_then_hook  # type: ignore[method-assign]

    # -------------------------------------------------------- looking

    def results(self) -> list[str]:
        return sorted(p.name for p in self.hot.outbox.iterdir() if p.is_file())

    def done(self) -> list[str]:
        """Files in done/, relative to it (an original keeps its inbox subfolder)."""
        return _files_under(self.hot.done)

    def failed(self) -> list[str]:
        return [n for n in _files_under(self.hot.failed) if not n.endswith(".error.json")]

    def error(self, name: str) -> dict[str, Any]:
        """``failed/[SUB/]NAME.error.json`` (``name`` relative to failed/), checked for
        the fields SPEC §5 fixes."""
        path = self.hot.failed / Path(name).parent / f"{Path(name).stem}.error.json"
        body = json.loads(path.read_text())
        assert isinstance(body["kind"], str) and body["kind"]
        message = body["error"]
        # One human sentence: a single line of text, not a traceback.
        assert isinstance(message, str) and message.strip() and "\n" not in message, message
        assert "Traceback" not in message and len(message) < 600, message
        assert ".stylefold" not in message, "errors name files as the user dropped them, not claim folders"
        return body

    def report(self, result_name: str) -> dict[str, Any]:
        return json.loads((self.hot.logs / f"{Path(result_name).stem}.json").read_text())

    def loss_steps(self, result_name: str) -> list[int]:
        with (self.hot.logs / f"{Path(result_name).stem}.losses.csv").open() as f:
            return [int(row["step"]) for row in csv.DictReader(f)]

    def inbox_files(self) -> list[str]:
        """Non-ignored files still in the inbox, relative to it."""
        found = []
        for dirpath, dirnames, filenames in os.walk(self.inbox):
            dirnames[:] = [d for d in dirnames if not is_ignored(d)]
            found += [str((Path(dirpath) / n).relative_to(self.inbox)) for n in filenames if not is_ignored(n)]
        return sorted(found)

    def assert_nothing_lost(self, kept: tuple[str, ...] = (), claims_left: int = 0) -> None:
        """Promise 1: each dropped file is, byte for byte, in exactly one of done/ and
        failed/ and nowhere in the inbox (``kept``: folder preset.json files, which stay)."""
        landed: Counter[str] = Counter()
        for folder in (self.hot.done, self.hot.failed):
            for path in folder.rglob("*"):
                if path.is_file() and not path.name.endswith(".error.json"):
                    landed[sha256(path.read_bytes())] += 1
        expected = Counter(digest for rel, digest in self.dropped if rel not in kept)
        assert landed == expected, f"done/ + failed/ hold {landed}, dropped {expected}"
        assert self.inbox_files() == sorted(kept)
        work = [p.name for p in self.hot.work.iterdir()]
        assert len(work) == claims_left, f"claim folders left in .stylefold/work: {work}"
        assert not [p.name for p in self.hot.outbox.iterdir() if p.name.startswith(".")], "temp files in outbox/"


def _files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def rig(tmp_path: Path, extractor: Any) -> Rig:
    return Rig(tmp_path, extractor)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """16–32 px convolutions gain nothing from threads, and on 2 shared cores the
    threads' spin-waits made a job ~3x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stylefold")


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("STYLEFOLD_ROOT", "STYLEFOLD_CONFIG", "STYLEFOLD_DEVICE", "STYLEFOLD_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


# ---------------------------------------------------------------- pairing (SPEC §3)


def test_sidecar_pairs_with_its_image(rig: Rig) -> None:
    rig.drop_photo("IMG_1.jpg")
    rig.drop_json("IMG_1.json", {"extends": "tiny", "style": "side.png"})

    assert rig.serve() == 0

    assert rig.results() == ["IMG_1-side.jpg"]
    assert rig.done() == ["IMG_1.jpg", "IMG_1.json"]
    report = rig.report("IMG_1-side.jpg")
    assert report["status"] == "done"
    assert report["preset"]["source"] == "sidecar IMG_1.json"
    assert report["preset"]["effective"]["steps"] == 3
    assert rig.loss_steps("IMG_1-side.jpg") == [1, 2, 3]
    rig.assert_nothing_lost()


def test_sidecar_named_like_the_preset_it_extends(rig: Rig) -> None:
    """portrait.jpg + portrait.json {"extends": "portrait"} is no loop."""
    rig.drop_photo("tiny.jpg")
    rig.drop_json("tiny.json", {"extends": "tiny", "style": "side.png"})

    assert rig.serve() == 0

    assert rig.results() == ["tiny-side.jpg"]
    assert rig.report("tiny-side.jpg")["preset"]["effective"]["steps"] == 3
    rig.assert_nothing_lost()


def test_folder_preset_json_stays_for_the_next_photo(rig: Rig) -> None:
    preset_json = rig.inbox / "shoot" / "preset.json"
    preset_json.parent.mkdir()
    preset_json.write_text(json.dumps({"extends": "tiny", "style": "folder.png"}))
    rig.drop_photo("shoot/a.jpg", seed=1)

    assert rig.serve() == 0
    assert rig.results() == ["a-folder.jpg"]
    assert preset_json.is_file(), "preset.json must stay in the inbox for the next photo"

    rig.drop_photo("shoot/b.png", seed=2)  # a later photo in the same folder uses it too
    assert rig.serve() == 0

    assert rig.results() == ["a-folder.jpg", "b-folder.png"]
    assert rig.done() == ["shoot/a.jpg", "shoot/b.png"]
    assert rig.report("b-folder.png")["preset"]["source"] == f"folder preset inbox/{preset_json.relative_to(rig.inbox)}"
    rig.assert_nothing_lost(kept=("shoot/preset.json",))


def test_folder_named_after_a_preset_applies_it(rig: Rig) -> None:
    rig.drop_photo("tiny/a.jpg")
    rig.drop_photo("tiny/2024/06/b.jpg", seed=1)  # the first folder level names the preset

    assert rig.serve() == 0

    assert rig.results() == ["a-tex.jpg", "b-tex.jpg"]
    assert rig.report("a-tex.jpg")["preset"]["source"] == "named preset tiny"
    assert rig.loss_steps("b-tex.jpg") == [1, 2, 3]
    rig.assert_nothing_lost()


def test_default_preset_from_the_config(rig: Rig) -> None:
    rig.drop_photo("a.jpg")
    rig.drop_photo("not-a-preset/b.jpg", seed=1)

    assert rig.serve(default_preset="deflt") == 0

    assert rig.results() == ["a-default.jpg", "b-default.jpg"]
    assert rig.report("b-default.jpg")["preset"]["source"] == "default preset deflt"
    rig.assert_nothing_lost()


def test_precedence_sidecar_then_preset_json_then_folder_name_then_default(rig: Rig) -> None:
    # inbox/named/ is named after a preset AND holds a preset.json; a default exists too.
    preset_json = rig.inbox / "named" / "preset.json"
    preset_json.parent.mkdir()
    preset_json.write_text(json.dumps({"extends": "tiny", "style": "folder.png"}))
    rig.drop_photo("named/with_sidecar.jpg", seed=1)
    rig.drop_json("named/with_sidecar.json", {"extends": "tiny", "style": "side.png"})
    rig.drop_photo("named/folder_json.jpg", seed=2)
    rig.drop_photo("tiny/folder_name.jpg", seed=3)  # no preset.json here
    rig.drop_photo("elsewhere/fallback.jpg", seed=4)

    assert rig.serve(default_preset="deflt") == 0

    assert rig.results() == [
        "fallback-default.jpg",  # 4. default_preset
        "folder_json-folder.jpg",  # 2. preset.json beats the folder's name
        "folder_name-tex.jpg",  # 3. the folder's name beats the default
        "with_sidecar-side.jpg",  # 1. the sidecar beats everything
    ]
    rig.assert_nothing_lost(kept=("named/preset.json",))


def test_sidecar_arriving_after_its_image_is_waited_for(rig: Rig) -> None:
    """The editor writes the JSON only once the image has settled and been passed over
    for want of a preset: the image waits for it (pair_timeout_s) and pairs with it."""
    rig.drop_photo("late.jpg")
    sidecar = json.dumps({"extends": "tiny", "style": "side.png"}).encode()
    settle_s = 0.1
    # pair_timeout_s only bounds how long a broken pairing takes to fail the test.
    service = rig.make_service(settle_s=settle_s, pair_timeout_s=60.0)
    scans: list[float] = []
    passed_over: list[float] = []  # the clock of the ready() that passed over the settled image

    def write_sidecar_once_passed_over(now: float, handed_out: list[Candidate]) -> None:
        # late.jpg is unchanged since the first scan, so it has settled once settle_s has
        # passed since then; a ready() then that hands out nothing left it waiting for a preset.
        if not passed_over and not handed_out and now - scans[0] >= settle_s:
            passed_over.append(now)
            rig.drop("late.json", sidecar)

    rig.before_scans(service, scans.append)
    rig.after_ready(service, write_sidecar_once_passed_over)
    assert service.run(once=True) == 0

    assert passed_over, "the image was never passed over settled, so the sidecar was not late"
    assert rig.results() == ["late-side.jpg"]
    assert rig.done() == ["late.jpg", "late.json"]
    assert rig.report("late-side.jpg")["preset"]["source"] == "sidecar late.json"
    rig.assert_nothing_lost()


def test_image_without_any_preset_fails_no_preset_after_the_timeout(rig: Rig,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    rig.drop_photo("lonely.jpg")
    rig.drop_photo("tiny/fine.jpg", seed=1)

    assert rig.serve(pair_timeout_s=0.5) == 1

    assert rig.failed() == ["lonely.jpg"]
    assert rig.error("lonely.jpg")["kind"] == "no_preset"
    assert rig.results() == ["fine-tex.jpg"]
    assert "failed lonely.jpg (no_preset)" in caplog.text
    rig.assert_nothing_lost()


def test_orphan_sidecar_fails_no_image(rig: Rig) -> None:
    rig.drop_json("ghost.json", {"extends": "tiny"})

    assert rig.serve(pair_timeout_s=0.5) == 1

    assert rig.failed() == ["ghost.json"]
    assert rig.error("ghost.json")["kind"] == "no_image"
    assert rig.results() == []
    rig.assert_nothing_lost()


# ---------------------------------------------------------------- arrival (SPEC §3)


def _slow_png() -> bytes:
    """A PNG big enough to be written in visible chunks (noise does not compress)."""
    buf = io.BytesIO()
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _chunks(data: bytes, n: int) -> list[bytes]:
    size = -(-len(data) // n)
    return [data[i:i + size] for i in range(0, len(data), size)]


def _write_just_in_time(rig: Rig, service: Service, path: Path, rest: list[bytes],
                        write: Callable[[bytes], None]) -> list[int | None]:
    """A slow writer, as slow as it can be without ``path`` ever settling: ``write(chunk)``
    for each of ``rest``, in the service's thread, right before the scan that would
    otherwise find the file unchanged for settle_s. The scans in between find it
    unchanged but not settled (a close-write shortcut, or a settle time counted from
    anything but the last change, would take it partial there). Returns the file's size
    before each write, as the service last found it (None: it had left the inbox)."""
    settle_s = service.config.settle_s
    chunks = iter(rest)
    sizes: list[int | None] = []
    changed: float | None = None  # the clock of the scan that found the file's last change

    def before_scan(now: float) -> None:
        nonlocal changed
        if changed is None:
            changed = now  # the first scan finds the file as it was dropped
            return
        if now - changed < settle_s:  # the rule of Inbox: settled once now - changed >= settle_s
            return
        chunk = next(chunks, None)
        if chunk is None:
            return  # complete: now it may settle
        sizes.append(path.stat().st_size if path.exists() else None)
        write(chunk)
        changed = now  # this scan finds it grown

    rig.before_scans(service, before_scan)
    return sizes


def _sizes_seen(chunks: list[bytes]) -> list[int]:
    """The file's sizes before each chunk after the first: the first chunk, the first
    two, ... all but the last."""
    return [sum(len(c) for c in chunks[:n]) for n in range(1, len(chunks))]


def test_slow_writer_holding_the_file_open_is_taken_complete(rig: Rig) -> None:
    """A slow network copy holding the file open: it grows just before it would have
    settled, so it is not taken until the copy is complete."""
    data = _slow_png()
    chunks = _chunks(data, 10)
    path = rig.inbox / "tiny" / "slow.png"
    path.parent.mkdir()
    out = path.open("wb")
    out.write(chunks[0])
    out.flush()  # the file exists (partly) before the service looks

    def copy_on(chunk: bytes) -> None:
        out.write(chunk)
        out.flush()
        if out.tell() == len(data):
            out.close()  # only once it is complete

    service = rig.make_service(settle_s=0.3)
    sizes_seen = _write_just_in_time(rig, service, path, chunks[1:], copy_on)
    try:
        assert service.run(once=True) == 0
    finally:
        out.close()

    assert sizes_seen == _sizes_seen(chunks), "the service did not see each partial file, still in the inbox"
    rig.record("tiny/slow.png", data)
    assert sha256((rig.hot.done / "tiny" / "slow.png").read_bytes()) == sha256(data)
    assert rig.results() == ["slow-tex.png"]
    assert rig.report("slow-tex.png")["input"]["sha256"] == sha256(data), "the job saw a partial file"
    rig.assert_nothing_lost()


def test_slow_writer_reopening_between_chunks_is_taken_complete(rig: Rig) -> None:
    """A writer that appends and closes again (a shell loop with >>, a resumed
    transfer): each close is a close-write event, yet SPEC §3 takes the file only once
    it is also unchanged for settle_s."""
    data = _slow_png()
    chunks = _chunks(data, 4)
    path = rig.inbox / "tiny" / "appended.png"
    path.parent.mkdir()
    path.write_bytes(chunks[0])

    def append(chunk: bytes) -> None:
        with path.open("ab") as f:  # a close-write event after every chunk
            f.write(chunk)

    service = rig.make_service(settle_s=0.5)
    sizes_seen = _write_just_in_time(rig, service, path, chunks[1:], append)
    assert service.run(once=True) == 0

    assert sizes_seen == _sizes_seen(chunks), "the service did not see each partial file, still in the inbox"
    rig.record("tiny/appended.png", data)
    assert rig.failed() == []
    assert rig.results() == ["appended-tex.png"]
    assert rig.report("appended-tex.png")["input"]["sha256"] == sha256(data), "the job saw a partial file"
    rig.assert_nothing_lost()


def test_settle_time_restarts_with_every_change(rig: Rig) -> None:
    """The scan state machine with the clock passed in: a file is ready once it has been
    unchanged for settle_s, counted from its last change, not from when it was first seen."""
    inbox = Inbox(rig.hot, settle_s=2.0, pair_timeout_s=1.0, has_preset=lambda name: name == "tiny")
    data = photo_bytes()
    path = rig.inbox / "tiny" / "x.jpg"
    path.parent.mkdir()
    path.write_bytes(data[:100])
    inbox.scan(100.0)
    with path.open("ab") as f:  # the writer goes on (and closes the file again)
        f.write(data[100:])
    inbox.scan(101.0)
    assert list(inbox.ready(102.5)) == []  # 2.5 s since first seen, 1.5 s since the change
    inbox.scan(103.1)
    assert [c.path for c in inbox.ready(103.1)] == [path]


def test_temp_name_then_rename_is_processed_under_the_final_name(rig: Rig) -> None:
    first = photo_bytes(".jpg", seed=1)
    second = photo_bytes(".png", seed=2)
    hidden_tmp = rig.inbox / "tiny" / ".x.jpg.tmp"
    part = rig.inbox / "tiny" / "y.png.part"
    hidden_tmp.parent.mkdir()
    hidden_tmp.write_bytes(first[: len(first) // 2])  # half-written copies
    part.write_bytes(second[: len(second) // 2])
    rig.drop_photo("tiny/other.jpg", seed=3)

    assert rig.serve() == 0  # the half-written files are not touched meanwhile
    assert rig.results() == ["other-tex.jpg"]
    assert hidden_tmp.read_bytes() == first[: len(first) // 2]
    assert part.read_bytes() == second[: len(second) // 2]

    with hidden_tmp.open("ab") as f:
        f.write(first[len(first) // 2:])
    with part.open("ab") as f:
        f.write(second[len(second) // 2:])
    os.rename(hidden_tmp, rig.inbox / "tiny" / "x.jpg")
    os.rename(part, rig.inbox / "tiny" / "y.png")
    rig.record("tiny/x.jpg")
    rig.record("tiny/y.png")

    assert rig.serve() == 0
    assert rig.results() == ["other-tex.jpg", "x-tex.jpg", "y-tex.png"]
    assert rig.done() == ["tiny/other.jpg", "tiny/x.jpg", "tiny/y.png"]
    rig.assert_nothing_lost()


JUNK = (".DS_Store", "._IMG.jpg", "Thumbs.db", "desktop.ini", "x.part", "x.tmp", "y.crdownload",
        "z.download", "~$lock.jpg", "tiny/.DS_Store", "tiny/IMG.jpg.part", ".hidden/photo.jpg",
        "THUMBS.DB")


def test_junk_is_left_alone_and_never_moved(rig: Rig) -> None:
    junk = {}
    for i, rel in enumerate(JUNK):
        path = rig.inbox / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        junk[rel] = photo_bytes(".jpg", seed=i) if rel.endswith(".jpg") else f"junk {i}".encode()
        path.write_bytes(junk[rel])
    rig.drop_photo("tiny/IMG.jpg")

    assert rig.serve() == 0

    assert rig.results() == ["IMG-tex.jpg"]
    assert rig.done() == ["tiny/IMG.jpg"] and rig.failed() == []
    for rel, data in junk.items():
        assert (rig.inbox / rel).read_bytes() == data, f"{rel} was touched"
    rig.assert_nothing_lost()


def test_files_present_before_the_service_starts_at_any_depth(rig: Rig) -> None:
    rig.drop_photo("tiny/a.jpg", seed=1)
    rig.drop_photo("tiny/2024/06/15/shoot/deep.jpg", seed=2)  # an editor's dated export tree
    rig.drop_photo("tiny/a/b/c/d/e/f/g/deeper.jpg", seed=3)

    assert rig.serve() == 0

    assert rig.results() == ["a-tex.jpg", "deep-tex.jpg", "deeper-tex.jpg"]
    rig.assert_nothing_lost()


# ---------------------------------------------------------------- hostile input (SPEC §6.4)


def _truncated_jpeg() -> bytes:
    data = photo_bytes(".jpg", 64, 48, seed=9)
    return data[: len(data) * 2 // 3]


def _png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid 1-bit greyscale PNG of width x height: ~110 KB on disk, 900 MP decoded."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    rows_per_block = 1000
    idat = b"".join(packer.compress(row * rows_per_block) for _ in range(height // rows_per_block))
    idat += packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _with_sidecar(name: str, sidecar: bytes | dict[str, Any]) -> Callable[[Rig], None]:
    def setup(rig: Rig) -> None:
        rig.drop_photo(name, seed=5)
        body = sidecar if isinstance(sidecar, bytes) else json.dumps(sidecar).encode()
        rig.drop(f"{Path(name).stem}.json", body)
    return setup


def _style_symlink_outside(rig: Rig) -> None:
    outside = rig.root.parent / "outside"
    outside.mkdir()
    write_texture(outside / "secret.png", size=32)
    (rig.hot.styles / "evil.png").symlink_to(outside / "secret.png")
    _with_sidecar("linked.jpg", {"extends": "tiny", "style": "evil.png"})(rig)


def _style_absolute(rig: Rig) -> None:
    outside = rig.root.parent / "outside"
    outside.mkdir()
    write_texture(outside / "abs.png", size=32)
    _with_sidecar("absolute.jpg", {"extends": "tiny", "style": str(outside / "abs.png")})(rig)


def _bad_folder_preset(rig: Rig) -> None:
    (rig.inbox / "shoot").mkdir()
    (rig.inbox / "shoot" / "preset.json").write_text('{"steps": "many"}')
    rig.drop_photo("shoot/folder.jpg", seed=6)


HOSTILE: dict[str, tuple[Callable[[Rig], None], str, str, str | None]] = {
    # id: (setup, the file that must land in failed/, kind, text the error must contain)
    "random bytes .jpg": (lambda r: r.drop("tiny/noise.jpg", np.random.default_rng(3).bytes(4096)),
                          "noise.jpg", "unreadable_image", None),
    "text named .jpg": (lambda r: r.drop("tiny/letter.jpg", b"Dear photographer,\nthis is not a JPEG.\n"),
                        "letter.jpg", "unreadable_image", None),
    "empty .png": (lambda r: r.drop("tiny/empty.png", b""), "empty.png", "unreadable_image", None),
    "truncated JPEG": (lambda r: r.drop("tiny/cut.jpg", _truncated_jpeg()), "cut.jpg", "unreadable_image", None),
    "decompression bomb": (lambda r: r.drop("tiny/bomb.png", _png_bomb()), "bomb.png", "too_large", None),
    "invalid JSON sidecar": (_with_sidecar("badjson.jpg", b'{"steps": 3,'), "badjson.jpg", "invalid_preset",
                             "inbox/badjson.json: not valid JSON"),
    "unknown preset key": (_with_sidecar("unknown.jpg", {"extends": "tiny", "brightness": 2}), "unknown.jpg",
                           "invalid_preset", "brightness"),
    "unknown extends": (_with_sidecar("parent.jpg", {"extends": "no-such-preset"}), "parent.jpg",
                        "invalid_preset", "no-such-preset"),
    "invalid folder preset.json": (_bad_folder_preset, "folder.jpg", "invalid_preset", "steps"),
    "style ../": (_with_sidecar("dotdot.jpg", {"extends": "tiny", "style": "../tex.png"}), "dotdot.jpg",
                  "style_not_found", None),
    "style name too long": (_with_sidecar("longname.jpg", {"extends": "tiny", "style": "a" * 300 + ".png"}),
                            "longname.jpg", "style_not_found", "too long"),
    "style absolute path": (_style_absolute, "absolute.jpg", "style_not_found", None),
    "style symlink leading out": (_style_symlink_outside, "linked.jpg", "style_not_found", None),
    "steps over the cap": (_with_sidecar("long.jpg", {"extends": "tiny", "steps": 50}), "long.jpg",
                           "too_large", "50 steps"),
    "size over the cap": (_with_sidecar("big.jpg", {"extends": "tiny", "size": 128}), "big.jpg",
                          "too_large", "128"),
    "text file": (lambda r: r.drop("notes.txt", b"call the client"), "notes.txt", "unsupported_file", None),
    "raw file": (lambda r: r.drop("tiny/IMG_0001.CR2", b"II*\x00\x10\x00\x00\x00CR\x02\x00" + bytes(200)),
                 "IMG_0001.CR2", "unsupported_file", None),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_input_fails_its_job_and_the_service_keeps_serving(
        rig: Rig, caplog: pytest.LogCaptureFixture, case: str) -> None:
    setup, failed_name, kind, needle = HOSTILE[case]
    setup(rig)
    rig.drop_photo("tiny/good.jpg", seed=11)  # in the same batch

    code = rig.serve(max_input_pixels=1_000_000, max_steps=10, max_size=64, pair_timeout_s=0.3)

    assert code == 1
    landed = [n for n in rig.failed() if Path(n).name == failed_name]
    assert len(landed) == 1, rig.failed()
    body = rig.error(landed[0])
    assert body["kind"] == kind, body
    if needle is not None:
        assert needle in body["error"], body
    assert f"({kind})" in caplog.text
    assert rig.results() == ["good-tex.jpg"]
    assert rig.done() == ["tiny/good.jpg"]
    kept = ("shoot/preset.json",) if (rig.inbox / "shoot" / "preset.json").exists() else ()
    rig.assert_nothing_lost(kept=kept)


# ---------------------------------------------------------------- volume, names, idempotency


def test_two_hundred_files_dropped_at_once_are_each_processed_once(rig: Rig,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(0)
    for i in range(200):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
        rig.drop(f"one/s{i:03d}.png", buf.getvalue())

    assert rig.serve() == 0

    expected = [f"s{i:03d}-tex.png" for i in range(200)]
    assert rig.results() == expected  # exactly these names: no -2, none missing
    assert rig.done() == [f"one/s{i:03d}.png" for i in range(200)]
    assert rig.failed() == []
    assert len(list(rig.hot.logs.glob("*.losses.csv"))) == 200
    assert caplog.text.count("done one/s") == 200
    rig.assert_nothing_lost()


def test_name_collisions_never_overwrite(rig: Rig) -> None:
    in_folder = rig.drop_photo("tiny/a.jpg", seed=1)
    at_top = rig.drop_photo("a.jpg", seed=2)
    rig.drop_json("a.json", {"extends": "tiny"})

    assert rig.serve() == 0

    assert rig.results() == ["a-tex-2.jpg", "a-tex.jpg"]
    inputs = {rig.report(name)["input"]["sha256"] for name in rig.results()}
    assert inputs == {sha256(in_folder), sha256(at_top)}, "one result overwrote the other"
    done = rig.done()
    # Each keeps its inbox folder, so the names no longer meet in done/.
    assert done == ["a.jpg", "a.json", "tiny/a.jpg"], done
    # The sidecar went to done/ under its image's new name, whichever that was.
    sidecar = next(n for n in done if n.endswith(".json"))
    image = rig.hot.done / sidecar.replace(".json", ".jpg")
    assert image.read_bytes() == at_top
    rig.assert_nothing_lost()


def test_same_photo_and_preset_again_gives_no_second_result(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    data = rig.drop_photo("tiny/x.jpg")
    assert rig.serve() == 0
    assert rig.results() == ["x-tex.jpg"]
    first_result = (rig.hot.outbox / "x-tex.jpg").read_bytes()

    rig.drop("tiny/x.jpg", data)  # the same bytes, the same preset
    rig.drop("x.jpg", data)  # the same bytes, another preset (seed 1)
    rig.drop_json("x.json", {"extends": "tiny", "seed": 1})
    caplog.clear()
    assert rig.serve() == 0

    assert rig.results() == ["x-tex-2.jpg", "x-tex.jpg"]  # only the new preset made a result
    assert rig.report("x-tex-2.jpg")["preset"]["effective"]["seed"] == 1
    assert (rig.hot.outbox / "x-tex.jpg").read_bytes() == first_result
    assert "tiny/x.jpg: same photo and preset as job" in caplog.text
    done = rig.done()
    assert [n for n in done if n.endswith(".jpg")] == ["tiny/x-2.jpg", "tiny/x.jpg", "x.jpg"]
    assert len([n for n in done if n.endswith(".json")]) == 1
    rig.assert_nothing_lost()


# ---------------------------------------------------------------- interruption (SPEC §6.5, 6.6)


def test_stopped_job_keeps_its_claim_and_resumes_where_it_stopped(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    data = rig.drop_photo("five/p.jpg")
    service = rig.make_service()
    rig.stop_at_step(service, 2)
    assert service.run(once=True) == 0

    claims = list(rig.hot.work.iterdir())
    assert len(claims) == 1
    assert (claims[0] / "checkpoint.pt").is_file()
    assert (claims[0] / "original" / "p.jpg").read_bytes() == data, "the original must wait in its claim"
    assert rig.done() == [] and rig.failed() == [] and rig.results() == []
    assert rig.inbox_files() == []

    caplog.clear()
    assert rig.serve() == 0  # the next start

    assert "resuming interrupted job" in caplog.text and "resuming at step 2" in caplog.text
    assert rig.results() == ["p-tex.jpg"]
    assert rig.loss_steps("p-tex.jpg") == [1, 2, 3, 4, 5]
    assert rig.report("p-tex.jpg")["steps_run"] == 5
    assert rig.done() == ["five/p.jpg"]
    rig.assert_nothing_lost()


def test_preset_edited_between_stop_and_restart_does_not_change_the_resumed_job(rig: Rig) -> None:
    """The job's description is snapshotted at claim time: editing the preset its
    folder names, while the job waits on a checkpoint, changes nothing for that job."""
    rig.drop_photo("five/p.jpg")
    service = rig.make_service()
    rig.stop_at_step(service, 2)
    assert service.run(once=True) == 0
    assert len(list(rig.hot.work.iterdir())) == 1
    rig.preset("five", {"extends": "tiny", "steps": 9, "seed": 7})  # edited while stopped

    assert rig.serve() == 0

    assert rig.loss_steps("p-tex.jpg") == [1, 2, 3, 4, 5]
    effective = rig.report("p-tex.jpg")["preset"]["effective"]
    assert (effective["steps"], effective["seed"]) == (5, 0)
    rig.drop_photo("five/q.jpg", seed=3)  # a new photo gets the edited preset
    assert rig.serve() == 0
    assert rig.loss_steps("q-tex.jpg") == list(range(1, 10))
    rig.assert_nothing_lost()


def test_photos_named_like_the_jobs_own_files_are_kept_intact(rig: Rig) -> None:
    """A claim folder also holds the job's rendered.png, rendered.json, result.json and
    checkpoint.pt; a photo or sidecar of the same name must not be overwritten by them."""
    rig.drop_photo("tiny/rendered.png", seed=1)
    rig.drop_photo("result.jpg", seed=2)
    rig.drop_json("result.json", {"extends": "tiny"})

    assert rig.serve() == 0

    assert rig.results() == ["rendered-tex.png", "result-tex.jpg"]
    assert rig.failed() == []
    rig.assert_nothing_lost()


def test_restart_after_dying_between_moving_the_originals_and_removing_the_claim(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job's own files left in its claim folder are not photos to give back."""
    from stylefold.hotfolder.claims import Claim

    rig.drop_photo("tiny/x.jpg")
    with monkeypatch.context() as patched:
        patched.setattr(Claim, "finish", Claim.release)  # dies before removing its folder
        assert rig.serve() == 0
    assert len(list(rig.hot.work.iterdir())) == 1

    assert rig.serve() == 0  # the next start cleans up

    assert rig.results() == ["x-tex.jpg"]
    assert rig.done() == ["tiny/x.jpg"] and rig.failed() == []
    rig.assert_nothing_lost()


def test_claim_interrupted_between_image_and_sidecar_gets_its_sidecar(rig: Rig) -> None:
    """A claim moves the image, then its sidecar; a process killed between the two
    renames leaves the sidecar in the inbox. The next start completes the claim."""
    from stylefold.hotfolder.claims import claim

    rig.drop_photo("x.jpg")
    rig.drop_json("x.json", {"extends": "tiny", "style": "side.png"})
    half = claim(rig.hot, rig.inbox / "x.jpg", None, "x.jpg", SidecarPreset(file="x.json"))
    assert half is not None
    half.release()  # the process is gone; its lock with it

    assert rig.serve(pair_timeout_s=0.3) == 0

    assert rig.results() == ["x-side.jpg"]
    assert rig.done() == ["x.jpg", "x.json"]
    rig.assert_nothing_lost()


def test_file_name_that_is_not_utf8_is_processed(rig: Rig) -> None:
    """Linux names are bytes: an SMB client with another charset writes Latin-1 names."""
    (rig.inbox / "tiny").mkdir()
    latin1 = os.fsencode(rig.inbox / "tiny") + b"/caf\xe9.jpg"
    data = photo_bytes(seed=4)
    with open(latin1, "wb") as f:
        f.write(data)
    rig.record(os.fsdecode(latin1)[len(str(rig.inbox)) + 1:], data)
    rig.drop_photo("tiny/good.jpg", seed=5)

    assert rig.serve() == 0

    assert rig.results() == sorted([os.fsdecode(b"caf\xe9-tex.jpg"), "good-tex.jpg"])
    assert rig.failed() == []
    rig.assert_nothing_lost()


# ---------------------------------------------------------------- init, submit, status


def test_serve_in_the_folder_init_made_serves_that_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`stylefold init DIR && cd DIR && stylefold serve`: the commands read DIR's
    stylefold.toml and DIR is the hot folder, rather than a new DIR/hotfolders."""
    from stylefold.config import load_config

    root = tmp_path / "studio"
    assert main(["init", str(root)]) == 0
    monkeypatch.chdir(root)
    assert load_config(environ={}).root.resolve() == root.resolve()
    (root / "stylefold.toml").write_text('root = "elsewhere"\nthreads = 3\n')
    config = load_config(environ={})
    assert (config.root.resolve(), config.threads) == ((root / "elsewhere").resolve(), 3)
    # A root given, or a ./hotfolders of its own, wins as before.
    assert load_config(overrides={"root": tmp_path / "other"}, environ={}).threads != 3
    assert load_config(environ={"STYLEFOLD_ROOT": str(tmp_path / "other")}).threads != 3
    (root / "hotfolders").mkdir()
    (root / "hotfolders" / "stylefold.toml").write_text("threads = 5\n")
    config = load_config(environ={})
    assert (config.root, config.threads) == (Path("hotfolders"), 5)
    monkeypatch.chdir(tmp_path)  # no stylefold.toml here: the embedded default root
    assert load_config(environ={}).root == Path("hotfolders")


def test_init_creates_the_tree_and_a_config_whose_keys_are_all_valid(tmp_path: Path) -> None:
    root = tmp_path / "studio"
    assert main(["init", str(root)]) == 0

    for folder in ("inbox", "styles", "outbox", "outbox/logs", "done", "failed", ".stylefold"):
        assert (root / folder).is_dir(), folder
    text = (root / "stylefold.toml").read_text()
    assert tomllib.loads(text) == {}, "everything is commented out"
    lines = re.findall(r"^# (\[[a-z_]+\]|[a-z_]+ = .*)$", text, re.MULTILINE)
    settings = tomllib.loads("\n".join(lines))
    assert set(settings) == set(Config.model_fields), "every config key is documented, and only those"
    for table in ("web", "cluster"):
        model = type(getattr(Config(), table))
        assert set(settings[table]) == set(model.model_fields), f"every [{table}] key is documented, and only those"
    Config.model_validate(settings)
    # "The values shown are the defaults", except where the comment says otherwise
    # ("(default: ...)") and for root, whose comment explains "." (this file's folder).
    defaults, table = Config(), None
    for line in lines:
        if line.startswith("["):
            table = line.strip("[]")
            continue
        key = line.split(" = ")[0]
        given, default = ((settings[key], getattr(defaults, key)) if table is None
                          else (settings[table][key], getattr(getattr(defaults, table), key)))
        if key != "root" and "(default:" not in line:
            assert given == default, f"{line!r}: the default is {default!r}"

    assert main(["init", str(root)]) == 0  # again: nothing is overwritten
    assert (root / "stylefold.toml").read_text() == text


def test_submit_places_files_without_visible_partial_names(rig: Rig, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    import stylefold.hotfolder.admin

    sources = rig.root.parent / "export"
    sources.mkdir()
    write_photo(sources / "a.jpg", 40, 32, seed=1)
    write_photo(sources / "b.jpg", 40, 32, seed=2)
    (sources / "look.json").write_text(json.dumps({"extends": "tiny", "style": "side.png"}))
    seen_while_copying: list[tuple[str, list[str]]] = []
    real_copy = shutil.copyfileobj

    def copy_and_look(fin: Any, fout: Any, length: int = 0) -> None:
        real_copy(fin, fout, length)
        # All bytes written, not yet renamed: what would a scan of the folder see?
        folder = Path(fout.name).parent
        visible = sorted(p.name for p in folder.iterdir() if p.is_file() and not is_ignored(p.name))
        seen_while_copying.append((Path(fout.name).name, visible))

    monkeypatch.setattr(stylefold.hotfolder.admin.shutil, "copyfileobj", copy_and_look)
    # submit checks the name against the root's presets: the studio's are in presets_dir.
    (rig.root / "stylefold.toml").write_text(f'presets_dir = "{rig.presets}"\n')
    assert main(["submit", str(sources / "a.jpg"), "--preset", "tiny", "--root", str(rig.root)]) == 0
    assert main(["submit", str(sources / "b.jpg"), "--preset", str(sources / "look.json"),
                 "--root", str(rig.root)]) == 0
    printed = capsys.readouterr().out.split()

    assert printed == [str(rig.inbox / "tiny" / "a.jpg"), str(rig.inbox / "b.jpg")]
    assert len(seen_while_copying) == 3  # a.jpg, then b's sidecar, then b.jpg
    for temp_name, visible in seen_while_copying:
        assert is_ignored(temp_name), f"{temp_name} is not a name the daemon ignores"
        assert Path(temp_name).name not in visible
    assert seen_while_copying[0][1] == []  # a.jpg was not visible under its final name yet
    assert seen_while_copying[2][1] == ["b.json"]  # the sidecar is in place before its image
    assert (rig.inbox / "b.json").read_bytes() == (sources / "look.json").read_bytes()
    assert (rig.inbox / "tiny" / "a.jpg").read_bytes() == (sources / "a.jpg").read_bytes()
    for rel in ("tiny/a.jpg", "b.jpg", "b.json"):
        rig.record(rel)

    assert rig.serve() == 0
    assert rig.results() == ["a-tex.jpg", "b-side.jpg"]
    rig.assert_nothing_lost()


@pytest.mark.parametrize("name", ["../elsewhere", "ABSOLUTE", ".hidden", "a/b"])
def test_submit_refuses_a_preset_name_that_is_a_path(rig: Rig, name: str, tmp_path: Path) -> None:
    name = str(tmp_path / "abs") if name == "ABSOLUTE" else name
    photo = write_photo(tmp_path / "p.jpg", 40, 32)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    assert main(["submit", str(photo), "--preset", name, "--root", str(rig.root)]) == 2

    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, "nothing placed anywhere"


def test_status_json_lists_recent_results_and_failures(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    rig.drop_photo("tiny/ok.jpg")
    rig.drop("tiny/broken.jpg", b"not an image")
    assert rig.serve() == 1
    capsys.readouterr()

    assert main(["status", "--root", str(rig.root), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)

    assert status["waiting"] == [] and status["running"] == []
    assert [(j["source"], Path(j["output"]).name) for j in status["recent_done"]] == [("tiny/ok.jpg", "ok-tex.jpg")]
    assert [(j["source"], j["kind"]) for j in status["recent_failed"]] == [("tiny/broken.jpg", "unreadable_image")]
    assert status["counts"] == {"done": 1, "failed": 1}
    rig.assert_nothing_lost()


# ---------------------------------------------------------------- review findings


def test_a_preset_json_with_a_huge_integer_fails_its_photo_not_the_daemon(rig: Rig) -> None:
    """json.loads raises a plain ValueError for integers over 4300 digits; it used to
    escape the claim and crash the daemon on every restart."""
    rig.drop("folder/preset.json", b'{"seed": ' + b"1" * 5000 + b"}")
    rig.drop_photo("folder/a.jpg")
    rig.drop_photo("b.jpg", seed=1)
    rig.drop_json("b.json", {"extends": "tiny"})
    assert rig.serve() == 1
    assert rig.error("folder/a.jpg")["kind"] == "invalid_preset"
    assert rig.results() == [f"b-{STYLE}.jpg"]
    rig.assert_nothing_lost(kept=("folder/preset.json",))


def test_folder_preset_name_in_another_case_is_the_folder_preset(rig: Rig) -> None:
    """Preset.json from a Windows share: used for the folder, never waited on forever."""
    rig.drop_json("shoot/Preset.json", {"extends": "tiny"})
    rig.drop_photo("shoot/a.jpg")
    assert rig.serve() == 0
    assert rig.results() == [f"a-{STYLE}.jpg"]
    rig.assert_nothing_lost(kept=("shoot/Preset.json",))


def test_long_file_name_gets_a_result(rig: Rig) -> None:
    name = "x" * 220 + ".jpg"
    rig.drop_photo(f"tiny/{name}")
    assert rig.serve() == 0
    [result] = rig.results()
    assert result.startswith("x" * 100) and len(result.encode()) <= 160
    rig.assert_nothing_lost()


def test_progress_sheet_of_a_long_run_is_capped(rig: Rig) -> None:
    rig.preset("every", {"extends": "tiny", "steps": 40, "snapshot_every": 1})
    rig.drop_photo("every/a.jpg")
    assert rig.serve() == 0
    sheet = Image.open(rig.hot.logs / f"a-{STYLE}.progress.jpg")
    assert sheet.height < 10 * 256  # 24 cells at most, 4 a row
    rig.assert_nothing_lost()


def test_a_crash_after_the_image_is_out_gives_no_second_result(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The name is recorded before the image is linked; a crash right after the link
    (simulated: the process "dies" as the image save returns) resumes into the same
    name instead of publishing NAME-STYLE-2."""
    import stylefold.media.outputs as outputs

    rig.drop_photo("tiny/a.jpg")
    real_save = outputs.imageio.save_image_atomic

    def save_then_die(*args: Any, **kwargs: Any) -> None:
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # not an Exception: nothing in the worker catches it

    monkeypatch.setattr(outputs.imageio, "save_image_atomic", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        rig.serve()
    assert rig.results() == [f"a-{STYLE}.jpg"]  # the image is out, the job is not finished
    # The process "dies": the kernel would drop its claim lock.
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(rig.hot.work)) and target.endswith("/lock"):
            os.close(int(fd))
    monkeypatch.setattr(outputs.imageio, "save_image_atomic", real_save)
    assert rig.serve() == 0
    assert rig.results() == [f"a-{STYLE}.jpg"]
    assert (rig.hot.logs / f"a-{STYLE}.json").exists()
    rig.assert_nothing_lost()


def test_photoshop_layers_and_huge_exif_do_not_reach_the_result(tmp_path: Path) -> None:
    from stylefold.media.imageio import load_image, save_image_atomic

    src = tmp_path / "layered.tif"
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif[37724] = b"\0" * 200_000  # ImageSourceData: Photoshop's layers
    Image.new("RGB", (40, 32), (10, 200, 30)).save(src, exif=exif.tobytes())
    loaded = load_image(src)
    assert loaded.exif is not None
    carried = Image.Exif()
    carried.load(loaded.exif)
    assert carried[0x010F] == "Canon" and 37724 not in carried
    big = Image.Exif()
    big[0x010F] = "Canon"
    big.get_ifd(0x8769)[0x9286] = b"ASCII\0\0\0" + b"x" * 70_000  # UserComment over 64 KB
    out = tmp_path / "out.jpg"
    save_image_atomic(loaded.image, out, exif=big.tobytes())
    assert Image.open(out).size == (40, 32)  # saved, without the oversized EXIF


def test_a_symlink_in_the_inbox_is_never_followed_and_ends_in_failed(rig: Rig, tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(photo_bytes(".jpg", 40, 32, 3))
    (rig.inbox / "tiny").mkdir()
    (rig.inbox / "tiny" / "link.jpg").symlink_to(secret)
    rig.drop_photo("tiny/a.jpg")
    assert rig.serve() == 1
    assert rig.results() == [f"a-{STYLE}.jpg"]
    assert rig.error("tiny/link.jpg")["kind"] == "unsupported_file"
    assert (rig.hot.failed / "tiny" / "link.jpg").is_symlink()  # the link itself, moved; the target untouched
    assert secret.exists()


def test_a_move_interrupted_between_link_and_unlink_is_finished_not_duplicated(tmp_path: Path) -> None:
    from stylefold.fsops import move_no_clobber

    src_dir, done = tmp_path / "claim", tmp_path / "done"
    src_dir.mkdir()
    done.mkdir()
    src = src_dir / "a.jpg"
    src.write_bytes(b"photo")
    os.link(src, done / "a.jpg")  # the crash: linked, not yet unlinked
    moved = move_no_clobber(src, done)
    assert moved == done / "a.jpg" and not src.exists()
    assert sorted(p.name for p in done.iterdir()) == ["a.jpg"]
    other = src_dir / "a.jpg"
    other.write_bytes(b"another photo")  # a different file of the same name still gets -2
    assert move_no_clobber(other, done) == done / "a-2.jpg"


def test_one_sidecar_applies_to_every_image_of_its_name(rig: Rig) -> None:
    """SPEC §3: NAME.json is the preset of NAME.EXT, whatever EXT: a.jpg and a.png both."""
    rig.drop_photo("a.jpg")
    rig.drop_photo("a.png", seed=1)
    rig.drop_json("a.json", {"extends": "tiny", "style": "side.png"})
    assert rig.serve() == 0
    # Both use the side.png style; the second result takes the next free name.
    results = rig.results()
    assert len(results) == 2 and {Path(r).suffix for r in results} == {".jpg", ".png"}
    assert {Path(r).stem for r in results} == {"a-side", "a-side-2"}
    assert "a.json" in rig.done()
    rig.assert_nothing_lost()


def test_a_lane_that_loses_a_file_to_a_sibling_lane_says_so_at_debug_only(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """`serve --broker` runs several lanes (Services) in one process on one folder; each
    new file is raced for by all of them. A loss to another process is said at INFO, a
    loss to a lane of this process only at DEBUG (it was one INFO line per lane)."""
    from stylefold.hotfolder.origins import DefaultPreset

    rig.drop_photo("a.jpg")
    rig.drop_photo("b.jpg")
    first, second = rig.make_service(), rig.make_service()
    lost = "was taken by another process"

    def candidate(name: str) -> Candidate:
        return Candidate(rig.inbox / name, None, DefaultPreset(name="tiny"), name)

    with caplog.at_level(logging.DEBUG, logger="stylefold.hotfolder.service"):
        taken = first._claim(candidate("a.jpg"))
        assert taken is not None
        assert second._claim(candidate("a.jpg")) is None
        (rig.inbox / "b.jpg").unlink()  # the user took it back, or another daemon did
        assert second._claim(candidate("b.jpg")) is None
    said = [(r.levelno, r.getMessage()) for r in caplog.records if lost in r.getMessage()]
    assert said == [(logging.DEBUG, f"a.jpg {lost} (or removed)"), (logging.INFO, f"b.jpg {lost} (or removed)")]
    taken.release()


def test_a_sibling_lane_that_loses_while_the_winner_is_still_renaming_says_so_at_debug(
    rig: Rig, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The losing lane can look the moment the winner's rename is done, before claim()
    returns: the path must be noted as this process's by then."""
    from stylefold.hotfolder import claims
    from stylefold.hotfolder.origins import DefaultPreset

    rig.drop_photo("a.jpg")
    first, second = rig.make_service(), rig.make_service()
    image = rig.inbox / "a.jpg"
    candidate = Candidate(image, None, DefaultPreset(name="tiny"), "a.jpg")
    rename, lost = claims.os.rename, []

    def rename_then_race(src: Any, dst: Any) -> None:
        rename(src, dst)
        if Path(src) == image:  # the sibling lane tries the file just taken
            lost.append(second._claim(candidate))

    monkeypatch.setattr(claims.os, "rename", rename_then_race)
    with caplog.at_level(logging.DEBUG, logger="stylefold.hotfolder.service"):
        taken = first._claim(candidate)
    assert taken is not None and lost == [None]
    said = [r.levelno for r in caplog.records if "was taken by another process" in r.getMessage()]
    assert said == [logging.DEBUG]
    taken.release()
