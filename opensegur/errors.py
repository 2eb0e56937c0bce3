"""The root of every error the platform raises on purpose, and its one way to say "retry later".

Each layer keeps its own errors, shaped like its protocol (an HL7 ERR location, an XDS code, a French reason);
they all descend from `OpenSegurError`, as python-hl7's from ``HL7Exception``. A peer or a resource that is not
available for now — the DMP, INSi, the MSSanté operator, a PACS, another DRIMbox — raises a `RetryLater`: the
worker queues the job again with backoff instead of treating it as a bug.
"""

from __future__ import annotations

__all__ = ["OpenSegurError", "RetryLater"]


class OpenSegurError(Exception):
    """An error the platform raises on purpose."""


class RetryLater(OpenSegurError):
    """The same work may succeed later: a peer is down, busy or slow, or a resource is not there yet.

    ``outage`` says the peer did not answer or said it was unavailable (timeout, refused connection, HTTP 5xx,
    408, 429): the work itself is intact and only time will tell. Such a failure does not spend the job's
    attempts; the job waits the outage out, backoff capped, up to ``job_outage_max_s`` after it was queued.
    A day-long DMP outage must leave its documents waiting, not dead letters for a person to retry one by one.
    """

    def __init__(self, message: str = "", *, outage: bool = False) -> None:
        super().__init__(message)
        self.outage = outage
