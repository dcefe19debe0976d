"""Background jobs, handed over only once the transaction that asked for them commits.

Code that needs work done after its transaction (charging a card, sending a
message) calls ``defer(name, *args)``. Nothing happens if the transaction rolls
back. After the commit the job is dispatched: on the embedded default it runs
in-process at the end of the web request (or when ``drain()`` is called by a
command); with ``JOBS_EAGER`` off it goes to the Celery workers
(``portal.tasks.run_job``).

Each job must be idempotent: it reads the state it acts on and does nothing when
that work is already done, so running it twice is harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

TASKS: dict[str, Callable[..., Any]] = {}
_SESSION_KEY = "billfold_deferred_jobs"
_queue: ContextVar[list[tuple[str, tuple]] | None] = ContextVar("billfold_job_queue",
                                                                 default=None)


def task(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a function as the job ``name``."""
    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        TASKS[name] = func
        return func
    return register


def defer(name: str, *args: Any) -> None:
    """Run job ``name`` with ``args`` once the current transaction commits."""
    if name not in TASKS:
        raise KeyError(f"unknown job {name!r}")
    from portal.extensions import db

    db.session().info.setdefault(_SESSION_KEY, []).append((name, args))


def _pending() -> list[tuple[str, tuple]]:
    queue = _queue.get()
    if queue is None:
        queue = []
        _queue.set(queue)
    return queue


@event.listens_for(Session, "after_commit")
def _dispatch_committed(session: Session) -> None:
    jobs = session.info.pop(_SESSION_KEY, None)
    if not jobs:
        return
    from flask import current_app, has_app_context

    if has_app_context() and not current_app.config.get("JOBS_EAGER", True):
        from portal.tasks import run_job

        for name, args in jobs:
            run_job.delay(name, *args)  # to the workers, through the broker
        return
    # A job already waiting with the same arguments runs after this commit anyway and
    # sees what it wrote: once is enough (an evaluation per ingested batch, say).
    queue = _pending()
    for job in jobs:
        if job not in queue:
            queue.append(job)


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    session.info.pop(_SESSION_KEY, None)


def pending() -> list[tuple[str, tuple]]:
    """Jobs committed but not run yet (in this context)."""
    return list(_pending())


def drain() -> int:
    """Run the committed jobs, including any they defer in turn; returns how many ran.
    A failing job is logged and does not stop the others: each job records its own
    failure where its caller can see it."""
    from portal import observability
    from portal.extensions import db

    ran = 0
    queue = _pending()
    while queue:
        name, args = queue.pop(0)
        try:
            observability.run_observed(name, TASKS[name], *args)
        except Exception:
            log.exception("job %s%r failed", name, args)
            db.session.rollback()
        ran += 1
    return ran


def init_jobs(app) -> None:
    """Run the request's committed jobs once its response is ready."""
    @app.after_request
    def _run_jobs(response):
        if app.config.get("JOBS_EAGER", True):
            drain()
        return response
