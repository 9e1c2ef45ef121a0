"""Errors the service turns into HTTP responses, and the one error-to-status table.

Every class is a :class:`ptycho_torch.errors.PtychoError`, so in-process callers catch one base
class. :data:`STATUS` maps exception classes to HTTP statuses; :func:`status_of` looks an error up
along its class hierarchy (so a core ``InvalidInput`` is 400 and ``InvalidValues`` 422 without the
core knowing HTTP), the app answers ``{"error": message}`` with that status in one handler, and the
client turns a status back into the first class listed for it (:func:`error_for_status`).
"""

from __future__ import annotations

from typing import Final

from ptycho_torch.errors import ConfigError, DataContractError, InvalidInput, InvalidValues, PtychoError

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
    "ServerError",
    "Unavailable",
    "DeadlineExceeded",
    "STATUS",
    "status_of",
    "error_for_status",
]


class ServingError(PtychoError):
    """A request the service refuses; :attr:`status_code` is its HTTP status (from :data:`STATUS`)."""

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    @property
    def status_code(self) -> int:
        return status_of(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code}, message={self.message!r})"


class InvalidRequest(ServingError, InvalidInput):
    """The request cannot be decoded, or its tensors have the wrong names, dtypes or shapes (400)."""



class ModelNotFound(ServingError, LookupError):
    """No model with that name or version is served here (404)."""



class SessionNotFound(ServingError, LookupError):
    """No open live session has that id (never created, deleted, or expired) (404)."""



class Unauthorized(ServingError):
    """A bearer token is required and was missing or wrong (401)."""


    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class RequestTooLarge(ServingError):
    """The request body is over the server's size limit (413)."""



class Unavailable(ServingError):
    """The service cannot take work now: it is shutting down or reloading (503)."""


class Overloaded(Unavailable):
    """The batcher queue is full; retry after ``retry_after_s`` seconds (503)."""


    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})
        self.retry_after_s = retry_after_s


class Forbidden(ServingError):
    """The client may not use this server: a remote address without a token, or a foreign Host header (403)."""



class RequestTimeout(ServingError):
    """The request body did not arrive within the read timeouts (408)."""



class UnsupportedEncoding(ServingError):
    """The body's ``Content-Encoding`` is not one the server decodes (415)."""



class ClientGone(ServingError):
    """The client closed the connection before the answer was ready; its work is cancelled (499, nginx's
    "client closed request": logged and counted, never sent)."""


class DeadlineExceeded(ServingError):
    """A request waited in the inference queue past the server's deadline and was not run (504)."""


class ServerError(ServingError):
    """The server failed on a valid request (500): what a client sees of an internal error."""


STATUS: Final[dict[type[PtychoError], int]] = {
    InvalidRequest: 400,      # the first class for a status is the one the client raises
    InvalidInput: 400,        # wrong names, dtypes, shapes or options (core and decoding)
    ConfigError: 400,
    Unauthorized: 401,
    Forbidden: 403,
    ModelNotFound: 404,
    SessionNotFound: 404,
    RequestTimeout: 408,
    RequestTooLarge: 413,
    UnsupportedEncoding: 415,
    InvalidValues: 422,       # well formed, but NaN, inf, negative or no signal
    DataContractError: 422,   # a scan whose content breaks the data contract (implausible, out of range)
    ClientGone: 499,
    ServerError: 500,
    Overloaded: 503,
    Unavailable: 503,
    DeadlineExceeded: 504,
    PtychoError: 400,         # any other deliberate refusal: the request was wrong
}
"""Exception class -> HTTP status, for every error the service answers on purpose."""


def status_of(error: BaseException) -> int:
    """The HTTP status of ``error``: :data:`STATUS` of the nearest class in its hierarchy, else 500."""
    return next((STATUS[cls] for cls in type(error).__mro__ if cls in STATUS), 500)


def error_for_status(status: int) -> type[PtychoError]:
    """The class a client raises for an HTTP error ``status``: the first listed for it in :data:`STATUS`
    (:class:`ServerError` for a 5xx not listed, :class:`ServingError` for other statuses)."""
    return next((cls for cls, code in STATUS.items() if code == status),
                ServerError if status >= 500 else ServingError)
