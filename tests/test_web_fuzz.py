"""A schemathesis run of the OpenAPI schema: generated requests for every operation
(path ids, query values, multipart uploads with any bytes and any preset text) must
never get a 5xx. Bounded (a few examples per operation) to stay well under a minute.
The endless event stream is left out (it never ends, by design)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

from stylefold.hotfolder.journal import JobState, Journal
from stylefold.hotfolder.layout import HotFolder
from stylefold.web.app import create_app

from .web.helpers import POST, make_root, photo_bytes
from .web.helpers import settings as web_settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import schemathesis

EXAMPLES = 25


def _app(tmp_path: Path) -> object:
    config = make_root(tmp_path, max_upload_mb=1)
    hot = HotFolder(config.root)
    journal = Journal(hot.journal)
    (hot.outbox / "a-tex.jpg").write_bytes(photo_bytes())
    (hot.failed / "b.jpg").write_bytes(photo_bytes(seed=1))
    (hot.failed / "b.error.json").write_text(json.dumps({"kind": "internal", "error": "e", "file": "b.jpg"}))
    journal.start_attempt("18f0000000000000-0000000a", name="a.jpg", source="a.jpg", sha256="0" * 64, preset_key="k")
    journal.set_state("18f0000000000000-0000000a", JobState.DONE, output=str(hot.outbox / "a-tex.jpg"))
    journal.start_attempt("18f0000000000000-0000000b", name="b.jpg", source="b.jpg", sha256="1" * 64, preset_key="k")
    journal.set_state("18f0000000000000-0000000b", JobState.FAILED, error_kind="internal", error="e",
                      output=str(hot.failed / "b.error.json"))
    return create_app(config, web_settings(config))


APP = _app(Path(__import__("tempfile").mkdtemp(prefix="stylefold-fuzz-")))
schema = schemathesis.openapi.from_asgi("/api/openapi.json", APP, headers={"Host": "127.0.0.1:8707"})


@schema.exclude(path="/api/events").parametrize()
@settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_no_request_the_schema_allows_gets_a_5xx(case: schemathesis.Case) -> None:
    response = case.call(headers={**POST, "Host": "127.0.0.1:8707"})
    assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text[:300])


@pytest.mark.parametrize("path", ["/api/jobs/18f0000000000000-0000000a/result", "/api/jobs/up-0/original"])
def test_the_fuzz_rig_has_real_jobs(path: str) -> None:
    from fastapi.testclient import TestClient

    with TestClient(APP, base_url="http://127.0.0.1:8707") as client:  # type: ignore[arg-type]
        assert client.get(path).status_code in (200, 404)
