"""What every command shares: the global flags, error handling, progress display on stderr.

Every `OnnxcompError` becomes one line on stderr and its exit code (2 for bad input or
usage, 1 for a failed pass or verification); no traceback unless ``-v``.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from onnxcomp.errors import OnnxcompError, one_line

if TYPE_CHECKING:
    from rich.status import Status


class State:
    """The group's global flags (``-v``, ``-q``), set by the group callback, read by the commands."""

    verbose = 0
    quiet = False


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn errors into one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OnnxcompError as e:
            if State.verbose:
                raise
            click.echo(f"onnxcomp: error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("onnxcomp: interrupted; nothing written", err=True)
            sys.exit(130)
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


def _show_progress() -> bool:
    """Progress goes to stderr only when it is a terminal and ``-q`` is not given."""
    return not State.quiet and sys.stderr.isatty()


def status_line() -> tuple[Status | None, Callable[[str], None] | None]:
    """A rich status line on a terminal, and its ``update(message)``; ``(None, None)`` otherwise.

    The caller stops the returned status when done.
    """
    if not _show_progress():
        return None, None
    from rich.console import Console

    console = Console(stderr=True)
    status = console.status("starting")
    status.start()
    return status, (lambda msg: status.update(msg))


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[float, str], None] | None]:
    """A rich progress bar on stderr when it is a terminal (and not ``-q``); else nothing.

    Yields ``progress(fraction, message)`` or None.
    """
    if not _show_progress():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(label), BarColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("", total=1.0)
        yield lambda frac, msg: bar.update(task, completed=frac, description=msg)
