"""The JSON API of SPEC §7. Files only by job id (``JobFiles``), never by a path."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import Response, StreamingResponse

from ..hotfolder import live
from ..hotfolder.journal import JobState
from .context import Context, Lookup
from .intake import Rejected, accept_upload
from .jobs import STATES, job_view
from .safefiles import OpenedFile, UnsafePath
from .thumbs import thumbnail
from .uploads import move_back_to_inbox

__all__ = ["build_router"]

JobId = Annotated[str, PathParam(pattern=r"^[0-9a-z][0-9a-z-]{0,63}$", max_length=64)]
Thumb = Annotated[int | None, Query(ge=16, le=4096, description="a JPEG of at most this many pixels")]
FileName = Literal["result", "original", "losses.csv", "preview", "report", "plot", "current"]
MEDIA = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
         ".tif": "image/tiff", ".tiff": "image/tiff", ".bmp": "image/bmp", ".csv": "text/csv; charset=utf-8",
         ".json": "application/json"}
INLINE = {"image/jpeg", "image/png", "image/webp"}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such job, or it has no such file"}}


def build_router(ctx: Context) -> APIRouter:
    router = APIRouter(prefix="/api")
    _read_routes(router, ctx)
    _write_routes(router, ctx)
    _file_routes(router, ctx)
    return router


def _found(ctx: Context, job_id: str, detail: bool = False) -> Lookup:
    lookup = ctx.lookup(job_id, detail=detail)
    if lookup is None:
        raise HTTPException(404, f"no job {job_id}")
    return lookup


def _read_routes(router: APIRouter, ctx: Context) -> None:
    @router.get("/status", summary="queue, running jobs, recent results and failures, presets, daemons")
    def status() -> dict[str, Any]:
        return ctx.board.report()

    @router.get("/jobs", summary="jobs, newest first")
    def jobs(state: Literal["waiting", "running", "done", "failed"] | None = None,
             limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict[str, Any]:
        states = STATES[state] if state else tuple(JobState)
        records = ctx.reader.by_states(states, limit)
        items = [job_view(r, ctx.files) for r in records]
        if state in (None, "waiting"):
            queue = [{"id": None, "name": q["source"].rsplit("/", 1)[-1], "source": q["source"], "state": "waiting",
                      "reason": q["reason"], "preset": q["preset"]} for q in ctx.board.queue()]
            items = (queue + items)[:limit]
        return {"jobs": items}

    @router.get("/jobs/{job_id}", summary="one job", responses=NOT_FOUND)
    def job(job_id: JobId) -> dict[str, Any]:
        return _found(ctx, job_id, detail=True).view

    @router.get("/presets", summary="the presets a photo can be made with")
    def presets() -> dict[str, Any]:
        return {"presets": ctx.board.presets()}

    @router.get("/events", summary="text/event-stream of job events: start, step, done, failed, waiting",
                response_class=StreamingResponse)
    async def events(request: Request) -> StreamingResponse:
        return StreamingResponse(_until_disconnect(request, ctx), media_type="text/event-stream",
                                 headers={"X-Accel-Buffering": "no"})


def _write_routes(router: APIRouter, ctx: Context) -> None:
    @router.post("/jobs", status_code=201, summary="upload a photo with a preset (name or JSON text)",
                 responses={400: {"description": "a bad preset or not an image"},
                            413: {"description": "above the size cap"}})
    def upload(file: Annotated[UploadFile, File(description="the photo")],
               preset: Annotated[str, Form(max_length=70000, description="a preset name, or a preset JSON text")],
               ) -> dict[str, str]:
        started = time.time()
        try:
            placed = accept_upload(ctx.hot, ctx.config, ctx.board.library(), file.file, file.filename or "",
                                   preset, ctx.settings.max_upload_bytes)
        except Rejected as exc:
            raise HTTPException(exc.status, str(exc)) from None
        except (OSError, ValueError) as exc:
            raise HTTPException(409, f"could not place the upload in the inbox: {exc}") from None
        upload_id = ctx.uploads.add(placed.placed, placed.sha256, started)
        return {"id": upload_id, "source": _inbox_relative(ctx, placed.placed)}

    @router.post("/jobs/{job_id}/retry", status_code=201, summary="a failed job's original back into the inbox",
                 responses={**NOT_FOUND, 409: {"description": "not failed, or its original is gone from failed/"}})
    def retry(job_id: JobId) -> dict[str, str]:
        record = _found(ctx, job_id).record
        if record is None or record.state is not JobState.FAILED:
            raise HTTPException(409, f"job {job_id} has not failed; only a failed job can be retried")
        originals = ctx.files.failed_original(record)
        if originals is None:
            raise HTTPException(409, f"the original of job {job_id} is no longer in failed/ (already retried?)")
        started = time.time()
        try:
            placed = move_back_to_inbox(ctx.hot, *originals)
        except FileNotFoundError:
            raise HTTPException(409, f"the original of job {job_id} was just taken (retried twice?)") from None
        except OSError as exc:
            raise HTTPException(409, f"could not move the original back into the inbox: {exc}") from None
        return {"id": ctx.uploads.add(placed, record.sha256, started), "source": _inbox_relative(ctx, placed)}



def _file_routes(router: APIRouter, ctx: Context) -> None:
    @router.get("/jobs/{job_id}/live", summary="a running job's loss curve so far", responses=NOT_FOUND)
    def live_losses(job_id: JobId) -> dict[str, Any]:
        record = _found(ctx, job_id).record
        return {"losses": live.read_losses(ctx.hot, record.id) if record is not None else []}

    @router.get("/jobs/{job_id}/{which}", summary="a file of the job", response_class=Response,
                responses={**NOT_FOUND, 200: {"content": {"image/jpeg": {}, "text/csv": {}, "application/json": {}}}})
    async def job_file(job_id: JobId, which: FileName, max: Thumb = None) -> Response:
        return await asyncio.to_thread(_file_response, ctx, job_id, which, max)

    @router.get("/presets/{name}/style", summary="a JPEG of the preset's (first) style image",
                response_class=Response, responses={404: {"description": "no such preset or style"}})
    def preset_style(name: Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_-]{1,64}$")],
                     max: Thumb = 256) -> Response:
        from .thumbs import style_thumbnail

        data = style_thumbnail(ctx.board.library(), name, max or 256)
        if data is None:
            raise HTTPException(404, f"no style image for preset {name}")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})


async def _until_disconnect(request: Request, ctx: Context) -> Any:
    async for chunk in ctx.hub.stream():
        if await request.is_disconnected():
            break
        yield chunk


def _file_response(ctx: Context, job_id: str, which: str, max_px: int | None) -> Response:
    lookup = ctx.lookup(job_id)
    if lookup is None or lookup.record is None:
        raise HTTPException(404, f"no job {job_id}, or it has not started")
    try:
        opened = ctx.files.open(lookup.record, which)
    except UnsafePath:
        raise HTTPException(404, f"job {job_id} has no {which}") from None
    suffix = "." + opened.name.rsplit(".", 1)[-1].lower() if "." in opened.name else ""
    media = MEDIA.get(suffix, "application/octet-stream")
    if max_px is not None and media.startswith("image/"):
        data = thumbnail(opened, max_px)
        if data is None:
            raise HTTPException(404, f"the {which} of job {job_id} cannot be decoded")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})
    return _stream(opened, media)


def _stream(opened: OpenedFile, media: str) -> Response:
    disposition = "inline" if media in INLINE else "attachment"
    ascii_name = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in opened.name)
    headers = {"Content-Length": str(opened.size), "Content-Disposition": f'{disposition}; filename="{ascii_name}"',
               "Cache-Control": "private, max-age=60"}
    return StreamingResponse(opened.chunks(), media_type=media, headers=headers)


def _inbox_relative(ctx: Context, path: Any) -> str:
    try:
        return str(path.relative_to(ctx.hot.inbox).as_posix())
    except ValueError:
        return str(path)
