"""Terminals, colour and progress for the command line.

Progress is shown on stderr only when both stdout and stderr are terminals
and ``--json`` is off: with ``rich`` when it is installed and colour is
allowed, else as one plain line rewritten with carriage returns.  ``NO_COLOR``
(any non-empty value) or ``TERM=dumb`` means no ANSI escape at all.  ``rich``
is imported only when a progress bar is about to be shown.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any


def isatty(stream: Any) -> bool:
    """Whether ``stream`` is a terminal; False for anything that cannot say."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def ansi_allowed(stream: Any) -> bool:
    """Whether ANSI escapes may be written to ``stream``: a terminal, and
    neither ``NO_COLOR`` (any non-empty value, no-color.org) nor ``TERM=dumb``."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return isatty(stream)


def _load_rich() -> tuple[Any, Any] | None:
    """``(rich.progress, rich.console)``, or None without rich."""
    import importlib

    try:
        return importlib.import_module("rich.progress"), importlib.import_module("rich.console")
    except ImportError:
        return None


class Progress:
    """A progress display for one long operation, used as a context manager
    and as the ``progress(done, total_or_None)`` callback of maintenance.

    ``style`` is ``"rich"``, ``"plain"`` or ``None`` (show nothing)."""

    def __init__(self, label: str, style: str | None, stream: IO[str], modules: tuple[Any, Any] | None = None) -> None:
        self.label = label
        self.style = "plain" if style == "rich" and modules is None else style
        self.stream = stream
        self._modules = modules
        self._rich: Any = None
        self._task: Any = None
        self._last = 0.0
        self._shown = ""

    @classmethod
    def for_command(cls, label: str, *, json_output: bool) -> Progress:
        """The display a command should use: none unless stdout and stderr
        are terminals and the output is text; rich when it is installed and
        ANSI is allowed; else plain text."""
        out, err = sys.stdout, sys.stderr
        if json_output or not (isatty(out) and isatty(err)):
            return cls(label, None, err)
        if ansi_allowed(err):
            modules = _load_rich()
            if modules is not None:
                return cls(label, "rich", err, modules)
        return cls(label, "plain", err)

    def __enter__(self) -> Progress:
        if self.style == "rich" and self._modules is not None:
            rp, rc = self._modules
            console = rc.Console(file=self.stream)
            self._rich = rp.Progress(
                rp.SpinnerColumn(),
                rp.TextColumn("{task.description}"),
                rp.BarColumn(),
                rp.MofNCompleteColumn(),
                rp.TimeElapsedColumn(),
                console=console,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._rich.start()
            self._task = self._rich.add_task(self.label, total=None)
        elif self.style == "plain":
            self._write(f"{self.label}...")
        return self

    def __call__(self, done: int, total: int | None = None) -> None:
        if self._rich is not None:
            self._rich.update(self._task, completed=done, total=total)
        elif self.style == "plain":
            now = time.monotonic()
            if now - self._last < 0.1 and (total is None or done < total):
                return
            self._last = now
            if total:
                self._write(f"{self.label}: {done}/{total} ({100 * done // max(total, 1)}%)")
            else:
                self._write(f"{self.label}: {done}")

    def _write(self, text: str) -> None:
        pad = " " * max(0, len(self._shown) - len(text))
        try:
            self.stream.write(f"\r{text}{pad}")
            self.stream.flush()
        except (OSError, ValueError):
            pass
        self._shown = text

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
        elif self.style == "plain" and self._shown:
            # Leave the line clean for the summary that follows.
            self._write("")
            try:
                self.stream.write("\r")
                self.stream.flush()
            except (OSError, ValueError):
                pass
