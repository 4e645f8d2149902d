"""What a new user trips over in the first hour: names checked at once, errors that
blame the right thing, a console and a status that tell the truth, bookkeeping a user
can follow. Real files in tmp_path, random weights, 16–32 px."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest

from stylefold.cli import main
from stylefold.engine.steps import StepInfo
from stylefold.hotfolder import service as service_module
from stylefold.hotfolder.console import RateMeter, eta_text
from stylefold.hotfolder.layout import unsupported_reason
from stylefold.hotfolder.watcher import Inbox
from stylefold.presets import PresetError, PresetLibrary
from tests.conftest import write_photo
from tests.test_hotfolder import Rig, _one_torch_thread  # noqa: F401  (an autouse fixture)


@pytest.fixture
def rig(tmp_path: Path, extractor: Any) -> Rig:
    return Rig(tmp_path, extractor)


def error_of(rig: Rig, rel: str) -> dict[str, Any]:
    """``failed/SUB/NAME.error.json`` of ``inbox/SUB/NAME.EXT``."""
    path = rig.hot.failed / Path(rel).parent / f"{Path(rel).stem}.error.json"
    body: dict[str, Any] = json.loads(path.read_text())
    assert "\n" not in body["error"]
    return body


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory and environment of our own: no config, no STYLEFOLD_*."""
    for var in ("STYLEFOLD_ROOT", "STYLEFOLD_CONFIG", "STYLEFOLD_DEVICE", "STYLEFOLD_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---------------------------------------------------------------- 1. names checked at once


def test_submit_refuses_an_unknown_preset_and_says_what_was_meant(isolated: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    photo = write_photo(isolated / "p.jpg")
    assert main(["init", "hot"]) == 0
    assert main(["submit", str(photo), "--preset", "gatsby", "--root", "hot"]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'gatsby' (did you mean 'gatys'?)" in err and "book" in err
    assert not (isolated / "hot" / "inbox" / "gatsby").exists()
    assert main(["submit", str(photo), "--preset", "gatys", "--root", "hot"]) == 0
    assert (isolated / "hot" / "inbox" / "gatys" / "p.jpg").is_file()


def test_a_folder_named_after_no_preset_fails_once_settled_naming_it(rig: Rig) -> None:
    inbox = Inbox(rig.hot, settle_s=1.0, pair_timeout_s=3600.0, has_preset=lambda n: n == "tiny")
    rig.drop_photo("nosuch/x.jpg")
    inbox.scan(0.0)
    assert list(inbox.ready(0.5)) == []  # still settling
    ready = list(inbox.ready(1.0))  # settled: no waiting for the hour-long pair timeout
    assert [(c.source, c.origin.kind) for c in ready] == [("nosuch/x.jpg", "rejected")]

    assert rig.serve(pair_timeout_s=3600.0) == 1
    error = error_of(rig, "nosuch/x.jpg")
    assert error["kind"] == "no_preset"
    assert error["error"].startswith("inbox/nosuch/ is named after no preset")
    assert "unknown folder preset 'nosuch'; known presets: " in error["error"] and "tiny" in error["error"]


def test_a_misspelled_preset_key_gets_a_did_you_mean(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"extends": "book", "preserve_colour": "luminance"}))
    with pytest.raises(PresetError) as caught:
        PresetLibrary.default().load_file(path)
    assert f"{path}: unknown key 'preserve_colour' (did you mean 'preserve_color'?)" in str(caught.value)


# ---------------------------------------------------------------- 2. errors that blame the right thing


def test_set_errors_name_the_option_not_the_shipped_preset(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photo = write_photo(isolated / "p.jpg")
    assert main(["run", str(photo), "--preset", "book", "--weights", "random",
                 "--set", "stepz=10", "--set", "steps=ten"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().removeprefix("stylefold: error: ").splitlines()
    assert any(line.endswith("--set stepz: unknown key 'stepz' (did you mean 'steps'?)") for line in lines), err
    assert any(line.startswith("--set steps: Input should be a valid integer") for line in lines), err
    assert "book.json" not in err


def test_presets_validate_takes_names_checks_the_caps_and_says_which(isolated: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    big = isolated / "big.json"
    big.write_text(json.dumps({"extends": "book", "steps": 5000, "size": 8000}))
    assert main(["presets", "validate", "gatys", str(big)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "OK gatys"
    assert out[1] == (f"INVALID {big}: the preset asks for 5000 steps; this server allows at most 2000 "
                      "(config max_steps)")
    assert out[2] == "the preset asks for size 8000; this server allows at most 4096 (config max_size)"
    (isolated / "hotfolders").mkdir()
    (isolated / "hotfolders" / "stylefold.toml").write_text("max_steps = 6000\nmax_size = 8192\n")
    assert main(["presets", "validate", str(big)]) == 0  # the caps in effect are the config's


# ---------------------------------------------------------------- 3. where am I?


def test_status_without_a_hot_folder_says_so(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert "there is no hot folder at" in err and "stylefold init hotfolders" in err


def test_serve_says_when_it_creates_the_hot_folder(isolated: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        assert main(["serve", "--once", "--weights", "random", "--device", "cpu"]) == 0
    created = [r.getMessage() for r in caplog.records if r.getMessage().startswith("creating the hot folder")]
    assert created == [f"creating the hot folder {isolated / 'hotfolders'} (inbox/, styles/, outbox/, done/, failed/)"]
    assert (isolated / "hotfolders" / "inbox").is_dir()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(["serve", "--once", "--weights", "random", "--device", "cpu"]) == 0
    assert not [r for r in caplog.records if r.getMessage().startswith("creating")]  # only the first time


def test_doctor_says_each_fix_once(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["doctor", "--weights", "random", "--device", "cpu"])
    fixes = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("fix:")]
    assert "fix: stylefold init hotfolders" in fixes
    assert len(fixes) == len(set(fixes))


# ---------------------------------------------------------------- 4. timers do not wait behind a job


def test_an_orphan_sidecar_fails_while_a_long_job_runs(rig: Rig, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """The service's clock gains one second at each step of the running job; the
    orphan's pairing timeout (3 s) runs out during the job, and it fails then, not after."""
    import time

    clock = [0.0]  # seconds added to the real clocks

    class FakeTime:
        @staticmethod
        def monotonic() -> float:
            return time.monotonic() + clock[0]

        @staticmethod
        def time() -> float:
            return time.time() + clock[0]

    monkeypatch.setattr(service_module, "time", FakeTime)
    rig.preset("long", {"extends": "tiny", "steps": 30})
    rig.drop_photo("long/p.jpg")
    rig.drop_json("orphan.json", {"extends": "tiny"})
    service = rig.make_service(settle_s=0.5, pair_timeout_s=3.0)
    on_step = service.runner.events.on_step
    assert on_step is not None
    steps_when_orphan_failed: list[int] = []

    def one_second_per_step(claim: Any, info: StepInfo) -> None:
        clock[0] += 1.0
        on_step(claim, info)
        if not steps_when_orphan_failed and (rig.hot.failed / "orphan.json").exists():
            steps_when_orphan_failed.append(info.step)

    service.runner.events.on_step = one_second_per_step
    with caplog.at_level(logging.INFO):
        assert service.run(once=True) == 1
    assert steps_when_orphan_failed and steps_when_orphan_failed[0] < 30
    assert error_of(rig, "orphan.json")["kind"] == "no_image"
    assert rig.results() == ["p-tex.jpg"]
    rig.assert_nothing_lost()


def test_trouble_with_the_inbox_between_steps_never_fails_the_running_job(
        rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(service_module, "SIDE_SCAN_S", 0.0)  # between every two steps
    rig.drop_photo("five/p.jpg")
    service = rig.make_service()
    scan = service.inbox.scan

    def broken_while_a_job_runs(now: float, **kw: Any) -> None:
        if service._current is not None:
            raise OSError("the inbox went away for a moment")
        scan(now, **kw)

    monkeypatch.setattr(service.inbox, "scan", broken_while_a_job_runs)
    assert service.run(once=True) == 0
    assert rig.results() == ["p-tex.jpg"] and rig.loss_steps("p-tex.jpg") == [1, 2, 3, 4, 5]
    assert "handling the inbox between two steps failed" in caplog.text
    rig.assert_nothing_lost()


# ---------------------------------------------------------------- 5. the console tells the truth


def test_an_image_and_its_sidecar_wait_as_one_and_status_counts_the_same(rig: Rig, isolated: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    rig.drop_photo("a.jpg")
    rig.drop_json("a.json", {"extends": "tiny"})
    rig.drop_photo("b.jpg")
    rig.drop_json("preset-less/preset.json", {"extends": "tiny"})
    inbox = Inbox(rig.hot, settle_s=1.0, pair_timeout_s=30.0, has_preset=lambda n: False)
    inbox.scan(0.0)
    assert inbox.waiting() == 2
    queue = inbox.queue(0.5, clock=lambda t: f"t={t:g}")
    assert [(w.source, w.reason.split(":")[0]) for w in queue] == [("a.jpg", "settling"), ("b.jpg", "settling")]
    list(inbox.ready(1.0))
    reasons = {w.source: w.reason for w in inbox.queue(1.0, clock=lambda t: f"t={t:g}")}
    assert reasons == {"a.jpg": "queued", "b.jpg": "waiting for a sidecar b.json until t=31"}

    assert main(["status", "--root", str(rig.root), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["waiting"] == ["a.jpg", "b.jpg"] or sorted(status["waiting"]) == ["a.jpg", "b.jpg"]
    assert len(status["queue"]) == 2


def test_the_eta_is_a_guess_until_it_rests_on_enough_steps() -> None:
    meter = RateMeter(window=5, min_steps=3, min_span_s=2.0)

    def info(step: int, elapsed: float) -> StepInfo:
        return StepInfo(step, 100, 0.0, 0.0, 0.0, 1.0, elapsed)

    rate, eta, guess = meter.update(info(1, 5.0))  # a slow first step
    assert math.isnan(eta) and guess
    for step in range(2, 7):
        rate, eta, guess = meter.update(info(step, 5.0 + (step - 1) * 1.0))
    assert rate == pytest.approx(1.0) and eta == pytest.approx(94.0) and not guess  # the first step forgotten
    assert eta_text(eta, guess) == "94 s left"
    assert eta_text(12.4, True) == "~12 s left (a first guess)"


def test_a_job_end_is_one_log_line(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    rig.drop_photo("tiny/ok.jpg")
    rig.drop("tiny/bad.jpg", b"not a jpeg")
    with caplog.at_level(logging.INFO):
        assert rig.serve() == 1
    ends = [r.getMessage() for r in caplog.records if "ok.jpg" in r.getMessage() and "done" in r.getMessage()]
    assert len(ends) == 1 and ends[0].startswith("done tiny/ok.jpg -> ")
    failed = [r.getMessage() for r in caplog.records if "bad.jpg" in r.getMessage()]
    assert len(failed) == 1 and failed[0].startswith("failed tiny/bad.jpg (unreadable_image) in ")
    assert not [r for r in caplog.records if "job end" in r.getMessage()]


def test_status_without_a_daemon_shows_a_stopped_job_as_interrupted(rig: Rig,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    rig.drop_photo("five/p.jpg")
    service = rig.make_service()
    rig.stop_at_step(service, 2)
    assert service.run(once=True) == 0
    assert main(["status", "--root", str(rig.root)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "five/p.jpg" in line)
    assert line.split()[0] == "interrupted" and "step 2/5" in line and "resumes at the next start" in line
    assert "attempt" not in line and "since " in line


# ---------------------------------------------------------------- 6. one kind per bad file


def test_a_text_file_gets_the_same_kind_and_a_fitting_sentence_from_run_and_serve(
        rig: Rig, isolated: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import stylefold.engine.features as features

    def no_model(*_: Any, **__: Any) -> Any:
        raise AssertionError("run loaded VGG19 before checking its inputs")

    monkeypatch.setattr(features, "build_extractor", no_model)
    notes = isolated / "notes.txt"
    notes.write_text("hello")
    assert main(["run", str(notes), "--preset", "book", "--weights", "random"]) == 1
    err = capsys.readouterr().err
    sentence = unsupported_reason(str(notes))
    assert f"unsupported_file: {sentence}" in err
    assert "RAW" not in sentence and "a .txt file" in sentence

    rig.drop("tiny/notes.txt", b"hello")
    assert rig.serve() == 1
    error = error_of(rig, "tiny/notes.txt")
    assert (error["kind"], error["error"]) == ("unsupported_file", unsupported_reason("notes.txt"))
    assert "camera RAW" in unsupported_reason("IMG_1.CR2") and "export it" in unsupported_reason("a.heic")


# ---------------------------------------------------------------- 7. bookkeeping a user can follow


def test_report_says_where_the_original_came_from_and_went(rig: Rig) -> None:
    rig.drop_photo("tiny/x.jpg")
    assert rig.serve() == 0
    report_input = rig.report("x-tex.jpg")["input"]
    assert report_input["source"] == "inbox/tiny/x.jpg"
    assert report_input["path"] == str(rig.hot.done / "tiny" / "x.jpg")
    assert Path(report_input["path"]).is_file()


def test_failed_keeps_the_subfolder_and_a_successful_retry_clears_the_old_error(rig: Rig) -> None:
    rig.drop_json("tiny/x.json", {"extends": "tiny", "steps": "many"})
    rig.drop_photo("tiny/x.jpg")
    assert rig.serve() == 1
    assert (rig.hot.failed / "tiny" / "x.jpg").is_file() and (rig.hot.failed / "tiny" / "x.error.json").is_file()
    assert not (rig.hot.failed / "x.jpg").exists()
    # The user fixes the sidecar and puts both back.
    (rig.hot.failed / "tiny" / "x.jpg").rename(rig.inbox / "tiny" / "x.jpg")
    (rig.hot.failed / "tiny" / "x.json").unlink()
    rig.drop_json("tiny/x.json", {"extends": "tiny"})
    assert rig.serve() == 0
    assert rig.results() == ["x-tex.jpg"]
    assert not (rig.hot.failed / "tiny" / "x.error.json").exists()
    assert (rig.hot.done / "tiny" / "x.jpg").is_file() and (rig.hot.done / "tiny" / "x.json").is_file()
