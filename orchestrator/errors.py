"""Typed errors of pdserve.

Every error says whose fault it is (`caller`: bad input; `retryable`: try again later; neither: fatal)
and carries a message a user can act on. The API layer converts them at its boundary: gRPC status codes
and HTTP statuses come from `grpc_code` / `http_status`, nowhere else. May import nothing of pdserve.
"""


class PdserveError(Exception):
    """Base of every pdserve error."""

    caller = False
    retryable = False
    grpc_code = "INTERNAL"
    http_status = 500
    openai_type = "server_error"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class ConfigError(PdserveError):
    """The configuration (file, flags or values) is invalid."""

    caller = True
    grpc_code = "INVALID_ARGUMENT"
    http_status = 400
    openai_type = "invalid_request_error"


class InvalidRequest(PdserveError):
    """The request itself is wrong (empty prompt, bad sampling values, too long): fix it and resend."""

    caller = True
    grpc_code = "INVALID_ARGUMENT"
    http_status = 400
    openai_type = "invalid_request_error"


class ModelNotFound(InvalidRequest):
    """The request names a model this cluster does not serve."""

    grpc_code = "NOT_FOUND"
    http_status = 404


class Unauthenticated(PdserveError):
    """No valid API key."""

    caller = True
    grpc_code = "UNAUTHENTICATED"
    http_status = 401
    openai_type = "authentication_error"


class PermissionDenied(PdserveError):
    """The key is valid but may not do this (for example cancel another tenant's request)."""

    caller = True
    grpc_code = "PERMISSION_DENIED"
    http_status = 403
    openai_type = "permission_error"


class QuotaExceeded(PdserveError):
    """A tenant quota or the server's concurrency limit is exhausted: retry after `retry_after_s`."""

    caller = True
    retryable = True
    grpc_code = "RESOURCE_EXHAUSTED"
    http_status = 429
    openai_type = "rate_limit_error"


class BudgetRefused(InvalidRequest):
    """Admission found the request cannot fit its own budget (prompt over max_total_tokens, ...)."""


class DeadlineExceeded(PdserveError):
    """The request's deadline passed before it could produce anything."""

    retryable = True
    grpc_code = "DEADLINE_EXCEEDED"
    http_status = 504
    openai_type = "timeout_error"


class Unavailable(PdserveError):
    """No worker can take the request now (pool empty, starting or draining): retry."""

    retryable = True
    grpc_code = "UNAVAILABLE"
    http_status = 503
    openai_type = "server_error"


class NotFound(PdserveError):
    """The named object (request id, model, worker) does not exist."""

    caller = True
    grpc_code = "NOT_FOUND"
    http_status = 404
    openai_type = "invalid_request_error"


class WorkerFailed(PdserveError):
    """A worker died or its engine failed; the gateway retries or migrates before surfacing this."""

    retryable = True
    grpc_code = "UNAVAILABLE"
    http_status = 503


class KVTransferError(PdserveError):
    """A KV transfer was lost, late or corrupt; the decode side recomputes the prompt."""

    retryable = True


class StartupError(PdserveError):
    """The cluster could not start (busy port, model missing, worker failed to load)."""
