"""What can go wrong, as values a person can act on.

    ModelPullError                 every failure modelpull reports; has `.code` and a message
    ├── InvalidRequest             bad input from the caller (reference, option, URL)      invalid_request
    ├── SourceError                the source refused or lacks what was asked for
    │   ├── NotFound               404, unknown repo/model/revision/file                   not_found, ...
    │   ├── AuthenticationRequired 401: a token is needed or was rejected                  auth_required, ...
    │   ├── AccessDenied           403: the token is valid but has no access               forbidden, ...
    │   └── RateLimited            429 after the retries ran out                           rate_limited
    ├── TransferError              the bytes did not arrive intact
    │   ├── ConnectionFailed       cannot reach the host, after retries                    connection_failed
    │   │                          (a host name DNS does not know: at once, no retries)    unknown_host
    │   ├── ServerError            5xx after retries                                       server_error
    │   ├── DigestMismatch         sha256 (or git sha1) differs                            digest_mismatch
    │   └── SizeMismatch           fewer or more bytes than announced                      size_mismatch
    └── DiskError                  the local disk cannot take the file
        ├── NotEnoughSpace         checked before starting                                 insufficient_space
        └── DiskFull               ENOSPC while writing                                    disk_full

Providers raise subclasses with their own `code` (e.g. `gated_repo`) and message. The
download stream turns every one of them into a final ERROR progress item; messages never
contain a token (URLs are shown without their query string).
"""
from __future__ import annotations


class ModelPullError(Exception):
    """Base of every error modelpull reports."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class InvalidRequest(ModelPullError):
    """Bad input from the caller; `param` names it when one option or field is to blame."""

    code = "invalid_request"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message, code=code)
        self.param = param


class SourceError(ModelPullError):
    code = "source_error"


class NotFound(SourceError):
    code = "not_found"


class AuthenticationRequired(SourceError):
    code = "auth_required"


class AccessDenied(SourceError):
    code = "forbidden"


class RateLimited(SourceError):
    code = "rate_limited"


class TransferError(ModelPullError):
    code = "transfer_failed"


class ConnectionFailed(TransferError):
    code = "connection_failed"


class ServerError(TransferError):
    code = "server_error"


class DigestMismatch(TransferError):
    code = "digest_mismatch"


class SizeMismatch(TransferError):
    code = "size_mismatch"


class DiskError(ModelPullError):
    code = "disk_error"


class NotEnoughSpace(DiskError):
    code = "insufficient_space"


class DiskFull(DiskError):
    code = "disk_full"
