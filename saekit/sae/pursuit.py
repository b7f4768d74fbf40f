"""Matching-pursuit kernels on plain tensors (methods.md §3.2, §3.5, §3.6).

Shapes: dictionary D [n_latents, d_in] with unit-norm rows (atoms); residual r [batch, d_in];
index sequence J [batch, n_steps]. Everything here is a function of tensors, so the MP-SAE
module (mpsae.py), evaluation code and benchmarks share one implementation.

A training pass splits in two (§3.5):
1. `select_atoms`: the pursuit without autograd, records J. Either the direct loop
   (c = r Dᵀ every step) or the Gram path (c ← c − α G[j]: one matmul for c⁰ in all).
2. `replay`: recomputes the coefficients along J with autograd from the T chosen atoms only,
   through one batched unit lower-triangular solve. Same gradient as backprop through the
   unrolled loop (J is piecewise constant in both), at O(B·T·d + B·T²) memory.
`naive_pursuit` is the textbook loop with dense one-hots, kept as the reference for tests and
benchmarks.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

Sign = Literal["nonneg", "signed", "abs"]
Method = Literal["auto", "direct", "gram", "gram_rows"]
SIGNS: tuple[str, ...] = ("nonneg", "signed", "abs")

# Cost of one Gram step per (sample, latent) entry (gather a G row, fused multiply-subtract,
# argmax) in matmul FLOPs: ~0.9 ns per entry against ~82 GFLOP/s matmuls on one CPU thread
# (d_in 576, 4,608 latents, batch 1,024). Only used to pick a path.
_GRAM_ENTRY_FLOPS = 64.0
# On CPU the Gram path runs the batch in chunks whose correlation rows fit in L2 (~1 MiB),
# so each step streams one G row per sample instead of several passes over [batch, n_latents].
_CHUNK_BYTES = 1 << 20
# torch.max with indices is ~10x slower than amax on CPU; find the winning block of this many
# latents with amax, then the index inside it.
_ARGMAX_BLOCK = 128


@dataclass
class Selection:
    """What the pursuit chose, per sample and step.

    indices: [batch, n_steps] long, atom chosen at each step (arbitrary where not updated).
    coefs: [batch, n_steps], the step's coefficient α_t (0 where not updated).
    updated: [batch, n_steps] bool, the step changed the code. A finished sample stays
      finished, so each row is a prefix of True.
    """

    indices: torch.Tensor
    coefs: torch.Tensor
    updated: torch.Tensor

    @property
    def n_steps(self) -> torch.Tensor:
        """[batch] long: steps that updated the code before the sample stopped."""
        return self.updated.sum(1)

    def codes(self, n_latents: int) -> torch.Tensor:
        """[batch, n_latents]: coefficients summed per atom (re-selection accumulates)."""
        return scatter_codes(self.coefs, self.indices, n_latents)


def scatter_codes(coefs: torch.Tensor, indices: torch.Tensor, n_latents: int) -> torch.Tensor:
    """Dense codes [batch, n_latents] from per-step coefs/indices [batch, n_steps] by
    scatter-add, so a re-selected atom accumulates (§3.2 step 4). Differentiable in coefs."""
    return coefs.new_zeros(coefs.shape[0], n_latents).scatter_add_(1, indices, coefs)


def correlation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Correlations, the Gram matrix and the replay stay at least fp32: fp16/bf16 incremental
    updates change 20-70% of the selections within 64 steps (§3.5, precision)."""
    return torch.promote_types(dtype, torch.float32)


@torch.no_grad()
def gram_matrix(D: torch.Tensor, block: int = 256, out: torch.Tensor | None = None) -> torch.Tensor:
    """G = D Dᵀ [n_latents, n_latents] in the correlation dtype. Computes the lower block
    triangle and mirrors it: half the FLOPs of D @ D.T (~30% faster on CPU), exactly
    symmetric. out: a matrix of that shape and dtype to overwrite (training rebuilds G every
    step; reusing its memory saves faulting in a fresh one, see `Workspace`)."""
    Dc = D.detach().to(correlation_dtype(D.dtype))
    p = Dc.shape[0]
    shape, dtype, device = (p, p), Dc.dtype, Dc.device
    ok = out is not None and (out.shape, out.dtype, out.device) == (shape, dtype, device)
    G = out if ok and out.is_contiguous() else torch.empty(shape, dtype=dtype, device=device)
    for i in range(0, p, block):
        cols = Dc[i:] @ Dc[i : i + block].T  # G[i:, i:i+block]
        G[i:, i : i + block] = cols
        G[i : i + block, i + block :] = cols[block:].T
    return G


class Workspace:
    """Scratch tensors kept between training steps by one MP-SAE.

    A fresh CPU tensor above glibc's mmap threshold (32 MiB at most) is mapped anew and
    page-faulted in on every allocation. At d_in 576, 4,608 latents and batch 1,024 the Gram
    matrix and the replay's two buffers are ~250 MiB per step, and faulting them in took ~20%
    of a training step on our busy 2-core machine; reusing them removes that.

    `lend(name, …, owner)` gives a buffer to one autograd node until `release`, or until
    the node is freed (held by weak reference); a second lender meanwhile gets None and
    allocates. `holds(name, generation)` tells the node whether its buffer is intact.
    """

    def __init__(self) -> None:
        self._tensors: dict[str, torch.Tensor] = {}
        self._owner: dict[str, Any] = {}  # name -> weakref to the node holding the buffer
        self._generation: dict[str, int] = {}

    def tensor(self, name: str, shape: tuple[int, ...], dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:  # fmt: skip
        """A buffer of this shape (contents undefined), reused when it already fits."""
        t = self._tensors.get(name)
        if t is None or (tuple(t.shape), t.dtype, t.device) != (tuple(shape), dtype, device):
            self._tensors.pop(name, None)  # free the old one before allocating
            t = self._tensors[name] = torch.empty(shape, dtype=dtype, device=device)
        return t

    def lend(self, name: str, shape: tuple[int, ...], dtype: torch.dtype,
             device: torch.device, owner: Any) -> tuple[torch.Tensor, int] | None:  # fmt: skip
        ref = self._owner.get(name)
        if ref is not None and ref() is not None:
            return None  # still held by a live graph that has not run backward
        self._owner[name] = weakref.ref(owner)
        self._generation[name] = self._generation.get(name, 0) + 1
        return self.tensor(name, shape, dtype, device), self._generation[name]

    def holds(self, name: str, generation: int) -> bool:
        return self._generation.get(name) == generation

    def release(self, name: str, generation: int) -> None:
        if self.holds(name, generation):
            self._owner.pop(name, None)

    def clear(self) -> None:
        self._tensors.clear()
        self._owner.clear()


def choose_method(
    n_latents: int,
    d_in: int,
    batch: int,
    n_steps: int,
    itemsize: int = 4,
    gram_budget_bytes: int = 2**30,
    have_gram: bool = False,
) -> str:
    """Cheapest selection path by a FLOP estimate, within the memory budget.

    direct: n_steps − 1 extra matmuls of 2·B·d·p FLOPs. Gram: build p²·d (half of D Dᵀ, free
    if cached) plus O(B·p) per step; it pays when p ≲ (T−1)·B (§3.5). When the p×p Gram would
    exceed the budget, `gram_rows` builds per step only the rows of the atoms just selected.
    """
    if n_steps <= 1:
        return "direct"
    direct = 2.0 * (n_steps - 1) * batch * d_in * n_latents
    steps = _GRAM_ENTRY_FLOPS * (n_steps - 1) * batch * n_latents
    build = 0.0 if have_gram else float(n_latents) * n_latents * d_in
    if build + steps >= direct:
        return "direct"
    if have_gram or n_latents * n_latents * itemsize <= gram_budget_bytes:
        return "gram"
    return "gram_rows"


def _argmax(c: torch.Tensor, sign: str) -> torch.Tensor:
    """[batch, n_latents] -> [batch] index of the largest c (|c| under `abs`), first on ties."""
    batch, p = c.shape
    nb = p // _ARGMAX_BLOCK
    if nb < 2:
        return (c.abs() if sign == "abs" else c).argmax(1)
    head = c[:, : nb * _ARGMAX_BLOCK].view(batch, nb, _ARGMAX_BLOCK)
    score = head.amax(-1)
    if sign == "abs":
        score = torch.maximum(score, -head.amin(-1))
    best, block = score.max(1)
    inside = head.gather(1, block.view(-1, 1, 1).expand(-1, 1, _ARGMAX_BLOCK)).squeeze(1)
    j = block * _ARGMAX_BLOCK + (inside.abs() if sign == "abs" else inside).argmax(1)
    if nb * _ARGMAX_BLOCK < p:
        tail = c[:, nb * _ARGMAX_BLOCK :]
        tail_best, tail_j = (tail.abs() if sign == "abs" else tail).max(1)
        j = torch.where(tail_best > best, nb * _ARGMAX_BLOCK + tail_j, j)
    return j


def _choose(
    c: torch.Tensor, sign: str, finished: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One selection by the sign rule (§3.3). c [batch, n_latents].

    Returns (j, α, updated), each [batch]. A step with α = 0 leaves the residual and so every
    later correlation unchanged, so it ends the sample: under `nonneg` that is a sample whose
    correlations are all ≤ 0 (§3.6).
    """
    j = _argmax(c, sign)
    alpha = c.gather(1, j[:, None]).squeeze(1)
    if sign == "nonneg":
        alpha = alpha.clamp_min(0)
    updated = ~finished & (alpha != 0)
    return j, alpha * updated, updated


def _stopped(
    r: torch.Tensor, e0: torch.Tensor, abs_sq: float | None, rel: float | None
) -> torch.Tensor | None:
    """[batch] bool: residual below the absolute (‖r‖ < τ) or relative (‖r‖² < τ_rel·‖r⁰‖²)
    threshold (§3.6). None when no threshold is set."""
    if abs_sq is None and rel is None:
        return None
    energy = r.pow(2).sum(1)
    done = torch.zeros_like(energy, dtype=torch.bool)
    if abs_sq is not None:
        done |= energy < abs_sq
    if rel is not None:
        done |= energy < rel * e0
    return done


def _correlation_update(
    method: str, Dc: torch.Tensor, gram: torch.Tensor | None
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]:
    """In-place c ← correlations after r^t = r^{t−1} − α_t d_{j_t}; arguments (c, r, j, α)."""
    if method == "direct":
        return lambda c, r, j, alpha: c.copy_(r @ Dc.T)
    if method == "gram":
        assert gram is not None
        # c^t = c^{t−1} − α_t G[j_t]: O(B·p) per step instead of a matmul.
        return lambda c, r, j, alpha: c.addcmul_(gram.index_select(0, j), alpha[:, None], value=-1)

    def rows(c: torch.Tensor, r: torch.Tensor, j: torch.Tensor, alpha: torch.Tensor) -> None:
        # Only the distinct selected atoms' rows D[u] Dᵀ: never more than the direct matmul,
        # much less when samples share atoms, and no p×p matrix.
        uniq, inverse = torch.unique(j, return_inverse=True)
        c.addcmul_((Dc[uniq] @ Dc.T)[inverse], alpha[:, None], value=-1)

    return rows


def _pursue(
    Dc: torch.Tensor,
    r: torch.Tensor,
    c: torch.Tensor,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    sign: str,
    update: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None],
    refresh_every: int | None,
    abs_sq: float | None,
    rel: float | None,
    track_residual: bool = True,
) -> None:
    """The pursuit loop on one chunk of samples. r [chunk, d_in] and its correlations
    c [chunk, n_latents] are updated in place; the (indices, coefs, updated) rows in `out`
    are filled. track_residual=False skips updating r (the Gram paths without a threshold or
    a refresh never read it)."""
    indices, coefs, updated = out
    n_steps = indices.shape[1]
    e0 = r.pow(2).sum(1)
    finished = torch.zeros(r.shape[0], dtype=torch.bool, device=r.device)
    for t in range(n_steps):
        stop = _stopped(r, e0, abs_sq, rel)
        if stop is not None:
            finished |= stop
        j, alpha, upd = _choose(c, sign, finished)
        finished |= ~upd
        indices[:, t], coefs[:, t], updated[:, t] = j, alpha, upd
        if t == n_steps - 1 or bool(finished.all()):
            break
        # The residual is tracked explicitly (O(B·d) per step) for thresholds and refreshes.
        if track_residual:
            r.addcmul_(Dc.index_select(0, j), alpha[:, None], value=-1)
        if refresh_every and (t + 1) % refresh_every == 0:
            c.copy_(r @ Dc.T)  # exact recompute bounds the incremental drift (§3.5)
        else:
            update(c, r, j, alpha)


@torch.no_grad()
def select_atoms(
    D: torch.Tensor,
    r0: torch.Tensor,
    n_steps: int,
    sign: Sign = "nonneg",
    *,
    residual_threshold: float | None = None,
    relative_threshold: float | None = None,
    method: Method = "auto",
    refresh_every: int | None = 32,
    gram: torch.Tensor | None = None,
    gram_budget_bytes: int = 2**30,
) -> Selection:
    """Matching pursuit without autograd: D [n_latents, d_in] (unit rows) and r0 = x − b_pre
    [batch, d_in] -> Selection over at most `n_steps` steps.

    Re-selection is allowed and coefficients accumulate (classic MP). A sample stops updating
    once its residual passes a threshold, or its coefficient is 0 (nothing left to add under
    its sign rule); the batch keeps running with finished samples masked (§3.6).

    method: `direct` recomputes c = r Dᵀ every step; `gram` updates c ← c − α G[j] with
    G = D Dᵀ (pass `gram` to reuse one); `gram_rows` does the same with only the selected
    atoms' rows of G (for dictionaries whose Gram exceeds `gram_budget_bytes`); `auto` picks
    by `choose_method`. Gram paths recompute c = r Dᵀ exactly every `refresh_every` steps.
    """
    if sign not in SIGNS:
        raise ValueError(f"sign must be one of {SIGNS}, got {sign!r}")
    dtype = correlation_dtype(D.dtype)
    Dc = D.detach().to(dtype)
    r = r0.detach().to(dtype).clone()
    batch, p = r.shape[0], Dc.shape[0]
    if method == "auto":
        method = choose_method(  # type: ignore[assignment]
            p, Dc.shape[1], batch, n_steps, dtype.itemsize, gram_budget_bytes, gram is not None
        )
    if method == "gram" and gram is None:
        gram = gram_matrix(Dc)
    update = _correlation_update(method, Dc, gram)

    kw: dict[str, Any] = dict(device=r.device)
    out = (
        torch.zeros(batch, n_steps, dtype=torch.long, **kw),
        torch.zeros(batch, n_steps, dtype=dtype, **kw),
        torch.zeros(batch, n_steps, dtype=torch.bool, **kw),
    )
    chunk = max(batch, 1)
    if method == "gram" and r.device.type == "cpu":
        chunk = max(8, _CHUNK_BYTES // (dtype.itemsize * p))
    abs_sq = None if residual_threshold is None else residual_threshold**2
    refresh = bool(refresh_every) and refresh_every <= n_steps - 1  # type: ignore[operator]
    stops = abs_sq is not None or relative_threshold is not None
    track = method == "direct" or refresh or stops
    c = r @ Dc.T  # c⁰: the one full matmul of the Gram path
    for start in range(0, batch, chunk):
        rows = slice(start, start + chunk)
        parts = (out[0][rows], out[1][rows], out[2][rows])
        _pursue(
            Dc, r[rows], c[rows], parts, sign, update, refresh_every, abs_sq, relative_threshold,
            track,
        )  # fmt: skip
    return Selection(*out)


class _Replay(torch.autograd.Function):
    """(I + strictly_lower(S)) α = π with a hand-written backward.

    Memory traffic over the gathered atoms dominates on CPU, so everything runs on one
    buffer E [batch, T + 2, d_in] = (the T atoms, r⁰, ∂L/∂x̂): S and π come from one batched
    matmul, and ∂A and ∂r⁰ together from another; plain autograd would take ten small ones.
    """

    @staticmethod
    def forward(
        ctx: Any,
        D: torch.Tensor,
        r0: torch.Tensor,
        indices: torch.Tensor,
        mask: torch.Tensor,
        workspace: Workspace | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, T = indices.shape
        dtype = correlation_dtype(D.dtype)
        Dc = D.to(dtype)
        # Two placeholder rows per sample, overwritten with r⁰ now and ∂L/∂x̂ in backward.
        rows = torch.cat([indices, indices[:, :2]], 1).reshape(-1)
        shape = (rows.shape[0], D.shape[1])
        lease = workspace.lend("replay", shape, dtype, D.device, ctx) if workspace else None
        ctx.lease = (workspace, lease[1]) if lease else None
        if lease:
            E = torch.index_select(Dc, 0, rows, out=lease[0]).view(batch, T + 2, D.shape[1])
        else:
            E = Dc.index_select(0, rows).view(batch, T + 2, D.shape[1])
        E[:, T] = r0.to(dtype)
        A = E[:, :T]
        # [S | π]: S_ts = ⟨d_{j_t}, d_{j_s}⟩, π_t = ⟨d_{j_t}, r⁰⟩. Non-updated steps get a zero
        # row and π_t = 0, so α_t = 0.
        S_pi = torch.bmm(A, E[:, : T + 1].transpose(1, 2))
        lower = S_pi[..., :T].tril(-1) * mask.unsqueeze(-1)
        pi = S_pi[..., T] * mask
        # unitriangular: the solver takes the diagonal as 1, so `lower` stands for I + lower.
        alpha = torch.linalg.solve_triangular(
            lower, pi.unsqueeze(-1), upper=False, unitriangular=True
        ).squeeze(-1)
        recon = torch.bmm(alpha.unsqueeze(1), A).squeeze(1)
        ctx.save_for_backward(lower, alpha, mask, indices)
        # E is kept outside save_for_backward: backward writes ∂L/∂x̂ into it, which would trip
        # the saved-tensor version check on a second backward through a retained graph.
        ctx.E = E
        ctx.shapes = (D.shape, D.dtype, r0.dtype)
        return alpha, recon

    @staticmethod
    def backward(ctx: Any, g_alpha: torch.Tensor, g_recon: torch.Tensor) -> tuple[Any, ...]:
        workspace, generation = ctx.lease or (None, 0)
        if workspace is not None and not workspace.holds("replay", generation):
            raise RuntimeError(
                "MP-SAE replay: this graph's workspace buffer was reused by a later forward; "
                "run backward before the next training forward"
            )
        lower, alpha, mask, indices = ctx.saved_tensors
        E = ctx.E
        d_shape, d_dtype, r_dtype = ctx.shapes
        batch, T = indices.shape
        A = E[:, :T]
        g_recon = g_recon.to(E.dtype)
        E[:, T + 1] = g_recon
        g_alpha = g_alpha.to(E.dtype) + torch.bmm(A, g_recon.unsqueeze(-1)).squeeze(-1)
        # α = M⁻¹π with M = I + L  =>  ∂/∂π = M⁻ᵀ g_α = λ,  ∂/∂M = −λ αᵀ (strictly lower part).
        lam = torch.linalg.solve_triangular(
            lower.transpose(1, 2), g_alpha.unsqueeze(-1), upper=True, unitriangular=True
        ).squeeze(-1)
        g_pi = lam * mask
        g_lower = -(g_pi.unsqueeze(-1) * alpha.unsqueeze(1)).tril(-1)
        # Rows t < T: ∂a_t = Σ_s (L' + L'ᵀ)_ts a_s + g_π_t r⁰ + α_t ∂x̂ (from S = A Aᵀ, π = A r⁰
        # and x̂ = Σ α_t a_t); row T: ∂r⁰ = Σ_t g_π_t a_t. One matmul against E.
        M = E.new_zeros(batch, T + 1, T + 2)
        M[:, :T, :T] = g_lower + g_lower.transpose(1, 2)
        M[:, :T, T] = g_pi
        M[:, :T, T + 1] = alpha
        M[:, T, :T] = g_pi
        if workspace is not None:
            out = workspace.tensor("replay_grads", (batch, T + 1, E.shape[-1]), E.dtype, E.device)
            grads = torch.bmm(M, E, out=out)  # [batch, T + 1, d_in]
        else:
            grads = torch.bmm(M, E)
        g_D = g_r0 = None
        if ctx.needs_input_grad[0]:
            # Row T of each sample goes to a spare row p, dropped after the scatter.
            spare = torch.full((batch, 1), d_shape[0], dtype=indices.dtype, device=indices.device)
            rows = torch.cat([indices, spare], 1).reshape(-1)
            g_D = E.new_zeros(d_shape[0] + 1, d_shape[1])
            g_D = g_D.index_add_(0, rows, grads.view(-1, d_shape[1]))[:-1].to(d_dtype)
        if ctx.needs_input_grad[1]:
            g_r0 = grads[:, T].to(r_dtype, copy=True)  # grads may be a workspace buffer
        if workspace is not None:
            workspace.release("replay", generation)
        return g_D, g_r0, None, None, None


def replay(
    D: torch.Tensor,
    r0: torch.Tensor,
    indices: torch.Tensor,
    updated: torch.Tensor,
    workspace: Workspace | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable coefficients along a fixed index sequence (§3.5, "replay").

    D [n_latents, d_in], r0 = x − b_pre [batch, d_in], indices/updated [batch, n_steps].
    With A = D[J] [batch, T, d_in]: π_t = ⟨d_{j_t}, r⁰⟩, S_ts = ⟨d_{j_t}, d_{j_s}⟩ and
    α_t = π_t − Σ_{s<t} S_ts α_s, i.e. (I + strictly_lower(S)) α = π, which is the MP
    recursion α_t = ⟨d_{j_t}, r^{t−1}⟩ unrolled. Steps that did not update get α_t = 0 and
    no gradient.

    Returns (α [batch, T], Σ_t α_t d_{j_t} [batch, d_in]), in the correlation dtype.
    Autograd memory: A and S, not T residuals or one-hots. workspace: keep the large
    buffers between calls (see `Workspace`); backward must then run before the next call
    that reuses them, else it raises.
    """
    mask = updated.to(correlation_dtype(D.dtype))
    return _Replay.apply(D, r0, indices, mask, workspace)


def naive_pursuit(
    D: torch.Tensor,
    x: torch.Tensor,
    b_pre: torch.Tensor | None,
    n_steps: int,
    sign: Sign = "nonneg",
    *,
    residual_threshold: float | None = None,
    relative_threshold: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Textbook MP as public implementations write it (§3.3, §3.5 "naive cost"): c = r Dᵀ
    every step, a dense one-hot code update, autograd through the whole loop.

    The reference for tests and benchmarks, not for use. x [batch, d_in] ->
    (codes [batch, n_latents], x_hat [batch, d_in], steps [batch]).
    """
    r = x if b_pre is None else x - b_pre
    abs_sq = None if residual_threshold is None else residual_threshold**2
    e0 = r.detach().pow(2).sum(1)
    codes = x.new_zeros(x.shape[0], D.shape[0])
    finished = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    steps = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for _ in range(n_steps):
        stop = _stopped(r.detach(), e0, abs_sq, relative_threshold)
        if stop is not None:
            finished |= stop
        c = r @ D.T
        j = (c.detach().abs() if sign == "abs" else c.detach()).argmax(1)
        alpha = c.gather(1, j[:, None]).squeeze(1)
        if sign == "nonneg":
            alpha = alpha.relu()
        upd = ~finished & (alpha.detach() != 0)
        finished |= ~upd
        steps += upd
        onehot = torch.nn.functional.one_hot(j, D.shape[0]).to(x.dtype) * (alpha * upd)[:, None]
        codes = codes + onehot
        r = r - onehot @ D
    x_hat = codes @ D if b_pre is None else codes @ D + b_pre
    return codes, x_hat, steps
