"""The Celery application both sides build: JSON only, late acks, prefetch 1.

A broker message must never run code: pickle is refused both ways (``accept_content``
is JSON alone). ``acks_late``: a message is acknowledged after its job, so a worker
killed mid-job leaves it unacknowledged for Celery to redeliver; which delivery really
runs is decided by the lease (``protocol``), not by Celery, and Celery's
``reject_on_worker_lost`` loop is off: the coordinator counts worker deaths itself.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from .protocol import TASK_NAME

__all__ = ["make_app"]


def make_app(broker: str, *, visibility_timeout_s: float) -> Any:
    app = Celery("stylefold", broker=broker, set_as_current=False)
    app.conf.update(
        task_serializer="json", result_serializer="json", accept_content=["json"],
        event_serializer="json", result_accept_content=["json"],
        task_acks_late=True, task_reject_on_worker_lost=False, task_ignore_result=True,
        worker_prefetch_multiplier=1, worker_concurrency=1, worker_pool="solo",
        worker_hijack_root_logger=False, worker_redirect_stdouts=False,
        worker_send_task_events=False, task_send_sent_event=False,
        worker_enable_remote_control=False, worker_disable_rate_limits=True,
        broker_connection_retry_on_startup=True, broker_connection_max_retries=None,
        broker_transport_options={
            "visibility_timeout": visibility_timeout_s,
            # kombu sweeps unacknowledged messages every interval x throttle seconds (100
            # by default); a short visibility timeout gets short sweeps to match.
            "unacked_restore_interval": max(1.0, min(10.0, visibility_timeout_s / 2)),
            "unacked_restore_throttle": max(1, min(10, int(visibility_timeout_s // 10))),
        },
        task_default_queue="stylefold.default", task_create_missing_queues=True,
        task_routes={TASK_NAME: {"queue": "stylefold.default"}},
    )
    return app
