"""A burst of 100 files across three workers: every file ends exactly once in done/,
one result each, and every worker takes a share (issue 10)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .conftest import write_photo
from .test_cluster_rig import Cluster, needs_redis

pytestmark = needs_redis

FILES = 100


def test_a_burst_of_100_files_over_3_workers_ends_each_file_exactly_once(tmp_path: Path) -> None:
    with Cluster(tmp_path, steps=4, slots=4) as cluster:
        workers = cluster.workers("w1", "w2", "w3")
        cluster.serve()
        staging = tmp_path / "staging"
        staging.mkdir(exist_ok=True)
        originals = {}
        for i in range(FILES):
            path = write_photo(staging / f"p{i:03d}.jpg", width=40, height=32, seed=i)
            originals[path.name] = path.read_bytes()
        for name in originals:
            os.rename(staging / name, cluster.root / "inbox" / name)
        cluster.wait(lambda: cluster.finished(*originals), 240, f"{FILES} originals in done/")
        assert cluster.done() == sorted(originals) and cluster.failed() == []
        assert cluster.outbox() == sorted(f"{n[:-4]}-brushstrokes.jpg" for n in originals)
        for name, data in originals.items():
            assert (cluster.root / "done" / name).read_bytes() == data
        shares = {w.name: len(re.findall(r"executor: done p\d{3}\.jpg", w.text())) for w in workers}
        assert sum(shares.values()) == FILES and all(shares.values()), shares
        assert not list((cluster.root / ".stylefold" / "work").iterdir())
