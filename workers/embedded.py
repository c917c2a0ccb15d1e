"""A real Celery worker (with its beat) inside the calling process, for the embedded default.

Not eager mode: tasks go through the broker folder, retries and the dispatcher run as they
would on a separate worker.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from celery.worker import WorkController
from celery.worker import state as worker_state

from workers.app import app


@contextmanager
def running_worker(*, beat: bool = True, concurrency: int = 1) -> Iterator[WorkController]:
    """Start a worker thread; stop it (after its current task) on leaving the block."""
    worker = app.WorkController(
        concurrency=concurrency,
        pool="solo" if concurrency == 1 else "threads",
        hostname="outreach-embedded@localhost",
        beat=beat,
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        loglevel="WARNING",
    )
    thread = threading.Thread(target=worker.start, name="outreach-worker", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker_state.should_terminate = 0
        thread.join(30)
        worker_state.should_terminate = None
