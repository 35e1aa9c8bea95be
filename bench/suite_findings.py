"""Where onnxcomp wins and loses, computed from the rows (never written by hand).

Each row is a dict as stored in ``results.json`` (see `bench/run.py`). For every model:

* **Like-for-like**: each peer is compared with each onnxcomp preset of the same category
  (cleanup: lossless vs onnxsim; int8: int8 vs onnxruntime quantizers; prune: prune vs
  Torch-Pruning). With latency ratio ``L`` (p50 ÷ FP32 p50, lower is faster) and fidelity
  ``F`` (test accuracy for the labelled model, else cosine to FP32; higher is better):

  - the peer is *faster* when ``L_peer < L_onnxcomp · (1 − tie)`` **and**, when the
    per-round samples are stored, the 95 % bootstrap interval of p50(peer) ÷ p50(onnxcomp)
    (rounds resampled together, since every round timed both) lies below 1 — a gap inside
    the run's own noise is a tie, not a win or a loss. ``tie`` is `SPEED_TIE` or twice the
    gap between FP32 and a second session of the same FP32 file timed in the same rounds,
    whichever is larger (`speed_tie`);
  - fidelities are *equal* within ``FID_TIE`` (cosine) or exactly (accuracy);
  - verdict ``loses`` = the peer is faster at ≥ equal fidelity, or equally fast with
    higher fidelity; ``wins`` mirrors it; ``trade-off`` = one is faster, the other more
    faithful; ``tie`` = neither differs; ``onnxcomp failed`` / ``peer failed`` when only
    one produced a model.

* **Pareto**: a peer row that no onnxcomp row (any preset) dominates — none is at least as
  fast (the peer is not `faster` than it) *and* at least as faithful — is a point of the speed/fidelity
  plane that onnxcomp does not reach on that model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

#: Latency ratios closer than this (relative) are a tie: below the run-to-run noise of
#: interleaved timing on a shared 2-core machine.
SPEED_TIE = 0.03
#: Cosines closer than this are a tie.
FID_TIE = 1e-4

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Finding:
    """One comparison of a peer with an onnxcomp preset on one model."""

    model: str
    category: str
    peer: str
    onnxcomp: str
    verdict: str
    text: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def fidelity_value(row: Row) -> float | None:
    """The fidelity the comparison uses: accuracy when labelled, else cosine."""
    fid = row.get("fidelity") or {}
    if fid.get("accuracy") is not None:
        return float(fid["accuracy"])
    return float(fid["cosine"]) if fid.get("cosine") is not None else None


def fidelity_name(rows: Iterable[Row]) -> str:
    """``accuracy`` if any row of these has an accuracy, else ``cosine``."""
    return "accuracy" if any((r.get("fidelity") or {}).get("accuracy") is not None for r in rows) else "cosine"


def latency_ratio(row: Row) -> float | None:
    """p50 ÷ FP32 p50 of the row, None when the row was not timed."""
    t = row.get("timing") or {}
    return float(t["latency_ratio"]) if t.get("latency_ratio") is not None else None


def measured(row: Row) -> bool:
    """The row produced a model that was both evaluated and timed."""
    return row.get("status") == "ok" and latency_ratio(row) is not None and fidelity_value(row) is not None


#: Bootstrap resamples and confidence level of the speed comparison.
BOOTSTRAP = 2000
CONFIDENCE = 0.95


def ratio_interval(a_ms: Sequence[float], b_ms: Sequence[float], *, seed: int = 0) -> tuple[float, float] | None:
    """Bootstrap interval of median(a) ÷ median(b) over paired timing rounds.

    Args:
        a_ms: Per-round latencies of one variant.
        b_ms: Per-round latencies of another variant, same rounds (interleaved timing).
        seed: Seed of the resampling (the result is deterministic).

    Returns:
        ``(low, high)`` at `CONFIDENCE`, or None when the samples are missing or unpaired.
    """
    import numpy as np

    a, b = np.asarray(a_ms, dtype=np.float64), np.asarray(b_ms, dtype=np.float64)
    if a.size < 3 or a.shape != b.shape:
        return None
    idx = np.random.default_rng(seed).integers(0, a.size, size=(BOOTSTRAP, a.size))
    ratios = np.median(a[idx], axis=1) / np.median(b[idx], axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    lo, hi = np.percentile(ratios, [tail, 100 - tail])
    return float(lo), float(hi)


def speed_tie(model_rows: Iterable[Row]) -> float:
    """The relative latency gap below which two variants of one model count as equally fast.

    `SPEED_TIE`, or twice the gap between FP32 and its control copy (the same file timed in a
    second session in the same rounds) when that is larger: a difference that two identical
    models show is not evidence.
    """
    for r in model_rows:
        control = (r.get("timing") or {}).get("control_latency_ratio")
        if r.get("tool") == "fp32" and control is not None:
            return max(SPEED_TIE, 2 * abs(float(control) - 1.0))
    return SPEED_TIE


def faster(a: Row, b: Row, tie: float = SPEED_TIE) -> bool:
    """Row ``a`` is faster than row ``b`` beyond the tie margin and the timing noise."""
    la, lb = latency_ratio(a), latency_ratio(b)
    if la is None or lb is None or not la < lb * (1 - tie):
        return False
    ci = ratio_interval((a.get("timing") or {}).get("samples_ms") or [], (b.get("timing") or {}).get("samples_ms") or [])
    return ci is None or ci[1] < 1.0


def _fid_tol(kind: str) -> float:
    return 0.0 if kind == "accuracy" else FID_TIE


def _fmt_fid(v: float, kind: str) -> str:
    return f"accuracy {v:.2%}" if kind == "accuracy" else f"cosine {v:.4f}"


def compare_pair(peer: Row, oc: Row, kind: str, tie: float = SPEED_TIE) -> tuple[str, str]:
    """Verdict and sentence for one (peer, onnxcomp) pair of the same model.

    Args:
        peer: The peer's row.
        oc: The onnxcomp row.
        kind: ``accuracy`` or ``cosine`` (see `fidelity_name`).
        tie: Relative speed tie margin (see `speed_tie`).

    Returns:
        ``(verdict, text)``; see the module docstring for the verdicts.
    """
    p_ok, o_ok = measured(peer), measured(oc)
    if not o_ok and p_ok:
        return "onnxcomp failed", f"{oc['label']} produced no measurable model ({oc.get('error') or oc.get('status')}); {peer['label']} did"
    if not p_ok and o_ok:
        return "peer failed", f"{peer['label']} produced no measurable model ({peer.get('error') or peer.get('status')})"
    if not p_ok and not o_ok:
        return "both failed", f"neither {peer['label']} nor {oc['label']} produced a measurable model"
    lp, lo = latency_ratio(peer), latency_ratio(oc)
    fp, fo = fidelity_value(peer), fidelity_value(oc)
    assert lp is not None and lo is not None and fp is not None and fo is not None
    tol = _fid_tol(kind)
    peer_faster = faster(peer, oc, tie)
    oc_faster = faster(oc, peer, tie)
    peer_fid_ge = fp >= fo - tol
    oc_fid_ge = fo >= fp - tol
    desc = (f"{peer['label']} ×{lp:.3f} of FP32 latency at {_fmt_fid(fp, kind)} vs "
            f"{oc['label']} ×{lo:.3f} at {_fmt_fid(fo, kind)}")
    if peer_faster and peer_fid_ge:
        return "loses", desc
    if oc_faster and oc_fid_ge:
        return "wins", desc
    if not peer_faster and not oc_faster:
        if fp > fo + tol:
            return "loses", desc
        if fo > fp + tol:
            return "wins", desc
        return "tie", desc
    return "trade-off", desc


def like_for_like(rows: list[Row]) -> list[Finding]:
    """Peer vs onnxcomp findings within each (model, category), in row order."""
    out: list[Finding] = []
    models = list(dict.fromkeys(r["model"] for r in rows))
    for model in models:
        mrows = [r for r in rows if r["model"] == model]
        kind, tie = fidelity_name(mrows), speed_tie(mrows)
        for peer in (r for r in mrows if r["family"] == "peer"):
            for oc in (r for r in mrows if r["family"] == "onnxcomp" and r["category"] == peer["category"]):
                verdict, text = compare_pair(peer, oc, kind, tie)
                out.append(Finding(model, peer["category"], peer["label"], oc["label"], verdict, text))
    return out


def undominated_peers(rows: list[Row]) -> list[Finding]:
    """Peer rows that no onnxcomp row matches in both speed and fidelity (per model)."""
    out: list[Finding] = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mrows = [r for r in rows if r["model"] == model]
        kind, tie = fidelity_name(mrows), speed_tie(mrows)
        tol = _fid_tol(kind)
        ocs = [r for r in mrows if r["family"] == "onnxcomp" and measured(r)]
        for peer in (r for r in mrows if r["family"] == "peer" and measured(r)):
            lp, fp = latency_ratio(peer), fidelity_value(peer)
            assert lp is not None and fp is not None
            dominated = any(not faster(peer, o, tie) and fidelity_value(o) >= fp - tol for o in ocs)  # type: ignore[operator]
            if not dominated:
                out.append(Finding(model, peer["category"], peer["label"], "any onnxcomp preset", "pareto",
                                   f"{peer['label']} (×{lp:.3f} latency, {_fmt_fid(fp, kind)}) is not matched by any "
                                   f"onnxcomp preset on both speed and fidelity"))
    return out


def findings(rows: list[Row]) -> list[Finding]:
    """All findings: like-for-like pairs, then Pareto points onnxcomp misses."""
    return like_for_like(rows) + undominated_peers(rows)


def losses_paragraph(found: list[Finding]) -> str:
    """The "where onnxcomp loses" text: every loss, every onnxcomp failure, every Pareto miss."""
    bad = [f for f in found if f.verdict in ("loses", "onnxcomp failed")]
    # A Pareto miss already explained by a like-for-like loss of the same peer says nothing new.
    lost = {(f.model, f.peer) for f in bad if f.verdict == "loses"}
    bad += [f for f in found if f.verdict == "pareto" and (f.model, f.peer) not in lost]
    if not bad:
        return ("In this run no peer was faster at equal or better fidelity than the onnxcomp preset of the same "
                "category, and every peer point is matched by some onnxcomp preset.")
    lines = [f"- **{f.model}** ({f.category}): {f.text}." for f in bad]
    return "\n".join(lines)
