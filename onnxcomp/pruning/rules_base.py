"""What a pruning coupling rule is, and the helpers the rule families share.

A rule answers one question for one node: *if axis ``axis`` of the tensor at ``port``
loses some positions, which other (tensor, axis) of this node must lose the matching
positions, and through which index mapping?* It returns a list of `Link`, or `Frozen`
with the reason when the node cannot be pruned through.

This module holds the types (`Port`, `Link`, `Frozen`, `RuleEnv`), the rule table `RULES`
with its `rule` decorator, and the coupling-class helpers (`couple`, `ident`,
`attr_axis`). The rules themselves live in ``rules_linear``, ``rules_pointwise`` and
``rules_layout``; look them up through `onnxcomp.pruning.rules`, which loads them all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.ir import OpRules
from onnxcomp.pruning.indexmap import IDENTITY, IndexMap

Dim = Union[int, str, None]


@dataclass(frozen=True)
class Port:
    """Where a tensor attaches to a node: ``out`` (output) or input, and its index."""

    out: bool
    index: int


@dataclass(frozen=True)
class Link:
    """A coupled axis: ``tensor`` axis ``axis`` reached through ``maps`` (applied in order)."""

    tensor: gs.Tensor
    axis: int
    maps: tuple[IndexMap, ...] = ()


@dataclass(frozen=True)
class Frozen:
    """The node cannot be pruned through; ``reason`` says why (shown by ``inspect``)."""

    reason: str


class RuleEnv:
    """Static facts the rules may read: shapes and constant values.

    Args:
        shapes: Tensor name -> dims (int, symbolic str, or None) from shape inference.
    """

    def __init__(self, shapes: dict[str, list[Dim]]) -> None:
        self._shapes = shapes

    def shape(self, t: gs.Tensor) -> list[Dim] | None:
        """Dims of ``t`` or None when unknown."""
        if isinstance(t, gs.Constant):
            return list(t.values.shape)
        s = self._shapes.get(t.name)
        if s is None and t.shape is not None:
            s = list(t.shape)
        return s

    def rank(self, t: gs.Tensor) -> int | None:
        """Rank of ``t`` or None when unknown."""
        s = self.shape(t)
        return None if s is None else len(s)

    def dim(self, t: gs.Tensor, axis: int) -> Dim:
        """One dim of ``t`` (None when unknown or out of range)."""
        s = self.shape(t)
        if s is None or not (0 <= axis < len(s)):
            return None
        return s[axis]

    @staticmethod
    def const(t: gs.Tensor | None) -> np.ndarray | None:
        """Value of a constant tensor (initializer or ``Constant`` node output), else None."""
        if t is None:
            return None
        if isinstance(t, gs.Constant):
            return np.asarray(t.values)
        if len(t.inputs) == 1 and t.inputs[0].op == "Constant":
            attrs = t.inputs[0].attrs
            v = attrs.get("value")
            if isinstance(v, gs.Constant):
                return np.asarray(v.values)
            for key, dtype in (("value_ints", np.int64), ("value_int", np.int64), ("value_floats", np.float32),
                               ("value_float", np.float32)):
                if key in attrs:
                    return np.asarray(attrs[key], dtype=dtype)
        return None

    def shape_vector(self, t: gs.Tensor) -> list[int | None] | None:
        """Entries of a 1-D shape tensor: constants, or a Concat of 1-D pieces where
        run-time pieces (e.g. ``Shape(x)[0:1]``) are None. None if not readable."""
        v = self.const(t)
        if v is not None:
            return [int(x) for x in v.reshape(-1)]
        if len(t.inputs) != 1 or t.inputs[0].op != "Concat":
            return None
        out: list[int | None] = []
        for piece in t.inputs[0].inputs:
            pv = self.const(piece)
            if pv is not None:
                out.extend(int(x) for x in pv.reshape(-1))
                continue
            ps = self.shape(piece)
            n = ps[0] if ps is not None and len(ps) == 1 else None
            if not isinstance(n, int):
                return None
            out.extend([None] * n)
        return out


RuleResult = Union[list[Link], Frozen]
RuleFn = Callable[[gs.Node, Port, int, RuleEnv], RuleResult]

#: The coupling rules, keyed by (domain, op type, opset range).
RULES: OpRules[RuleFn] = OpRules("pruning coupling")


def rule(*ops: str, domain: str = "", since: int = 1, until: int | None = None) -> Callable[[RuleFn], RuleFn]:
    """Register ``fn`` as the coupling rule of ``ops`` for opsets ``[since, until]`` (None: open)."""
    return RULES.register(*ops, domain=domain, since=since, until=until)


# ----------------------------------------------------------------------------- coupling classes

#: A member of a coupling class: ``(port, axis, to_canon, from_canon)`` (see `couple`).
ClassMember = tuple[Port, int, IndexMap, IndexMap]


def _tensor(node: gs.Node, port: Port) -> gs.Tensor | None:
    seq = node.outputs if port.out else node.inputs
    if port.index >= len(seq):
        return None
    t = seq[port.index]
    return None if (isinstance(t, gs.Variable) and not t.name) else t


def couple(node: gs.Node, port: Port, axis: int, classes: Sequence[Sequence[ClassMember]]) -> RuleResult | None:
    """Links of the class containing ``(port, axis)``.

    Each class member is ``(port, axis, to_canon, from_canon)``: maps into and out of
    the class's canonical index space. Returns None when (port, axis) is in no class.
    """
    for cls in classes:
        entry = next((m for m in cls if m[0] == port and m[1] == axis), None)
        if entry is None:
            continue
        links: list[Link] = []
        for p, ax, _to, frm in cls:
            if p == port and ax == axis:
                continue
            t = _tensor(node, p)
            if t is None:
                continue
            maps = tuple(m for m in (entry[2], frm) if m is not IDENTITY)
            links.append(Link(t, ax, maps))
        return links
    return None


def ident(port: Port, axis: int) -> ClassMember:
    """A class member reached without index mapping."""
    return (port, axis, IDENTITY, IDENTITY)


#: The ports most rules talk about: inputs 0-2 and output 0.
IN0, IN1, IN2, OUT0 = Port(False, 0), Port(False, 1), Port(False, 2), Port(True, 0)


def attr_axis(node: gs.Node, name: str, default: int, rank: int | None) -> int | None:
    """Axis attribute ``name`` made non-negative (None if negative and the rank is unknown)."""
    a = int(node.attrs.get(name, default))
    if a < 0:
        if rank is None:
            return None
        a += rank
    return a

