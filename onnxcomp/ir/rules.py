"""Tables of per-op rules keyed by (domain, op type, opset range).

Every per-op rule set of onnxcomp (pruning's coupling rules, quantization's QDQ placement,
``fold-constants``' numpy evaluators, ``eliminate-identity``'s no-op tests, the recovery
interpreter's torch ops, the refittable layers) is an `OpRules` table::

    RULES: OpRules[MyRule] = OpRules("my rules")

    @RULES.register("Add", "Sub", since=7)
    def add_or_sub(node, ...): ...

    rule = RULES.lookup(node.domain, node.op, opset)   # the function, or None

One convention for every table:

* the opset range ``since..until`` is inclusive at both ends; ``until=None`` means "no
  upper bound" (the rule holds for every later opset);
* the default ONNX domain may be spelled ``""`` or ``"ai.onnx"`` (or be None, as
  graphsurgeon leaves it sometimes): both register and look up as ``""``;
* two rules of one (domain, op type) must not cover a common opset: `register` raises
  `ValueError` at import time instead of letting registration order decide silently.

A lookup is one dict get and a scan of the (one or two) rules of that op, so it can run for
every node of a 10^5-node graph.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: Spellings of the default ONNX operator-set domain (all stored as "").
_DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})


def _canonical_domain(domain: str | None) -> str:
    return "" if domain is None or domain in _DEFAULT_DOMAINS else domain


@dataclass(frozen=True)
class OpRule(Generic[F]):
    """One registered rule: ``fn`` handles ``op_type`` of ``domain`` in opsets ``since..until``.

    Attributes:
        domain: Operator-set domain ("" for the default ONNX domain).
        op_type: The op type, e.g. ``"Conv"``.
        since: First opset the rule holds for (inclusive).
        until: Last opset the rule holds for (inclusive), or None for no upper bound.
        fn: The rule itself.
    """

    domain: str
    op_type: str
    since: int
    until: int | None
    fn: F

    def covers(self, opset: int) -> bool:
        """True if the rule holds at ``opset``."""
        return self.since <= opset and (self.until is None or opset <= self.until)

    def overlaps(self, since: int, until: int | None) -> bool:
        """True if the rule's range and ``since..until`` share an opset."""
        starts_before_other_ends = until is None or self.since <= until
        other_starts_before_this_ends = self.until is None or since <= self.until
        return starts_before_other_ends and other_starts_before_this_ends


class OpRules(Generic[F]):
    """A table of rules of type ``F`` keyed by (domain, op type) and an opset range.

    Create one per rule set (a module-level object of the module that defines the rules)
    and register with the `register` decorator.

    Args:
        name: What the table holds, used in error messages (e.g. ``"pruning coupling"``).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._by_key: dict[tuple[str, str], list[OpRule[F]]] = {}

    def register(self, *op_types: str, domain: str = "", since: int = 1, until: int | None = None) -> Callable[[F], F]:
        """Decorator: register the function as the rule of ``op_types`` in opsets ``since..until``.

        Also usable as a plain call for rules built by a factory:
        ``RULES.register("Add", since=7)(make_binary(np.add))``.

        Args:
            op_types: One or more op types sharing the rule.
            domain: Operator-set domain; ``""`` and ``"ai.onnx"`` are the same.
            since: First opset (inclusive).
            until: Last opset (inclusive), or None for no upper bound.

        Raises:
            ValueError: No op type given, an empty range (``until < since``), or a range
                overlapping one already registered for the same (domain, op type).
        """
        if not op_types:
            raise ValueError(f"{self.name}: register() needs at least one op type")
        if until is not None and until < since:
            raise ValueError(f"{self.name}: empty opset range {since}..{until} for {', '.join(op_types)}")
        canonical = _canonical_domain(domain)

        def deco(fn: F) -> F:
            # Check every op before adding any, so a failed registration leaves no trace.
            for op_type in op_types:
                for existing in self._by_key.get((canonical, op_type), ()):
                    if existing.overlaps(since, until):
                        raise ValueError(
                            f"{self.name}: rule {getattr(fn, '__name__', fn)!r} for {_label(canonical, op_type)} "
                            f"opsets {_span(since, until)} overlaps {getattr(existing.fn, '__name__', existing.fn)!r} "
                            f"(opsets {_span(existing.since, existing.until)})"
                        )
            for op_type in op_types:
                self._by_key.setdefault((canonical, op_type), []).append(OpRule(canonical, op_type, since, until, fn))
            return fn

        return deco

    def lookup(self, domain: str | None, op_type: str, opset: int) -> F | None:
        """The rule of ``(domain, op_type)`` that holds at ``opset``, or None."""
        # Inlined domain normalisation and range test: this runs once per node.
        key = ("" if domain is None or domain in _DEFAULT_DOMAINS else domain, op_type)
        for rule in self._by_key.get(key, ()):
            if rule.since <= opset and (rule.until is None or opset <= rule.until):
                return rule.fn
        return None

    def ops(self) -> list[tuple[str, str]]:
        """Every (domain, op type) with at least one rule, sorted."""
        return sorted(self._by_key)

    def __iter__(self) -> Iterator[OpRule[F]]:
        """Every registered rule, sorted by domain, op type and first opset."""
        for key in sorted(self._by_key):
            yield from sorted(self._by_key[key], key=lambda r: r.since)

    def __len__(self) -> int:
        """Number of registered rules (a rule registered for n op types counts n times)."""
        return sum(len(rules) for rules in self._by_key.values())

    def __repr__(self) -> str:
        return f"OpRules({self.name!r}, {len(self)} rules for {len(self._by_key)} ops)"


def _label(domain: str, op_type: str) -> str:
    return f"{domain}.{op_type}" if domain else op_type


def _span(since: int, until: int | None) -> str:
    return f"{since}..{'' if until is None else until}"
