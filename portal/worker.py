"""The Celery entry point: ``celery -A portal.worker:celery worker`` (or ``beat``)."""

from portal import create_app
from portal.tasks import celery

app = create_app()

__all__ = ["app", "celery"]
