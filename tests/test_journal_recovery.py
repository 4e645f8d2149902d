"""The journal turned hostile (issue 13 item 2, and item 7's long lock): corrupt,
deleted while the daemon runs, locked by another process. The daemon starts and keeps
every promise: real hot folders with done/, failed/ and interrupted state, the journal
broken for real, then real tiny jobs (random weights, 32 px, 3 steps) through the
Service, each test ending with the nothing-lost check.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stylefold.cli import main
from stylefold.cli.doctor import _check_journal
from stylefold.hotfolder.admin import status_report
from stylefold.hotfolder.journal import JobRecord, JobState, Journal, JournalCorrupt, journal_problem
from stylefold.hotfolder.rebuild import INTERRUPTED_ATTEMPTS, open_journal, records_from_folders
from stylefold.hotfolder.service import Service
from stylefold.hotfolder.worker import Worker
from stylefold.job.run import Resident

from .test_hotfolder import STYLE, Rig, _logs, _no_environment, _one_torch_thread, photo_bytes

__all__ = ["_logs", "_no_environment", "_one_torch_thread"]  # the rig's autouse fixtures apply here too

BLEND = {"extends": "tiny", "style": [{"path": f"{STYLE}.png", "weight": 1}, {"path": "side.png", "weight": 3}],
         "style_layers": {"conv1_1": 1, "conv2_1": 0.5}}


@pytest.fixture
def rig(tmp_path: Path, extractor: Any) -> Rig:
    return Rig(tmp_path, extractor)


def service_on(rig: Rig, journal: Journal, **overrides: Any) -> Service:
    """The rig's service, on a journal opened as ``stylefold serve`` opens it."""
    config = rig.config(**overrides)
    worker = Worker(rig.hot, journal, Resident(rig.extractor), config.checkpoint_every)
    rig.service = Service(config, rig.hot, journal, worker, view=None, notifier=None)
    return rig.service


def serve_and_close(rig: Rig) -> int:
    """``rig.serve()``, then its journal closed, as a daemon that exits leaves it."""
    code = rig.serve()
    assert rig.service is not None
    rig.service.journal.close()
    return code


def all_records(path: Path) -> dict[str, JobRecord]:
    journal = Journal(path, read_only=True)
    try:
        return {r.id: r for state in JobState for r in journal.by_state(state, 10_000)}
    finally:
        journal.close()


def history(rig: Rig) -> dict[str, JobRecord]:
    """A folder with a bit of everything: two done jobs (one of blended styles), one
    failed, one interrupted (stopped at its step 1, its claim waiting). Returns the
    journal's records as the daemon wrote them."""
    rig.drop_photo("tiny/a.jpg", seed=0)
    rig.drop_photo("mix.jpg", seed=1)
    rig.drop_json("mix.json", BLEND)
    rig.drop("tiny/broken.jpg", b"not a jpeg at all")
    assert serve_and_close(rig) == 1  # broken.jpg failed
    rig.drop_photo("tiny/p.jpg", seed=2)
    service = service_on(rig, open_journal(rig.hot))
    rig.stop_at_step(service, 1)
    assert service.run(once=True) == 0
    service.journal.close()
    assert len(list(rig.hot.work.iterdir())) == 1
    return all_records(rig.hot.journal)


def assert_rebuilt_like(rebuilt: dict[str, JobRecord], before: dict[str, JobRecord]) -> None:
    """What the duplicate check, the retry cleanup and status use came back."""
    assert set(rebuilt) == set(before)
    for job_id, old in before.items():
        new = rebuilt[job_id]
        assert (new.sha256, new.source, new.name) == (old.sha256, old.source, old.name), job_id
        if old.state is JobState.DONE:
            assert (new.state, new.preset_key, new.output) == (old.state, old.preset_key, old.output)
        elif old.state is JobState.FAILED:
            assert (new.state, new.error_kind, new.error, new.output) == (
                old.state, old.error_kind, old.error, old.output)
        else:  # the interrupted claim
            assert new.state is JobState.QUEUED and new.attempts == INTERRUPTED_ATTEMPTS
            assert new.preset_key == old.preset_key


def corrupt(path: Path, how: str) -> bytes:
    """Break the (closed, fully checkpointed) journal; returns the bytes of the file
    that has to be found moved aside."""
    wal = path.with_name(path.name + "-wal")
    assert path.is_file() and (not wal.exists() or wal.stat().st_size == 0)  # a reader may leave an empty one
    if how == "garbage":
        path.write_bytes(os.urandom(3) + b"this is not a database" * 300)
        return path.read_bytes()
    if how == "truncated":
        os.truncate(path, path.stat().st_size // 2)
        return path.read_bytes()
    assert how == "garbage-wal"
    wal.write_bytes(b"garbage" * 1000)
    return path.read_bytes()


# ---------------------------------------------------------------- corrupt


@pytest.mark.parametrize("how", ["garbage", "truncated", "garbage-wal"])
def test_a_corrupt_journal_is_moved_aside_and_rebuilt_from_the_folders(
        rig: Rig, caplog: pytest.LogCaptureFixture, how: str) -> None:
    before = history(rig)
    assert {r.state for r in before.values()} == {JobState.DONE, JobState.FAILED, JobState.QUEUED}
    broken = corrupt(rig.hot.journal, how)
    # Again: the same photo with the same preset (twice: folder preset and blended
    # sidecar), and a new photo.
    rig.drop("tiny/a-again.jpg", photo_bytes(".jpg", seed=0))
    rig.drop("mix-again.jpg", photo_bytes(".jpg", seed=1))
    rig.drop_json("mix-again.json", BLEND)
    rig.drop_photo("tiny/c.jpg", seed=3)
    caplog.clear()

    journal = open_journal(rig.hot)
    assert_rebuilt_like(all_records(rig.hot.journal), before)
    assert service_on(rig, journal).run(once=True) == 0

    aside = sorted(rig.hot.state.glob("journal.db.corrupt-*"))
    assert [p.name for p in aside if not p.name.endswith(("-wal", "-shm"))] == [aside[0].name]
    assert aside[0].name.startswith("journal.db.corrupt-20") and aside[0].name.endswith("Z")
    assert aside[0].read_bytes() == broken, "the corrupt journal is kept as it was"
    if how == "garbage-wal":
        assert aside[0].with_name(aside[0].name + "-wal").read_bytes() == b"garbage" * 1000
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "corrupt" in r.getMessage()]
    assert len(warnings) == 1 and aside[0].name in warnings[0] and "rebuilt it from the folders" in warnings[0]
    assert "Traceback" not in caplog.text
    assert "tiny/a-again.jpg: same photo and preset as job" in caplog.text
    assert "mix-again.jpg: same photo and preset as job" in caplog.text
    assert rig.results() == sorted([f"a-{STYLE}.jpg", f"mix-{STYLE}+side.jpg", f"c-{STYLE}.jpg", f"p-{STYLE}.jpg"])
    assert set(rig.done()) >= {"tiny/a.jpg", "tiny/a-again.jpg", "mix.jpg", "mix-again.jpg", "tiny/c.jpg",
                               "tiny/p.jpg"}
    assert rig.failed() == ["tiny/broken.jpg"]
    after = all_records(rig.hot.journal)
    assert after[next(i for i, r in before.items() if r.state is JobState.QUEUED)].state is JobState.DONE
    assert sum(r.state is JobState.DONE for r in after.values()) == 6  # a, mix, p and c, and the two skipped
    journal.close()
    rig.assert_nothing_lost()


def test_hostile_files_in_the_folders_are_skipped_with_a_warning(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    rig.drop_photo("tiny/a.jpg")
    assert rig.serve() == 0
    good = all_records(rig.hot.journal)
    logs, failed, work = rig.hot.logs, rig.hot.failed, rig.hot.work
    (logs / "garbage.json").write_bytes(b"\x00{not json")
    (logs / "huge.json").write_bytes(b"{" + b" " * (2 << 20) + b"}")
    (logs / "list.json").write_text("[1, 2, 3]")
    (logs / "types.json").write_text(json.dumps({"status": "done", "job_id": 5, "input": "x"}))
    (logs / "preset.json").write_text(json.dumps({**json.loads((logs / f"a-{STYLE}.json").read_text()),
                                                  "job_id": "other", "preset": {"effective": {"steps": "3"}}}))
    (logs / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    os.mkfifo(logs / "fifo.json")
    (logs / "link.json").symlink_to(logs / f"a-{STYLE}.json")
    (failed / "x.error.json").write_text(json.dumps({"kind": "internal", "error": "e", "file": "../../etc/passwd",
                                                     "source": "x.jpg", "job_id": "f"}))
    (failed / "y.error.json").write_text(json.dumps({"kind": ["no"], "error": "e"}))
    (work / "1-bad").mkdir()
    (work / "1-bad" / "job.json").write_text("{}")
    caplog.clear()

    records = records_from_folders(rig.hot)

    assert [r.id for r in records] == list(good)  # the one real report; nothing else
    skipped = [m for r in caplog.records if "journal rebuild: skipped" in (m := r.getMessage()) and "in all" not in m]
    assert len(skipped) == 10  # the first ten by name ...
    assert "skipped 11 files in all" in caplog.text  # ... then a count
    assert "Traceback" not in caplog.text
    for name in ("deep.json", "fifo.json", "garbage.json", "huge.json", "link.json", "list.json"):
        assert any(name in line for line in skipped), name
    rig.assert_nothing_lost(claims_left=1)


# ---------------------------------------------------------------- deleted


def test_a_journal_deleted_while_the_daemon_runs_is_recreated(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    first = rig.drop_photo("tiny/a.jpg", seed=0)
    journal = open_journal(rig.hot)
    service = service_on(rig, journal)
    on_step = service.runner.events.on_step
    assert on_step is not None

    def delete_at_step_2(claim: Any, info: Any) -> None:
        on_step(claim, info)
        if info.step == 2:
            rig.hot.journal.unlink()  # `rm journal.db`, mid-job

    service.runner.events.on_step = delete_at_step_2
    assert service.run(once=True) == 0

    assert "was deleted while the daemon ran; recreated it from the folders" in caplog.text
    on_disk = all_records(rig.hot.journal)
    assert [(r.source, r.state) for r in on_disk.values()] == [("tiny/a.jpg", JobState.DONE)], \
        "the job's end is recorded in the new file, not the unlinked one"

    # The same daemon, the same Journal: the journal is gone again, between two jobs.
    rig.hot.journal.unlink()
    rig.drop("tiny/a-again.jpg", first)
    rig.drop_photo("tiny/c.jpg", seed=3)
    caplog.clear()
    assert service_on(rig, journal).run(once=True) == 0

    assert "tiny/a-again.jpg: same photo and preset as job" in caplog.text
    assert rig.results() == [f"a-{STYLE}.jpg", f"c-{STYLE}.jpg"]
    assert sorted(r.source for r in all_records(rig.hot.journal).values()) == [
        "tiny/a-again.jpg", "tiny/a.jpg", "tiny/c.jpg"]
    journal.close()
    rig.assert_nothing_lost()


def test_a_journal_that_cannot_be_rebuilt_for_a_full_disk_is_rebuilt_when_space_returns(
        rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import errno

    from stylefold.hotfolder import journal_files

    rig.drop_photo("tiny/a.jpg")
    assert serve_and_close(rig) == 0
    corrupt(rig.hot.journal, "garbage")
    real_create = journal_files.create

    def no_space(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_files, "create", no_space)
    journal = open_journal(rig.hot)  # starts: no traceback
    assert "cannot be made now" in caplog.text
    with pytest.raises(sqlite3.OperationalError, match="not yet again"):
        journal.counts()  # what the worker turns into a wait; a rebuild reads every report: not at every use
    journal._retry_prepare_at = 0.0  # RETRY_PREPARE_S later
    with pytest.raises(OSError):
        journal.counts()
    monkeypatch.setattr(journal_files, "create", real_create)
    journal._retry_prepare_at = 0.0
    assert journal.counts() == {"done": 1}
    assert len(list(rig.hot.state.glob("journal.db.corrupt-*"))) == 1
    journal.close()
    rig.assert_nothing_lost()


# ---------------------------------------------------------------- locked


HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
if sys.argv[2] == "exclusive-mode":  # readers are shut out too
    db.execute("PRAGMA locking_mode=EXCLUSIVE")
db.execute("BEGIN EXCLUSIVE")
db.execute("UPDATE jobs SET updated = updated")
print("held", flush=True)
sys.stdin.readline()  # until the test says
db.execute("COMMIT")
db.close()
"""


@pytest.fixture
def holder(rig: Rig) -> Iterator[Any]:
    """Another process that holds the journal's write lock until told to let go."""
    started: list[subprocess.Popen[str]] = []

    def start(mode: str = "write") -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(rig.hot.journal), mode], text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def release_after(proc: subprocess.Popen[str], tries: int) -> Any:
    """An ``on_wait`` hook that lets the holder go after ``tries`` waits (each one the
    per-try timeout long), and counts them."""
    calls: list[int] = []

    def on_wait() -> None:
        calls.append(1)
        if len(calls) == tries:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.close()

    on_wait.calls = calls  # type: ignore[attr-defined]
    return on_wait


def test_a_lock_held_longer_than_one_wait_is_waited_out(rig: Rig, holder: Any,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    rig.drop_photo("tiny/a.jpg", seed=0)
    assert rig.serve() == 0
    first = rig.hot.done / "tiny" / "a.jpg"
    rig.drop("tiny/a-again.jpg", first.read_bytes())
    rig.drop_photo("tiny/b.jpg", seed=1)
    proc = holder()
    on_wait = release_after(proc, tries=4)
    journal = open_journal(rig.hot, busy_timeout_s=0.2, on_wait=on_wait)
    caplog.clear()

    assert service_on(rig, journal).run(once=True) == 0

    assert len(on_wait.calls) >= 4, "the service's hook ran while it waited (the watchdog is fed there)"
    locked = [r for r in caplog.records if "is locked by another process" in r.getMessage()]
    assert len(locked) == 1 and locked[0].levelno == logging.WARNING, "said once, not once per try"
    assert "is free again after" in caplog.text
    assert "Traceback" not in caplog.text and "database is locked" not in caplog.text.replace(
        locked[0].getMessage(), "")
    assert proc.wait(30) == 0
    assert "tiny/a-again.jpg: same photo and preset as job" in caplog.text
    assert rig.results() == [f"a-{STYLE}.jpg", f"b-{STYLE}.jpg"]
    assert {r.source: r.state for r in all_records(rig.hot.journal).values()}["tiny/b.jpg"] is JobState.DONE
    journal.close()
    rig.assert_nothing_lost()


def test_reads_wait_out_a_lock_that_shuts_readers_out_too(rig: Rig, holder: Any) -> None:
    rig.drop_photo("tiny/a.jpg")
    assert serve_and_close(rig) == 0  # exclusive locking mode needs no other connection
    proc = holder("exclusive-mode")
    on_wait = release_after(proc, tries=3)
    journal = open_journal(rig.hot, busy_timeout_s=0.2, on_wait=on_wait)  # opening reads too
    assert journal.counts() == {"done": 1}
    assert len(on_wait.calls) >= 3
    journal.close()
    rig.assert_nothing_lost()


def test_progress_notes_do_not_stall_a_job_while_the_journal_is_locked(
        rig: Rig, holder: Any, caplog: pytest.LogCaptureFixture) -> None:
    rig.drop_photo("tiny/a.jpg")
    assert serve_and_close(rig) == 0
    job_id = next(iter(all_records(rig.hot.journal)))
    journal = open_journal(rig.hot, busy_timeout_s=0.1)
    proc = holder()
    caplog.clear()
    journal.set_progress(job_id, {"step": 1})  # one wait, then dropped: the job's steps go on
    journal.set_progress(job_id, {"step": 2})
    assert len([r for r in caplog.records if "progress is not recorded" in r.getMessage()]) == 1
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.close()
    assert proc.wait(30) == 0
    journal.set_progress(job_id, {"step": 3})
    assert "progress is recorded again" in caplog.text
    assert all_records(rig.hot.journal)[job_id].progress == {"step": 3}
    journal.close()
    rig.assert_nothing_lost()


# ---------------------------------------------------------------- the read-only commands


def test_status_and_doctor_report_a_corrupt_journal_and_move_nothing(
        rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    rig.drop_photo("tiny/a.jpg")
    assert serve_and_close(rig) == 0
    assert _check_journal(rig.hot)[0] == "OK" and journal_problem(rig.hot.journal) is None
    broken = corrupt(rig.hot.journal, "garbage")
    listing = sorted(p.name for p in rig.hot.state.iterdir())

    report = status_report(rig.config())
    status, detail, fix = _check_journal(rig.hot)
    assert main(["status", "--root", str(rig.root), "--json"]) == 0

    assert "is corrupt: file is not a database" in report["journal_problem"]
    assert "rebuilds it from the folders at its next start" in report["journal_problem"]
    assert json.loads(capsys.readouterr().out)["journal_problem"] == report["journal_problem"]
    assert status == "WARN" and "is corrupt" in detail and "moves it aside" in fix and "rebuilds it" in fix
    with pytest.raises(JournalCorrupt):
        Journal(rig.hot.journal, read_only=True)
    assert rig.hot.journal.read_bytes() == broken
    assert sorted(p.name for p in rig.hot.state.iterdir()) == listing, "a read-only command moved something"
    rig.assert_nothing_lost()


def test_serve_once_starts_on_a_corrupt_journal(rig: Rig, tmp_path: Path) -> None:
    """``stylefold serve`` itself, as a process: no traceback, the duplicate skipped."""
    first = rig.drop_photo("tiny/a.jpg")
    assert serve_and_close(rig) == 0
    corrupt(rig.hot.journal, "garbage")
    rig.drop("tiny/a-again.jpg", first)
    (rig.root / "stylefold.toml").write_text(f'presets_dir = "{rig.presets}"\nsettle_s = 0.05\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STYLEFOLD_", "NOTIFY_", "WATCHDOG_"))}
    done = subprocess.run([sys.executable, "-m", "stylefold", "serve", "--once", "--root", str(rig.root),
                           "--weights", "random", "--device", "cpu"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "Traceback" not in log and "is corrupt (file is not a database); moved it aside" in log
    assert "tiny/a-again.jpg: same photo and preset as job" in log
    assert rig.results() == [f"a-{STYLE}.jpg"]
    assert len(list(rig.hot.state.glob("journal.db.corrupt-*"))) == 1
    rig.assert_nothing_lost()
