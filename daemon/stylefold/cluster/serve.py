"""``stylefold serve --broker``: the hot-folder daemon with its jobs on the workers.

The service handles one job at a time, and a remote job mostly waits; so the daemon runs
``[cluster] slots`` lanes, each a ``Service`` with its own ``RemoteRunner`` and journal
connection, on the same hot folder. Claims (an atomic rename under a kernel lock) keep
every file to one lane, exactly as they keep it to one of two daemons on one folder.
With ``--local-worker`` one more lane runs jobs in this process with the local worker.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..hotfolder.layout import HotFolder
from .protocol import queue_for, redact

__all__ = ["ClusterDaemon"]

logger = logging.getLogger(__name__)

WORKER_CHECK_S = 30.0


@dataclass
class ClusterDaemon:
    config: Config
    hot: HotFolder
    stop: threading.Event
    weights: str
    resident: Any = None  # with --local-worker: the model of the local lane

    def run(self, once: bool, view_factory: Any, notifier: Any) -> int:
        import redis

        from ..hotfolder.rebuild import open_journal
        from ..hotfolder.service import Service
        from ..hotfolder.worker import Worker
        from .app import make_app
        from .dispatch import Dispatch
        from .remote import RemoteRunner
        from .store import connect, wait_for

        cluster = self.config.cluster
        assert cluster.broker is not None
        client = connect(cluster.broker)
        try:
            wait_for(client, 30.0)
        except redis.RedisError as exc:
            raise OSError(f"cannot reach the broker {redact(cluster.broker)}: {exc}") from exc
        queue = queue_for(self.weights)
        dispatch = Dispatch(client, make_app(cluster.broker, visibility_timeout_s=cluster.visibility_timeout_s),
                            self.weights, queue, self.config.checkpoint_every, cluster.lease_s,
                            cluster.max_transfer_mb << 20)
        logger.info("jobs go to the workers on %s (queue %s, weights %s), %d at a time", redact(cluster.broker),
                    queue, self.weights, cluster.slots)
        runners: list[Any] = [RemoteRunner(self.hot, open_journal(self.hot), None, self.config.checkpoint_every,  # type: ignore[arg-type]
                                           dispatch=dispatch) for _ in range(cluster.slots)]
        if self.resident is not None:
            runners.append(Worker(self.hot, open_journal(self.hot), self.resident, self.config.checkpoint_every))
        wakes = [threading.Event() for _ in runners]
        services = [Service(self.config, self.hot, runner.journal, runner, view=view_factory(i),
                            notifier=notifier if i == 0 else None, stop=self.stop, wake=wake)
                    for i, (runner, wake) in enumerate(zip(runners, wakes, strict=True))]
        return self._run_lanes(services, wakes, once, client)

    def _run_lanes(self, services: list[Any], wakes: list[threading.Event], once: bool, client: Any) -> int:
        codes: list[int] = []
        errors: list[BaseException] = []

        def lane(service: Any) -> None:
            try:
                codes.append(service.run(once=once))
            except BaseException as exc:  # FatalDeviceError of the local lane: the whole daemon ends
                errors.append(exc)
                self.stop.set()

        threads = [threading.Thread(target=lane, args=(s,), name=f"lane-{i}", daemon=True)
                   for i, s in enumerate(services)]
        for thread in threads:
            thread.start()
        checked = 0.0
        import time

        while any(t.is_alive() for t in threads):
            if self.stop.wait(0.5):
                for wake in wakes:
                    wake.set()
            if not once and time.monotonic() - checked > WORKER_CHECK_S:
                checked = time.monotonic()
                self._check_workers(client)
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return max(codes, default=0)

    def _check_workers(self, client: Any) -> None:
        """Say (once per worker) which workers are refused for other weights, and when
        none holds this daemon's."""
        from .registry import list_workers

        try:
            workers = list_workers(client, self.weights)
        except Exception as exc:  # a broker hiccup: looked at again later
            logger.debug("cannot list the workers (%s)", exc)
            return
        said: set[str] = getattr(self, "_said", set())
        for worker in workers:
            key = f"{worker['name']}:{worker.get('weights')}"
            if worker["refused"] and key not in said:
                said.add(key)
                logger.warning("worker %s is refused: its weights %s are not this daemon's (%s); it takes none "
                               "of these jobs", worker["name"], worker.get("weights"), self.weights)
        if not any(not w["refused"] for w in workers) and "none" not in said:
            said.add("none")
            logger.warning("no worker holds this daemon's weights (%s) yet; jobs wait in the queue", self.weights)
        elif any(not w["refused"] for w in workers):
            said.discard("none")
        self._said = said
