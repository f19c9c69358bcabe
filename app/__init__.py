"""Nightshift: a small, reliable background-job service on Huey, Redis and a SQL job ledger.

Task modules use `task` and `periodic_task` (with Huey's `crontab`); producers use `submit` and `submit_many`.
"""
from huey import crontab

from app.catalog import periodic_task, task
from app.ledger import record_progress
from app.producer import submit, submit_many

__all__ = ["crontab", "periodic_task", "record_progress", "submit", "submit_many", "task"]
