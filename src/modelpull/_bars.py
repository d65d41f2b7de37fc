"""What `modelpull pull` shows on a terminal: rich bars (plain log lines are cli.LogView).

Kept apart from cli.py so that runs without bars (`--quiet`, `--json`, a log) never import rich.
"""
from __future__ import annotations

import time
from typing import Any, Callable, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, DownloadColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.progress_bar import ProgressBar
from rich.table import Column
from rich.text import Text

from ._progress import DownloadProgress, DownloadStatus
from ._units import format_bytes, format_seconds
from .cli import View, is_notice


def console(stream: TextIO) -> Console:
    return Console(file=stream, highlight=False, soft_wrap=True)


def done_line(stream: TextIO, message: str, took: str) -> None:
    """The last line of a successful pull: a green tick, the message, the time taken."""
    console(stream).print(Text.assemble(("✓ ", "green"), message, (took, "dim")))


class _SpeedColumn(ProgressColumn):
    """The stream's recent rate (a few seconds' window), not rich's own estimate."""

    def render(self, task: Task) -> Text:
        speed = task.fields.get("speed_bps")
        if not speed or task.finished:
            return Text("", style="progress.data.speed")
        return Text(f"{format_bytes(speed)}/s", style="progress.data.speed")


class _EtaColumn(ProgressColumn):
    """The stream's ETA; blank while unknown; "failed" once the download failed."""

    def render(self, task: Task) -> Text:
        if task.fields.get("failed"):
            return Text("failed", style="bold red")
        if task.finished:
            return Text("done", style="progress.elapsed")
        if task.fields.get("eta_seconds") is None:
            return Text("")
        return Text(format_seconds(task.fields["eta_seconds"]), style="progress.remaining")


class _BarColumn(BarColumn):
    """rich's bar, red once the download failed: a bar as full as the bytes that arrived (all of
    them when a digest did not match) must not look like a finished download above the error."""

    def render(self, task: Task) -> ProgressBar:
        bar = super().render(task)
        if task.fields.get("failed"):
            bar.complete_style = bar.finished_style = "red"
        return bar


class _PercentColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        if task.total is None or task.fields.get("kind") == "file":
            return Text("")
        return Text(f"{task.percentage:>5.1f}%", style="progress.percentage")


class BarsView(View):
    """rich bars on a terminal: a bar per file, a total bar for multi-file models, a status line.

    The stream gives exact totals (bytes, percent, speed, ETA) and the file being worked on,
    not each file's bytes: so the total bar carries the numbers, and a multi-file model gets a
    row per file the stream names, busy while it is the current file and full once the stream
    moves past it (the runner names the first unfinished file in plan order) or completes.
    """

    # The columns right of the bar need about 40 characters ("100.0% 12.3/45.6 GB 123.4 MB/s
    # 1h02m"); names are cut (…) so that a row never wraps, down to 80 columns and below.
    NUMBERS_WIDTH = 40
    MIN_BAR = 10

    def __init__(self, console: Console, label: str) -> None:
        self._label = label
        name_width = max(12, min(48, console.width - self.NUMBERS_WIDTH - self.MIN_BAR))
        self._progress = Progress(
            TextColumn("{task.description}", style="progress.description", markup=False,
                       table_column=Column(no_wrap=True, overflow="ellipsis", max_width=name_width)),
            _BarColumn(bar_width=None),
            _PercentColumn(),
            _BytesColumn(),
            _SpeedColumn(),
            _EtaColumn(),
            console=console,
            expand=True,
        )
        self._status = _StatusLine()
        self.renderable = Group(self._progress, self._status)  # what the screen shows now
        # stdout is for the local path (and scripts): never fold it into the display.
        self._live = Live(self.renderable, console=console, refresh_per_second=10, transient=False,
                          redirect_stdout=False)
        self._total: TaskID | None = None
        self._rows: dict[str, TaskID] = {}  # file name -> its row
        self._active: list[str] = []  # rows not yet finished, oldest first
        self._started = False

    def show(self, item: DownloadProgress) -> None:
        if not self._started:
            self._live.start()
            self._started = True
        multi = (item.files_total or 1) > 1
        if self._total is None and (multi or item.downloaded_bytes is not None or item.status.is_terminal):
            description = "total" if multi else (item.current_file or self._label)
            self._total = self._progress.add_task(description, total=item.total_bytes)
        if self._total is not None:
            self._update_total(item, multi)
        if item.status is DownloadStatus.ERROR:
            self._mark_failed()
        elif multi:
            self._update_rows(item)
        self._status.update(item)

    def _mark_failed(self) -> None:
        """Every unfinished row, and the total, turns red and says "failed"."""
        for task in self._progress.tasks:
            if task.id == self._total or task.id in {self._rows[name] for name in self._active}:
                self._progress.update(task.id, failed=True)

    def _update_total(self, item: DownloadProgress, multi: bool) -> None:
        assert self._total is not None
        fields: dict[str, Any] = {"speed_bps": item.speed_bps, "eta_seconds": item.eta_seconds}
        done = item.downloaded_bytes or 0
        total = item.total_bytes
        if item.status is DownloadStatus.COMPLETE:
            total = total or done
            done = total
        if multi and item.files_total:
            fields["description"] = f"total ({item.files_completed or 0}/{item.files_total} files)"
        elif item.current_file:
            fields["description"] = item.current_file
        self._progress.update(self._total, completed=done, total=total, **fields)

    def _update_rows(self, item: DownloadProgress) -> None:
        """One row per file that has moved, with its own bytes (from `active_files`)."""
        complete = item.status is DownloadStatus.COMPLETE
        moving = {f["name"]: f for f in (item.active_files or [])}
        for name in list(self._active):
            if complete or name not in moving:  # it left the moving set: it is done
                self._active.remove(name)
                task = self._progress.tasks[self._rows[name]]
                size = task.total or task.completed
                self._progress.update(self._rows[name], total=size, completed=size)
        if complete:
            return
        for name, file in moving.items():
            if name not in self._rows:
                self._rows[name] = self._progress.add_task(f"  {name}", total=file.get("total_bytes"), kind="file")
            if name not in self._active:
                self._active.append(name)
            self._progress.update(
                self._rows[name], completed=file.get("downloaded_bytes") or 0, total=file.get("total_bytes")
            )

    def finish(self) -> None:
        if self._started:
            self._live.stop()
            self._started = False


class _BytesColumn(DownloadColumn):
    def render(self, task: Task) -> Text:
        if task.fields.get("kind") == "file" and task.total is None:
            return Text("")
        return super().render(task)


class _StatusLine:
    """The latest message under the bars. A notice (retry, restart, stall) arrives on one item
    only, so it stays in view a few seconds instead of flashing by."""

    NOTICE_SECONDS = 3.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._message = ""
        self._notice: tuple[str, float] | None = None  # (message, when)

    def update(self, item: DownloadProgress) -> None:
        if item.status.is_terminal:
            self._message, self._notice = "", None
            return
        self._message = item.message
        if is_notice(item):
            self._notice = (item.message, self._clock())

    def __rich__(self) -> Text | Group:
        if self._notice is not None and self._clock() - self._notice[1] < self.NOTICE_SECONDS:
            return Text(self._notice[0], style="yellow", overflow="ellipsis", no_wrap=True)
        if not self._message:
            return Group()  # no blank line under the final bars
        return Text(self._message, style="dim", overflow="ellipsis", no_wrap=True)


# ---------------------------------------------------------------------------------------
# Several references in one call: one bar each, under one live display.


class RefBars:
    """One rich bar per reference of a `pull` with several; `view(label)` is each one's View."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description}", style="progress.description", markup=False),
            BarColumn(bar_width=None), _PercentColumn(), _BytesColumn(), _SpeedColumn(), _EtaColumn(),
            console=console, expand=True,
        )
        self._live = Live(self._progress, console=console, refresh_per_second=10, transient=False,
                          redirect_stdout=False)
        self._open = 0

    def view(self, label: str) -> View:
        self._open += 1
        return _RefBar(self, self._progress.add_task(label, total=None))

    def _start(self) -> None:
        if not self._live.is_started:
            self._live.start()

    def _finish(self) -> None:
        self._open -= 1
        if self._open == 0 and self._live.is_started:
            self._live.stop()


class _RefBar(View):
    def __init__(self, bars: RefBars, task: TaskID) -> None:
        self._bars = bars
        self._task = task
        self._finished = False

    def show(self, item: DownloadProgress) -> None:
        self._bars._start()
        done, total = item.downloaded_bytes or 0, item.total_bytes
        if item.status is DownloadStatus.COMPLETE:
            total = total or done
            done = total
        self._bars._progress.update(self._task, completed=done, total=total, speed_bps=item.speed_bps,
                                    eta_seconds=item.eta_seconds)

    def finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._bars._finish()
