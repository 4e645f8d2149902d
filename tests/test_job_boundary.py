"""The job boundary: a JobSpec as data, run_job's typed outcomes, the one failure
classifier, and the defects found from outside that the boundary fixed."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from stylefold import fsops
from stylefold.engine import conv_methods
from stylefold.engine.stylize import StyleParams
from stylefold.failures import FailureKind, JobFailure, classify
from stylefold.job.checkpoint import Checkpoint
from stylefold.job.run import Done, Failed, JobCallbacks, Resident, Stopped, engine_params, run_job
from stylefold.job.spec import Caps, JobSpec
from stylefold.presets import Preset, PresetLibrary, builtin_dir
from tests.conftest import write_photo, write_texture
from tests.test_hotfolder import Rig, _one_torch_thread  # noqa: F401  (an autouse fixture)

TINY = Preset(steps=4, size=32, init="content", style="tex.png")


@pytest.fixture
def rig(tmp_path: Path, extractor: Any) -> Rig:
    return Rig(tmp_path, extractor)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return write_photo(tmp_path / "photo.jpg", 48, 40), write_texture(tmp_path / "tex.png", size=32)


def _spec(photo: Path, style: Path, preset: Preset = TINY, caps: Caps = Caps()) -> JobSpec:
    return JobSpec.for_files("job-1", photo, preset, "test", [(style, 1.0)], caps)


# ---------------------------------------------------------------- the description


def test_spec_round_trips_through_json_and_refuses_what_it_does_not_know(files: tuple[Path, Path]) -> None:
    spec = _spec(*files)
    again = JobSpec.from_json(spec.to_json())
    assert again == spec and again.identity() == spec.identity()
    data = json.loads(spec.to_json())
    with pytest.raises(ValidationError):
        JobSpec.from_json(json.dumps({**data, "command": "rm -rf /"}))
    with pytest.raises(ValidationError):
        JobSpec.from_json(json.dumps({**data, "input": {**data["input"], "sha256": "../../etc/passwd"}}))
    with pytest.raises(ValidationError):
        JobSpec.from_json(json.dumps({**data, "preset": {**data["preset"], "steps": 10**9}}))


def test_spec_keeps_a_file_name_that_is_not_utf8(tmp_path: Path, files: tuple[Path, Path]) -> None:
    photo = tmp_path / os.fsdecode(b"caf\xe9.jpg")
    photo.write_bytes(files[0].read_bytes())
    spec = _spec(photo, files[1])
    assert JobSpec.from_json(spec.to_json()).input.name == photo.name


def test_identity_follows_what_the_result_depends_on_not_where_files_are(tmp_path: Path,
                                                                         files: tuple[Path, Path]) -> None:
    photo, style = files
    base = _spec(photo, style)
    moved = tmp_path / "elsewhere.jpg"
    moved.write_bytes(photo.read_bytes())
    assert _spec(moved, style).identity() == base.identity()
    assert _spec(photo, style, TINY.model_copy(update={"seed": 1})).identity() != base.identity()
    assert _spec(photo, style, caps=Caps(max_steps=10)).identity() != base.identity()
    other_style = write_texture(tmp_path / "other.png", size=32, seed=9)
    assert _spec(photo, other_style).identity() != base.identity()
    assert _spec(photo, other_style).result_key() != base.result_key()


def test_a_preset_above_a_cap_fails_when_the_spec_is_made(files: tuple[Path, Path]) -> None:
    with pytest.raises(JobFailure) as caught:
        _spec(*files, caps=Caps(max_steps=3))
    assert caught.value.kind is FailureKind.TOO_LARGE and "max_steps" in str(caught.value)


def test_book_defaults_have_one_source() -> None:
    """The preset model's defaults are the book preset; the engine's parameters have no
    defaults of their own and take every field of the same name from the preset."""
    book = json.loads((builtin_dir() / "book.json").read_text())
    defaults = Preset().effective()
    for key, value in book.items():
        if key not in ("description", "style"):
            assert defaults[key] == value, key
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(StyleParams))
    params = engine_params(Preset(), "fp32")
    for f in dataclasses.fields(StyleParams):
        if f.name not in ("style_layers", "content_layers"):
            assert getattr(params, f.name) == getattr(Preset(), f.name), f.name
    assert params.style_layers == tuple((n, 1.0) for n in book["style_layers"])


# ---------------------------------------------------------------- run_job


def test_run_job_returns_done_with_the_render_in_memory(extractor: Any, files: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    outcome = run_job(_spec(*files), Resident(extractor))
    assert isinstance(outcome, Done)
    rendered = outcome.rendered
    assert rendered.image.size == (38, 32) and [r["step"] for r in rendered.rows] == [1, 2, 3, 4]
    assert rendered.base == "photo-tex" and rendered.report["input"]["sha256"] == _spec(*files).input.sha256
    assert {p.name for p in tmp_path.iterdir()} == {"photo.jpg", "tex.png"}


def test_run_job_stops_with_a_checkpoint_that_resumes_bit_for_bit(extractor: Any, files: tuple[Path, Path]) -> None:
    spec, resident = _spec(*files), Resident(extractor)
    whole = run_job(spec, resident)
    steps: list[int] = []
    stopped = run_job(spec, resident, JobCallbacks(on_step=lambda i: steps.append(i.step),
                                                   should_stop=lambda: len(steps) >= 2))
    assert isinstance(stopped, Stopped) and stopped.checkpoint.state.step == 2
    assert stopped.checkpoint.spec_identity == spec.identity()
    resumed = run_job(spec, resident, resume=stopped.checkpoint)
    assert isinstance(whole, Done) and isinstance(resumed, Done)
    assert [r["total_loss"] for r in resumed.rendered.rows] == [r["total_loss"] for r in whole.rendered.rows]


def test_a_job_resumed_in_another_process_runs_each_conv_as_before(extractor: Any, files: tuple[Path, Path],
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    # The first process measured Winograd fastest everywhere; the next would measure
    # direct. The checkpoint's choices win: the methods differ by fp32 rounding.
    measured: list[str] = []

    def timer(pick: str) -> Any:
        def fake(runners: dict[str, Any], rounds: int = 2) -> dict[str, float]:
            measured.append(pick)
            return {m: 0.5 if m == pick else 1.0 for m in runners}
        return fake

    spec, resident = _spec(*files), Resident(extractor)
    monkeypatch.setattr(conv_methods, "_CHOSEN", {})
    monkeypatch.setattr(conv_methods, "time_methods", timer("winograd"))
    whole = run_job(spec, resident)
    steps: list[int] = []
    stopped = run_job(spec, resident, JobCallbacks(on_step=lambda i: steps.append(i.step),
                                                   should_stop=lambda: len(steps) >= 2))
    assert isinstance(stopped, Stopped) and {m for _, m in stopped.checkpoint.conv_methods} == {"winograd"}
    path = tmp_path / "job.ckpt"
    stopped.checkpoint.save(path)
    first = len(measured)
    monkeypatch.setattr(conv_methods, "_CHOSEN", {})  # a new process
    monkeypatch.setattr(conv_methods, "time_methods", timer("direct"))
    resumed = run_job(spec, resident, resume=Checkpoint.load(path))
    assert isinstance(whole, Done) and isinstance(resumed, Done)
    assert first > 0 and len(measured) == first  # nothing measured again
    assert set(extractor.conv_methods().values()) == {"direct", "winograd"}  # conv1_x are direct
    assert [r["total_loss"] for r in resumed.rendered.rows] == [r["total_loss"] for r in whole.rendered.rows]


def test_a_checkpoint_of_another_description_is_not_resumed(extractor: Any, files: tuple[Path, Path],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    spec, resident = _spec(*files), Resident(extractor)
    steps: list[int] = []
    stopped = run_job(spec, resident, JobCallbacks(on_step=lambda i: steps.append(i.step),
                                                   should_stop=lambda: len(steps) >= 2))
    assert isinstance(stopped, Stopped)
    other = _spec(*files, preset=TINY.model_copy(update={"seed": 5}))
    with caplog.at_level(logging.WARNING):
        outcome = run_job(other, resident, resume=stopped.checkpoint)
    assert isinstance(outcome, Done) and [r["step"] for r in outcome.rendered.rows] == [1, 2, 3, 4]
    assert "checkpoint is of another job description" in caplog.text


def test_checkpoint_file_keeps_the_identity(tmp_path: Path, extractor: Any, files: tuple[Path, Path]) -> None:
    saved: list[Checkpoint] = []
    run_job(_spec(*files), Resident(extractor), JobCallbacks(on_checkpoint=saved.append, checkpoint_every=2))
    assert [c.state.step for c in saved] == [2]
    saved[0].save(tmp_path / "c.pt")
    assert Checkpoint.load(tmp_path / "c.pt").spec_identity == _spec(*files).identity()


@pytest.mark.parametrize(("content", "kind"), [(b"not an image at all", FailureKind.UNREADABLE_IMAGE),
                                               ("tiny", FailureKind.TOO_SMALL)])
def test_run_job_fails_with_a_kind_and_one_sentence(tmp_path: Path, extractor: Any, files: tuple[Path, Path],
                                                    content: bytes | str, kind: FailureKind) -> None:
    photo = tmp_path / "bad.jpg"
    if isinstance(content, bytes):
        photo.write_bytes(content)
    else:
        write_photo(photo, 3, 3)  # book's conv3_1 needs 4 px
    outcome = run_job(_spec(photo, files[1]), Resident(extractor))
    assert isinstance(outcome, Failed) and outcome.kind is kind
    assert outcome.message and "\n" not in outcome.message


# ---------------------------------------------------------------- classify


def test_classify_names_each_kind_of_exception_once() -> None:
    class OutOfMemoryError(RuntimeError):  # what torch raises, recognised by its name alone
        pass

    class AcceleratorError(RuntimeError):
        pass

    oom = classify(OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), device="cuda:0", size=2048)
    assert (oom.kind, str(oom)) == (FailureKind.OUT_OF_MEMORY,
                                    "out of memory on cuda:0 at size 2048; lower the preset's size")
    assert classify(AcceleratorError("CUDA error: an illegal memory access")).kind is FailureKind.DEVICE_ERROR
    assert classify(RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED")).kind is FailureKind.DEVICE_ERROR
    full = classify(OSError(errno.ENOSPC, "No space left on device", "/hot/outbox/x.jpg"))
    assert full.kind is FailureKind.DISK_FULL and "/hot/outbox/x.jpg" in str(full)
    given = JobFailure("the photo is 8x8 px", kind=FailureKind.TOO_SMALL)
    assert classify(given) is given
    other = classify(ValueError("line one\nline two"))
    assert (other.kind, str(other)) == (FailureKind.INTERNAL, "internal error: line one")
    assert classify(RuntimeError("a plain runtime error")).kind is FailureKind.INTERNAL


def test_preset_and_image_errors_are_job_failures_with_their_kinds() -> None:
    from stylefold.media.imageio import ImageError, ImageTooLarge
    from stylefold.presets import PresetError, StyleNotFound

    assert PresetError("x").kind is FailureKind.INVALID_PRESET
    assert StyleNotFound("x").kind is FailureKind.STYLE_NOT_FOUND
    assert ImageError("x").kind is FailureKind.UNREADABLE_IMAGE
    assert ImageTooLarge("x").kind is FailureKind.TOO_LARGE
    assert all(issubclass(c, JobFailure) for c in (PresetError, StyleNotFound, ImageError, ImageTooLarge))


# ---------------------------------------------------------------- defects found from outside


def test_error_file_is_in_place_before_the_original_appears_in_failed(rig: Rig,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, bool]] = []
    place = fsops.place_no_clobber

    def watching(src: Path, target: Path) -> None:
        if target.is_relative_to(rig.hot.failed) and not target.name.endswith(".error.json"):
            seen.append((target.name, (target.parent / f"{target.stem}.error.json").is_file()))
        place(src, target)

    monkeypatch.setattr(fsops, "place_no_clobber", watching)
    rig.drop("tiny/broken.jpg", b"this is not a jpeg")
    rig.drop("broken.jpg", b"nor is this")
    # A name already taken in failed/tiny/ moves on to -2, error file and all.
    (rig.hot.failed / "tiny").mkdir(parents=True)
    (rig.hot.failed / "tiny" / "broken.jpg").write_bytes(b"an older failure")
    (rig.hot.failed / "tiny" / "broken.error.json").write_text("{}")
    assert rig.serve() == 1
    assert sorted(seen) == [("broken-2.jpg", True), ("broken.jpg", True)], seen
    assert rig.error("tiny/broken-2.jpg")["kind"] == "unreadable_image"
    assert rig.error("broken.jpg")["kind"] == "no_preset"  # at the top, no preset: it fails first for that
    assert sorted(p.name for p in (rig.hot.failed / "tiny").glob("*.error.json")) == ["broken-2.error.json",
                                                                                      "broken.error.json"]


def test_an_unsupported_file_takes_its_sidecar_to_failed(rig: Rig) -> None:
    rig.drop("x.gif", b"GIF89a....")
    rig.drop_json("x.json", {"extends": "tiny"})
    assert rig.serve() == 1
    assert rig.failed() == ["x.gif", "x.json"]
    assert rig.error("x.gif")["kind"] == "unsupported_file"
    rig.assert_nothing_lost()


def test_claims_record_the_description_in_their_job_file(rig: Rig) -> None:
    """The claim's job.json holds the spec a restart will run under."""
    rig.drop_photo("five/p.jpg")
    service = rig.make_service()
    specs: list[JobSpec] = []
    on_start = service.runner.events.on_start

    def record(claim: Any, spec: JobSpec) -> None:
        from stylefold.hotfolder.claims import ClaimMeta

        specs.append(ClaimMeta.from_bytes((claim.folder / "job.json").read_bytes()).spec)
        if on_start is not None:
            on_start(claim, spec)

    service.runner.events.on_start = record
    assert service.run(once=True) == 0
    assert len(specs) == 1 and specs[0].preset.steps == 5
    assert specs[0].preset_source == "named preset five"
    library = PresetLibrary.for_config(rig.config())
    assert specs[0].preset == library.load("five").model_copy(update={"extends": None})
    rig.assert_nothing_lost()


# ---------------------------------------------------------------- precision auto, diverged

def _diverging_below_fp32(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`auto` resolves to bf16, and a bf16 run's loss becomes nan at its third step
    (as ink-wash's did at 128 px in bf16 on this CPU); fp32 runs as usual."""
    import stylefold.job.run as run_module
    from stylefold.engine.stylize import Diverged, stylize

    ran: list[str] = []

    def fake_stylize(*args: Any, **kwargs: Any) -> Any:
        params: StyleParams = args[3]
        ran.append(params.precision)
        if params.precision != "fp32":
            def nan_at_three(info: Any) -> None:
                kwargs["on_step"](info)
                if info.step == 3:
                    raise Diverged("the loss became nan at step 3")
            return stylize(*args, **{**kwargs, "on_step": nan_at_three})
        return stylize(*args, **kwargs)

    monkeypatch.setattr(run_module, "resolve_precision", lambda requested, device: (
        "bf16" if requested == "auto" else requested))
    monkeypatch.setattr(run_module, "stylize", fake_stylize)
    return ran


def test_auto_precision_that_diverges_starts_again_in_fp32(files: tuple[Path, Path], extractor: Any,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    ran = _diverging_below_fp32(monkeypatch)
    preset = TINY.model_copy(update={"precision": "auto", "steps": 5})
    outcome = run_job(_spec(*files, preset=preset), Resident(extractor))
    assert isinstance(outcome, Done), outcome
    assert ran == ["bf16", "fp32"]
    assert outcome.rendered.report["precision"] == "fp32"
    assert [r["step"] for r in outcome.rendered.rows] == [1, 2, 3, 4, 5]  # the fp32 run's rows only
    assert "photo.jpg: diverged in bf16 (the loss became nan at step 3); starting again in fp32" in caplog.text


def test_a_precision_asked_for_is_kept_and_its_divergence_fails_the_job(files: tuple[Path, Path], extractor: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ran = _diverging_below_fp32(monkeypatch)
    preset = TINY.model_copy(update={"precision": "bf16", "steps": 5})
    outcome = run_job(_spec(*files, preset=preset), Resident(extractor))
    assert isinstance(outcome, Failed) and outcome.kind == FailureKind.INTERNAL, outcome
    assert "diverged" in outcome.message
    assert ran == ["bf16"]


def test_a_job_stopped_after_going_over_to_fp32_resumes_in_fp32(files: tuple[Path, Path], extractor: Any,
                                                               monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    ran = _diverging_below_fp32(monkeypatch)
    spec = _spec(*files, preset=TINY.model_copy(update={"precision": "auto", "steps": 6}))
    steps: list[int] = []  # bf16: 1, 2, 3 (nan); fp32: 1, 2, then the stop
    stopped = run_job(spec, Resident(extractor), JobCallbacks(on_step=lambda i: steps.append(i.step),
                                                              should_stop=lambda: steps.count(2) == 2))
    assert ran == ["bf16", "fp32"] and isinstance(stopped, Stopped)  # stopped at the fp32 run's step 2
    stopped.checkpoint.save(tmp_path / "checkpoint.pt")
    loaded = Checkpoint.load(tmp_path / "checkpoint.pt")
    assert loaded.precision == "fp32" and loaded.state.step == 2
    resumed = run_job(spec, Resident(extractor), resume=loaded)
    assert isinstance(resumed, Done), resumed
    assert ran == ["bf16", "fp32", "fp32"]  # not bf16 again, which would diverge and start over
    assert resumed.rendered.report["precision"] == "fp32"
    assert [r["step"] for r in resumed.rendered.rows] == [1, 2, 3, 4, 5, 6]
    assert "photo.jpg: resuming in fp32, as the run was when it stopped" in caplog.text
