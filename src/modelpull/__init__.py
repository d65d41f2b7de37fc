"""modelpull: get ML models onto a machine.

    from modelpull import download_model
    async for progress in download_model("huggingface", "Qwen/Qwen2.5-0.5B-Instruct"):
        print(progress.status.value, progress.percent, progress.message)
"""
from ._api import download_model, pull
from ._errors import (
    AccessDenied,
    AuthenticationRequired,
    ConnectionFailed,
    DigestMismatch,
    DiskError,
    DiskFull,
    InvalidRequest,
    ModelPullError,
    NotEnoughSpace,
    NotFound,
    RateLimited,
    ServerError,
    SizeMismatch,
    SourceError,
    TransferError,
)
from ._progress import DownloadProgress, DownloadStatus
from ._refs import Reference, parse_reference

__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "AuthenticationRequired",
    "ConnectionFailed",
    "DigestMismatch",
    "DiskError",
    "DiskFull",
    "DownloadProgress",
    "DownloadStatus",
    "InvalidRequest",
    "ModelPullError",
    "NotEnoughSpace",
    "NotFound",
    "RateLimited",
    "Reference",
    "ServerError",
    "SizeMismatch",
    "SourceError",
    "TransferError",
    "__version__",
    "download_model",
    "parse_reference",
    "pull",
]
