"""A job's preview when the job runs on a broker's worker (SPEC §4 ``preview``, §8): it
comes back into ``outbox/previews/`` before the result, the report names this box's
file, and what arrives over the broker is decoded as hostile input, never written as it
came."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from stylefold.cluster.preview import decode_preview, encode_preview, publish_remote_preview
from stylefold.cluster.remote import store_checkpoint
from stylefold.engine.stylize import EngineState
from stylefold.job.checkpoint import Checkpoint
from stylefold.job.preview import PreviewImage

from .test_cluster_rig import Cluster, needs_redis


def _exif() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "TestCam"  # Make
    exif[0x0110] = "Model 7"  # Model
    return exif.tobytes()


def _preview(exif: bytes | None = None) -> PreviewImage:
    image = Image.new("RGB", (48, 32), (200, 40, 10))
    image.putpixel((5, 5), (0, 255, 0))
    return PreviewImage(image, "photo-brushstrokes", exif, 3, 0.5, False)


def test_a_preview_crosses_the_broker_lossless_with_its_exif(tmp_path: Path) -> None:
    data = encode_preview(_preview(_exif()))
    image, exif = decode_preview(data)
    assert image.size == (48, 32) and image.getpixel((5, 5)) == (0, 255, 0)
    path = publish_remote_preview(data, tmp_path / "outbox", tmp_path / "outbox" / "logs", "photo-brushstrokes")
    assert path == tmp_path / "outbox" / "previews" / "photo-brushstrokes.jpg"
    with Image.open(path) as written:
        assert written.format == "JPEG" and written.size == (48, 32)
        assert written.getexif()[0x010F] == "TestCam" and written.getexif()[0x0110] == "Model 7"
    assert decode_preview(encode_preview(_preview()))[1] is None


def _png(mode: str, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def _huge_header() -> bytes:
    """A PNG whose header claims 60000x60000 pixels (its data is one tiny row)."""
    data = bytearray(_png("RGB", (1, 1)))
    import struct
    import zlib

    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    data[8:33] = struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


@pytest.mark.parametrize("data", [
    b"",
    b"not a picture at all",
    _png("RGB", (40, 30))[:-30],  # truncated
    _png("RGBA", (8, 8)),  # not what a worker sends
    _png("L", (8, 8)),
    _huge_header(),  # a decompression bomb's header: refused before any decoding
], ids=["empty", "junk", "truncated", "rgba", "grey", "huge"])
def test_a_hostile_preview_from_the_broker_is_refused_and_nothing_is_written(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(ValueError):
        publish_remote_preview(data, tmp_path / "outbox", tmp_path / "outbox" / "logs", "x-y")
    assert not (tmp_path / "outbox" / "previews").exists() or not any((tmp_path / "outbox" / "previews").iterdir())


def test_a_jpeg_is_no_preview_from_a_worker(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    with pytest.raises(ValueError):
        decode_preview(buf.getvalue())


@pytest.mark.parametrize("here", ["/srv/hot/outbox/previews/a-brushstrokes.jpg", None])
def test_a_workers_checkpoint_is_kept_with_this_boxs_preview_not_its_word(tmp_path: Path, here: str | None) -> None:
    import torch

    sent, path = tmp_path / "sent.pt", tmp_path / "checkpoint.pt"
    rows = [{"step": 1.0, "total_loss": 2.0}]
    Checkpoint("id", EngineState(3, torch.rand(1, 3, 8, 8), {}), rows, [], preview="sent").save(sent)
    kept = store_checkpoint(path, sent.read_bytes(), here)
    again = Checkpoint.load(path)
    assert kept is not None and kept.preview == again.preview == here  # what a lane here resuming reads
    assert again.step == 3 and again.rows == rows
    data = path.read_bytes()
    store_checkpoint(path, data, here)
    assert path.read_bytes() == data  # already this box's: stored as it came, not encoded again


def test_a_damaged_checkpoint_from_a_worker_is_stored_as_it_came(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    assert store_checkpoint(path, b"not a checkpoint", None) is None
    assert path.read_bytes() == b"not a checkpoint"


@needs_redis
def test_a_job_run_on_a_worker_writes_its_preview_here_before_its_result(tmp_path: Path) -> None:
    with Cluster(tmp_path, steps=150, size=48) as cluster:
        cluster.preset("tiny", {"steps": 150, "size": 48, "init": "content", "preview": {"size": 16, "steps": 4}})
        cluster.workers("w1")
        serve = cluster.serve()
        cluster.drop("a.jpg")
        preview = cluster.root / "outbox" / "previews" / "a-brushstrokes.jpg"
        result = cluster.root / "outbox" / "a-brushstrokes.jpg"
        cluster.wait(lambda: preview.is_file(), 120, "the preview")
        cluster.wait(lambda: cluster.finished("a.jpg"), 120, "the job done")
        assert preview.stat().st_mtime_ns <= result.stat().st_mtime_ns
        with Image.open(preview) as image:
            assert image.format == "JPEG" and min(image.size) == 16
        assert cluster.outbox() == ["a-brushstrokes.jpg"]  # never in outbox/ itself
        report = json.loads((cluster.root / "outbox" / "logs" / "a-brushstrokes.json").read_text())
        assert report["preview"] == str(preview) and report["steps_run"] == 150
        assert re.search(r"preview of a\.jpg: .*a-brushstrokes\.jpg \([\d.]+ s, worker w1\)", serve.text())
        # The broker keeps no copy once the job is finished here.
        client = cluster.redis.client()
        cluster.wait(lambda: not client.keys("stylefold:job:*"), 30, "the job's keys gone from the broker")
