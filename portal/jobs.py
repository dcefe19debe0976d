"""Background jobs, handed over only once the transaction that asked for them commits.

Code that needs work done after its transaction (charging a card, sending a
message) calls ``defer(name, *args)``. Nothing happens if the transaction rolls
back. After the commit the job is dispatched: on the embedded default it runs
in-process at the end of the web request (or when ``drain()`` is called by a
command); with ``JOBS_EAGER`` off it goes to the Celery workers
(``portal.tasks.run_job``).

Each job must be idempotent: it reads the state it acts on and does nothing when
that work is already done, so running it twice is harmless.

A job registered with ``coalesce=n`` (an evaluation that reads everything written
so far, such as the budget-alert check after each ingested batch) goes to the
workers at most once per ``n`` seconds for the same arguments: the first commit
sets a Redis key that expires after ``n`` seconds and sends the job to run once it
has expired; a commit that finds the key set sends nothing, because it committed
before that run starts and the run reads what it wrote. Without a Redis broker, or
when Redis cannot be asked, every commit sends its job.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

TASKS: dict[str, Callable[..., Any]] = {}
COALESCE: dict[str, int] = {}  # job name: seconds over which its runs are merged
_SESSION_KEY = "billfold_deferred_jobs"
_queue: ContextVar[list[tuple[str, tuple]] | None] = ContextVar("billfold_job_queue",
                                                                 default=None)


def task(name: str, *, coalesce: int = 0) -> Callable[[Callable[..., Any]],
                                                       Callable[..., Any]]:
    """Register a function as the job ``name``; with ``coalesce`` the runs asked for
    within that many seconds are one run, at the end of them (see above)."""
    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        TASKS[name] = func
        if coalesce:
            COALESCE[name] = coalesce
        else:
            COALESCE.pop(name, None)
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

        broker = current_app.config.get("CELERY_BROKER_URL")
        for name, args in jobs:  # to the workers, through the broker
            seconds = COALESCE.get(name)
            if not seconds:
                run_job.delay(name, *args)
            elif _opens_window(broker, name, args, seconds):
                # One second more than the key lives: the run starts after it expired.
                run_job.apply_async((name, *args), countdown=seconds + 1)
        return
    # A job already waiting with the same arguments runs after this commit anyway and
    # sees what it wrote: once is enough (an evaluation per ingested batch, say).
    queue = _pending()
    for job in jobs:
        if job not in queue:
            queue.append(job)


_redis_clients: dict[str, Any] = {}


def _opens_window(broker: str | None, name: str, args: tuple, seconds: int) -> bool:
    """Whether this commit starts a coalescing window of job ``name`` with ``args``
    (and must send the job): true unless a window is open in Redis already."""
    if not broker or not broker.startswith(("redis://", "rediss://", "unix://")):
        return True
    try:
        import redis

        client = _redis_clients.get(broker)
        if client is None:
            client = _redis_clients[broker] = redis.Redis.from_url(
                broker, socket_timeout=2, socket_connect_timeout=2)
        key = "billfold:job-window:" + json.dumps([name, *args], default=str)
        return bool(client.set(key, b"1", nx=True, ex=seconds))
    except Exception:
        log.warning("job %s%r: Redis did not answer, so it is sent without coalescing",
                    name, args, exc_info=True)
        return True


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
