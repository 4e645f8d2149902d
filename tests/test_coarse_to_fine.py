"""Coarse to fine for speed (issue 11, preset ``coarse_to_fine``): the plan, the preset
key, and a job made that way through the hot folder, with its preview.

Random weights at 16–96 px; hot-folder tests use the ``Rig`` of test_hotfolder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from stylefold.engine.pyramid import Scale, plan_pyramid
from stylefold.job.preview import coarse_scale_is_preview
from stylefold.presets import Preset, PresetError, PresetLibrary, PreviewOptions, builtin_dir, merge_preset

from .test_hotfolder import Rig
from .test_results_sooner import BOOK, PHOTOGRAPHER, _result_and_preview_order
from .test_results_sooner import _quiet as _quiet  # an autouse fixture
from .test_results_sooner import rig as rig  # a fixture

GATYS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1", "relu4_2"]
WHOLE = 10**9  # a memory budget every size here fits


def _shapes(plan: list[Scale]) -> list[tuple[int, int, int, int]]:
    return [(s.height, s.width, s.steps, len(s.tiles)) for s in plan]


def test_the_coarsest_scale_is_the_smallest_halving_at_least_the_size() -> None:
    plan = plan_pyramid(1024, 1536, 300, WHOLE, layers=GATYS, coarse=(256, 60))
    assert _shapes(plan) == [(256, 384, 300, 1), (512, 768, 60, 1), (1024, 1536, 60, 1)]
    # 683 px: one halving (341 px) is still above 256, two (170 px) are not.
    assert _shapes(plan_pyramid(683, 1024, 300, WHOLE, layers=GATYS, coarse=(256, 50))) == [
        (342, 512, 300, 1), (683, 1024, 50, 1)]
    assert _shapes(plan_pyramid(512, 768, 300, WHOLE, layers=GATYS, coarse=(256, 60)))[0] == (256, 384, 300, 1)


def test_a_result_below_twice_the_size_is_one_scale_as_without_the_key() -> None:
    for coarse in ((256, 60), None):
        assert _shapes(plan_pyramid(500, 750, 300, WHOLE, layers=GATYS, coarse=coarse)) == [(500, 750, 300, 1)]


def test_the_memory_budget_still_tiles_the_scales_that_exceed_it() -> None:
    plan = plan_pyramid(1024, 1536, 300, 600_000, layers=GATYS, coarse=(256, 60))
    assert [len(s.tiles) for s in plan] == [1, 1, len(plan[-1].tiles)] and len(plan[-1].tiles) > 1
    assert all(t.height * t.width <= 600_000 for s in plan for t in s.tiles)


def test_the_coarsest_scale_never_goes_below_what_the_layers_need() -> None:
    # relu5_1 lies behind four poolings: 16 px at least, whatever the preset asks.
    plan = plan_pyramid(128, 192, 10, WHOLE, layers=GATYS, coarse=(16, 5))
    assert min(plan[0].height, plan[0].width) == 16 and plan[-1].height == 128
    assert min(plan_pyramid(128, 192, 10, WHOLE, layers=BOOK, coarse=(16, 5))[0].height, 999) == 16


def test_the_key_is_typed_with_clear_errors_and_merges_through_extends() -> None:
    preset = PresetLibrary.validate({"coarse_to_fine": {"size": 128}}, "x.json")
    assert preset.coarse_to_fine and (preset.coarse_to_fine.size, preset.coarse_to_fine.steps) == (128, 60)
    for data, needle in (({"coarse_to_fine": True}, 'x.json: coarse_to_fine: must be an object such as {"size"'),
                         ({"coarse_to_fine": {"size": 8}}, "x.json: coarse_to_fine.size: "),
                         ({"coarse_to_fine": {"steps": 0}}, "x.json: coarse_to_fine.steps: "),
                         ({"coarse_to_fine": {"side": 3}}, "unknown key 'coarse_to_fine.side'")):
        with pytest.raises(PresetError) as err:
            PresetLibrary.validate(data, "x.json")
        assert needle in str(err.value), str(err.value)
    library = PresetLibrary.default()
    on = library.from_data({"extends": "gatys", "coarse_to_fine": {"steps": 10}}, "child.json")
    assert on.coarse_to_fine and (on.coarse_to_fine.size, on.coarse_to_fine.steps) == (256, 10)
    merged = merge_preset({"coarse_to_fine": {"size": 128, "steps": 30}}, {"coarse_to_fine": {"steps": 10}})
    assert merged == {"coarse_to_fine": {"size": 128, "steps": 10}}  # key by key through extends
    assert merge_preset(merged, {"coarse_to_fine": False}) == {"coarse_to_fine": False}


def test_the_built_in_presets_are_one_scale_until_coarse_to_fine_measures_as_good() -> None:
    # Measured at 512 px (README, "Performance"): 2.7x sooner but a 1.22x higher loss.
    library = PresetLibrary.default()
    assert Preset().coarse_to_fine is False
    for name in ("book", "gatys"):
        raw = json.loads((builtin_dir() / f"{name}.json").read_text())
        assert raw["coarse_to_fine"] is False, name  # written out, for whoever copies the file
    for name in ("book", *PHOTOGRAPHER):
        assert library.load(name).coarse_to_fine is False, name


def test_the_coarsest_scale_is_the_preview_only_when_it_is_no_more_work() -> None:
    plan = plan_pyramid(64, 96, 4, WHOLE, layers=BOOK, coarse=(16, 2))  # 16x24 for 4 steps, ...
    assert coarse_scale_is_preview(plan, PreviewOptions(size=16, steps=4))
    assert coarse_scale_is_preview(plan, PreviewOptions(size=32, steps=1))  # 32x48 once: 1536 = 16x24x4
    assert not coarse_scale_is_preview(plan, PreviewOptions(size=16, steps=3))


def _job(rig: Rig, preview: dict[str, int]) -> tuple[Any, list[tuple[list[str], list[str]]]]:
    rig.preset("fast", {"extends": "tiny", "steps": 4, "size": 64, "coarse_to_fine": {"size": 16, "steps": 2},
                        "preview": preview})
    rig.drop_photo("fast/photo.jpg", width=96, height=64)
    service = rig.make_service()
    return service, _result_and_preview_order(rig, service, check_at=1)


def test_a_job_made_coarse_to_fine_renders_its_preview_first_when_that_is_quicker(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    service, seen = _job(rig, {"size": 16, "steps": 2})  # 16x24 twice: less than the coarsest scale's 4 steps
    assert service.run(once=True) == 0
    assert seen == [([], ["photo-tex.jpg"])]  # at the first step: the quick preview is out already
    assert "photo.jpg: coarse to fine: 24x16/4 steps/1 tiles, 48x32/2 steps/1 tiles, 96x64/2 steps/1 tiles" \
        in caplog.text
    report = rig.report("photo-tex.jpg")
    assert report["steps_run"] == 8 and rig.loss_steps("photo-tex.jpg") == list(range(1, 9))  # 4 + 2 + 2, once each
    with Image.open(rig.hot.outbox / "photo-tex.jpg") as im:
        assert im.size == (96, 64)
    rig.assert_nothing_lost()


def test_a_job_made_coarse_to_fine_previews_its_coarsest_scale_when_that_is_no_more_work(rig: Rig) -> None:
    service, seen = _job(rig, {"size": 16, "steps": 40})
    seen_later = _result_and_preview_order(rig, service, check_at=5)  # the first step of the second scale
    assert service.run(once=True) == 0
    assert seen == [([], [])] and seen_later == [([], ["photo-tex.jpg"])]  # no preview of its own
    with Image.open(rig.hot.outbox / "previews" / "photo-tex.jpg") as im:
        assert im.size == (24, 16)
    assert rig.report("photo-tex.jpg")["steps_run"] == 8
    rig.assert_nothing_lost()


def test_the_report_records_the_key(rig: Rig, tmp_path: Path) -> None:
    service, _ = _job(rig, {"size": 16, "steps": 2})
    assert service.run(once=True) == 0
    assert rig.report("photo-tex.jpg")["preset"]["effective"]["coarse_to_fine"] == {"size": 16, "steps": 2}


def test_the_finer_scales_steps_are_capped_like_steps(rig: Rig) -> None:
    rig.preset("long", {"extends": "tiny", "size": 64, "coarse_to_fine": {"size": 16, "steps": 5000}})
    rig.drop_photo("long/photo.jpg", width=96, height=64)
    assert rig.serve() == 1  # a job failed
    assert rig.results() == [] and len(rig.failed()) == 1
    error = rig.error(rig.failed()[0])
    assert error["kind"] == "too_large" and "coarse_to_fine.steps" in error["error"], error
    rig.assert_nothing_lost()
