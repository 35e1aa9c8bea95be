"""`onnxcomp.ir.OpRules`: the one table type behind every per-op rule set."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from onnxcomp.ir import OpRule, OpRules

Rule = Callable[[], str]


def _rule(tag: str) -> Rule:
    def fn() -> str:
        return tag

    fn.__name__ = f"rule_{tag}"
    return fn


def test_range_is_inclusive_at_both_ends() -> None:
    table: OpRules[Rule] = OpRules("test")
    fn = table.register("Pad", since=7, until=12)(_rule("pad"))
    assert table.lookup("", "Pad", 6) is None
    assert table.lookup("", "Pad", 7) is fn
    assert table.lookup("", "Pad", 12) is fn
    assert table.lookup("", "Pad", 13) is None


def test_until_none_has_no_upper_bound() -> None:
    table: OpRules[Rule] = OpRules("test")
    fn = table.register("Gelu", since=20)(_rule("gelu"))
    assert table.lookup("", "Gelu", 19) is None
    assert table.lookup("", "Gelu", 20) is fn
    assert table.lookup("", "Gelu", 10_001) is fn


def test_adjacent_ranges_pick_the_rule_of_the_opset() -> None:
    table: OpRules[Rule] = OpRules("test")
    old = table.register("Softmax", until=12)(_rule("old"))
    new = table.register("Softmax", since=13)(_rule("new"))
    assert table.lookup("", "Softmax", 1) is old
    assert table.lookup("", "Softmax", 12) is old
    assert table.lookup("", "Softmax", 13) is new
    assert [(r.since, r.until) for r in table] == [(1, 12), (13, None)]


@pytest.mark.parametrize("registered", ["", "ai.onnx"])
@pytest.mark.parametrize("asked", ["", "ai.onnx", None])
def test_default_domain_spellings_are_one_domain(registered: str, asked: str | None) -> None:
    table: OpRules[Rule] = OpRules("test")
    fn = table.register("Relu", domain=registered)(_rule("relu"))
    assert table.lookup(asked, "Relu", 17) is fn
    assert table.ops() == [("", "Relu")]


def test_custom_domains_are_kept_apart() -> None:
    table: OpRules[Rule] = OpRules("test")
    std = table.register("Gelu")(_rule("std"))
    custom = table.register("Gelu", domain="com.microsoft")(_rule("ms"))  # same range, other key: no clash
    assert table.lookup("", "Gelu", 17) is std
    assert table.lookup("com.microsoft", "Gelu", 1) is custom
    assert table.lookup("com.example", "Gelu", 17) is None
    assert table.lookup("", "gelu", 17) is None  # op types are case-sensitive, as in ONNX


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ((1, None), (13, None)),  # two open ranges always overlap
        ((1, 12), (12, None)),  # sharing one opset is an overlap
        ((7, 12), (1, 7)),
        ((1, None), (5, 9)),  # inside an open range
        ((5, 9), (1, None)),
    ],
)
def test_overlapping_ranges_for_one_op_are_an_error(first: tuple[int, int | None], second: tuple[int, int | None]) -> None:
    table: OpRules[Rule] = OpRules("my table")
    kept = table.register("Slice", since=first[0], until=first[1])(_rule("a"))
    with pytest.raises(ValueError, match=r"my table: rule 'rule_b' for Slice .* overlaps 'rule_a'"):
        table.register("Slice", since=second[0], until=second[1])(_rule("b"))
    assert len(table) == 1 and table.lookup("", "Slice", first[0]) is kept


def test_overlap_is_checked_across_domain_spellings() -> None:
    table: OpRules[Rule] = OpRules("test")
    table.register("Add")(_rule("a"))
    with pytest.raises(ValueError, match="overlaps"):
        table.register("Add", domain="ai.onnx")(_rule("b"))


def test_failed_multi_op_registration_registers_nothing() -> None:
    table: OpRules[Rule] = OpRules("test")
    table.register("Sub")(_rule("sub"))
    with pytest.raises(ValueError, match="Sub"):
        table.register("Add", "Sub")(_rule("both"))
    assert table.lookup("", "Add", 17) is None
    assert table.ops() == [("", "Sub")]


def test_empty_range_and_missing_op_are_errors() -> None:
    table: OpRules[Rule] = OpRules("test")
    with pytest.raises(ValueError, match="empty opset range 13..12"):
        table.register("Pad", since=13, until=12)
    with pytest.raises(ValueError, match="at least one op type"):
        table.register()
    assert len(table) == 0


def test_one_decorator_registers_several_ops_and_returns_the_function() -> None:
    table: OpRules[Rule] = OpRules("test")

    @table.register("Add", "Sub", "Mul", since=7)
    def arith() -> str:
        return "arith"

    assert arith() == "arith"  # the decorator hands the function back unchanged
    assert all(table.lookup("", op, 7) is arith for op in ("Add", "Sub", "Mul"))
    assert table.lookup("", "Add", 6) is None
    assert table.ops() == [("", "Add"), ("", "Mul"), ("", "Sub")]
    assert len(table) == 3


def test_iteration_lists_rules_sorted_with_their_keys() -> None:
    table: OpRules[Rule] = OpRules("test")
    b = table.register("B", since=13)(_rule("b13"))
    a = table.register("A", domain="com.x")(_rule("a"))
    b_old = table.register("B", until=12)(_rule("b1"))
    assert list(table) == [
        OpRule("", "B", 1, 12, b_old),
        OpRule("", "B", 13, None, b),
        OpRule("com.x", "A", 1, None, a),
    ]
    assert [r.covers(12) for r in table] == [True, False, True]
    assert "3 rules for 2 ops" in repr(table)


def test_tables_are_independent() -> None:
    one: OpRules[Rule] = OpRules("one")
    two: OpRules[Rule] = OpRules("two")
    fn = one.register("Conv")(_rule("conv"))
    two.register("Conv")(_rule("other"))  # no overlap error: another table
    assert one.lookup("", "Conv", 17) is fn
    assert two.lookup("", "Conv", 17) is not fn
