"""The one seam every source goes through."""
from __future__ import annotations

import abc
from typing import TYPE_CHECKING, AsyncIterator, ClassVar

from .._plan import DownloadRequest, Plan
from .._progress import DownloadProgress

if TYPE_CHECKING:
    from .._run import RunContext


class Provider(abc.ABC):
    """A source of models.

    Most providers only implement `plan()`; the transfer engine moves the bytes. A provider
    whose bytes are moved by someone else (Ollama through its own server) overrides
    `stream()` instead.
    """

    name: ClassVar[str]
    # Provider-specific options accepted in download_model(**options); anything else that
    # is not a transfer option is refused with a clear error.
    option_names: ClassVar[frozenset[str]] = frozenset()

    async def plan(self, request: DownloadRequest, context: "RunContext") -> Plan:
        """Resolve `request` into the files to fetch. Raise ModelPullError subclasses."""
        raise NotImplementedError

    def check_request(self, request: DownloadRequest) -> None:
        """Refuse a malformed model name or option (InvalidRequest) before anything runs.

        Offline and quick: the server calls it at submit, so that `ollama:../x` is a 422 and
        not a job that fails later; `download_model()` calls it before its first item.
        """

    def stream(self, request: DownloadRequest, context: "RunContext") -> AsyncIterator[DownloadProgress]:
        """Progress items after STARTING, ending with COMPLETE. Default: plan, then transfer."""
        return context.plan_and_execute(self, request)

    def describe(self, request: DownloadRequest) -> str:
        """How the STARTING message names this download."""
        return f"{request.model} from {self.name}"

    def data_location(self, request: DownloadRequest) -> str:
        """Where this download's data is, partial data included, for messages ("kept in ...")."""
        return str(request.models_dir.absolute())
