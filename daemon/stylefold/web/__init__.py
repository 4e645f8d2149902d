"""The status page and HTTP API (SPEC §7): FastAPI behind a security guard, served by
uvicorn in a thread of ``stylefold serve`` or alone by ``stylefold web``. It reads the
journal and files; it never holds a daemon's locks. No torch."""

from __future__ import annotations

__all__: list[str] = []
