"""The job ledger's tables. State changes to them are written by `app.ledger` only."""
from __future__ import annotations

import peewee

from app.db import database
from app.states import FINISHED, STATES, WAITING  # noqa: F401  (re-exported: the models' vocabulary)


class BaseModel(peewee.Model):
    class Meta:
        database = database


class Job(BaseModel):
    """One accepted job: what to run, its current state and attempt, and how its last attempt ended."""
    id = peewee.CharField(primary_key=True, max_length=36)
    task = peewee.CharField(max_length=200)
    kwargs = peewee.TextField(default="{}")           # JSON object of arguments
    state = peewee.CharField(max_length=16)
    attempt = peewee.IntegerField(default=1)           # the attempt now queued or running
    retries_left = peewee.IntegerField(default=0)
    retry_delay = peewee.FloatField(default=0)
    priority = peewee.IntegerField(default=0)
    timeout = peewee.FloatField(null=True)
    eta = peewee.DateTimeField(null=True)              # not to run before (UTC)
    key = peewee.CharField(max_length=255, null=True)  # idempotency key, unique (job_by_key below)
    created_at = peewee.DateTimeField()
    updated_at = peewee.DateTimeField()
    started_at = peewee.DateTimeField(null=True)
    finished_at = peewee.DateTimeField(null=True)
    duration = peewee.FloatField(null=True)
    worker = peewee.CharField(max_length=200, null=True)
    lease_expires_at = peewee.DateTimeField(null=True)
    lease_losses = peewee.IntegerField(default=0)
    result = peewee.TextField(null=True)               # JSON summary of the return value
    error = peewee.TextField(null=True)
    traceback = peewee.TextField(null=True)
    reason = peewee.TextField(null=True)               # why it is dead, canceled or was recovered
    progress = peewee.TextField(null=True)             # JSON {"done", "total", "note"}
    raw = peewee.TextField(null=True)                  # size-capped preview of a poison message
    # The queue (NIGHTSHIFT_QUEUE) whose service owns the job: recovery and the per-queue commands act on their
    # own queue's jobs only. Every write names it (app.ledger); NULL only for rows written before the column
    # existed (see app.schema).
    queue = peewee.CharField(max_length=200, null=True)

    class Meta:
        table_name = "nightshift_job"
        # Every index is paid for by every submit, claim and outcome (a claim rewrites the entry of each index
        # that holds `state`), so each one here serves a read that would otherwise scan. app.schema drops the
        # ones an older version made and this one replaced (schema.OBSOLETE_INDEXES).
        # `list`: the newest jobs of a queue (and state) in index order, never a sort of the whole queue.
        # Recovery reads a queue's waiting and running jobs by its (queue, state) prefix too: it reads all of them
        # each pass anyway, and running jobs are few (what the workers hold); it pages the waiting ones by
        # (created_at, id) keys, which `id` here lets it seek to, however many jobs share a created_at.
        indexes = ((("queue", "state", "created_at", "id"), False),
                   # Newest-first job lists paged by (created_at, id) keys (the console, app.web.queries): one
                   # ordered index for all jobs and one per filter that is usually selective, so a page reads
                   # about as many index entries as it shows, however many millions of rows the ledger holds.
                   (("created_at", "id"), False),
                   (("state", "created_at", "id"), False),
                   (("task", "created_at", "id"), False))


# Partial indexes, of the rows that have the column set: a job is written without an entry in one that leaves
# it out. Every read by such a column compares it, which no row without it can match, so each such read can use
# them. The idempotency key: most jobs have none (job_by_key replaced the field's unique index, job_key).
Job.add_index(Job.index(Job.key, unique=True, name="job_by_key", where=Job.key.is_null(False)))
# Finished jobs only: a submit and a claim write no entry in either, an outcome one.
# Cleanup takes the oldest finished jobs of a state by the first (it replaced (state, task) in issue 16); the
# throughput and recent-window figures (app.status, the console) range over the second.
_finished_only = Job.finished_at.is_null(False)
Job.add_index(Job.index(Job.state, Job.finished_at, name="job_finished_by_state", where=_finished_only))
Job.add_index(Job.index(Job.finished_at, name="job_finished_by_time", where=_finished_only))


class Attempt(BaseModel):
    """One run of a job by one worker: the job's history."""
    job_id = peewee.CharField(max_length=36)
    number = peewee.IntegerField()
    worker = peewee.CharField(max_length=200)
    started_at = peewee.DateTimeField()
    finished_at = peewee.DateTimeField(null=True)
    duration = peewee.FloatField(null=True)
    # succeeded, failed, canceled, interrupted, lease-lost, unrecorded (the ledger refused the outcome's write)
    outcome = peewee.CharField(max_length=16, null=True)
    error = peewee.TextField(null=True)

    class Meta:
        table_name = "nightshift_attempt"
        primary_key = peewee.CompositeKey("job_id", "number")


class WorkerBeat(BaseModel):
    """A consumer process's last heartbeat."""
    id = peewee.CharField(primary_key=True, max_length=200)
    host = peewee.CharField(max_length=200)
    pid = peewee.IntegerField()
    queue = peewee.CharField(max_length=200)
    started_at = peewee.DateTimeField()
    last_seen = peewee.DateTimeField()
    stopped_at = peewee.DateTimeField(null=True)
    stop_reason = peewee.CharField(max_length=16, null=True)  # stopped, recycled
    rss_bytes = peewee.BigIntegerField(default=0)
    jobs_done = peewee.IntegerField(default=0)
    current = peewee.TextField(default="[]")          # JSON list of {"id", "task", "since"}

    class Meta:
        table_name = "nightshift_worker"


class QueueState(BaseModel):
    """A queue's operator state that must outlive consumers and Redis: paused or not."""
    name = peewee.CharField(primary_key=True, max_length=200)
    paused = peewee.BooleanField(default=False)
    changed_at = peewee.DateTimeField()
    changed_by = peewee.CharField(max_length=200, default="")

    class Meta:
        table_name = "nightshift_queue"


class Action(BaseModel):
    """One operator action (retry, cancel, discard, pause, resume, run now...), whoever took it and from where:
    the ledger's audit trail. Written through app.ledger.record_action only."""
    id = peewee.AutoField()
    at = peewee.DateTimeField(index=True)
    action = peewee.CharField(max_length=32)
    target = peewee.CharField(max_length=255)         # a job id, a queue name or a task name
    who = peewee.CharField(max_length=200)            # user@host (CLI) or "web from ADDRESS" (console)
    detail = peewee.TextField(default="")             # the outcome, or why it was refused

    class Meta:
        table_name = "nightshift_action"
        indexes = ((("target", "at"), False),)


ALL = [Job, Attempt, WorkerBeat, QueueState, Action]
