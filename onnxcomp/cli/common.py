"""What every command shares: the global flags, error handling, signals, progress on stderr.

Every `OnnxcompError` becomes one line on stderr and its exit code (2 for bad input or
usage, 1 for a failed pass or verification); no traceback unless ``-v``.

Interruption: Ctrl-C (SIGINT) and SIGTERM (what ``docker stop``, ``kill`` and CI timeouts
send) are handled alike. While a command runs, SIGTERM raises `Terminated` — a
`KeyboardInterrupt` — in the main thread, so every clean-up that runs for Ctrl-C (the
temporary folder of a write, sessions) runs for it too; the command then prints
"interrupted; nothing written" and exits 130 for SIGINT, 143 (128 + 15, the shell
convention) for SIGTERM. The previous handler is restored when the command returns.

Progress: on a terminal, a rich status line or bar (transient). Otherwise (CI logs,
``2> file``) plain lines, at most one every `PROGRESS_INTERVAL_S` seconds
(``ONNXCOMP_PROGRESS_INTERVAL`` overrides it), like ``onnxcomp: [12 s] running
reconstruct: stage 3/8``; the first after one interval, so short runs print none. Never
with ``-q``.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

import click

from onnxcomp.errors import OnnxcompError, one_line

if TYPE_CHECKING:
    from rich.status import Status


class State:
    """The group's global flags (``-v``, ``-q``), set by the group callback, read by the commands."""

    verbose = 0
    quiet = False
    #: Outputs this command has already put in place (named if it is interrupted afterwards).
    written: ClassVar[list[str]] = []


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwinds like Ctrl-C (every ``finally`` and ``except KeyboardInterrupt`` runs)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises `Terminated` in the main thread; the old handler comes back after.

    Outside the main thread (signal handlers can only be set there) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn errors into one line and an exit code; SIGTERM into an interruption (see module doc)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        State.written = []
        try:
            with sigterm_as_interrupt():
                return fn(*args, **kwargs)
        except OnnxcompError as e:
            if State.verbose:
                raise
            click.echo(f"onnxcomp: error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt as e:
            done = f"only {', '.join(State.written)} was written" if State.written else "nothing written"
            click.echo(f"onnxcomp: interrupted; {done}", err=True)
            sys.exit(128 + signal.SIGTERM if isinstance(e, Terminated) else 130)
        except MemoryError:
            click.echo("onnxcomp: error: out of memory; nothing written", err=True)
            sys.exit(1)
        except Exception as e:  # a bug: say so in one line, full traceback with -v
            if State.verbose:
                raise
            # An empty message stays empty here (not the type name): the type is printed anyway.
            first = one_line(e, 300) if str(e).strip() else ""
            click.echo(f"onnxcomp: internal error: {type(e).__name__}: {first} (run with -v for a traceback)", err=True)
            sys.exit(1)

    return wrapper


#: Seconds between two progress lines when stderr is not a terminal.
PROGRESS_INTERVAL_S = 5.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("ONNXCOMP_PROGRESS_INTERVAL", PROGRESS_INTERVAL_S)))
    except ValueError:
        return PROGRESS_INTERVAL_S


class LineProgress:
    """Progress as plain lines on stderr, at most one per ``interval`` seconds.

    ``update(message)`` only remembers the message and prints it when the last line (or
    the start) is ``interval`` old; a background thread prints the newest unprinted message once the
    interval has passed, so a long pass that sends one message and then works quietly is
    still named. Lines look like ``onnxcomp: [12 s] running reconstruct: stage 3/8``.
    Call `stop` when done (it prints nothing more).
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic,
                 write: Callable[[str], None] | None = None, *, background: bool = True) -> None:
        self.interval = interval
        self.clock = clock
        self.write = write or (lambda line: click.echo(line, err=True))
        self.start = clock()
        # The first line comes after one interval: a run shorter than that prints none.
        self._last_print = self.start
        self._pending: str | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        if background and interval > 0:
            self._thread = threading.Thread(target=self._flush_loop, name="onnxcomp-progress", daemon=True)
            self._thread.start()

    def update(self, message: str) -> None:
        """Record ``message``; print it now unless a line was printed less than ``interval`` ago."""
        with self._lock:
            self._pending = message
            self._print_if_due()

    def _print_if_due(self) -> None:
        now = self.clock()
        if self._pending is None or self._stopped.is_set():
            return
        if now - self._last_print < self.interval:
            return
        self.write(f"onnxcomp: [{now - self.start:.0f} s] {self._pending}")
        self._last_print, self._pending = now, None

    def _flush_loop(self) -> None:
        while not self._stopped.wait(self.interval / 2):
            with self._lock:
                self._print_if_due()

    def stop(self) -> None:
        """No more lines (a pending message is dropped: the result follows)."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()


def _show_progress() -> bool:
    """Progress goes to stderr unless ``-q`` is given."""
    return not State.quiet


def status_line() -> tuple[Status | LineProgress | None, Callable[[str], None] | None]:
    """A status display and its ``update(message)``; ``(None, None)`` with ``-q``.

    A rich status line on a terminal, `LineProgress` lines otherwise. The caller stops
    the returned object when done.
    """
    if not _show_progress():
        return None, None
    if not sys.stderr.isatty():
        lines = LineProgress(_interval())
        return lines, lines.update
    from rich.console import Console

    console = Console(stderr=True)
    status = console.status("starting")
    status.start()
    return status, (lambda msg: status.update(msg))


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[float, str], None] | None]:
    """A rich progress bar on stderr when it is a terminal, `LineProgress` lines otherwise.

    Yields ``progress(fraction, message)``, or None with ``-q``.
    """
    if not _show_progress():
        yield None
        return
    if not sys.stderr.isatty():
        lines = LineProgress(_interval())
        try:
            yield lambda frac, msg: lines.update(f"{label}: {msg} ({100 * frac:.0f}%)")
        finally:
            lines.stop()
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(label), BarColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("", total=1.0)
        yield lambda frac, msg: bar.update(task, completed=frac, description=msg)
