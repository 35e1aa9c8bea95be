"""Models ready to time: loaded, with feeds, a session each (from `onnxcomp.checking.runtime`), warmed up."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import onnx

from onnxcomp.checking.runtime import make_session, open_session
from onnxcomp.errors import InvalidModelError, one_line
from onnxcomp.io.files import load_model
from onnxcomp.perf.feeds import Feeds, feed_shapes, make_feeds
from onnxcomp.perf.machine import rss_bytes
from onnxcomp.perf.placement import ep_warnings
from onnxcomp.perf.timing import make_runner


@dataclass
class PreparedModel:
    """One model ready to be timed (see `prepare_models`)."""

    path: str
    model: onnx.ModelProto
    feeds: Feeds
    session: Any
    runner: Callable[[], None]
    #: Growth of this process's resident memory while the session was built and warmed up.
    memory_mb: float
    warnings: list[str]


def warm_session(
    path: str | os.PathLike[str],
    providers: Sequence[str],
    *,
    threads: int | None,
    spinning: bool,
    device_id: int,
    warmup: int,
    runner_for: Callable[[Any], Callable[[], Any]],
    what: str,
) -> tuple[Any, Callable[[], Any], float]:
    """Open a timing session on ``path``, build its runner and run the warm-up.

    Returns:
        ``(session, runner, memory_mb)``: the growth of resident memory while the session
        was built and warmed up is the model's memory figure.

    Raises:
        InvalidModelError: The warm-up fails ("onnxruntime cannot {what}: ...").
    """
    rss0 = rss_bytes()
    sess = open_session(str(path), providers, threads=threads, spinning=spinning, device_id=device_id)
    runner = runner_for(sess)
    try:
        for _ in range(max(1, warmup)):
            runner()
    except Exception as e:  # noqa: BLE001 - any onnxruntime failure in the warm-up becomes one line
        raise InvalidModelError(f"onnxruntime cannot {what}: {one_line(e, 300)}") from None
    return sess, runner, max(0, rss_bytes() - rss0) / 2**20


def prepare_models(
    paths: Sequence[str | os.PathLike[str]],
    *,
    providers: Sequence[str],
    device_id: int = 0,
    threads: int | None,
    batch: int | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    data: str | os.PathLike[str] | None = None,
    warmup: int = 5,
    spinning: bool | None = None,
    seed: int = 0,
    extra_models: Sequence[tuple[str, bytes | str]] = (),
) -> list[PreparedModel]:
    """Load every model, build feeds and sessions, run the per-model warm-up.

    ``extra_models`` are ``(label, model bytes or path)`` timed alongside (the gate's
    reference workload); they use their own generated feeds.

    Raises:
        InvalidModelError: A model cannot be loaded or run on its feeds.
    """
    if spinning is None:
        # One model alone may spin; interleaved models must not steal each other's cores.
        spinning = len(paths) + len(extra_models) <= 1
    out: list[PreparedModel] = []
    for p in paths:
        model = load_model(p, load_external_data=False)
        feeds = make_feeds(model, batch=batch, shapes=shapes, data=data, seed=seed)
        sess, runner, mem = warm_session(
            p, providers, threads=threads, spinning=spinning, device_id=device_id, warmup=warmup,
            runner_for=lambda s, feeds=feeds: make_runner(s, feeds, s.get_providers(), device_id),
            what=f"run {p} on inputs {feed_shapes(feeds)}",
        )
        out.append(PreparedModel(str(p), model, feeds, sess, runner, mem, ep_warnings(model, providers)))
    for label, src in extra_models:
        model = onnx.load_model_from_string(src) if isinstance(src, bytes) else onnx.load_model(src)
        feeds = make_feeds(model, seed=seed)
        sess = make_session(src, providers=providers, threads=threads, spinning=spinning, device_id=device_id)
        runner = make_runner(sess, feeds, sess.get_providers(), device_id)
        for _ in range(max(1, warmup)):
            runner()
        out.append(PreparedModel(label, model, feeds, sess, runner, 0.0, []))
    return out
