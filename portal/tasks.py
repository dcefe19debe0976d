"""Celery tasks and the beat schedule of the periodic jobs.

The broker is ``CELERY_BROKER_URL`` (Redis in production). Without one, tasks run
in-process at once (``task_always_eager``), so the embedded default needs no Redis.
Every task is idempotent, and a task is acknowledged only once it has finished
(``acks_late``): a worker that dies mid-task leaves it to be run again, which then
finds the work done (one invoice per tenant and period, ledger refs, stored PDFs,
one idempotency key per card charge). On Redis the message of a task whose worker
was killed outright goes back to the queue ``CELERY_VISIBILITY_TIMEOUT`` seconds
after it was taken.

    celery -A portal.worker:celery worker   # the jobs
    celery -A portal.worker:celery beat     # the schedule below
"""

from __future__ import annotations

from celery import Celery, Task
from celery.schedules import crontab
from flask import Flask, has_app_context
from sqlalchemy.exc import InterfaceError, OperationalError


class AppContextTask(Task):
    """Runs in the caller's app context, or in the worker's app."""

    def __call__(self, *args, **kwargs):
        if has_app_context():
            return self.run(*args, **kwargs)
        with self.app.flask_app.app_context():
            return self.run(*args, **kwargs)


celery = Celery("billfold", task_cls=AppContextTask)

# Periods end at midnight in each tenant's time zone, so the daily jobs run hourly
# and act on whatever has ended; running again finds nothing left to do.
BEAT_SCHEDULE = {
    "close-periods": {"task": "billfold.close_periods", "schedule": crontab(minute=5)},
    "charge-usage": {"task": "billfold.charge_usage", "schedule": crontab(minute=10)},
    "mark-overdue": {"task": "billfold.mark_overdue", "schedule": crontab(minute=15)},
    # Each tenant's days before its today added up by month, soon after its midnight.
    "compact-usage": {"task": "billfold.compact_usage", "schedule": crontab(minute=2)},
    "auto-recharge-sweep": {"task": "billfold.auto_recharge_sweep",
                            "schedule": crontab()},
    # Usage is evaluated as it arrives; the schedule catches what else moves a rule
    # (the balance, the base fee, a plan change) and the first day of a period.
    "evaluate-alerts": {"task": "billfold.evaluate_alerts", "schedule": crontab(minute="*/15")},
    "retry-notifications": {"task": "billfold.retry_notifications", "schedule": crontab()},
}


def init_celery(app: Flask) -> Celery:
    """Configure the Celery app from the Flask app; tasks run in its app context."""
    broker = app.config.get("CELERY_BROKER_URL")
    celery.flask_app = app
    celery.conf.update(
        broker_url=broker or "memory://",
        result_backend=app.config.get("CELERY_RESULT_BACKEND") or broker,
        task_always_eager=not broker,
        task_eager_propagates=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_retry_delay=30,
        beat_schedule=BEAT_SCHEDULE,
        timezone="UTC",
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": int(app.config.get("CELERY_VISIBILITY_TIMEOUT") or 3600)},
    )
    app.extensions["celery"] = celery
    return celery


# Transient failures (the database or a network peer away) are retried with backoff;
# a bad argument is not.
RETRY = {"autoretry_for": (OperationalError, InterfaceError, OSError), "retry_backoff": True,
         "max_retries": 5}


@celery.task(name="billfold.close_periods")
def close_periods() -> int:
    """Fan out one task per active tenant: each closes that tenant's ended periods."""
    from sqlalchemy import select

    from portal.extensions import db
    from tenants.models import Tenant, TenantStatus
    from tenants.scoping import unscoped

    with unscoped():
        slugs = list(db.session.scalars(select(Tenant.slug).where(
            Tenant.status == TenantStatus.ACTIVE).order_by(Tenant.slug)))
    for slug in slugs:
        close_tenant.delay(slug)
    return len(slugs)


@celery.task(name="billfold.close_tenant", **RETRY)
def close_tenant(slug: str) -> list[str]:
    from invoices.invoicing import close_due
    from portal import jobs

    results = close_due(tenant_slug=slug)
    jobs.drain()
    return [r.number for r in results]


@celery.task(name="billfold.charge_usage", **RETRY)
def charge_usage() -> dict:
    from invoices.usage_charges import run_all
    from portal import jobs

    outcome = run_all()
    jobs.drain()
    return outcome


@celery.task(name="billfold.mark_overdue", **RETRY)
def mark_overdue() -> int:
    from invoices.invoicing import mark_overdue as mark

    return mark()


@celery.task(name="billfold.compact_usage", **RETRY)
def compact_usage() -> int:
    from plans.metering import compact_usage as compact

    return compact()


@celery.task(name="billfold.auto_recharge_sweep", **RETRY)
def auto_recharge_sweep() -> dict:
    from invoices.auto_recharge import sweep
    from portal import jobs

    outcome = sweep()
    jobs.drain()
    return outcome


@celery.task(name="billfold.evaluate_alerts")
def evaluate_alerts() -> int:
    """Fan out one evaluation per active tenant."""
    from sqlalchemy import select

    from plans.alerts import EVALUATE_JOB
    from portal.extensions import db
    from tenants.models import Tenant, TenantStatus
    from tenants.scoping import unscoped

    with unscoped():
        ids = list(db.session.scalars(select(Tenant.id).where(
            Tenant.status == TenantStatus.ACTIVE).order_by(Tenant.id)))
    for tenant_id in ids:
        run_job.delay(EVALUATE_JOB, tenant_id)
    return len(ids)


@celery.task(name="billfold.retry_notifications", **RETRY)
def retry_notifications() -> dict:
    """Send the email and SMS deliveries that are due (retries, stale claims)."""
    from portal.notifications import retry_due

    return retry_due()


@celery.task(name="billfold.run_job", **RETRY)
def run_job(name: str, *args) -> None:
    """A job deferred by ``portal.jobs`` (a card charge, a PDF, a notice)."""
    from portal import jobs

    jobs.TASKS[name](*args)
    jobs.drain()
