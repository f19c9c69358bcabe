"""Nightshift: a small, reliable background-job service on Huey, Redis and a SQL job ledger.

Task modules use `task` and `periodic_task` (with Huey's `crontab`); producers use `submit` and `submit_many`.
"""
from app.catalog import periodic_task, task
from app.ledger import record_progress
from app.producer import submit, submit_many
from app.schedule import crontab  # Huey's crontab, strict, with its spec kept for `nightshift schedule`

__all__ = ["crontab", "periodic_task", "record_progress", "submit", "submit_many", "task"]
