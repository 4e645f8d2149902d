"""Writing a finished render as the files of SPEC §5 into an outbox and its logs folder.

Separate from running the job: ``stylefold run`` publishes into ``--out``, the hot
folder into ``outbox/`` (after saving the render in the job's folder, so a crash in
between publishes once), and a remote worker publishes nothing at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ..media import outputs
from ..media.outputs import OutputPaths
from .checkpoint import Rendered
from .report import utc_now

__all__ = ["publish"]

logger = logging.getLogger(__name__)


def publish(rendered: Rendered, outbox: Path, logs: Path, *, reserved: OutputPaths | None = None,
            on_reserve: Callable[[OutputPaths], None] | None = None,
            extra_report: dict[str, object] | None = None) -> OutputPaths:
    """Write the result and its logs. ``reserved``: the names a crashed earlier attempt
    already published the image under (its logs are then rewritten, nothing new is
    created); ``on_reserve`` is told each name just before the image is linked to it.
    ``extra_report``: keys added to the report (where the original went, say)."""
    outbox, logs = outbox.absolute(), logs.absolute()
    outbox.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    paths = reserved or outputs.publish_result(
        rendered.image, outbox, logs, rendered.base, rendered.ext, quality=rendered.quality, exif=rendered.exif,
        before_link=on_reserve,
    )
    preview = rendered.report.get("preview")
    if isinstance(preview, str) and preview:
        # The preview was named before the result; should the result have had to take
        # another name (-2), the preview follows it, as the status page looks for it there.
        rendered.report["preview"] = str(outputs.settle_preview(Path(preview), paths.base))
    report = {
        **rendered.report,
        **(extra_report or {}),
        "output": {"path": str(paths.image), "size": list(rendered.image.size), "base": paths.base},
        "logs": {"losses_csv": str(paths.losses_csv), "plot": str(paths.plot),
                 "progress": str(paths.progress) if rendered.snapshots else None},
        "finished_at": utc_now(),
    }
    try:
        outputs.write_logs(paths, rendered.rows, report, rendered.snapshots, rendered.title)
    except Exception as exc:  # a full disk, a plot that cannot be drawn
        # The result is out: failing the job now would move its original to failed/
        # beside a finished picture, and a second drop would make a -2 result.
        logger.error("%s: result written, but its logs could not be (%s)", paths.image.name, exc)
    return paths
