"""The Billfold Celery app for a test worker that stops dead at one point of a task,
so a test can kill it there: ``celery -A tests.stalling_worker:celery worker``.

``BILLFOLD_TEST_STALL`` names the point as ``module:attribute.path:before`` or
``...:after`` (before the function is called, or once it has returned), and
``BILLFOLD_TEST_STALL_MARK`` a file. The first call at that point creates the file
and then waits forever; later calls (in a worker that has already stalled, there
are none) go through.
"""

from __future__ import annotations

import functools
import importlib
import os
import time
from pathlib import Path

from portal.worker import app, celery

__all__ = ["app", "celery"]


def _stall(mark: Path) -> None:
    mark.write_text(str(os.getpid()))
    while True:
        time.sleep(60)


def _install(spec: str, mark: Path) -> None:
    module_name, path, when = spec.split(":")
    owner = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    original = getattr(owner, name)

    @functools.wraps(original)
    def stalling(*args, **kwargs):
        if mark.exists():
            return original(*args, **kwargs)
        if when == "before":
            _stall(mark)
        result = original(*args, **kwargs)
        _stall(mark)
        return result

    setattr(owner, name, stalling)


_install(os.environ["BILLFOLD_TEST_STALL"], Path(os.environ["BILLFOLD_TEST_STALL_MARK"]))
