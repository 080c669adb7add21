"""Typed exceptions of the pdserve client SDK.

Every exception carries the server's message (`message`), the gRPC status name (`code`) and, for
`QuotaExceeded`, the server's retry hint (`retry_after_s`). Catch `PdserveError` for all of them:

    from pdserve import Client, InvalidRequest, QuotaExceeded

    try:
        answer = Client("127.0.0.1:50051").generate("Hello", max_tokens=0)
    except InvalidRequest as exc:
        print("fix the request:", exc.message)
    except QuotaExceeded as exc:
        print("retry in", exc.retry_after_s, "s")

Imports only grpc (for the status codes).
"""

from __future__ import annotations

import grpc

RETRY_AFTER_KEY = "retry-after-s"
_TOO_LARGE = "Received message larger than max"  # grpc core's wording for a message over the limit


class PdserveError(Exception):
    """Base of every SDK error."""

    code = "UNKNOWN"

    def __init__(self, message: str, *, code: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or type(self).code
        self.retry_after_s = retry_after_s


class InvalidRequest(PdserveError):
    """The server refused the request as wrong (empty prompt, bad sampling value, too long): fix and resend."""

    code = "INVALID_ARGUMENT"


class QuotaExceeded(PdserveError):
    """A quota or the server's concurrency limit is exhausted: retry after `retry_after_s` seconds."""

    code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(PdserveError):
    """The call's timeout or deadline passed."""

    code = "DEADLINE_EXCEEDED"


class Unavailable(PdserveError):
    """The server cannot be reached or has no worker ready (retried before the first token)."""

    code = "UNAVAILABLE"


class Unauthenticated(PdserveError):
    """The server wants a valid API key (`api_key=`)."""

    code = "UNAUTHENTICATED"


class PermissionDenied(PdserveError):
    """The API key may not do this (for example cancel another tenant's request)."""

    code = "PERMISSION_DENIED"


class NotFound(PdserveError):
    """The named model or object does not exist on the server."""

    code = "NOT_FOUND"


class ServerError(PdserveError):
    """The server failed (an internal error, or the generation ended with finish reason `error`)."""

    code = "INTERNAL"


_BY_CODE = {cls.code: cls for cls in (InvalidRequest, QuotaExceeded, DeadlineExceeded, Unavailable,
                                      Unauthenticated, PermissionDenied, NotFound)}
_BY_CODE["CANCELLED"] = Unavailable  # the channel or server went away mid-call
_BY_CODE["FAILED_PRECONDITION"] = InvalidRequest
_BY_CODE["OUT_OF_RANGE"] = InvalidRequest


def from_rpc_error(error: grpc.RpcError) -> PdserveError:
    """The typed exception for a failed gRPC call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`)."""
    status = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    name = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
    message = (error.details() if callable(getattr(error, "details", None)) else None) or name.lower()
    if name == "RESOURCE_EXHAUSTED" and _TOO_LARGE in message:
        # gRPC itself refused the message as over the server's max_request_bytes: no quota, no retry.
        return InvalidRequest(f"the request is larger than the server accepts ({message.removeprefix('SERVER: ')}): "
                              f"send a shorter prompt", code=name)
    return _BY_CODE.get(name, ServerError)(message, code=name, retry_after_s=_retry_after(error))


def _retry_after(error: grpc.RpcError) -> float | None:
    trailing = error.trailing_metadata() if callable(getattr(error, "trailing_metadata", None)) else None
    for key, value in trailing or ():
        if key == RETRY_AFTER_KEY:
            try:
                return float(value)
            except ValueError:
                return None
    return None
