"""Adaptive-sparsity curves (docs/evaluation.md#adaptive): reconstruction error against the sparsity
chosen at inference, for SAEs trained at one sparsity.

Settings (ways of changing an SAE's inference sparsity), each a curve over a knob:
- `mp_steps`: MP-SAE pursuit steps T_inf = 1 … 4·T_train (`n_steps`), no early stop;
- `mp_threshold`: the same caps with a relative residual stop ‖r‖²/‖x − b_pre‖² < τ_rel
  (per-token steps, so the realised L0 adapts to each token);
- `topk_k`: per-token TopK at k = 1 … 4·k_train (`k`; TopK, and BatchTopK-family SAEs
  through their per-token TopK mode);
- `threshold`: BatchTopK-family / JumpReLU thresholds divided by a factor
  (`threshold_divisor` v: θ/v; v = 1 is the trained model, v = 2 halves θ, so a larger v is
  a larger budget like a larger k or T).

MP and TopK curves come from one pass each: the T_inf-step pursuit is the first T_inf steps
of the 4·T_train-step one, and TopK at k is the first k entries of the sorted top 4·k_train,
so every budget is read off one selection by accumulating the residual along it. The
results equal `sae.encode(x, n_steps=t)` / `sae.encode(x, k=k)` + `decode` (tested).

Per point: realised L0 (mean distinct non-zero latents per token), FVU = Σ‖x − x̂‖² /
Σ‖x − x̄‖² (centred), EV = 1 − FVU, MSE (per token), mean pursuit steps (MP). Per curve:
FVU/EV at the training value, FVU at 2× and 4×, extrapolation gain FVU(train) − FVU(2·train),
monotonicity violations (FVU rising by > 1e-6 relative between consecutive budgets), and the
area under FVU over log2(budget) divided by the log2 range.

Functions: `adaptive_curve(sae, x) -> list[point]` (flat), `adaptive_report(sae, x) -> dict`,
`adaptive_group(run)` (the eval suite's `adaptive` group). Its table is tables.ADAPTIVE, its
figures comparison.py's "adaptive" ones.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from saekit.evaluation.base import EvalRun, Skip
from saekit.sae.base import SAE

# Budget multipliers of the threshold sweep (θ / v).
THRESHOLD_DIVISORS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
_REL_TOL = 1e-6  # an FVU rise below this (relative) is float noise, not a violation


@dataclass
class Setting:
    """One way of varying inference sparsity: `values` of `knob`, trained at `train_value`.
    relative_threshold: the residual stop of `mp_threshold` (None elsewhere)."""

    name: str
    knob: str
    train_value: float
    values: list[float]
    relative_threshold: float | None = None


def budgets(train_value: int, max_factor: float = 4.0) -> list[int]:
    """Every integer 1 … max_factor·train_value (the curves cost one pass whatever the
    count, and a dense grid makes the monotonicity count meaningful)."""
    return list(range(1, int(max_factor * train_value) + 1))


def settings_for(
    sae: SAE, max_factor: float = 4.0, relative_threshold: float | None = None
) -> list[Setting]:
    """The settings that apply to `sae` (empty: no inference sparsity knob, e.g. ReLU).
    relative_threshold: τ_rel of `mp_threshold`; None = the config's, else chosen from the
    data by `adaptive_curve` (the median ‖r‖²/‖r⁰‖² at T_train)."""
    out: list[Setting] = []
    if sae.is_transcoder:  # the curves measure reconstruction of the input
        return out
    if "n_steps" in sae.knobs:
        T = int(sae.cfg.n_steps)
        tau = relative_threshold if relative_threshold is not None else sae.cfg.relative_threshold
        out.append(Setting("mp_steps", "n_steps", T, budgets(T, max_factor)))
        out.append(Setting("mp_threshold", "n_steps", T, budgets(T, max_factor), tau))
    if per_token_topk_applies(sae):
        k = int(sae.cfg.k)
        ks = [v for v in budgets(k, max_factor) if v <= sae.n_latents]
        out.append(Setting("topk_k", "k", k, ks))
    if "threshold_scale" in sae.knobs and bool((sae.threshold >= 0).all()):
        out.append(Setting("threshold", "threshold_divisor", 1.0, list(THRESHOLD_DIVISORS)))
    return out


# ---- one pass per setting ---------------------------------------------------------------------


def _path_energies(
    r0: torch.Tensor, W: torch.Tensor, indices: torch.Tensor, coefs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual energies and distinct-atom counts along a greedy path, in float64.

    r0 [B, d] = x − b_dec; W [p, d]; indices, coefs [B, S] (coef 0 = no change).
    Returns E [B, S + 1] with E[:, s] = ‖r0 − Σ_{t<s} coefs_t W[indices_t]‖² and
    L [B, S + 1], the number of distinct atoms with a non-zero coefficient among the first s.
    """
    r = r0.double().clone()
    Wd = W.detach().double()
    B, S = indices.shape
    E = r.new_empty(B, S + 1)
    E[:, 0] = r.pow(2).sum(1)
    new = torch.zeros(B, S, dtype=torch.bool, device=r.device)
    for t in range(S):
        j, a = indices[:, t], coefs[:, t].double()
        r.addcmul_(Wd.index_select(0, j), a[:, None], value=-1)
        E[:, t + 1] = r.pow(2).sum(1)
        # A re-selected atom adds to its code but not to L0 (steps with coef 0 never count).
        seen = (indices[:, :t] == j[:, None]) & (coefs[:, :t] != 0)
        new[:, t] = (a != 0) & ~seen.any(1)
    L = torch.cat([new.new_zeros(B, 1, dtype=torch.long), new.long().cumsum(1)], 1)
    return E, L


def _first_below(E: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
    """[B] index of the first column of E [B, S+1] below thr [B] (S + 1 when none): the
    number of steps a pursuit with that stop takes before stopping."""
    below = E < thr[:, None]
    never = torch.full_like(thr, E.shape[1], dtype=torch.long)
    return torch.where(below.any(1), below.float().argmax(1), never)


class _Accumulator:
    """Float64 sums per (setting, value): squared error, L0, steps and token count."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, float], list[float]] = {}

    def add(self, key: tuple[str, float], err: torch.Tensor, l0: torch.Tensor,
            steps: torch.Tensor | None = None) -> None:  # fmt: skip
        s = self.sums.setdefault(key, [0.0, 0.0, 0.0, 0])
        s[0] += float(err.double().sum())
        s[1] += float(l0.double().sum())
        s[2] += float(steps.double().sum()) if steps is not None else math.nan
        s[3] += err.shape[0]


@torch.no_grad()
def per_token_topk_applies(sae: SAE) -> bool:
    """Any encoder SAE trained at a k (TopK, g-SAE, and the batch-level rules BatchTopK,
    Matryoshka, Feature/Mutual Choice) can be read as per-token TopK at any k; signed
    coders are left out (the read-off ReLUs)."""
    return sae.encoder is not None and hasattr(sae.cfg, "k") and not sae.signed_codes


def _mp_paths(sae: SAE, x: torch.Tensor, t_max: int) -> tuple[torch.Tensor, ...]:
    """One t_max-step pursuit without a stop on x [B, d_in] -> (E, L, steps), each
    [B, t_max + 1]: residual energy, distinct atoms and code-changing steps after s steps."""
    # 0 disables the config's own thresholds: the thresholded curve is derived from E.
    r0 = x - sae.b_dec
    sel = sae.selector.pursue(sae, r0, t_max, residual_threshold=0.0, relative_threshold=0.0)
    atoms = sae.selector.atoms(sae)
    E, L = _path_energies(r0, atoms, sel.indices, sel.coefs * sel.updated)
    steps = sel.updated.long().cumsum(1)
    return E, L, torch.cat([steps.new_zeros(steps.shape[0], 1), steps], 1)


def _mp_accumulate(paths: tuple[torch.Tensor, ...], s: Setting, acc: _Accumulator) -> None:
    """A token stops at the cap, or (mp_threshold) at its first step below τ_rel·‖r⁰‖²."""
    E, L, steps = paths
    stop = torch.full((E.shape[0],), E.shape[1], dtype=torch.long, device=E.device)
    if s.relative_threshold is not None:
        stop = _first_below(E, s.relative_threshold * E[:, 0])
    for v in s.values:
        cap = torch.clamp(stop, max=int(v))[:, None]
        acc.add((s.name, v), E.gather(1, cap)[:, 0], L.gather(1, cap)[:, 0],
                steps.gather(1, cap)[:, 0])  # fmt: skip


@torch.no_grad()
def _topk_batch(sae: SAE, x: torch.Tensor, s: Setting, acc: _Accumulator) -> None:
    pre = sae.pre_activations(x)
    vals, idx = pre.topk(int(max(s.values)), dim=-1)
    E, L = _path_energies(x - sae.b_dec, sae.W_dec, idx, vals.relu())
    for v in s.values:
        acc.add((s.name, v), E[:, int(v)], L[:, int(v)])


@torch.no_grad()
def _threshold_batch(sae: SAE, x: torch.Tensor, s: Setting, acc: _Accumulator) -> None:
    pre = sae.pre_activations(x)
    theta = sae.threshold  # scalar (BatchTopK family) or [n_latents] (JumpReLU)
    for v in s.values:
        codes = pre * (pre > theta / v)
        err = (x - sae.decode(codes)).double().pow(2).sum(1)
        acc.add((s.name, v), err, (codes != 0).sum(1))


# ---- public API -------------------------------------------------------------------------------


@torch.no_grad()
def adaptive_curve(
    sae: SAE,
    x: torch.Tensor,
    settings: list[Setting] | None = None,
    max_factor: float = 4.0,
    relative_threshold: float | None = None,
    batch_size: int = 2048,
) -> list[dict[str, Any]]:
    """Error against inference sparsity for every setting of `sae` on held-out x [n, d_in]
    (raw activations, the units the SAE was saved in).

    Returns one dict per (setting, budget): setting, knob, value, `<knob>`: value,
    train_value, l0, fvu, ev, mse and, for MP, steps (mean pursuit steps per token) and
    relative_threshold. Empty when the SAE has no inference knob.
    """
    sae = sae.eval()
    # A per-token standardised SAE's curve is taken in its coder's units (standardising twice
    # changes nothing), like its training loss; for every other SAE these are raw units.
    x = sae.coder_input(x.detach().to(sae.W_dec.device, sae.W_dec.dtype))[0]
    if settings is None:
        settings = settings_for(sae, max_factor, relative_threshold)
    settings = [dataclasses.replace(s) for s in settings]  # the auto τ_rel is set on copies
    acc = _Accumulator()
    mp = [s for s in settings if s.name.startswith("mp_")]
    paths = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size]
        if mp:
            paths.append(_mp_paths(sae, xb, int(max(max(s.values) for s in mp))))  # type: ignore[arg-type]
        for s in settings:
            if s.name == "topk_k":
                _topk_batch(sae, xb, s, acc)  # type: ignore[arg-type]
            elif s.name == "threshold":
                _threshold_batch(sae, xb, s, acc)
    for s in mp:
        if s.name == "mp_threshold" and s.relative_threshold is None:
            # Median ‖r‖²/‖r⁰‖² at T_train: a token then stops once it is explained as well
            # as the median token is at the training budget.
            T = int(s.train_value)
            s.relative_threshold = float(
                torch.cat([E[:, T] / E[:, 0].clamp_min(1e-30) for E, _, _ in paths]).median()
            )
        for path in paths:
            _mp_accumulate(path, s, acc)
    xd = x.double()
    centred = float((xd - xd.mean(0)).pow(2).sum())
    points = []
    for s in settings:
        for v in s.values:
            err, l0, steps, n = acc.sums[s.name, v]
            fvu = err / centred if centred > 0 else math.nan
            p = {"setting": s.name, "knob": s.knob, "value": v, s.knob: v,
                 "train_value": s.train_value, "l0": l0 / n, "fvu": fvu, "ev": 1 - fvu,
                 "mse": err / n}  # fmt: skip
            if s.name.startswith("mp_"):
                p["steps"] = steps / n
                p["relative_threshold"] = s.relative_threshold
            points.append(p)
    return points


def summarise(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Summary of one setting's points (sorted by budget): see the module docstring."""
    pts = sorted(points, key=lambda p: p["value"])
    train = pts[0]["train_value"]
    fvu = {p["value"]: p["fvu"] for p in pts}
    values = [p["fvu"] for p in pts]
    violations = sum(b > a * (1 + _REL_TOL) + 1e-12 for a, b in zip(values, values[1:]))
    logs = np.log2([p["value"] for p in pts])
    area = float(np.trapezoid(values, logs) / (logs[-1] - logs[0])) if len(pts) > 1 else math.nan
    at = {p["value"]: p for p in pts}
    nan = math.nan
    return {
        "setting": pts[0]["setting"],
        "knob": pts[0]["knob"],
        "train_value": train,
        "l0_at_train": at[train]["l0"] if train in at else nan,
        "fvu_at_train": fvu.get(train, nan),
        "ev_at_train": 1 - fvu.get(train, nan),
        "fvu_at_2x": fvu.get(2 * train, nan),
        "fvu_at_4x": fvu.get(4 * train, nan),
        "l0_at_4x": at[4 * train]["l0"] if 4 * train in at else nan,
        "extrapolation_gain": fvu.get(train, nan) - fvu.get(2 * train, nan),
        "monotonicity_violations": int(violations),
        "normalised_area_fvu": area,
        "relative_threshold": pts[0].get("relative_threshold"),
    }


def adaptive_report(sae: SAE, x: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
    """The eval suite's `adaptive` group: the primary curve (MP steps without a stop; the
    threshold sweep for BatchTopK-family and JumpReLU SAEs; TopK's k) in the suite's
    format (knob, train_value, points with `<knob>`, l0, fvu; its summary fields), plus
    every setting under `curves` (summary + points). Raises the suite's Skip for SAEs without
    an inference sparsity knob. kwargs go to `adaptive_curve`."""
    points = adaptive_curve(sae, x, **kwargs)
    if not points:
        raise Skip(f"{sae.architecture} has no inference sparsity knob (n_steps, k or threshold)")
    names = list(dict.fromkeys(p["setting"] for p in points))
    curves = {n: {**summarise([p for p in points if p["setting"] == n]),
                  "points": [p for p in points if p["setting"] == n]} for n in names}  # fmt: skip
    primary = next(n for n in ("mp_steps", "threshold", "topk_k") if n in curves)
    return {**curves[primary], "n_tokens": int(x.shape[0]), "curves": curves}


def adaptive_group(run: EvalRun) -> dict[str, Any]:
    """The adaptive group, on the core group's held-out sample."""
    run.require_not_transcoder(
        "adaptive compares the reconstruction with x; a transcoder predicts a target"
    )
    x = run.require_sample()
    s = run.settings
    report = adaptive_report(
        run.label_free.sae, x, max_factor=s.adaptive_max_factor,
        relative_threshold=s.adaptive_relative_threshold,
    )  # fmt: skip
    return {"adaptive": {**report, **run.mode_note()}}


__all__ = [
    "THRESHOLD_DIVISORS",
    "Setting",
    "adaptive_curve",
    "adaptive_group",
    "adaptive_report",
    "budgets",
    "settings_for",
    "summarise",
]
