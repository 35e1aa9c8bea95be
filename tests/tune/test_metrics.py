"""Metrics on the eval data and the budget."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.errors import UsageError
from onnxcomp.tune.metrics import Budget, EvalSet, load_metric


def token_model(table: np.ndarray) -> object:
    """input_ids[N,T] -> Gather(table) -> logits[N,T,V]."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["logits"])], "lm",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", "T"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", "T", table.shape[1]])],
        [numpy_helper.from_array(table.astype(np.float32), "table")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_perplexity_of_uniform_logits_is_the_vocabulary_size() -> None:
    vocab = 7
    model = token_model(np.zeros((vocab, vocab)))
    ids = np.random.default_rng(0).integers(0, vocab, (6, 5)).astype(np.int64)
    ev = EvalSet({"input_ids": ids}, model, load_metric("perplexity"), providers=["CPUExecutionProvider"], threads=1)
    assert load_metric("perplexity").display(ev.original) == pytest.approx(vocab)


def test_perplexity_rewards_the_right_next_token() -> None:
    vocab = 5
    # Logits that predict token t+1 after token t: the cyclic sequence 0 1 2 3 4 0 ...
    table = np.full((vocab, vocab), -5.0)
    table[np.arange(vocab), (np.arange(vocab) + 1) % vocab] = 5.0
    ids = (np.arange(6)[None, :] + np.arange(4)[:, None]) % vocab
    ev = EvalSet({"input_ids": ids.astype(np.int64)}, token_model(table), load_metric("perplexity"),
                 providers=["CPUExecutionProvider"], threads=1)
    assert 1.0 < -ev.original < 1.01


def test_budget() -> None:
    with pytest.raises(UsageError, match="give a budget"):
        Budget()
    b = Budget(max_drop=0.005)
    assert b.violation(0.99, 0.986, 1.0) < 0 < b.violation(0.99, 0.984, 1.0)
    c = Budget(min_cosine=0.99)
    assert c.violation(1.0, 0.0, 0.995) < 0 < c.violation(1.0, 1.0, 0.985)
    with pytest.raises(UsageError):
        load_metric("top5")


def test_budget_judges_a_paired_drop_on_its_upper_bound() -> None:
    b = Budget(max_drop=0.005)  # default: one-sided 95 %, z = 1.645
    assert b.z == pytest.approx(1.6449, abs=1e-4)
    # Drop 0.003: within on the point estimate; with a stderr of 0.002 (many changed
    # samples) the bound 0.0063 is not; with 0.0005 (few) it is.
    assert b.violation(0.99, 0.987, 1.0) < 0
    assert b.violation(0.99, 0.987, 1.0, stderr=0.002) > 0
    assert b.violation(0.99, 0.987, 1.0, stderr=0.0005) < 0
    # And the other way round: a larger but firm drop passes where a smaller, loose one fails.
    assert b.violation(0.99, 0.986, 1.0, stderr=0.0003) < 0 < b.violation(0.99, 0.988, 1.0, stderr=0.003)
    assert b.drop_bound(0.99, 0.987, 0.002) == pytest.approx(0.003 + b.z * 0.002)
    # confidence 0.5 is the measured drop; a cosine floor is judged as measured.
    assert Budget(max_drop=0.005, confidence=0.5).violation(0.99, 0.987, 1.0, stderr=0.002) < 0
    assert Budget(min_cosine=0.99).violation(1.0, 0.0, 0.995, stderr=0.5) < 0
    for bad in (0.4, 1.0):
        with pytest.raises(UsageError, match="--confidence"):
            Budget(max_drop=0.005, confidence=bad)
