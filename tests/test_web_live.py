"""hotfolder/live.py: what the worker writes for the page, and its upkeep: losses thinned
and read back whole lines only, the current image small, folders of ended jobs swept,
daemons that died dropped; and the worker's hook costs a job nothing when it fails."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stylefold.hotfolder import live
from stylefold.hotfolder.layout import HotFolder

JOB = "18f0000000000000-0123abcd"


@pytest.fixture
def hot(tmp_path: Path) -> HotFolder:
    folder = HotFolder(tmp_path / "hot")
    folder.ensure()
    (folder.work / JOB).mkdir()
    return folder


def test_losses_are_thinned_to_about_1000_rows_and_cleared_at_the_last_step(hot: HotFolder) -> None:
    feed = live.LiveFeed(hot, JOB, every_s=0.0)
    for step in range(1, 5000):
        feed.step(step, 5000, float(step), 0.0, 0.0, 0.0)
    rows = live.read_losses(hot, JOB)
    assert 900 <= len(rows) <= 1001 and rows[0]["step"] == 5 and rows[-1]["step"] == 4995
    feed.step(5000, 5000, 1.0, 0.0, 0.0, 0.0)
    assert not (live.live_dir(hot) / JOB).exists()


def test_a_torn_last_line_is_skipped(hot: HotFolder) -> None:
    folder = live.live_dir(hot) / JOB
    folder.mkdir(parents=True)
    (folder / live.LOSSES_FILE).write_text("1,2.0,1.0,1.0,0.0\n2,1.5,1.0,0.5,0.0\n3,1.")
    assert [r["step"] for r in live.read_losses(hot, JOB)] == [1, 2]
    assert live.read_losses(hot, "../../etc") == [] and live.job_dir(hot, "../x") is None


def test_the_current_image_is_at_most_512_px(hot: HotFolder) -> None:
    import torch
    from PIL import Image

    feed = live.LiveFeed(hot, JOB, every_s=0.0)
    feed.image(torch.rand(1, 3, 600, 1200))
    with Image.open(live.live_dir(hot) / JOB / live.IMAGE_FILE) as image:
        assert image.size == (512, 256) and image.format == "JPEG"
    feed.image(torch.rand(1, 1, 20, 30))  # luminance-only optimisation
    with Image.open(live.live_dir(hot) / JOB / live.IMAGE_FILE) as image:
        assert image.size == (30, 20)


def test_images_are_written_at_most_every_few_seconds(hot: HotFolder) -> None:
    import torch

    feed = live.LiveFeed(hot, JOB, every_s=3600.0)
    feed.image(torch.rand(1, 3, 8, 8))
    path = live.live_dir(hot) / JOB / live.IMAGE_FILE
    first = path.stat().st_mtime_ns
    feed.image(torch.rand(1, 3, 8, 8))
    assert path.stat().st_mtime_ns == first


def test_sweep_removes_folders_of_jobs_whose_claim_is_gone(hot: HotFolder) -> None:
    other = "18f0000000000001-0123abcd"
    for job in (JOB, other):
        (live.live_dir(hot) / job).mkdir(parents=True)
    live.sweep(hot)
    assert (live.live_dir(hot) / JOB).is_dir() and not (live.live_dir(hot) / other).exists()


def test_a_broken_live_folder_never_fails_the_job(hot: HotFolder) -> None:
    live.live_dir(hot).parent.mkdir(parents=True, exist_ok=True)
    live.live_dir(hot).write_text("not a folder")
    feed = live.LiveFeed(hot, JOB, every_s=0.0)
    feed.step(1, 10, 1.0, 1.0, 0.0, 0.0)
    feed.step(2, 10, 1.0, 1.0, 0.0, 0.0)  # no exception; the live view just stops


def test_daemons_announce_themselves_and_dead_ones_are_dropped(hot: HotFolder) -> None:
    announced = live.announce_daemon(hot, {"device": "cpu"})
    assert announced is not None
    assert [d["device"] for d in live.daemons(hot)] == ["cpu"] and live.daemons(hot)[0]["pid"] == os.getpid()
    dead = live.live_dir(hot) / "daemons" / "dead.json"
    dead.write_text(json.dumps({"host": live.socket.gethostname(), "pid": 2**22 + 12345, "device": "cuda:0"}))
    assert [d["device"] for d in live.daemons(hot)] == ["cpu"] and not dead.exists()
    announced.withdraw()
    assert live.daemons(hot) == []
