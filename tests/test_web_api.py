"""The HTTP API of SPEC §7 against a real hot folder drained by an in-process daemon
(random VGG19 weights, 32 px, 3 steps): status, jobs by state, one job, files by job
id, uploads whose id follows the file into its job, retry, live data, the event feed."""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from stylefold.config import Config
from stylefold.hotfolder.journal import JobState, Journal
from stylefold.hotfolder.layout import HotFolder
from stylefold.web.app import create_app
from stylefold.web.events import EventHub
from stylefold.web.reader import JournalReader

with warnings.catch_warnings():  # starlette's notice that it prefers httpx2 to httpx
    warnings.simplefilter("ignore", DeprecationWarning)
    from fastapi.testclient import TestClient

from .web.helpers import BASE, POST, Daemon, drop, make_root, photo_bytes, settings


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_root(tmp_path)


@pytest.fixture
def client(config: Config) -> Iterator[TestClient]:
    with TestClient(create_app(config, settings(config)), base_url=BASE) as test_client:
        yield test_client


@pytest.fixture
def daemon(config: Config, extractor: Any) -> Daemon:
    return Daemon(config, extractor)


def upload(client: TestClient, data: bytes, name: str = "up.jpg", preset: str = "tiny") -> Any:
    return client.post("/api/jobs", files={"file": (name, data, "image/jpeg")}, data={"preset": preset},
                       headers=POST)


def only(client: TestClient, state: str) -> dict[str, Any]:
    jobs = client.get("/api/jobs", params={"state": state}).json()["jobs"]
    assert len(jobs) == 1, jobs
    job: dict[str, Any] = jobs[0]
    return job


def test_status_of_an_empty_root_lists_presets_and_nothing_else(client: TestClient, config: Config) -> None:
    status = client.get("/api/status").json()
    assert status["queue"] == [] and status["running"] == [] and status["recent"] == [] and status["failed"] == []
    assert status["root"] == str(config.root.absolute())
    assert "tiny" in [p["name"] for p in status["presets"]] and "book" in [p["name"] for p in status["presets"]]


def test_the_queue_says_which_preset_a_waiting_photo_gets_and_why_it_waits(client: TestClient,
                                                                           config: Config) -> None:
    drop(config, "tiny/a.jpg")
    (config.root / "inbox" / "b.json").write_text(json.dumps({"extends": "tiny"}))
    drop(config, "b.jpg", seed=2)
    queue = {q["source"]: q for q in client.get("/api/status").json()["queue"]}
    assert queue["tiny/a.jpg"]["preset"] == "tiny" and queue["b.jpg"]["preset"] == "sidecar b.json"
    assert all(q["reason"] for q in queue.values())
    waiting = client.get("/api/jobs", params={"state": "waiting"}).json()["jobs"]
    assert {j["source"] for j in waiting} == {"tiny/a.jpg", "b.jpg"}


def test_a_done_job_its_files_and_its_effective_preset(client: TestClient, config: Config, daemon: Daemon) -> None:
    drop(config, "tiny/a.jpg")
    daemon.drain()
    job = only(client, "done")
    hot = HotFolder(config.root)
    detail = client.get(f"/api/jobs/{job['id']}").json()
    assert detail["state"] == "done" and detail["result"] == "a-tex.jpg" and detail["error"] is None
    assert detail["preset"]["effective"]["steps"] == 3 and detail["preset"]["effective"]["size"] == 32
    result = client.get(f"/api/jobs/{job['id']}/result")
    assert result.status_code == 200 and result.headers["content-type"] == "image/jpeg"
    assert result.content == (hot.outbox / "a-tex.jpg").read_bytes()
    assert client.get(f"/api/jobs/{job['id']}/original").content == (hot.done / "tiny" / "a.jpg").read_bytes()
    rows = list(csv.reader(io.StringIO(client.get(f"/api/jobs/{job['id']}/losses.csv").text)))
    assert rows[0][0] == "step" and len(rows) == 4
    assert client.get(f"/api/jobs/{job['id']}/report").json()["status"] == "done"
    assert client.get(f"/api/jobs/{job['id']}/plot").content.startswith(b"\x89PNG")
    assert client.get(f"/api/jobs/{job['id']}/preview").status_code == 404  # no preview asked for
    thumb = client.get(f"/api/jobs/{job['id']}/original", params={"max": 16})
    assert Image.open(io.BytesIO(thumb.content)).size[0] <= 16 and thumb.headers["content-type"] == "image/jpeg"
    status = client.get("/api/status").json()
    assert [r["id"] for r in status["recent"]] == [job["id"]] and status["counts"] == {"done": 1}


def test_an_upload_id_follows_the_file_from_the_inbox_to_its_result(client: TestClient, config: Config,
                                                                    daemon: Daemon) -> None:
    reply = upload(client, photo_bytes(seed=3))
    assert reply.status_code == 201, reply.text
    upload_id = reply.json()["id"]
    assert upload_id.startswith("up-") and reply.json()["source"] == "tiny/up.jpg"
    assert (config.root / "inbox" / "tiny" / "up.jpg").read_bytes() == photo_bytes(seed=3)
    waiting = client.get(f"/api/jobs/{upload_id}").json()
    assert waiting["state"] == "waiting" and waiting["job_id"] is None and waiting["reason"]
    daemon.drain()
    done = client.get(f"/api/jobs/{upload_id}").json()
    assert done["state"] == "done" and done["id"] == upload_id and done["job_id"] == only(client, "done")["id"]
    assert client.get(f"/api/jobs/{upload_id}/result").status_code == 200
    assert (config.root / "done" / "tiny" / "up.jpg").is_file()


def test_an_upload_with_a_preset_json_text_gets_it_as_its_sidecar(client: TestClient, config: Config,
                                                                 daemon: Daemon) -> None:
    reply = upload(client, photo_bytes(seed=4), name="side.jpg", preset=json.dumps({"extends": "tiny", "steps": 2}))
    assert reply.status_code == 201, reply.text
    inbox = config.root / "inbox"
    assert json.loads((inbox / "side.json").read_text())["steps"] == 2 and (inbox / "side.jpg").is_file()
    daemon.drain()
    job = client.get(f"/api/jobs/{reply.json()['id']}").json()
    assert job["state"] == "done" and job["steps"] == 2


def test_a_failed_job_is_retried_into_a_new_job_and_the_old_record_stays(client: TestClient, config: Config,
                                                                        daemon: Daemon) -> None:
    drop(config, "late.json", json.dumps({"extends": "tiny", "style": "later.png"}).encode())
    drop(config, "late.jpg")
    daemon.drain()
    failed = only(client, "failed")
    assert failed["error"]["kind"] == "style_not_found" and "later.png" in failed["error"]["error"]
    assert failed["retryable"] is True
    Image.open(config.root / "styles" / "tex.png").save(config.root / "styles" / "later.png")  # the fix
    reply = client.post(f"/api/jobs/{failed['id']}/retry", headers=POST)
    assert reply.status_code == 201, reply.text
    inbox = config.root / "inbox"
    assert (inbox / "late.jpg").is_file() and (inbox / "late.json").is_file()
    assert not (config.root / "failed" / "late.jpg").exists() and not (config.root / "failed" / "late.json").exists()
    again = client.post(f"/api/jobs/{failed['id']}/retry", headers=POST)
    assert again.status_code == 409 and "no longer in failed/" in again.json()["detail"]
    daemon.drain()
    retried = client.get(f"/api/jobs/{reply.json()['id']}").json()
    assert retried["state"] == "done" and retried["job_id"] != failed["id"]
    old = client.get(f"/api/jobs/{failed['id']}").json()
    assert old["state"] == "failed" and old["retryable"] is False
    assert not (config.root / "failed" / "late.error.json").exists()  # the daemon clears it after the success


def test_only_a_failed_job_can_be_retried_and_unknown_ids_are_404(client: TestClient, config: Config,
                                                                 daemon: Daemon) -> None:
    drop(config, "tiny/a.jpg")
    daemon.drain()
    done = only(client, "done")
    assert client.post(f"/api/jobs/{done['id']}/retry", headers=POST).status_code == 409
    assert client.get("/api/jobs/18f0000000000000-0123abcd").status_code == 404
    assert client.get("/api/jobs/up-0000000000000000").status_code == 404
    assert client.get("/api/jobs/18f0000000000000-0123abcd/result").status_code == 404
    assert client.post("/api/jobs/up-0000000000000000/retry", headers=POST).status_code == 404


def test_a_running_job_shows_step_rate_eta_loss_curve_and_current_image(client: TestClient, config: Config) -> None:
    import torch

    from stylefold.hotfolder.live import LiveFeed

    hot = HotFolder(config.root)
    journal = Journal(hot.journal)
    job_id = "18f0000000000000-0123abcd"
    (hot.work / job_id).mkdir()
    journal.start_attempt(job_id, name="r.jpg", source="tiny/r.jpg", sha256="0" * 64, preset_key="k")
    journal.set_progress(job_id, {"step": 20, "steps": 100, "total_loss": 5.0, "elapsed_s": 10.0})
    feed = LiveFeed(hot, job_id, every_s=0.0)
    for step in range(1, 21):
        feed.step(step, 100, 100.0 / step, 1.0, 2.0, 0.0)
    feed.image(torch.rand(1, 3, 40, 48))
    running = client.get("/api/status").json()["running"]
    assert len(running) == 1
    job = running[0]
    assert (job["step"], job["steps"], job["rate"], job["eta_s"]) == (20, 100, 2.0, 40.0)
    assert job["has_current"] is True and job["claim"] == "interrupted"  # no live process holds the claim
    losses = client.get(f"/api/jobs/{job_id}/live").json()["losses"]
    assert [r["step"] for r in losses] == list(range(1, 21)) and losses[-1]["total_loss"] == 5.0
    current = client.get(f"/api/jobs/{job_id}/current")
    assert Image.open(io.BytesIO(current.content)).size == (48, 40)
    feed.step(100, 100, 1.0, 1.0, 0.0, 0.0)  # the last step clears the live folder
    assert client.get(f"/api/jobs/{job_id}/current").status_code == 404


def test_the_event_feed_reports_start_step_done_and_failed(config: Config) -> None:
    hot = HotFolder(config.root)
    journal = Journal(hot.journal)
    hub = EventHub(JournalReader(hot.journal))
    hub._cursor = 0.0
    journal.start_attempt("a-1", name="a.jpg", source="a.jpg", sha256="0" * 64, preset_key="k")
    journal.start_attempt("b-1", name="b.jpg", source="b.jpg", sha256="1" * 64, preset_key="k")
    assert [e.split("\n")[0] for e in hub.changes()] == ["event: start", "event: start"]
    journal.set_progress("a-1", {"step": 5, "steps": 10, "total_loss": 1.5})
    events = hub.changes()
    assert len(events) == 1 and events[0].startswith("event: step")
    assert json.loads(events[0].split("data: ")[1])["step"] == 5
    journal.set_state("a-1", JobState.DONE, output="x.jpg")
    journal.set_state("b-1", JobState.FAILED, error_kind="internal", error="it broke")
    kinds = [e.split("\n")[0] for e in hub.changes()]
    assert kinds == ["event: done", "event: failed"] and hub.changes() == []


def test_the_openapi_schema_lists_the_api(client: TestClient) -> None:
    schema = client.get("/api/openapi.json").json()
    for path in ("/api/status", "/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/retry", "/api/events",
                 "/api/jobs/{job_id}/{which}"):
        assert path in schema["paths"], path
    assert "post" in schema["paths"]["/api/jobs"]
    assert client.get("/docs").status_code == 404  # Swagger UI loads from a CDN: off


def test_the_page_and_its_assets_are_served_from_the_package(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text and "<script>" not in page.text
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/static/../app.py").status_code == 404
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from another origin


def test_preset_style_thumbnails(client: TestClient) -> None:
    style = client.get("/api/presets/tiny/style", params={"max": 24})
    assert style.status_code == 200 and Image.open(io.BytesIO(style.content)).format == "JPEG"
    assert client.get("/api/presets/book/style").status_code == 200
    assert client.get("/api/presets/nothing/style").status_code == 404
