"""``bench --time-to-result``'s loss of a finished picture (the objective at full size
on the written pixels), which compares a coarse-to-fine result with a flat one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stylefold.job.run import Done, Resident, run_job
from stylefold.job.spec import Caps, JobSpec
from stylefold.job.time_to_result import TimeToResult, _json_row, _line, picture_loss
from stylefold.presets import Preset
from tests.conftest import write_photo, write_texture


def test_the_picture_loss_is_the_finished_pictures_not_the_first_steps(tmp_path: Path, extractor: Any) -> None:
    photo, style = write_photo(tmp_path / "photo.jpg", 48, 40), write_texture(tmp_path / "tex.png", size=32)
    preset = Preset(steps=8, size=32, init="content", style="tex.png", lr=0.05)
    spec = JobSpec.for_files("job-1", photo, preset, "test", [(style, 1.0)], Caps())
    resident = Resident(extractor)
    done = run_job(spec, resident)
    assert isinstance(done, Done)
    rows = [r["total_loss"] for r in done.rendered.rows]
    assert rows[-1] < 0.9 * rows[0]  # the optimisation did something to measure
    loss = picture_loss(resident, spec, done)
    # The picture after the last update, rounded to 8 bits: below where it started,
    # near the last row (that row is the loss before the last update).
    assert loss < 0.9 * rows[0]
    assert abs(loss - rows[-1]) < 0.25 * rows[-1], (loss, rows)


def test_without_the_flat_run_the_line_says_so_and_the_json_has_nulls() -> None:
    nan = float("nan")
    row = TimeToResult("gatys", 512, 2.9, 40.2, 68, 68, 0.0021, nan, 0, nan, 0.0020, nan)
    line = _line(row)
    assert "flat not run (--no-flat)" in line and "nan" not in line
    assert "preview 2.9 s, result 40.2 s (68 steps, stopped early at 68" in line
    as_json = json.dumps(_json_row(row), allow_nan=False)  # raises on a NaN left in
    assert json.loads(as_json)["flat_s"] is None and json.loads(as_json)["speedup"] is None
