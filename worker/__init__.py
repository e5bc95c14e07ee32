"""The worker package: `celery -A worker worker` finds `worker.app`."""

from .app import app

__all__ = ["app"]
