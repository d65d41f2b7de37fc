"""The transfer engine: bytes from a URL to a verified file, whatever the network does."""
from ._durable import fsync_directory, replace_durably, write_durably
from ._engine import check_disk_space, existing_ancestor, fetch_file, reserved_bytes
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
    "fsync_directory",
    "partial_bytes",
    "partial_paths",
    "public_url",
    "remove_partial",
    "replace_durably",
    "reserved_bytes",
    "Wire",
    "write_durably",
]
