"""The one error shape every route answers with (Kolosal's):

    {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}

    ApiError                     raised anywhere below the routes, rendered by the app
      status 400/409/413/422/429 type invalid_request_error
      status 401                 type authentication_error
      status 404                 type not_found_error
      status 5xx                 type server_error (503: too many event streams, with Retry-After)
"""
from __future__ import annotations

from typing import Any

_TYPES = {401: "authentication_error", 404: "not_found_error"}


class ApiError(Exception):
    """A request the server answers with an error status; the message tells the caller what to do."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None,
        type: str | None = None, headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.headers = headers  # e.g. Retry-After on a 429
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}  # e.g. Retry-After on a 503
        self.type = type or _TYPES.get(status) or ("server_error" if status >= 500 else "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_request") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def not_found(message: str, param: str | None = None, code: str | None = "not_found") -> ApiError:
    return ApiError(404, message, param=param, code=code)
