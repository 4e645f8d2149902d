"""Results sooner (issue 11): the preview, early stopping, resumable coarse-to-fine jobs.

Engine tests use random weights at 32–96 px; hot-folder tests drop real files into the
``Rig`` of test_hotfolder; the kill -9 test runs ``stylefold serve`` as a real process
with the helpers of test_serve_process.
"""

from __future__ import annotations

import json
import logging
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

import stylefold.engine.pyramid as pyramid
from stylefold.engine.stylize import EarlyStop, converged, push_total, stylize
from stylefold.job.run import engine_params
from stylefold.presets import Preset, PresetError, PresetLibrary, builtin_dir

from .conftest import book_params, write_photo
from .test_hotfolder import Rig
from .test_serve_process import START_S, Launcher, checkpoints, csv_steps, files, problems, wait_until, work_folders
from .test_serve_process import serve as serve  # a fixture

BOOK = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1"]
PHOTOGRAPHER = ("gatys", "impasto", "ink-wash", "pointillism", "stained-glass")


@pytest.fixture
def rig(tmp_path: Path, extractor: Any) -> Rig:
    return Rig(tmp_path, extractor)


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """As test_hotfolder: one torch thread at these sizes, INFO logs, no daemon environment."""
    for var in ("STYLEFOLD_ROOT", "STYLEFOLD_CONFIG", "STYLEFOLD_DEVICE", "STYLEFOLD_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="stylefold")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tensors(h: int = 40, w: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, h, w, generator=g), torch.rand(1, 3, 40, 40, generator=g)


# ---------------------------------------------------------------- the preset keys


def test_preview_and_early_stop_are_typed_keys_with_clear_errors() -> None:
    preset = PresetLibrary.validate({"preview": {"size": 128}, "early_stop": {"patience": 5}}, "x.json")
    assert preset.preview and (preset.preview.size, preset.preview.steps) == (128, 40)
    assert preset.early_stop and (preset.early_stop.tolerance, preset.early_stop.patience) == (1e-3, 5)
    for data, needle in (({"preview": True}, 'x.json: preview: must be an object such as {"size": 256'),
                         ({"early_stop": 0.01}, "x.json: early_stop: must be an object such as"),
                         ({"preview": {"size": 8}}, "x.json: preview.size: "),
                         ({"early_stop": {"tolerance": 0}}, "x.json: early_stop.tolerance: "),
                         ({"early_stop": {"patience": "5"}}, "x.json: early_stop.patience: "),
                         ({"preview": {"sise": 3}}, "unknown key 'preview.sise'")):
        with pytest.raises(PresetError) as err:
            PresetLibrary.validate(data, "x.json")
        assert needle in str(err.value), str(err.value)
        assert "PreviewOptions" not in str(err.value) and "EarlyStopOptions" not in str(err.value)


def test_book_runs_its_steps_and_the_photographer_presets_preview_and_stop_early() -> None:
    library = PresetLibrary.default()
    book = library.load("book")
    assert book.preview is False and book.early_stop is False and Preset().early_stop is False
    assert engine_params(book, "fp32").early_stop is False
    raw = json.loads((builtin_dir() / "book.json").read_text())
    assert raw["preview"] is False and raw["early_stop"] is False
    for name in PHOTOGRAPHER:
        preset = library.load(name)
        assert preset.preview and preset.early_stop, name


def test_an_override_merges_into_the_parent_object() -> None:
    library = PresetLibrary.default()
    child = library.from_data({"extends": "gatys", "preview": {"steps": 10}}, "child.json")
    parent = library.load("gatys")
    assert child.preview and parent.preview and (child.preview.size, child.preview.steps) == (parent.preview.size, 10)
    assert library.from_data({"extends": "gatys", "early_stop": False}, "c.json").early_stop is False


# ---------------------------------------------------------------- early stop in the engine


def _stops_at(totals: list[float], rule: EarlyStop) -> int | None:
    window: list[float] = []
    for step, total in enumerate(totals, 1):
        window = push_total(window, total, rule.patience)
        if converged(window, rule) is not None:
            return step
    return None


def test_converged_never_before_patience_steps() -> None:
    rule = EarlyStop(tolerance=0.5, patience=4)
    assert _stops_at([1.0] * 10, rule) == 5  # patience + 1 steps: 4 steps without progress
    assert _stops_at([10.0, 9.0, 8.0, 4.0, 1.0, 0.4, 0.1], rule) is None  # halving and better: going on
    assert _stops_at([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], rule) is None  # climbing: not a plateau
    assert _stops_at([1.0, 1.0, 1.0, 1.0, 9.0, 9.0, 1.0], rule) == 7  # not in the spike, once back on the plateau
    # A zigzag that keeps finding better losses is not stopped by its worse steps.
    zigzag = [100 / 2**i * (3 if i % 2 else 1) for i in range(12)]
    assert _stops_at(zigzag, EarlyStop(tolerance=0.3, patience=2)) is None


def test_early_stop_stops_on_a_plateau_after_patience_steps(extractor: Any) -> None:
    content, style = _tensors()
    # lr so small that the image cannot move: the loss is flat from the first step.
    params = book_params(steps=40, init="content", lr=1e-9, early_stop=EarlyStop(1e-3, 6))
    result = stylize(extractor, content, [(style, 1.0)], params)
    assert [h.step for h in result.history] == list(range(1, 8))  # never before patience (6) + 1
    assert result.early_stop is not None and result.early_stop[0] == 7
    assert "over the last 6 steps" in result.early_stop[1] and not result.stopped


def test_early_stop_lets_an_improving_run_go_on(extractor: Any) -> None:
    content, style = _tensors()
    params = book_params(steps=12, init="noise", lr=0.01, early_stop=EarlyStop(1e-3, 3))  # a steady descent
    result = stylize(extractor, content, [(style, 1.0)], params)
    assert len(result.history) == 12 and result.early_stop is None


def test_lbfgs_stops_when_the_step_no_longer_changes_the_image(extractor: Any) -> None:
    content, style = _tensors()
    params = book_params(steps=30, init="content", optimizer="lbfgs", lr=1e-12,
                         early_stop=EarlyStop(1e-12, 3))
    result = stylize(extractor, content, [(style, 1.0)], params)
    assert result.early_stop is not None and result.early_stop[0] == 4
    assert "no longer changes the image" in result.early_stop[1]


def test_book_never_stops_early_even_on_a_plateau(extractor: Any) -> None:
    content, style = _tensors()
    params = engine_params(Preset(steps=25, init="content", lr=1e-9), "fp32")
    result = stylize(extractor, content, [(style, 1.0)], params)
    assert [h.step for h in result.history] == list(range(1, 26)) and result.early_stop is None


def test_early_stop_resumes_with_its_window(extractor: Any) -> None:
    """Stopped after 4 steps and resumed, a plateau run stops at the same step."""
    content, style = _tensors()
    params = book_params(steps=40, init="content", lr=1e-9, early_stop=EarlyStop(1e-3, 6))
    steps: list[int] = []
    first = stylize(extractor, content, [(style, 1.0)], params, should_stop=lambda: len(steps) >= 4,
                    on_step=lambda i: steps.append(i.step))
    assert first.stopped and first.state.step == 4
    rest = stylize(extractor, content, [(style, 1.0)], params, resume=first.state)
    assert rest.early_stop is not None and rest.early_stop[0] == 7


# ---------------------------------------------------------------- resumable coarse to fine (engine)


def test_a_pyramid_resumed_mid_tile_is_the_uninterrupted_run(extractor: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pyramid, "MIN_COARSE_SIDE", 16)
    g = torch.Generator().manual_seed(3)
    content, style = torch.rand(1, 3, 64, 96, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    params = book_params(steps=4, init="content")
    plan = pyramid.plan_pyramid(64, 96, 4, 40 * 40, layers=BOOK)
    assert len(plan) > 1 and len(plan[-1].tiles) > 1
    whole = pyramid.stylize_pyramid(extractor, content, [(style, 1.0)], params, plan)
    total = len(whole.history)
    for stop_after in (3, 4 + 1, total - 1):  # mid-scale 0, mid-tile of scale 1, the last tile
        seen: list[int] = []
        states: list[pyramid.PyramidState] = []
        first = pyramid.stylize_pyramid(extractor, content, [(style, 1.0)], params, plan,
                                        on_step=lambda i, seen=seen: seen.append(i.step),
                                        should_stop=lambda seen=seen: len(seen) >= stop_after,
                                        on_state=states.append, state_every=1)
        assert first.stopped and first.pyramid is not None and first.pyramid.global_step == stop_after
        assert states  # checkpoints were offered on the way
        rest = pyramid.stylize_pyramid(extractor, content, [(style, 1.0)], params, plan, resume=first.pyramid)
        steps = [h.step for h in first.history + rest.history]
        assert steps == list(range(1, total + 1)), stop_after
        assert [h.total_loss for h in first.history + rest.history] == [h.total_loss for h in whole.history]
        torch.testing.assert_close(rest.image, whole.image, rtol=0, atol=0)


# ---------------------------------------------------------------- the hot folder


def _result_and_preview_order(rig: Rig, service: Any, check_at: int) -> list[tuple[list[str], list[str]]]:
    """At step ``check_at`` of the running job: what outbox/ and outbox/previews/ hold."""
    seen: list[tuple[list[str], list[str]]] = []
    on_step = service.runner.events.on_step

    def look(claim: Any, info: Any) -> None:
        if on_step is not None:
            on_step(claim, info)
        if info.step == check_at:
            previews = rig.hot.outbox / "previews"
            seen.append((rig.results(), sorted(p.name for p in previews.iterdir()) if previews.is_dir() else []))

    service.runner.events.on_step = look
    return seen


def test_preview_comes_before_the_result_in_previews_only(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    rig.preset("quick", {"extends": "tiny", "steps": 4, "preview": {"size": 16, "steps": 2}})
    rig.drop_photo("quick/photo.jpg", width=40, height=32)
    service = rig.make_service()
    seen = _result_and_preview_order(rig, service, check_at=1)
    assert service.run(once=True) == 0

    assert seen == [([], ["photo-tex.jpg"])]  # during the full render: the preview, no result yet
    assert rig.results() == ["photo-tex.jpg"]  # outbox/ itself: the result only
    preview = rig.hot.outbox / "previews" / "photo-tex.jpg"
    with Image.open(preview) as im:
        assert min(im.size) == 16 and im.format == "JPEG"
    report = rig.report("photo-tex.jpg")
    assert report["preview"] == str(preview)
    # The preview's steps are neither logged nor counted.
    assert report["steps_run"] == 4 and rig.loss_steps("photo-tex.jpg") == [1, 2, 3, 4]
    assert re.search(r"preview of quick/photo\.jpg: .*previews/photo-tex\.jpg", caplog.text), caplog.text
    rig.assert_nothing_lost()


def test_no_preview_unless_the_preset_asks(rig: Rig) -> None:
    rig.drop_photo("tiny/photo.jpg")
    assert rig.serve() == 0
    assert rig.results() == ["photo-tex.jpg"] and not (rig.hot.outbox / "previews").exists()
    assert rig.report("photo-tex.jpg")["preview"] is None
    assert rig.report("photo-tex.jpg")["stopped_early"] is False


def test_a_coarse_to_fine_job_previews_its_coarsest_scale(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pyramid, "MIN_COARSE_SIDE", 16)
    rig.preset("big", {"extends": "tiny", "steps": 4, "size": 64, "preview": {"size": 256, "steps": 40}})
    rig.drop_photo("big/photo.jpg", width=96, height=64)
    service = rig.make_service(memory_budget_mb=1)
    seen = _result_and_preview_order(rig, service, check_at=5)  # the first step of the second scale
    assert service.run(once=True) == 0

    assert seen == [([], ["photo-tex.jpg"])]
    assert rig.results() == ["photo-tex.jpg"]
    with Image.open(rig.hot.outbox / "previews" / "photo-tex.jpg") as im:
        assert im.size == (24, 16)  # the coarsest scale, not a preview of its own (256 px, 40 steps)
    report = rig.report("photo-tex.jpg")
    assert report["preview"].endswith("previews/photo-tex.jpg")
    steps = rig.loss_steps("photo-tex.jpg")
    assert steps == list(range(1, len(steps) + 1)) and report["steps_run"] == len(steps)
    rig.assert_nothing_lost()


def test_early_stop_in_the_report_and_the_loss_log(rig: Rig) -> None:
    rig.preset("flat", {"extends": "tiny", "steps": 30, "lr": 1e-9,
                        "early_stop": {"tolerance": 1e-3, "patience": 5}})
    rig.drop_photo("flat/photo.jpg")
    assert rig.serve() == 0
    report = rig.report("photo-tex.jpg")
    assert report["stopped_early"] is True and report["stopped_early_at"] == 6
    assert "over the last 5 steps" in report["stop_reason"] and report["steps_run"] == 6
    assert rig.loss_steps("photo-tex.jpg") == [1, 2, 3, 4, 5, 6]
    rig.assert_nothing_lost()


def test_a_coarse_to_fine_job_stopped_mid_scale_resumes_there(rig: Rig, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """The warm stop (what SIGTERM does) in the second scale; the next start goes on there."""
    monkeypatch.setattr(pyramid, "MIN_COARSE_SIDE", 16)
    rig.preset("big", {"extends": "tiny", "steps": 4, "size": 64, "preview": {"size": 16, "steps": 2}})
    rig.drop_photo("big/photo.jpg", width=96, height=64)
    service = rig.make_service(memory_budget_mb=1)
    rig.stop_at_step(service, 5)  # scale 0 has 4 steps: 5 is inside scale 1's first tile
    assert service.run(once=True) == 0
    assert rig.results() == [] and len(list(rig.hot.work.iterdir())) == 1
    assert "stopped big/photo.jpg at step 5" in caplog.text

    caplog.clear()
    assert rig.serve(memory_budget_mb=1) == 0
    assert "big/photo.jpg: resuming at step 5" in caplog.text
    steps = rig.loss_steps("photo-tex.jpg")
    assert steps == list(range(1, len(steps) + 1)) and len(steps) == 8  # each step once
    assert sorted(p.name for p in (rig.hot.outbox / "previews").iterdir()) == ["photo-tex.jpg"]  # one preview
    assert rig.results() == ["photo-tex.jpg"]
    rig.assert_nothing_lost()


def test_stylefold_run_writes_the_preview_beside_its_results(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from stylefold.cli import main

    photo = write_photo(tmp_path / "photo.jpg", width=48, height=40)
    code = main(["run", str(photo), "--preset", "book", "--out", str(tmp_path / "out"), "--weights", "random",
                 "--device", "cpu", "--set", "size=32", "--set", "steps=3",
                 "--set", 'preview={"size": 16, "steps": 2}'])
    assert code == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["photo-brushstrokes.jpg"]
    assert [p.name for p in (out / "previews").iterdir()] == ["photo-brushstrokes.jpg"]
    report = json.loads((out / "logs" / "photo-brushstrokes.json").read_text())
    assert report["preview"] == str((out / "previews" / "photo-brushstrokes.jpg").absolute())
    assert capsys.readouterr().out.strip().endswith("photo-brushstrokes.jpg")


# ---------------------------------------------------------------- kill -9, a real process


def _multiscale_root(tmp_path: Path) -> Path:
    """A hot folder whose default preset runs 512 px coarse to fine under a 400 MB budget:
    256x341 for 6 steps, then 512x682 in 6 tiles of 3 steps (24 steps in all)."""
    root = tmp_path / "hot"
    (root / "presets").mkdir(parents=True)
    (root / "inbox").mkdir()
    (root / "stylefold.toml").write_text(
        'settle_s = 0.1\npair_timeout_s = 1\ncheckpoint_every = 2\nmemory_budget_mb = 400\n'
        'presets_dir = "presets"\ndefault_preset = "big"\n')
    (root / "presets" / "big.json").write_text(json.dumps(
        {"steps": 6, "size": 512, "init": "content", "preview": {"size": 128, "steps": 5}}))
    return root


def _in_second_scale(root: Path) -> bool:
    for path in checkpoints(root):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # replaced while we read it
            continue
        where = payload.get("pyramid")
        if where and where["scale"] == 1 and (where["tile"] >= 1 or where["tile_state"] is not None):
            return True
    return False


def test_kill_9_mid_scale_resumes_at_that_scale(tmp_path: Path, serve: Launcher) -> None:
    root = _multiscale_root(tmp_path)
    staging = tmp_path / "staging"
    staging.mkdir()
    photo = write_photo(staging / "photo.jpg", width=682, height=512, seed=4)
    original = photo.read_bytes()
    photo.rename(root / "inbox" / "photo.jpg")

    first = serve(root, "first")
    wait_until(lambda: _in_second_scale(root), START_S + 120, "a checkpoint inside the second scale", first)
    first.proc.send_signal(signal.SIGKILL)
    assert first.wait_exit(30) == -signal.SIGKILL
    assert files(root / "outbox") == [] and files(root / "outbox" / "previews") == ["photo-brushstrokes.jpg"]

    second = serve(root, "second", once=True)
    assert second.wait_exit(300) == 0, second.text()
    resumed = re.search(r"photo\.jpg: resuming at step (\d+)", second.text())
    assert resumed is not None and int(resumed.group(1)) > 6, second.text()  # not scale 0 again
    assert csv_steps(root, "photo-brushstrokes") == list(range(1, 25))  # every step once
    assert files(root / "outbox") == ["photo-brushstrokes.jpg"]
    assert files(root / "outbox" / "previews") == ["photo-brushstrokes.jpg"]  # written once, by the first run
    assert (root / "done" / "photo.jpg").read_bytes() == original
    assert work_folders(root) == []
    report = json.loads((root / "outbox" / "logs" / "photo-brushstrokes.json").read_text())
    assert report["preview"].endswith("previews/photo-brushstrokes.jpg") and report["steps_run"] == 24
    assert problems(second.text()) == []
