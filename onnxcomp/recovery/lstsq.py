"""Streamed ridge least squares and im2col patches.

A linear layer maps features ``x ∈ R^F`` (plus a constant 1 for the bias) to outputs
``y ∈ R^C``. Given samples stacked as ``X ∈ R^{M×F}`` and targets ``Y ∈ R^{M×C}``, the
ridge solution is::

    W* = argmin_W ||X W - Y||² + λ ||W||²  =  (XᵀX + λI)⁻¹ XᵀY

Only ``XᵀX`` (F×F) and ``XᵀY`` (F×C) depend on the data, and both are sums over samples,
so they are accumulated batch by batch (float64) and the samples are never stored.
``λ = ridge · mean(diag(XᵀX))`` makes the regulariser scale-free; the bias column is
not regularised (a mean shift is never "overfitting").

Grouped convolutions are ``G`` independent problems; every array here carries a leading
group axis so depthwise convs cost ``G`` small solves, not one huge block-diagonal one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Smallest relative ridge solved in float32 (smaller ones, and exact fits, in float64).
FLOAT32_RIDGE = 1e-3


@dataclass
class NormalEquations:
    """Running ``XᵀX`` and ``XᵀY`` for ``groups`` independent ridge problems.

    Attributes:
        features: Features per sample, without the bias column.
        outputs: Targets per sample (per group).
        groups: Number of independent problems (conv groups).
        bias: Whether a constant-1 column (intercept) is appended.
    """

    features: int
    outputs: int
    groups: int = 1
    bias: bool = True
    samples: int = 0
    xtx: np.ndarray = field(init=False, repr=False)
    xty: np.ndarray = field(init=False, repr=False)
    #: Per-group ``Σ ||y||²``, so residuals of any weights follow from the sums alone.
    yty: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        f = self.features + int(self.bias)
        self.xtx = np.zeros((self.groups, f, f), dtype=np.float64)
        self.xty = np.zeros((self.groups, f, self.outputs), dtype=np.float64)
        self.yty = np.zeros(self.groups, dtype=np.float64)

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Accumulate samples.

        Args:
            x: ``[G, M, F]`` features (or ``[M, F]`` when ``groups == 1``).
            y: ``[G, M, C]`` targets (or ``[M, C]``).
        """
        if x.ndim == 2:
            x, y = x[None], y[None]
        # One batch's products in the activations' own precision: float32 for onnxruntime's
        # tensors (twice BLAS's float64 speed; a batch holds at most a few thousand rows, so
        # the rounding stays ~1e-6 relative); the sums across batches are float64.
        dtype = np.promote_types(np.promote_types(x.dtype, y.dtype), np.float32)
        x = x.astype(dtype, copy=False)
        y = y.astype(dtype, copy=False)
        xt = x.transpose(0, 2, 1)
        f = self.features
        self.xtx[:, :f, :f] += np.matmul(xt, x)
        self.xty[:, :f] += np.matmul(xt, y)
        if self.bias:
            # The bias column's cross terms are plain column sums: cheaper than
            # concatenating a column of ones onto a large patch matrix.
            s = x.sum(axis=1, dtype=np.float64)
            self.xtx[:, :f, f] += s
            self.xtx[:, f, :f] += s
            self.xtx[:, f, f] += x.shape[1]
            self.xty[:, f] += y.sum(axis=1, dtype=np.float64)
        self.yty += np.einsum("gmc,gmc->g", y, y, dtype=np.float64)
        self.samples += x.shape[1]

    def residual(self, w: np.ndarray) -> float:
        """Relative squared error ``Σ||XW − Y||² / Σ||Y||²`` of weights ``w`` ``[G, F(+1), C]``.

        ``||XW − Y||² = tr(WᵀXᵀXW) − 2·tr(WᵀXᵀY) + ||Y||²``, from the accumulated sums.
        """
        w = w.astype(np.float64)
        quad = np.einsum("gfc,gfc->", w, np.matmul(self.xtx, w))  # BLAS, not a 3-operand einsum loop
        cross = np.einsum("gfc,gfc->", w, self.xty)
        total = float(self.yty.sum())
        return max(float(quad - 2 * cross + total), 0.0) / max(total, 1e-30)

    def solve(self, ridge: float) -> np.ndarray:
        """Solve the ridge problems.

        Args:
            ridge: Relative regularisation; ``λ = ridge · mean(diag(XᵀX))`` per group.
                From `FLOAT32_RIDGE` up the system is solved in float32.

        Returns:
            ``[G, F(+1), C]`` float64 weights; the last row is the bias when ``bias``.
        """
        f = self.features
        a = self.xtx.copy()
        idx = np.arange(f)
        diag = a[:, idx, idx]
        lam = ridge * diag.mean(axis=1) if f else np.zeros(self.groups)
        # A tiny floor keeps dead (all-zero) feature columns from making the system
        # singular; their weights then come out as zero.
        lam = np.maximum(lam, 1e-12 * np.maximum(diag.max(axis=1, initial=0.0), 1.0))
        a[:, idx, idx] += lam[:, None]
        if ridge >= FLOAT32_RIDGE:
            # The solve is most of a wide layer's refit (F³), and float32 halves it. With
            # this much ridge the system is well conditioned (cond ≤ 1 + F / ridge), the
            # weights are stored as float32 anyway, and every solution is judged by its
            # residual from the float64 sums (`residual`): a poor one is never kept.
            with np.errstate(all="ignore"):
                try:
                    w = np.linalg.solve(a.astype(np.float32), self.xty.astype(np.float32)).astype(np.float64)
                    if np.isfinite(w).all():
                        return w
                except np.linalg.LinAlgError:
                    pass
        try:
            return np.linalg.solve(a, self.xty)  # all groups in one batched call
        except np.linalg.LinAlgError:
            return np.stack([np.linalg.lstsq(a[g], self.xty[g], rcond=None)[0] for g in range(self.groups)])


def stratified_positions(samples: int, per_sample: int, cap: int, rng: np.random.Generator) -> np.ndarray | None:
    """Up to about ``cap`` row indices of a ``samples · per_sample`` row batch, the same
    number from each sample (rows of one sample -- spatial positions, tokens -- are
    correlated; spreading the budget over samples keeps the fit's data diverse).

    Returns:
        Sorted flat indices (sample-major), or None when every row fits in ``cap``.
    """
    if samples * per_sample <= cap:
        return None
    k = min(per_sample, max(1, -(-cap // max(samples, 1))))
    parts = [np.sort(rng.choice(per_sample, size=k, replace=False)) + i * per_sample for i in range(samples)]
    return np.concatenate(parts)


@dataclass(frozen=True)
class ConvGeometry:
    """The spatial hyper-parameters of an N-d convolution (N = 1, 2 or 3)."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]  # ONNX order: begins then ends
    group: int


def conv_patches(x: np.ndarray, geo: ConvGeometry, positions: np.ndarray | None = None) -> np.ndarray:
    """im2col: every receptive field of ``x`` as a feature row, grouped.

    Args:
        x: ``[N, Cin, *spatial]`` input.
        geo: The convolution's geometry.
        positions: Optional flat indices into ``N · prod(out_spatial)`` selecting a subset
            of output positions (subsampling for large feature maps).

    Returns:
        ``[G, M, (Cin/G)·prod(kernel)]`` with features ordered like the weight's
        ``[Cin/G, *kernel]`` axes, so ``patches @ W.reshape(Cout, -1).T`` is the conv.
    """
    nd = len(geo.kernel)
    n, cin = x.shape[:2]
    pad_width = [(0, 0), (0, 0)] + [(geo.pads[i], geo.pads[i + nd]) for i in range(nd)]
    xp = np.pad(x, pad_width) if any(geo.pads) else x
    span = [d * (k - 1) + 1 for k, d in zip(geo.kernel, geo.dilations)]
    win = np.lib.stride_tricks.sliding_window_view(xp, span, axis=tuple(range(2, 2 + nd)))
    # win: [N, Cin, *out_full, *span] -> stride the positions, dilate the window.
    sl = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in geo.strides)
    sl += tuple(slice(None, None, d) for d in geo.dilations)
    win = win[sl]
    out_sp = win.shape[2 : 2 + nd]
    # -> [N, *out, Cin, *kernel]
    perm = (0,) + tuple(range(2, 2 + nd)) + (1,) + tuple(range(2 + nd, 2 + 2 * nd))
    win = win.transpose(perm)
    if positions is None:
        flat = win.reshape(n * int(np.prod(out_sp)), cin, *geo.kernel)
    else:
        # Gather the chosen positions from the strided view, so the full patch matrix
        # of a large feature map is never materialised.
        flat = win[np.unravel_index(positions, (n, *out_sp))]
    g = geo.group
    return np.ascontiguousarray(flat.reshape(flat.shape[0], g, -1).transpose(1, 0, 2))


def conv_targets(y: np.ndarray, group: int, positions: np.ndarray | None = None) -> np.ndarray:
    """Conv outputs ``[N, Cout, *spatial]`` as ``[G, M, Cout/G]`` rows matching `conv_patches`."""
    c = y.shape[1]
    rows = np.moveaxis(y, 1, -1).reshape(-1, c)
    if positions is not None:
        rows = rows[positions]
    return np.ascontiguousarray(rows.reshape(rows.shape[0], group, c // group).transpose(1, 0, 2))
