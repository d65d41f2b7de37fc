"""The transfer engine: bytes from a URL to a verified file, whatever the network does."""
from ._engine import check_disk_space, existing_ancestor, fetch_file
from ._http import new_session, public_url
from ._progress import FileProgress
from ._state import partial_bytes, partial_paths, remove_partial

__all__ = [
    "FileProgress",
    "check_disk_space",
    "existing_ancestor",
    "fetch_file",
    "new_session",
    "partial_bytes",
    "partial_paths",
    "public_url",
    "remove_partial",
]
