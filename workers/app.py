"""The Celery app, configured from outreach's settings.

With OUTREACH_BROKER_URL (e.g. redis://...) tasks go to that broker and `celery -A workers worker`
processes run them. Without it, the broker is a folder under OUTREACH_HOME (kombu's filesystem
transport): no server to run, yet a real broker that the `outreach` process's own worker, or any
other worker process on this machine, consumes.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.concurrency import get_implementation
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.signals import worker_init, worker_process_init
from sqlalchemy.exc import SQLAlchemyError

from outreach import db, pdf, salutations
from outreach.config import Settings, get_settings
from outreach.models import Base

log = logging.getLogger("outreach.workers")


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery's settings, derived from ours: one place, read by workers, beat and the CLI."""
    conf: dict[str, Any] = {
        # The database is the truth; the broker only carries "send deliveries 3, 4, 5".
        "task_ignore_result": True,
        "task_acks_late": True,  # a worker that dies mid-task leaves its message to another
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,  # no worker sits on messages it is not working on
        "worker_concurrency": settings.worker_concurrency,
        "broker_connection_retry_on_startup": True,
        # Redis lost: let a running batch finish (its rows say what it did; a redelivered copy
        # finds them no longer `queued`) rather than kill it inside an uncertain window, which
        # would leave `unknown` letters. Pinned: Celery 6 turns this on by default.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_serializer": "json",
        "accept_content": ["json"],
        "beat_schedule": {
            "dispatch": {"task": "outreach.dispatch", "schedule": settings.dispatch_seconds},
            "poll-inbox": {"task": "outreach.poll_inbox", "schedule": settings.inbox_poll_seconds},
        },
        "imports": ["workers.tasks"],
    }
    if settings.embedded_broker:
        folder = settings.broker_folder
        for sub in ("queue", "processed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        conf["broker_url"] = "filesystem://localhost//"
        conf["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
        }
        conf["broker_polling_interval"] = 0.2
        conf["beat_schedule_filename"] = str(folder / "beat-schedule")
    else:
        conf["broker_url"] = settings.broker_url
        # Where kombu's Redis transport reads it: unacknowledged messages come back after this.
        conf["broker_transport_options"] = {"visibility_timeout": settings.visibility_timeout}
    return conf


def make_app(settings: Settings) -> Celery:
    app = Celery("outreach")
    app.conf.update(celery_config(settings))
    return app


app = make_app(get_settings())


@worker_init.connect
def _load_shared_data(sender: Any, **_: Any) -> None:
    """In the worker's parent, before its pool forks: what each pool process would otherwise
    do for itself in its first task (Babel's data and SQLAlchemy's configuration of the
    mappers, 10 to 15 ms of CPU each a process) or its first PDF letter (WeasyPrint). Only
    for a pool that forks: the embedded worker (solo, threads) shares nothing by it, and
    would import WeasyPrint (0.3 s) for a campaign with no letter to lay out."""
    if not issubclass(get_implementation(sender.pool_cls), PreforkPool):
        return
    salutations.load_locales()
    Base.registry.configure()
    pdf.load_renderer()


@worker_process_init.connect
def _connect(**_: Any) -> None:
    """In each pool process as it starts: its database connection, opened and kept in its pool
    before the first task, which otherwise waited for it (the engine's and the driver's set-up,
    about 10 ms of CPU, and on PostgreSQL the start of a server process). A database that
    cannot be reached is reported now, as a warning: the tasks report it again, and the worker
    stays up until it can be reached."""
    url = get_settings().effective_database_url
    try:
        db.get_engine(url).connect().close()
    except SQLAlchemyError as exc:
        why = getattr(exc, "orig", None) or exc  # the driver's words, without SQLAlchemy's link
        log.warning("cannot reach the database %s yet: %s", db.redact(url), why)
