"""Every point of issue 9 item 4, as an attacker would try it: a forged Host (DNS
rebinding), cross-origin and ``Origin: null`` POSTs, a POST without the custom header,
a missing, wrong or forged token or session, a non-loopback listen without a token,
``..`` and symbolic links to reach other files, SVG, oversized and non-image uploads,
a bad preset, hostile file names; and the headers every answer carries."""

from __future__ import annotations

import io
import json
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from stylefold.cli import main
from stylefold.config import Config
from stylefold.hotfolder.journal import JobState, Journal
from stylefold.hotfolder.layout import HotFolder
from stylefold.web.app import create_app
from stylefold.web.safefiles import UnsafePath, open_inside
from stylefold.web.security import SessionKeys, same_origin
from stylefold.web.settings import ListenError, WebSettings, parse_listen

from .web.helpers import BASE, POST, drop, make_root, photo_bytes, settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from fastapi.testclient import TestClient

TOKEN = "a-long-enough-test-token-0123456789"
JOB = "18f0000000000000-0123abcd"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_root(tmp_path, max_upload_mb=1)


@pytest.fixture
def client(config: Config) -> Iterator[TestClient]:
    with TestClient(create_app(config, settings(config)), base_url=BASE) as test_client:
        yield test_client


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[TestClient]:
    config = make_root(tmp_path, token=TOKEN, listen="0.0.0.0:8707", names=["studio.example"])
    with TestClient(create_app(config, settings(config)), base_url="http://studio.example:8707") as test_client:
        yield test_client


def done_job(config: Config, output: str, name: str = "x.jpg") -> str:
    """A done job in the journal whose recorded output is ``output``."""
    journal = Journal(HotFolder(config.root).journal)
    journal.start_attempt(JOB, name=name, source=name, sha256="0" * 64, preset_key="k")
    journal.set_state(JOB, JobState.DONE, output=output)
    return JOB


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ---------------------------------------------------------------- Host (DNS rebinding)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8707", "127.0.0.1.evil.example", "", "[::2]:8707"])
def test_a_foreign_host_header_is_refused(client: TestClient, host: str) -> None:
    reply = client.get("/api/status", headers={"Host": host})
    assert reply.status_code == 421 and "host name" in reply.json()["detail"]
    assert client.get("/", headers={"Host": host}).status_code == 421


@pytest.mark.parametrize("host", ["127.0.0.1:8707", "localhost:8707", "LOCALHOST", "[::1]:8707", "127.0.0.1"])
def test_the_loopback_names_are_accepted(client: TestClient, host: str) -> None:
    assert client.get("/api/status", headers={"Host": host}).status_code == 200


def test_configured_names_are_accepted_and_others_not(locked: TestClient) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert locked.get("/api/status", headers=auth).status_code == 200
    assert locked.get("/api/status", headers={**auth, "Host": "other.example:8707"}).status_code == 421


# ---------------------------------------------------------------- cross-site requests


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:9999", "file://",
                                    "http://127.0.0.1:8707.evil.example"])
def test_a_post_from_another_origin_is_refused(client: TestClient, config: Config, origin: str) -> None:
    before = tree(config.root)
    reply = client.post("/api/jobs", files={"file": ("a.jpg", photo_bytes(), "image/jpeg")}, data={"preset": "tiny"},
                        headers={**POST, "Origin": origin})
    assert reply.status_code == 403 and "cross-origin" in reply.json()["detail"]
    assert tree(config.root) == before


def test_a_post_without_the_custom_header_is_refused(client: TestClient, config: Config) -> None:
    """What a cross-site <form> can send: a same-looking POST without X-Stylefold."""
    before = tree(config.root)
    reply = client.post("/api/jobs", files={"file": ("a.jpg", photo_bytes(), "image/jpeg")}, data={"preset": "tiny"})
    assert reply.status_code == 403 and "X-Stylefold: 1" in reply.json()["detail"]
    assert client.post(f"/api/jobs/{JOB}/retry").status_code == 403
    assert client.post("/api/jobs", headers={"X-Stylefold": "yes"}).status_code == 403
    assert client.post("/api/jobs", headers={**POST, "Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert tree(config.root) == before


def test_a_same_origin_post_with_the_header_goes_through(client: TestClient) -> None:
    reply = client.post("/api/jobs", files={"file": ("a.jpg", photo_bytes(), "image/jpeg")}, data={"preset": "tiny"},
                        headers={**POST, "Origin": BASE, "Sec-Fetch-Site": "same-origin"})
    assert reply.status_code == 201


def test_no_cors_is_ever_granted(client: TestClient) -> None:
    reply = client.options("/api/jobs", headers={"Origin": "http://evil.example",
                                                 "Access-Control-Request-Method": "POST"})
    assert reply.status_code >= 400 and "access-control-allow-origin" not in reply.headers
    assert "access-control-allow-origin" not in client.get("/api/status", headers={"Origin": "http://e.x"}).headers


def test_same_origin_compares_the_whole_origin() -> None:
    assert same_origin("http://127.0.0.1:8707", "127.0.0.1:8707")
    assert not same_origin("http://127.0.0.1:8707", "127.0.0.1:8708")
    assert not same_origin("null", "127.0.0.1:8707") and not same_origin("", "127.0.0.1:8707")
    assert not same_origin("javascript://127.0.0.1:8707", "127.0.0.1:8707")


# ---------------------------------------------------------------- token


def test_with_a_token_every_request_needs_it(locked: TestClient) -> None:
    for path in ("/api/status", "/api/jobs", f"/api/jobs/{JOB}", "/api/openapi.json", "/api/events"):
        reply = locked.get(path)
        assert reply.status_code == 401, path
        assert reply.headers["www-authenticate"].startswith("Bearer")
    reply = locked.get("/", follow_redirects=False)
    assert reply.status_code == 303 and reply.headers["location"] == "/login"
    for asset in ("/static/app.js", "/static/style.css", "/favicon.ico"):
        assert locked.get(asset, follow_redirects=False).status_code == 401, asset
    for wrong in ("Bearer nope", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN[:-1]}"):
        assert locked.get("/api/status", headers={"Authorization": wrong}).status_code == 401, wrong
    assert locked.get("/api/status", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert locked.post("/api/jobs", headers=POST).status_code == 401  # before anything else


def test_the_login_form_sets_a_session_cookie_only_for_the_right_token(locked: TestClient) -> None:
    form = locked.get("/login")
    assert form.status_code == 200 and 'type="password"' in form.text
    csrf = lambda reply: reply.text.split('name="csrf" value="')[1].split('"')[0]  # noqa: E731
    assert csrf(locked.get("/login")) == csrf(form)  # a second form (another tab) keeps the first valid
    assert locked.post("/login", data={"token": TOKEN, "csrf": "forged"}).status_code == 403
    assert locked.post("/login", data={"token": "wrong", "csrf": csrf(locked.get("/login"))}).status_code == 401
    assert locked.post("/login", data={"token": TOKEN, "csrf": csrf(locked.get("/login"))},
                       headers={"Origin": "http://evil.example"}).status_code == 403
    assert locked.post("/login", data={"token": TOKEN, "csrf": csrf(locked.get("/login"))},
                       headers={"Origin": "null"}).status_code == 403
    reply = locked.post("/login", data={"token": TOKEN, "csrf": csrf(locked.get("/login"))}, follow_redirects=False)
    assert reply.status_code == 303 and "stylefold_session" in reply.headers["set-cookie"]
    cookie = reply.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert locked.get("/api/status").status_code == 200  # the client keeps the cookie
    locked.cookies.clear()
    locked.cookies.set("stylefold_session", "9999999999.00.forged")
    assert locked.get("/api/status").status_code == 401


def test_sessions_are_signed_by_the_token_and_expire() -> None:
    keys = SessionKeys(TOKEN)
    session = keys.new_session()
    assert keys.session_ok(session) and not SessionKeys(TOKEN + "2").session_ok(session)
    assert not keys.session_ok(session, now=time.time() + 31 * 86400)
    assert not keys.session_ok(session.replace(session[:5], "99999")) and not keys.session_ok("")


def test_a_non_loopback_listen_without_a_token_refuses_to_start(config: Config, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    for listen in ("0.0.0.0:8707", "192.168.1.5:80", "[::]:8707", "studio.example:8707"):
        with pytest.raises(ListenError, match="without a token"):
            WebSettings.from_config(config, listen)
    assert main(["web", "--root", str(config.root), "--listen", "0.0.0.0:0"]) == 2
    assert "without a token" in capsys.readouterr().err
    assert main(["serve", "--root", str(config.root), "--weights", "random", "--web", "0.0.0.0:0"]) == 2
    assert "without a token" in capsys.readouterr().err
    assert WebSettings.from_config(config, "127.0.0.2:1").port == 1 and parse_listen("[::1]:9") == ("::1", 9)
    (config.root / "stylefold.toml").write_text('[web]\ntoken = "short"\n')
    assert main(["web", "--root", str(config.root)]) == 2
    assert "web.token" in capsys.readouterr().err


# ---------------------------------------------------------------- files only by job id, never a link


def test_paths_in_the_url_reach_no_file(client: TestClient, config: Config) -> None:
    (config.root / "secret.txt").write_text("TOP-SECRET-CONTENT")
    for path in ("/api/jobs/../../secret.txt", "/api/jobs/..%2f..%2fsecret.txt/result", "/api/jobs/%2e%2e/result",
                 f"/api/jobs/{JOB}/../../../secret.txt", f"/api/jobs/{JOB}/result/../../secret.txt",
                 "/api/jobs/%2F..%2F..%2Fsecret.txt", "/api/presets/..%2f..%2fsecret/style",
                 "/static/..%2fapp.py", "/api/jobs/.%2e/original"):
        reply = client.get(path)
        assert reply.status_code in (404, 405, 422), (path, reply.status_code)
        assert b"TOP-SECRET" not in reply.content


def test_a_journal_output_pointing_elsewhere_is_looked_up_in_outbox_only(client: TestClient,
                                                                         config: Config) -> None:
    (config.root / "secret.jpg").write_bytes(b"secret")
    job = done_job(config, output=str(config.root / "outbox" / ".." / "secret.jpg"))
    assert client.get(f"/api/jobs/{job}/result").status_code == 404


def test_a_result_that_is_a_symlink_is_never_followed(client: TestClient, config: Config, tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(photo_bytes())
    os.symlink(secret, config.root / "outbox" / "x-tex.jpg")
    os.symlink(tmp_path, config.root / "outbox" / "logs" / "x-tex.losses.csv")
    job = done_job(config, output=str(config.root / "outbox" / "x-tex.jpg"))
    assert client.get(f"/api/jobs/{job}/result").status_code == 404
    assert client.get(f"/api/jobs/{job}/result", params={"max": 32}).status_code == 404
    assert client.get(f"/api/jobs/{job}/losses.csv").status_code == 404


def test_open_inside_refuses_dotdot_absolute_links_and_non_files(tmp_path: Path) -> None:
    base = tmp_path / "base"
    (base / "sub").mkdir(parents=True)
    (base / "sub" / "ok.txt").write_text("ok")
    (tmp_path / "outside.txt").write_text("no")
    os.symlink(tmp_path, base / "link")
    os.symlink(tmp_path / "outside.txt", base / "file-link")
    os.mkfifo(base / "fifo")
    assert open_inside(base, "sub/ok.txt").read(10) == b"ok"
    for bad in ("../outside.txt", "/etc/passwd", "sub/../../outside.txt", "link/outside.txt", "file-link", "fifo",
                "sub", "", "sub/./ok.txt", "sub\\ok.txt", "sub/ok.txt\x00"):
        with pytest.raises(UnsafePath):
            open_inside(base, bad)


def test_no_svg_is_ever_served_as_an_image(client: TestClient, config: Config) -> None:
    (config.root / "outbox" / "x.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"><script>1</script></svg>')
    job = done_job(config, output=str(config.root / "outbox" / "x.svg"))
    reply = client.get(f"/api/jobs/{job}/result")
    assert "svg" not in reply.headers["content-type"] and reply.headers["content-type"] == "application/octet-stream"
    assert reply.headers["content-disposition"].startswith("attachment")
    assert "svg" not in client.get(f"/api/jobs/{job}/result", params={"max": 32}).headers["content-type"]
    assert client.get("/static/logo.svg").status_code == 404


@pytest.mark.parametrize("path", ["/", "/api/status", "/api/nothing", "/static/app.js", f"/api/jobs/{JOB}"])
def test_every_answer_has_nosniff_and_a_strict_csp(client: TestClient, path: str) -> None:
    reply = client.get(path)
    assert reply.headers["x-content-type-options"] == "nosniff"
    csp = reply.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp and reply.headers["x-frame-options"] == "DENY"
    assert client.get(path, headers={"Host": "evil.example"}).headers["x-content-type-options"] == "nosniff"


# ---------------------------------------------------------------- uploads


def post_file(client: TestClient, data: bytes, name: str = "a.jpg", preset: str = "tiny") -> Any:
    return client.post("/api/jobs", files={"file": (name, data, "image/jpeg")}, data={"preset": preset},
                       headers=POST)


def test_an_oversized_upload_is_413_and_nothing_lands(client: TestClient, config: Config) -> None:
    before = tree(config.root / "inbox")
    big = photo_bytes(size=(1200, 1000), fmt="PNG") + os.urandom(1_200_000)
    assert len(big) > 1024 * 1024
    reply = post_file(client, big, "big.png")
    assert reply.status_code == 413 and "1 MB" in reply.json()["detail"]
    huge = client.post("/api/jobs", content=b"x" * (3 << 20),
                       headers={**POST, "Content-Type": "multipart/form-data; boundary=b"})
    assert huge.status_code == 413
    assert tree(config.root / "inbox") == before


@pytest.mark.parametrize("data", [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 50,
                                  b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", b"<svg></svg>"])
def test_a_non_image_upload_is_400_and_nothing_lands(client: TestClient, config: Config, data: bytes) -> None:
    before = tree(config.root)
    reply = post_file(client, data, "a.jpg")
    assert reply.status_code == 400 and "stylefold reads" in reply.json()["detail"]
    assert tree(config.root) == before


def test_a_truncated_jpeg_is_refused(client: TestClient) -> None:
    assert post_file(client, photo_bytes()[:200]).status_code == 400


def test_the_preset_is_checked_first_with_its_sentence(client: TestClient, config: Config) -> None:
    before = tree(config.root)
    reply = post_file(client, b"not an image", preset="tinny")
    assert reply.status_code == 400 and "unknown preset 'tinny'" in reply.json()["detail"]
    assert "did you mean 'tiny'" in reply.json()["detail"]
    bad = post_file(client, photo_bytes(), preset=json.dumps({"extends": "tiny", "stepz": 3}))
    assert bad.status_code == 400 and "stepz" in bad.json()["detail"]
    capped = post_file(client, photo_bytes(), preset=json.dumps({"extends": "tiny", "steps": 5000}))
    assert capped.status_code == 400 and "max_steps" in capped.json()["detail"]
    assert post_file(client, photo_bytes(), preset="../tiny").status_code == 400
    assert post_file(client, photo_bytes(), preset="{not json").status_code == 400
    assert tree(config.root) == before


@pytest.mark.parametrize(("name", "placed"), [
    ("../../evil.jpg", "tiny/evil.jpg"), ("..\\..\\evil.jpg", "tiny/evil.jpg"), (".hidden.jpg", "tiny/hidden.jpg"),
    ("/etc/passwd.jpg", "tiny/passwd.jpg"), ("really-png.gif", "tiny/really-png.png"), ("...jpg", "tiny/upload.jpg"),
    ("preset.jpg", "tiny/preset-photo.jpg"), ("~$lock.jpg", "tiny/lock.jpg"), ("thumbs.db", "tiny/thumbs.jpg"),
])
def test_upload_file_names_are_sanitised_and_stay_in_the_inbox(client: TestClient, config: Config, name: str,
                                                              placed: str) -> None:
    outside = tree(config.root) - tree(config.root / "inbox")
    data = photo_bytes(fmt="PNG") if name.endswith(".gif") else photo_bytes()
    reply = client.post("/api/jobs", files={"file": (name, data, "image/jpeg")}, data={"preset": "tiny"},
                        headers=POST)
    assert reply.status_code == 201, reply.text
    assert reply.json()["source"] == placed and (config.root / "inbox" / placed).read_bytes() == data
    new_outside = (tree(config.root) - tree(config.root / "inbox")) - outside
    assert {p for p in new_outside if not p.startswith("inbox")} <= {".stylefold/web.db", ".stylefold/web.db-wal",
                                                                     ".stylefold/web.db-shm", ".stylefold/uploads"}


def test_an_upload_is_decoded_as_the_format_it_is(client: TestClient, config: Config) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), "red").save(buf, format="WEBP")
    reply = post_file(client, buf.getvalue(), "photo.jpg")
    assert reply.status_code == 201 and reply.json()["source"] == "tiny/photo.webp"


def test_the_inbox_is_not_reachable_by_retry_of_a_forged_error_file(client: TestClient, config: Config) -> None:
    """A failed job's error file names its original; a name with folders in it is refused."""
    failed = config.root / "failed"
    (failed / "x.error.json").write_text(json.dumps({"kind": "internal", "error": "e", "file": "../stylefold.toml"}))
    journal = Journal(HotFolder(config.root).journal)
    journal.start_attempt(JOB, name="x.jpg", source="x.jpg", sha256="0" * 64, preset_key="k")
    journal.set_state(JOB, JobState.FAILED, error_kind="internal", error="e", output=str(failed / "x.error.json"))
    drop(config, "tiny/keep.jpg")
    reply = client.post(f"/api/jobs/{JOB}/retry", headers=POST)
    assert reply.status_code == 409
    assert client.get(f"/api/jobs/{JOB}/original").status_code == 404


def test_sanitise_name_drops_control_characters_and_keeps_a_free_suffix() -> None:
    from stylefold.web.uploads import sanitise_name

    assert sanitise_name("a\nb\x1b[31m.jpg", ".jpg") == "ab[31m.jpg"
    assert sanitise_name("x" * 400 + ".jpg", ".jpg") == "x" * 146 + ".jpg"
    assert sanitise_name("", ".png") == "upload.png" and sanitise_name("a.part", ".jpg") == "a.jpg"


def test_an_upload_without_a_file_name_is_refused(client: TestClient, config: Config) -> None:
    before = tree(config.root)
    reply = client.post("/api/jobs", files={"file": ("", photo_bytes(), "image/jpeg")}, data={"preset": "tiny"},
                        headers=POST)
    assert reply.status_code in (400, 422) and tree(config.root) == before


def test_websockets_are_refused(client: TestClient) -> None:
    with pytest.raises(Exception):  # noqa: B017  (starlette raises its WebSocketDisconnect)
        with client.websocket_connect("/api/events"):
            pass
