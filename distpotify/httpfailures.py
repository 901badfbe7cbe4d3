"""How a failure under an HTTP client's request reads. Twisted's Agent, and the lean pool as
it, wraps what went wrong in ResponseNeverReceived, RequestTransmissionFailed or
ResponseFailed, whose text is a list of Failure reprs: ``in_words`` says it in words, and
``cancelled`` tells a cancellation (its caller's, or a timeout's) from a peer's failure.
The replicas' peer client and the proxy's /status polls both read their failures so.
"""
# test-case-name: tests.unit.test_peer_client

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectingCancelledError
from twisted.python.failure import Failure
from twisted.web.client import RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived

# The wrappers, and what each means (the first that fits: ResponseNeverReceived is a
# ResponseFailed).
WRAPPERS = {
    ResponseNeverReceived: "the connection ended before an answer",
    RequestTransmissionFailed: "the request could not be sent",
    ResponseFailed: "the answer was cut short",
}
WRAPPED = (ResponseNeverReceived, RequestTransmissionFailed, ResponseFailed)
CANCELLED = (CancelledError, ConnectingCancelledError)


def cancelled(failure: Failure) -> bool:
    """Whether ``failure`` is a cancellation, as it is or as the HTTP clients wrap it."""
    error = failure.value
    if isinstance(error, CANCELLED):
        return True
    if isinstance(error, WRAPPED):
        return any(reason.check(*CANCELLED) for reason in error.reasons)
    return False


def in_words(failure: Failure) -> str | None:
    """What failed, when the HTTP clients wrapped it: its meaning, then the reasons under
    it ("the connection ended before an answer: Connection was closed cleanly."); None for
    any other failure, whose own message says it."""
    error = failure.value
    if not isinstance(error, WRAPPED):
        return None
    meaning = next(text for kind, text in WRAPPERS.items() if isinstance(error, kind))
    return f"{meaning}: {'; '.join(reason.getErrorMessage() for reason in error.reasons)}"
