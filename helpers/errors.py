"""The two ways a helper can fail, so tasks know whether trying again can help.

Helpers know nothing of the queue; tasks map `PermanentError` onto a failure that is not retried and
`TemporaryError` onto a retry (after `retry_after` seconds when the cause says how long to wait).
"""
from __future__ import annotations


class HelperError(Exception):
    """Base class of the errors helpers raise on purpose."""


class PermanentError(HelperError):
    """Trying again will fail the same way (bad input, refused by the other side): do not retry."""


class TemporaryError(HelperError):
    """The cause may go away (timeout, connection refused, 429, 5xx): retry, after `retry_after` if known."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TimeLimitExceeded(PermanentError):
    """A computation ran past its time limit; running it again with the same limit would stop again."""
