"""A job's states in the ledger (docs/architecture.md has the diagram). Only app.ledger moves a job between them.

`State` is a StrEnum: a member is its own text, as stored in `nightshift_job.state` and shown by the CLI.
"""
from __future__ import annotations

import enum


class State(enum.StrEnum):
    QUEUED = "queued"        # waiting, or scheduled for later (eta)
    RUNNING = "running"      # claimed by a worker under a lease
    RETRYING = "retrying"    # failed, waiting for its next attempt
    SUCCEEDED = "succeeded"
    DEAD = "dead"            # out of retries, refused, or lease lost too often: an operator retries or discards
    CANCELED = "canceled"
    EXPIRED = "expired"      # not started before its `expires`


STATES = tuple(State)
WAITING = (State.QUEUED, State.RETRYING)
FINISHED = (State.SUCCEEDED, State.DEAD, State.CANCELED, State.EXPIRED)
