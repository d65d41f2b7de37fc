"""The transfer engine: bytes from a URL to a verified file, whatever the network does."""
from ._engine import check_disk_space, existing_ancestor, fetch_file
from ._http import public_url
from ._lock import discard_partial
from ._progress import FileProgress
from ._state import partial_bytes, partial_paths, remove_partial
from ._wire import Wire

__all__ = [
    "FileProgress",
    "check_disk_space",
    "discard_partial",
    "existing_ancestor",
    "fetch_file",
    "partial_bytes",
    "partial_paths",
    "public_url",
    "remove_partial",
    "Wire",
]
