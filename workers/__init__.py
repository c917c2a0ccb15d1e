"""Celery workers for outreach: thin adapters that call `outreach.*`.

Run with `celery -A workers worker` (and `celery -A workers beat`).
"""

from workers.app import app

__all__ = ["app"]
