"""The search space of ``tune``, derived from the model and the pass registry.

What a model gets (`derive_space`):

* **pruning** (``prune-channels``) when the channel analysis finds at least one prunable
  group: ratio 0.05–0.7, the criteria and allocations the pass declares (read from its
  options' ``Literal`` types, so a new criterion joins the search without a change
  here), minus ``random`` (a baseline, never better) and ``bn`` (the cleanup before
  pruning folds BatchNorm away, leaving it nothing to score);
* **recovery** after pruning: ``reconstruct`` (training-free), and ``distill`` only when
  training data is given;
* **quantization** (``quantize-int8``): static QDQ or dynamic, its calibrators, per-channel
  or per-tensor weights (static), and how many layer groups may fall back to float (0
  turns the fidelity target off);
* **4-bit weight-only** quantization for transformer-like graphs when a pass named
  ``quantize-weights`` is registered (looked up by name: it is optional).

A configuration is a flat dict of Optuna parameters (``prune``, ``prune.ratio``, …,
``quant``, ``quant.calibrator``, ``quant.fallback``); `pipeline_of` turns it into pass
specs for `onnxcomp.api.optimize`. The presets are configurations too (`preset_configs`),
so they are measured as trials of the same run and marked as such. `spread_configs` is a
fixed spread over the space (INT8 variants, light pruning with recovery and INT8, a grid
of prune ratios with and without INT8) asked before the sampler's own configurations, so
the front spans the space from the first trials on, whatever the sampler then favours.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass, field
from typing import Any, get_args

import onnx

from onnxcomp.pipeline.presets import CLEANUP_GROUP
from onnxcomp.pipeline.registry import instantiate, registered_passes
from onnxcomp.pipeline.steps import Pipeline

#: Passes the space is made of (looked up in the registry by these names).
PRUNE, RECONSTRUCT, DISTILL, INT8, INT4 = "prune-channels", "reconstruct", "distill", "quantize-int8", "quantize-weights"

#: Fidelity target of ``quantize-int8`` when layers may fall back (the pass's default).
FALLBACK_TARGET = 0.99

#: Multiples kept channel counts are rounded to: onnxruntime's CPU convolutions run
#: blocked layouts (8 or 16 channels), so 45 channels can be slower than 64.
ROUND_TO = (1, 8, 16)

#: Prune ratios searched (a grid: equal configurations are recognised as such). Up to 0.95
#: (the pass's limit): the fast, lossy end of the front is part of what a user chooses from.
RATIO_LOW, RATIO_HIGH, RATIO_STEP = 0.05, 0.95, 0.05

#: Prune ratios of `spread_configs`: light ones (with recovery and INT8, what can beat the
#: INT8 preset within a tight floor) and a grid over the whole range.
LIGHT_RATIOS, GRID_RATIOS = (0.05, 0.1, 0.2), (0.1, 0.3, 0.5, 0.7, 0.85)

#: The fast end of `spread_configs`: heavy ratios, channels not rounded up (round_to 8
#: would keep 8 of 32 channels at any ratio past 0.75), with recovery, the last also with
#: INT8. A recovered model at 0.85 can match the original on a small eval set, and then
#: every slower, less accurate candidate is dominated: without these the front is the
#: original, one or two students and nothing faster (digits: 4 points).
FAST_RATIOS = (0.8, 0.9, 0.95)


@dataclass(frozen=True)
class SearchSpace:
    """Which passes apply to a model and the option values tried for each."""

    criteria: tuple[str, ...] = ()
    allocations: tuple[str, ...] = ()
    recoveries: tuple[str, ...] = ("none",)
    quant_modes: tuple[str, ...] = ("none",)
    calibrators: tuple[str, ...] = ()
    fallbacks: tuple[int, ...] = (0, 4, 16)
    transformer: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def prunable(self) -> bool:
        """Whether pruning is part of the space."""
        return bool(self.criteria)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (the report's ``space``)."""
        return {
            "prune": {"ratio": [RATIO_LOW, RATIO_HIGH, RATIO_STEP], "criterion": list(self.criteria),
                      "allocation": list(self.allocations), "round_to": list(ROUND_TO)} if self.prunable else None,
            "recover": list(self.recoveries),
            "quant": list(self.quant_modes),
            "calibrator": list(self.calibrators),
            "per_channel": [True, False] if "static" in self.quant_modes else [],
            "fallback": list(self.fallbacks),
            "transformer": self.transformer,
            "notes": list(self.notes),
        }


def _choices(pass_name: str, option: str) -> tuple[str, ...]:
    """The values a pass declares for a ``Literal`` option."""
    cls = registered_passes()[pass_name]
    return tuple(str(a) for a in get_args(typing.get_type_hints(cls.Options)[option]))


def is_transformer_like(model: onnx.ModelProto) -> bool:
    """Attention-style graph: LayerNorm or Softmax present, MatMuls outnumber convolutions.

    (The same test `quantize-int8` makes for ``mode=auto``; here on the ModelProto, before
    any graph is imported.)
    """
    ops = [n.op_type for n in model.graph.node]
    return ("LayerNormalization" in ops or "Softmax" in ops) and ops.count("MatMul") >= ops.count("Conv")


def _prunable(model: onnx.ModelProto) -> bool:
    from onnxcomp.pruning import analyze_model

    try:
        _, groups = analyze_model(model)
    except Exception:  # noqa: BLE001 - a graph the analysis cannot read is simply not pruned
        return False
    return any(g.prunable for g in groups)


def derive_space(model: onnx.ModelProto, *, train_data: bool) -> SearchSpace:
    """The search space for ``model`` (see the module doc)."""
    passes = registered_passes()
    notes: list[str] = []
    transformer = is_transformer_like(model)
    criteria: tuple[str, ...] = ()
    allocations: tuple[str, ...] = ()
    if PRUNE in passes and _prunable(model):
        criteria = tuple(c for c in _choices(PRUNE, "criterion") if c not in ("random", "bn"))
        allocations = _choices(PRUNE, "allocation")
    else:
        notes.append("no prunable channel group: pruning left out")
    recoveries = ["none"]
    if criteria and RECONSTRUCT in passes:
        recoveries.append("reconstruct")
    if criteria and DISTILL in passes and train_data:
        recoveries.append("distill")
    quant = ["none"]
    calibrators: tuple[str, ...] = ()
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if INT8 in passes and opset >= 13:
        # Static first for CNNs, dynamic first for transformers: the order the presets use.
        quant += ["dynamic", "static"] if transformer else ["static", "dynamic"]
        calibrators = _choices(INT8, "calibrator")
    elif INT8 in passes:
        notes.append(f"opset {opset} < 13: INT8 left out (convert the model with onnx.version_converter)")
    if INT4 in passes and transformer:
        quant.append("int4-weights")
    return SearchSpace(criteria=criteria, allocations=allocations, recoveries=tuple(recoveries),
                       quant_modes=tuple(quant), calibrators=calibrators, transformer=transformer, notes=tuple(notes))


def suggest(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """Ask an Optuna trial for one configuration of ``space`` (conditional parameters)."""
    config: dict[str, Any] = {}
    if space.prunable:
        config["prune"] = trial.suggest_categorical("prune", [False, True])
        if config["prune"]:
            config["prune.ratio"] = round(trial.suggest_float("prune.ratio", RATIO_LOW, RATIO_HIGH, step=RATIO_STEP), 4)
            config["prune.criterion"] = trial.suggest_categorical("prune.criterion", list(space.criteria))
            config["prune.allocation"] = trial.suggest_categorical("prune.allocation", list(space.allocations))
            config["prune.round_to"] = trial.suggest_categorical("prune.round_to", list(ROUND_TO))
            config["recover"] = trial.suggest_categorical("recover", list(space.recoveries))
    config["quant"] = trial.suggest_categorical("quant", list(space.quant_modes))
    if config["quant"] in ("static", "dynamic"):
        if config["quant"] == "static":
            config["quant.calibrator"] = trial.suggest_categorical("quant.calibrator", list(space.calibrators))
            config["quant.per_channel"] = trial.suggest_categorical("quant.per_channel", [True, False])
        config["quant.fallback"] = trial.suggest_categorical("quant.fallback", list(space.fallbacks))
    return config


def pipeline_of(config: dict[str, Any]) -> Pipeline:
    """The pipeline of a configuration: cleanup, [prune, recovery, cleanup], [quantization].

    Passes with options are instances; the cleanup group stays a group of names (run
    until stable, as in the presets).
    """
    steps: list[Any] = [CLEANUP_GROUP]
    if config.get("prune"):
        steps.append(instantiate((PRUNE, {"ratio": float(config["prune.ratio"]), "criterion": config["prune.criterion"],
                                          "allocation": config["prune.allocation"],
                                          "round_to": int(config.get("prune.round_to", 1))})))
        if config.get("recover", "none") != "none":
            steps.append(config["recover"])
        steps.append(CLEANUP_GROUP)
    quant = config.get("quant", "none")
    if quant in ("static", "dynamic"):
        fallback = int(config.get("quant.fallback", 16))
        opts: dict[str, Any] = {"mode": quant, "max_fallback": fallback,
                                "target_cosine": FALLBACK_TARGET if fallback > 0 else None}
        if quant == "static":
            opts["calibrator"] = config.get("quant.calibrator", "minmax")
            opts["per_channel"] = bool(config.get("quant.per_channel", True))
        steps.append(instantiate((INT8, opts)))
    elif quant == "int4-weights":
        steps.append(INT4)
    return Pipeline(tuple(steps))


def describe(config: dict[str, Any]) -> str:
    """A short human label: ``prune 0.3 l1/global + reconstruct + int8 static minmax fb16``."""
    parts = []
    if config.get("prune"):
        parts.append(f"prune {config['prune.ratio']:g} {config['prune.criterion']}/{config['prune.allocation']}"
                     f"/{config.get('prune.round_to', 1)}")
        if config.get("recover", "none") != "none":
            parts.append(config["recover"])
    quant = config.get("quant", "none")
    if quant == "static":
        per_tensor = "" if config.get("quant.per_channel", True) else " per-tensor"
        parts.append(f"int8 static {config.get('quant.calibrator')}{per_tensor} fb{config.get('quant.fallback')}")
    elif quant == "dynamic":
        parts.append(f"int8 dynamic fb{config.get('quant.fallback')}")
    elif quant == "int4-weights":
        parts.append("int4 weights")
    return " + ".join(parts) or "cleanup only"


def preset_configs(space: SearchSpace) -> dict[str, dict[str, Any]]:
    """The presets that fit the space, as configurations (their passes with default options).

    ``int8``, ``prune`` and ``prune-recover`` (with ``distill`` in place of ``reconstruct``
    for ``prune-distill-int8`` when training data is given). Defaults are read from the
    registered passes' options, so a changed default changes the preset's point with it.
    """
    passes = registered_passes()
    out: dict[str, dict[str, Any]] = {}
    base: dict[str, Any] = {"prune": False} if space.prunable else {}
    if len(space.quant_modes) > 1 and space.quant_modes[1] in ("static", "dynamic"):
        d = passes[INT8].Options()
        q: dict[str, Any] = {"quant": space.quant_modes[1], "quant.fallback": d.max_fallback}
        if q["quant"] == "static":
            q["quant.calibrator"] = d.calibrator
            q["quant.per_channel"] = d.per_channel
        out["int8"] = {**base, **q}
    else:
        q = {}
    if space.prunable:
        p = passes[PRUNE].Options()
        prune = {"prune": True, "prune.ratio": p.ratio, "prune.criterion": p.criterion, "prune.allocation": p.allocation,
                 "prune.round_to": p.round_to}
        if p.criterion not in space.criteria:
            return out
        out["prune"] = {**prune, "recover": "none", "quant": "none"}
        if "reconstruct" in space.recoveries:
            out["prune-recover"] = {**prune, "recover": "reconstruct", "quant": "none"}
        if "distill" in space.recoveries and q:
            out["prune-distill-int8"] = {**prune, "recover": "distill", **q}
    return out



def spread_configs(space: SearchSpace) -> list[dict[str, Any]]:
    """A fixed spread over the space, asked (in this order) before the sampler's own.

    1. INT8 alone: each calibrator with no fallback, the first calibrator with a few
       fallbacks, dynamic — the cheapest trials, and the ones that can beat the ``int8``
       preset under a tight floor (better ranges instead of float layers);
    2. light pruning (`LIGHT_RATIOS`) + recovery + INT8;
    3. a grid: `GRID_RATIOS` × (INT8 or not), with recovery (distill when training data
       is given, else reconstruct; without, when the space has no recovery) — the
       accurate and the fast, lossy ends of the front. The criterion and allocation
       cycle along the grid (the pass's default first), so each is tried at light and
       heavy ratios without multiplying the trials;
    4. the fast end: `FAST_RATIOS` with channels rounded to 1, recovered, the heaviest
       also with INT8 — faster, less accurate points for the front.

    An unrecovered copy of a recovered candidate is left out: it runs the same kernels on
    the same shapes (one latency measurement, `onnxcomp.tune.search`) at a worse metric,
    so it can never be on the front (the ``prune`` preset is the unrecovered point).
    Channels are rounded to 8 (onnxruntime's blocked convolution layouts).
    Configurations equal to a preset's are left out (the preset is a trial already);
    every one is a point of the space (`suggest` with these values gives them back).
    """
    passes = registered_passes()
    out: list[dict[str, Any]] = []
    base: dict[str, Any] = {"prune": False} if space.prunable else {}
    modes = [m for m in space.quant_modes if m in ("static", "dynamic")]
    quants: list[dict[str, Any]] = []
    for mode in modes:  # the model's preferred mode first (the order of quant_modes)
        if mode == "static":
            quants += [{"quant": "static", "quant.calibrator": c, "quant.per_channel": True, "quant.fallback": 0}
                       for c in space.calibrators]
            quants.append({"quant": "static", "quant.calibrator": space.calibrators[0], "quant.per_channel": True,
                           "quant.fallback": 4})
        else:
            quants.append({"quant": "dynamic", "quant.fallback": 0})
    out += [{**base, **q} for q in quants]
    int8 = next(iter(quants), None)
    if space.prunable:
        default = passes[PRUNE].Options()
        criteria = sorted(space.criteria, key=lambda c: c != default.criterion)  # the default first
        allocations = sorted(space.allocations, key=lambda a: a != "uniform")
        recover = "distill" if "distill" in space.recoveries else space.recoveries[-1]

        def pruned(ratio: float, q: dict[str, Any] | None, i: int = 0, round_to: int = 8) -> dict[str, Any]:
            return {"prune": True, "prune.ratio": ratio, "prune.criterion": criteria[i % len(criteria)],
                    "prune.allocation": allocations[i % len(allocations)], "prune.round_to": round_to,
                    "recover": recover, **(q or {"quant": "none"})}

        # After pruning, INT8 with a few fallbacks: pruning has made the layers touchier.
        pq = None if int8 is None else {**int8, "quant.fallback": 4}
        if pq is not None and recover != "none":
            out += [pruned(r, pq) for r in LIGHT_RATIOS]
        for offset, q in enumerate([None, pq] if pq is not None else [None]):
            out += [pruned(r, q, i + offset) for i, r in enumerate(GRID_RATIOS)]
        out += [pruned(r, None, i, round_to=1) for i, r in enumerate(FAST_RATIOS)]
        if pq is not None:
            out.append(pruned(FAST_RATIOS[-1], pq, len(FAST_RATIOS), round_to=1))
    presets = {json.dumps(c, sort_keys=True) for c in preset_configs(space).values()}
    seen: set[str] = set()
    unique = []
    for c in out:
        key = json.dumps(c, sort_keys=True)
        if key not in presets and key not in seen:
            seen.add(key)
            unique.append(c)
    return unique
