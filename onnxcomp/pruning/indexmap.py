"""Index mappings between coupled channel axes.

A channel group tracks, for every coupled ``(tensor, axis)``, a set of *pairs*
``(src, pos)``: root channel ``src`` owns position ``pos`` on that axis. An index
mapping turns the pairs of one axis into the pairs of a coupled axis. Four kinds
cover every op rule:

* ``identity``            pos' = pos                     (Relu, BN, residual Add, ...)
* ``shift(lo, hi, off)``  keep lo <= pos < hi, pos' = pos + off
                          (Concat input -> output: lo=0, hi=len_i, off=offset_i;
                          Concat output -> input i and Split/Slice: the inverse)
* ``expand(k)``           pos' = pos*k + j for j in [0, k)
                          (a channel becomes a block of k features: Flatten of
                          [N, C, H, W] with k = H*W, heads -> hidden with k = head_dim,
                          depthwise channel multiplier)
* ``contract(k)``         pos' = pos // k
                          (a feature maps to its block: hidden -> heads)

Mappings are pure functions of (src, pos) arrays, so propagation can push only the
newly reached pairs (delta propagation) and stays linear in the number of pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class IndexMap:
    """A stateless mapping of (src, pos) pairs from one axis to a coupled axis.

    Attributes:
        kind: ``"identity"``, ``"shift"``, ``"expand"`` or ``"contract"``.
        lo: First position kept (shift).
        hi: One past the last position kept (shift).
        off: Offset added to kept positions (shift).
        k: Block size (expand / contract).
    """

    kind: str = "identity"
    lo: int = 0
    hi: int = 0
    off: int = 0
    k: int = 1

    def __call__(self, src: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Apply the mapping to parallel arrays of root channels and positions."""
        if self.kind == "identity":
            return src, pos
        if self.kind == "shift":
            m = (pos >= self.lo) & (pos < self.hi)
            return src[m], pos[m] + self.off
        if self.kind == "expand":
            j = np.arange(self.k, dtype=np.int64)
            return np.repeat(src, self.k), (pos[:, None] * self.k + j[None, :]).reshape(-1)
        if self.kind == "contract":
            return src, pos // self.k
        raise ValueError(f"unknown index map kind {self.kind!r}")

    def __str__(self) -> str:
        if self.kind == "shift":
            return f"shift[{self.lo}:{self.hi}]{self.off:+d}"
        if self.kind in ("expand", "contract"):
            return f"{self.kind}({self.k})"
        return "identity"


IDENTITY = IndexMap()


def shift(lo: int, hi: int, off: int) -> IndexMap:
    """Keep positions in ``[lo, hi)`` and add ``off`` (Concat/Split/Slice)."""
    return IndexMap("shift", lo=lo, hi=hi, off=off)


def expand(k: int) -> IndexMap:
    """Channel ``c`` -> block ``[c*k, (c+1)*k)`` (identity when k == 1)."""
    return IDENTITY if k == 1 else IndexMap("expand", k=k)


def contract(k: int) -> IndexMap:
    """Feature ``p`` -> block ``p // k`` (identity when k == 1)."""
    return IDENTITY if k == 1 else IndexMap("contract", k=k)
