"""The "where onnxcomp loses" analysis on hand-made rows."""

from __future__ import annotations

import numpy as np
import pytest
from bench_suite_fakes import row
from suite_findings import (
    compare_pair,
    findings,
    like_for_like,
    losses_paragraph,
    ratio_interval,
    speed_tie,
    undominated_peers,
)


def _verdict(peer_ratio, peer_cos, oc_ratio, oc_cos, kind="cosine"):
    peer = row("m", "onnxsim", "peer", "cleanup", ratio=peer_ratio, cosine=peer_cos)
    oc = row("m", "onnxcomp:lossless", "onnxcomp", "cleanup", ratio=oc_ratio, cosine=oc_cos)
    return compare_pair(peer, oc, kind)[0]


def test_peer_faster_at_equal_fidelity_is_a_loss():
    assert _verdict(0.80, 0.999, 0.90, 0.999) == "loses"


def test_onnxcomp_faster_at_equal_fidelity_is_a_win():
    assert _verdict(0.90, 0.999, 0.80, 0.999) == "wins"


def test_within_speed_noise_and_fidelity_tie_is_a_tie():
    assert _verdict(0.900, 0.99990, 0.905, 0.99995) == "tie"


def test_equal_speed_higher_peer_fidelity_is_a_loss():
    assert _verdict(0.90, 0.999, 0.90, 0.99) == "loses"


def test_faster_but_less_faithful_is_a_trade_off():
    assert _verdict(0.70, 0.95, 0.90, 0.999) == "trade-off"


def test_accuracy_uses_exact_comparison():
    peer = row("d", "torch-pruning", "peer", "prune", ratio=0.5, accuracy=0.90)
    oc = row("d", "onnxcomp:prune", "onnxcomp", "prune", ratio=0.6, accuracy=0.91)
    assert compare_pair(peer, oc, "accuracy")[0] == "trade-off"
    oc_worse = row("d", "onnxcomp:prune", "onnxcomp", "prune", ratio=0.6, accuracy=0.89)
    assert compare_pair(peer, oc_worse, "accuracy")[0] == "loses"


def test_failures_are_findings_not_crashes():
    peer = row("m", "onnxsim", "peer", "cleanup", ratio=0.9)
    oc = row("m", "onnxcomp:lossless", "onnxcomp", "cleanup", status="failed", error="PassError: boom")
    verdict, text = compare_pair(peer, oc, "cosine")
    assert verdict == "onnxcomp failed" and "PassError: boom" in text
    assert compare_pair(oc | {"family": "peer"}, peer | {"family": "onnxcomp"}, "cosine")[0] == "peer failed"


def test_pairs_only_within_category_and_model():
    rows = [
        row("a", "fp32", "reference", "reference"),
        row("a", "onnxcomp:int8", "onnxcomp", "int8", ratio=0.5),
        row("a", "onnxsim", "peer", "cleanup", ratio=0.9),
        row("a", "ort:quantize_static", "peer", "int8", ratio=0.6),
        row("b", "onnxcomp:int8", "onnxcomp", "int8", ratio=0.7),
    ]
    pairs = like_for_like(rows)
    assert [(f.model, f.peer, f.onnxcomp) for f in pairs] == [("a", "ort:quantize_static", "onnxcomp:int8")]


def test_undominated_peer_is_reported_and_dominated_is_not():
    rows = [
        row("a", "onnxcomp:int8", "onnxcomp", "int8", ratio=0.5, cosine=0.99),
        row("a", "ort:quantize_static", "peer", "int8", ratio=0.6, cosine=0.98),  # dominated
        row("a", "torch-pruning", "peer", "prune", ratio=0.3, cosine=0.5),  # faster than everything
    ]
    pareto = undominated_peers(rows)
    assert [f.peer for f in pareto] == ["torch-pruning"]


def test_losses_paragraph_lists_losses_once():
    rows = [
        row("a", "onnxcomp:lossless", "onnxcomp", "cleanup", ratio=1.0),
        row("a", "onnxsim", "peer", "cleanup", ratio=0.8, label="onnxsim"),
    ]
    text = losses_paragraph(findings(rows))
    # One line for the like-for-like loss; the Pareto miss of the same peer is not repeated.
    assert text.splitlines() == ["- **a** (cleanup): onnxsim ×0.800 of FP32 latency at cosine 1.0000 vs "
                                 "onnxcomp:lossless ×1.000 at cosine 1.0000."]


def test_losses_paragraph_says_so_when_nothing_is_lost():
    rows = [
        row("a", "onnxcomp:lossless", "onnxcomp", "cleanup", ratio=0.8),
        row("a", "onnxsim", "peer", "cleanup", ratio=1.0),
    ]
    assert "no peer was faster" in losses_paragraph(findings(rows))


def test_a_gap_inside_the_timing_noise_is_a_tie():
    rng = np.random.default_rng(0)
    noisy_a = list(10 + 3 * rng.standard_normal(30))
    noisy_b = list(10 + 3 * rng.standard_normal(30))
    peer = row("m", "onnxsim", "peer", "cleanup", ratio=0.90)
    oc = row("m", "onnxcomp:lossless", "onnxcomp", "cleanup", ratio=1.0)
    assert compare_pair(peer, oc, "cosine")[0] == "loses"  # no samples: point estimates decide
    peer["timing"]["samples_ms"], oc["timing"]["samples_ms"] = noisy_a, noisy_b
    assert compare_pair(peer, oc, "cosine")[0] == "tie"
    peer["timing"]["samples_ms"] = [x * 0.5 for x in noisy_b]  # clearly faster in every round
    assert compare_pair(peer, oc, "cosine")[0] == "loses"


def test_ratio_interval_brackets_the_true_ratio():
    b = list(np.linspace(9, 11, 41))
    lo, hi = ratio_interval([0.8 * x for x in b], b)
    assert lo <= 0.8 <= hi and hi < 1
    assert ratio_interval([1.0, 2.0], [1.0, 2.0]) is None  # too few rounds to say anything


def test_fp32_control_widens_the_speed_tie():
    fp32 = row("m", "fp32", "reference", "reference")
    peer = row("m", "onnxsim", "peer", "cleanup", ratio=0.92)
    oc = row("m", "onnxcomp:lossless", "onnxcomp", "cleanup", ratio=1.0)
    assert [f.verdict for f in like_for_like([fp32, peer, oc])] == ["loses"]
    fp32["timing"]["control_latency_ratio"] = 1.06  # two sessions of one file differ by 6 %
    assert speed_tie([fp32, peer, oc]) == pytest.approx(0.12)
    assert [f.verdict for f in like_for_like([fp32, peer, oc])] == ["tie"]
    assert undominated_peers([fp32, peer, oc]) == []
