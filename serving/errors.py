"""Errors the service turns into HTTP responses: each class carries its status code.

Every class is a :class:`ptycho_torch.errors.PtychoError`, so in-process callers catch one base
class; the FastAPI app maps them to ``{"error": message}`` with ``status_code`` in one handler.
"""

from __future__ import annotations

from ptycho_torch.errors import InvalidInput, PtychoError

__all__ = [
    "ServingError",
    "InvalidRequest",
    "ModelNotFound",
    "SessionNotFound",
    "Unauthorized",
    "RequestTooLarge",
    "Overloaded",
    "Forbidden",
    "RequestTimeout",
    "UnsupportedEncoding",
    "ClientGone",
]


class ServingError(PtychoError):
    """A request the service refuses; ``status_code`` is the HTTP status it maps to."""

    status_code = 400

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code}, message={self.message!r})"


class InvalidRequest(ServingError, InvalidInput):
    """The request cannot be decoded, or its tensors have the wrong names, dtypes or shapes (400)."""

    status_code = 400


class ModelNotFound(ServingError, LookupError):
    """No model with that name or version is served here (404)."""

    status_code = 404


class SessionNotFound(ServingError, LookupError):
    """No open live session has that id (never created, deleted, or expired) (404)."""

    status_code = 404


class Unauthorized(ServingError):
    """A bearer token is required and was missing or wrong (401)."""

    status_code = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class RequestTooLarge(ServingError):
    """The request body is over the server's size limit (413)."""

    status_code = 413


class Overloaded(ServingError):
    """The batcher queue is full; retry after ``retry_after_s`` seconds (503)."""

    status_code = 503

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})
        self.retry_after_s = retry_after_s


class Forbidden(ServingError):
    """The client may not use this server: a remote address without a token, or a foreign Host header (403)."""

    status_code = 403


class RequestTimeout(ServingError):
    """The request body did not arrive within the read timeouts (408)."""

    status_code = 408


class UnsupportedEncoding(ServingError):
    """The body's ``Content-Encoding`` is not one the server decodes (415)."""

    status_code = 415


class ClientGone(ServingError):
    """The client closed the connection before the answer was ready; its work is cancelled (499, nginx's
    "client closed request": logged and counted, never sent)."""

    status_code = 499
