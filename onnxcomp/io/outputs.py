"""Output paths: checked before any work, temporary files named per process, stale ones removed.

Every file onnxcomp writes (the model, ``--report``, ``--json``, ``--markdown``, a gate
baseline) goes through here:

* `check_output_path` runs *before* the pipeline: the folder must exist (it is never
  created: a typo in ``-o`` should not silently make folders), the path must not be a
  folder or an input file, and the folder must really accept a new file — probed by
  creating and removing one, since ``os.access`` says "writable" to root on read-only
  mounts and ignores ACLs. A failure is a one-line `UsageError` (exit code 2) before any
  time is spent.
* Temporary files and folders beside an output are named ``.<output name>.<pid>.<random>.tmp``
  (`temp_prefix`). The pid says who owns one, so a later run can tell a leftover of a
  killed process (SIGKILL, power loss: no handler runs) from the live write of a
  concurrent run: `remove_stale_temps` removes only entries of exactly this pattern, for
  this output name, whose process no longer exists. Entries of this process are left
  alone (another thread may be writing the same name), and so are entries of any live
  process — a reused pid only delays the clean-up to a later run.
* `write_text_atomic` writes small text outputs (reports, JSON) the same way the model is
  written: temporary file, fsync, rename.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

import onnx

from onnxcomp.errors import UsageError
from onnxcomp.io import payloads, safety

#: The random part ``tempfile`` puts in a name (``tempfile._RandomNameSequence``).
_RANDOM = r"[a-z0-9_]+"


def temp_prefix(output: Path) -> str:
    """Prefix of this process's temporary files for ``output`` (``.NAME.<pid>.``)."""
    return f".{output.name}.{os.getpid()}."


def _stale_pattern(output: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(output.name)}\.(\d+)\.{_RANDOM}\.tmp")


def _alive(pid: int) -> bool:
    """True when a process ``pid`` exists (or exists but belongs to another user)."""
    if pid <= 0:
        return True  # not a pid we wrote: leave it alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def remove_stale_temps(output: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary files/folders left beside ``output`` by processes that died.

    Only names of exactly our pattern for this output (``.NAME.<pid>.<random>.tmp``)
    whose pid is not a live process are touched; folders are removed only when they
    hold nothing but plain files (what `onnxcomp.io.files.save_model` puts there).

    Returns:
        The paths removed.
    """
    out = Path(output)
    pattern = _stale_pattern(out)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(out.parent))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is None or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                children = list(path.iterdir())
                if any(c.is_symlink() or not c.is_file() for c in children):
                    continue  # not something we wrote
                for c in children:
                    c.unlink()
                path.rmdir()
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


def _probe_writable(folder: Path, out: Path) -> None:
    """Create and remove one empty file in ``folder``: the only reliable writability test."""
    try:
        fd, name = tempfile.mkstemp(prefix=temp_prefix(out), suffix=".tmp", dir=folder)
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e.strerror or e} (folder {folder})") from None
    os.close(fd)
    os.unlink(name)


def check_output_path(output: str | os.PathLike[str], protect: Iterable[str | os.PathLike[str]] = (),
                      *, what: str = "output") -> Path:
    """Refuse an output before any work: over an input, a folder, a missing or read-only folder.

    Args:
        output: The path to be written.
        protect: Input files (with their external data) that must never be overwritten.
        what: How the message names the path (``output``, ``--report``, ``--json``, …).

    Returns:
        ``output`` as a Path.

    Raises:
        UsageError: One line naming the path and the reason.
    """
    out = Path(output)
    data = out.with_name(out.name + ".data")
    for src in protect:
        src_p = Path(src)
        guarded = [src_p, *external_data_files(src_p)] if src_p.exists() else [src_p]
        for g in guarded:
            for candidate in (out, data):
                if candidate.resolve() == g.resolve() or _same_file(candidate, g):
                    raise UsageError(f"refusing to write {candidate}: it is an input file ({src_p}); choose another path")
    if out.exists() and out.is_dir():
        raise UsageError(f"{what} {out} is a directory")
    folder = out.parent
    if not folder.exists():
        raise UsageError(f"{what} folder {folder} does not exist (create it first)")
    if not folder.is_dir():
        raise UsageError(f"{what} {out}: {folder} is not a folder")
    _probe_writable(folder, out)
    return out


def check_output_paths(paths: Iterable[tuple[str, str | os.PathLike[str] | None]],
                       protect: Iterable[str | os.PathLike[str]] = ()) -> None:
    """`check_output_path` for every ``(what, path)`` given (None and ``-`` = stdout skipped);
    two outputs may not be the same file.

    Raises:
        UsageError: The first path that cannot be written, or a path given twice.
    """
    protect = list(protect)
    seen: dict[Path, str] = {}
    for what, p in paths:
        if p is None or str(p) == "-":
            continue
        out = check_output_path(p, protect, what=what)
        key = out.resolve()
        if key in seen:
            raise UsageError(f"{what} and {seen[key]} are the same file ({out}); give them different paths")
        seen[key] = what


def external_data_files(model_path: str | os.PathLike[str]) -> list[Path]:
    """External-data files a model on disk refers to (header read only)."""
    p = Path(model_path)
    try:
        model = payloads.structure_only(p)  # a large single file: its weights are not parsed
    except Exception:  # noqa: BLE001 - an unreadable file refers to nothing we could overwrite
        return []
    out: set[Path] = set()
    for t in safety.iter_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            for kv in t.external_data:
                if kv.key == "location":
                    out.add((p.parent / kv.value).resolve())
    return sorted(out)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file beside it, fsynced, then renamed.

    On any failure (or Ctrl-C / SIGTERM) the temporary file is removed and ``path`` is
    as it was; leftovers of killed runs are removed first (`remove_stale_temps`).

    Raises:
        UsageError: The file cannot be written (one line, exit code 2).
    """
    out = Path(path)
    remove_stale_temps(out)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(out), suffix=".tmp", dir=out.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
        tmp = None
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return out
