"""Matching-pursuit kernels on plain tensors (docs/methods.md#mpsae-forward,
#mpsae-speed, #mpsae-adaptive).

Shapes: dictionary D [n_latents, d_in] with unit-norm rows (atoms); residual r [batch, d_in];
index sequence J [batch, n_steps]. Everything here is a function of tensors, so the MP-SAE
module (mpsae.py), evaluation code and benchmarks share one implementation.

A training pass splits in two (docs/methods.md#mpsae-replay):
1. `select_atoms`: the pursuit without autograd, records J. Either the direct loop
   (c = r Dᵀ every step) or the Gram path (c ← c − α G[j]: one matmul for c⁰ in all).
2. `replay`: recomputes the coefficients along J from the T chosen atoms only, with a
   hand-written reverse mode. Same gradient as backprop through the unrolled loop (J is
   piecewise constant in both) at O(B·T·d) time and O(B·d) saved memory.
On CPU the Gram pursuit and the replay run as C kernels (pursuit_kernels.c via native.py);
their torch versions here are the fallback and the GPU path. `naive_pursuit` is the textbook
loop with dense one-hots, kept as the reference for tests and benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import scipy.linalg.blas
import torch
from threadpoolctl import threadpool_limits

from saekit.sae import native

Sign = Literal["nonneg", "signed", "abs"]
Method = Literal["auto", "direct", "gram", "gram_rows"]
SIGNS: tuple[str, ...] = ("nonneg", "signed", "abs")

# Cost of one Gram step per (sample, latent) entry (gather a G row, fused multiply-subtract,
# argmax) in matmul FLOPs: ~0.9 ns per entry on the torch path against ~82 GFLOP/s matmuls on
# one CPU thread (d_in 576, 4,608 latents, batch 1,024); the C kernel's ~0.3 ns makes this
# conservative. Only used to pick a path.
_GRAM_ENTRY_FLOPS = 64.0
# Without the C kernel, the CPU Gram path runs the batch in chunks whose correlation rows fit
# in L2 (~1 MiB), so each step streams one G row per sample instead of several passes over
# [batch, n_latents].
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
    scatter-add, so a re-selected atom accumulates. Differentiable in coefs."""
    return coefs.new_zeros(coefs.shape[0], n_latents).scatter_add_(1, indices, coefs)


def correlation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Correlations, the Gram matrix and the replay stay at least fp32: fp16/bf16 incremental
    updates change 20-70% of the selections within 64 steps (docs/methods.md#mpsae-speed)."""
    return torch.promote_types(dtype, torch.float32)


@torch.no_grad()
def gram_matrix(D: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """G = D Dᵀ [n_latents, n_latents] in the correlation dtype.

    On CPU, BLAS syrk computes one triangle (half the FLOPs of D @ D.T, on torch's thread
    count) and a tiled copy mirrors it, so G is exactly symmetric; elsewhere one matmul.
    out: a matrix of that shape and dtype to overwrite (training rebuilds G every step;
    reusing its memory saves faulting in ~85 MiB each time).
    """
    Dc = D.detach().to(correlation_dtype(D.dtype))
    p = Dc.shape[0]
    shape, dtype, device = (p, p), Dc.dtype, Dc.device
    ok = out is not None and (out.shape, out.dtype, out.device) == (shape, dtype, device)
    G = out if ok and out.is_contiguous() else torch.empty(shape, dtype=dtype, device=device)
    if device.type != "cpu":
        return torch.mm(Dc, Dc.T, out=G)
    syrk = scipy.linalg.blas.ssyrk if dtype == torch.float32 else scipy.linalg.blas.dsyrk
    with threadpool_limits(torch.get_num_threads(), user_api="blas"):
        # Column-major lower triangle of Dcᵀ·Dc, written in place = G's row-major upper one.
        syrk(1.0, Dc.contiguous().numpy().T, trans=1, lower=1, c=G.numpy().T, overwrite_c=1)
    mirror = native.kernel("mirror_upper", dtype)
    if mirror is not None:
        mirror(native.ptr(G), p)
    else:
        for i in range(0, p, 256):
            block = G[i : i + 256, i : i + 256]
            block.copy_(block.triu() + block.triu(1).T)
            G[i + 256 :, i : i + 256] = G[i : i + 256, i + 256 :].T
    return G


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
    if cached) plus O(B·p) per step; it pays when p ≲ (T−1)·B. When the p×p Gram would
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
    """One selection by the sign rule (docs/methods.md#mpsae-sign). c [batch, n_latents].

    Returns (j, α, updated), each [batch]. A step with α = 0 leaves the residual and so every
    later correlation unchanged, so it ends the sample: under `nonneg` that is a sample whose
    correlations are all ≤ 0.
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
    threshold. None when no threshold is set."""
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
            c.copy_(r @ Dc.T)  # exact recompute bounds the incremental fp32 drift
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
    its sign rule); the batch keeps running with finished samples masked
    (docs/methods.md#mpsae-adaptive).

    method: `direct` recomputes c = r Dᵀ every step; `gram` updates c ← c − α G[j] with
    G = D Dᵀ (pass `gram` to reuse one); `gram_rows` does the same with only the selected
    atoms' rows of G (for dictionaries whose Gram exceeds `gram_budget_bytes`); `auto` picks
    by `choose_method`. Gram paths recompute c = r Dᵀ exactly every `refresh_every` steps.
    """
    if sign not in SIGNS:
        raise ValueError(f"sign must be one of {SIGNS}, got {sign!r}")
    if not bool(torch.isfinite(r0).all()):
        raise ValueError("matching pursuit: the input contains NaN or Inf")
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
    abs_sq = None if residual_threshold is None else residual_threshold**2
    refresh = bool(refresh_every) and refresh_every <= n_steps - 1  # type: ignore[operator]
    stops = abs_sq is not None or relative_threshold is not None
    track = method == "direct" or refresh or stops
    c = r @ Dc.T  # c⁰: the one full matmul of the Gram path
    pursue = native.kernel("mp_pursue", dtype) if method == "gram" else None
    if pursue is not None and r.device.type == "cpu":
        assert gram is not None
        every = refresh_every if refresh else None
        _pursue_native(
            pursue, Dc, gram.to(dtype), r, c, out, sign, every, abs_sq, relative_threshold, track
        )
        return Selection(*out)
    chunk = max(batch, 1)
    if method == "gram" and r.device.type == "cpu":
        chunk = max(8, _CHUNK_BYTES // (dtype.itemsize * p))
    for start in range(0, batch, chunk):
        rows = slice(start, start + chunk)
        parts = (out[0][rows], out[1][rows], out[2][rows])
        _pursue(
            Dc, r[rows], c[rows], parts, sign, update, refresh_every, abs_sq, relative_threshold,
            track,
        )  # fmt: skip
    return Selection(*out)


def _pursue_native(
    pursue: Any,
    Dc: torch.Tensor,
    gram: torch.Tensor,
    r: torch.Tensor,
    c: torch.Tensor,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    sign: str,
    refresh_every: int | None,
    abs_sq: float | None,
    rel: float | None,
    track: bool,
) -> None:
    """`_pursue`'s loop for the Gram path in C (pursuit_kernels.c), same semantics: the
    kernel runs the steps between exact refreshes; the refreshes are batched matmuls here."""
    indices, coefs, updated = out
    if any(t.dtype != Dc.dtype for t in (c, gram, r)):  # the C kernel reads raw pointers
        raise TypeError(f"pursuit kernel: mixed dtypes {c.dtype}, {gram.dtype}, {r.dtype}")
    batch, p = c.shape
    n_steps = indices.shape[1]
    e0 = r.pow(2).sum(1) if rel is not None else torch.zeros(batch, dtype=r.dtype)  # unread
    finished = torch.zeros(batch, dtype=torch.uint8)
    flags = updated.view(torch.uint8)
    gram, Dc = gram.contiguous(), Dc.contiguous()
    bmax = torch.empty(torch.get_num_threads(), p, dtype=c.dtype)  # >= one max per block
    mode = SIGNS.index(sign)
    segment = refresh_every or max(n_steps, 1)
    for t0 in range(0, n_steps, segment):
        if t0 > 0:  # exact recompute bounds the incremental fp32 drift
            live = (finished == 0).nonzero().squeeze(1)
            if live.numel() == 0:
                break
            c[live] = r[live] @ Dc.T

        def run(start: int, stop: int, worker: int, t0: int = t0) -> None:
            rows = slice(start, stop)
            pursue(
                native.ptr(c[rows]), native.ptr(gram), native.ptr(r[rows]) if track else None,
                native.ptr(Dc), native.ptr(e0[rows]), stop - start, p, Dc.shape[1], n_steps,
                t0, min(t0 + segment, n_steps), mode, -1.0 if abs_sq is None else abs_sq,
                -1.0 if rel is None else rel, native.ptr(indices[rows]),
                native.ptr(coefs[rows]), native.ptr(flags[rows]), native.ptr(finished[rows]),
                native.ptr(bmax[worker]),
            )  # fmt: skip

        native.split_rows(batch, run)


class _Replay(torch.autograd.Function):
    """Coefficients along fixed indices, α_t = m_t ⟨d_{j_t}, r^{t−1}⟩ with
    r^t = r^{t−1} − α_t d_{j_t}, and x̂ = Σ_t α_t d_{j_t}; backward is reverse mode through
    that recursion, walking the residual back from r^T. O(B·T·d) time both ways and O(B·d)
    saved memory (r^T), not the T residuals or T one-hots of autograd through the loop.
    CPU fp32/fp64 runs the C kernels; otherwise a loop over T in torch (also the reference).
    """

    @staticmethod
    def forward(
        ctx: Any, D: torch.Tensor, r0: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = correlation_dtype(D.dtype)
        Dc, r0c = D.detach().to(dtype).contiguous(), r0.detach().to(dtype).contiguous()
        indices, mask = indices.contiguous(), mask.to(torch.uint8).contiguous()
        batch, T = indices.shape
        alpha = Dc.new_empty(batch, T)
        recon, r_final = torch.empty_like(r0c), torch.empty_like(r0c)
        forward = native.kernel("mp_replay_forward", dtype) if Dc.device.type == "cpu" else None
        if forward is not None:

            def run(start: int, stop: int, worker: int) -> None:
                rows = slice(start, stop)
                forward(
                    native.ptr(Dc), native.ptr(r0c[rows]), native.ptr(indices[rows]),
                    native.ptr(mask[rows]), stop - start, Dc.shape[1], T,
                    native.ptr(alpha[rows]), native.ptr(recon[rows]), native.ptr(r_final[rows]),
                )  # fmt: skip

            native.split_rows(batch, run)
        else:
            r = r_final.copy_(r0c)
            recon.zero_()
            for t in range(T):
                a_t = Dc[indices[:, t]]
                alpha[:, t] = (a_t * r).sum(1) * mask[:, t]
                r.addcmul_(a_t, alpha[:, t, None], value=-1)
                recon.addcmul_(a_t, alpha[:, t, None])
        ctx.save_for_backward(Dc, r_final, indices, mask, alpha)
        ctx.shapes = (D.dtype, r0.dtype)
        return alpha, recon

    @staticmethod
    def backward(
        ctx: Any, g_alpha: torch.Tensor | None, g_recon: torch.Tensor | None
    ) -> tuple[Any, ...]:
        Dc, r_final, indices, mask, alpha = ctx.saved_tensors
        d_dtype, r_dtype = ctx.shapes
        batch, T = indices.shape
        g_recon = (
            torch.zeros_like(r_final) if g_recon is None else g_recon.to(Dc.dtype).contiguous()
        )
        if g_alpha is not None:
            g_alpha = g_alpha.to(Dc.dtype).contiguous()
        want_D, want_r0 = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g_r0 = torch.empty_like(r_final)
        backward = (
            native.kernel("mp_replay_backward", Dc.dtype) if Dc.device.type == "cpu" else None
        )
        if backward is not None:
            g_Ds: dict[int, torch.Tensor] = {}
            scratch = Dc.new_empty(torch.get_num_threads(), 2 * Dc.shape[1])

            def run(start: int, stop: int, worker: int) -> None:
                rows = slice(start, stop)
                g_D = g_Ds.setdefault(worker, torch.zeros_like(Dc)) if want_D else None
                backward(
                    native.ptr(Dc), native.ptr(r_final[rows]), native.ptr(indices[rows]),
                    native.ptr(mask[rows]), native.ptr(alpha[rows]), native.ptr(g_recon[rows]),
                    native.ptr(g_alpha[rows] if g_alpha is not None else None), stop - start,
                    Dc.shape[1], T, native.ptr(g_D), native.ptr(g_r0[rows]),
                    native.ptr(scratch[worker]),
                )  # fmt: skip

            native.split_rows(batch, run)
            g_D = sum(g_Ds.values()) if want_D else None
        else:
            r, rho = r_final.clone(), torch.zeros_like(r_final)
            g_A = Dc.new_empty(batch, T, Dc.shape[1])
            for t in reversed(range(T)):
                a_t, alpha_t = Dc[indices[:, t]], alpha[:, t, None]
                u = g_recon - rho
                abar = (a_t * u).sum(1, keepdim=True)
                if g_alpha is not None:
                    abar += g_alpha[:, t, None]
                abar *= mask[:, t, None]
                r.addcmul_(a_t, alpha_t)  # r^{t−1} = r^t + α_t d_{j_t}
                torch.addcmul(alpha_t * u, abar, r, out=g_A[:, t])
                rho.addcmul_(abar, a_t)
            g_r0 = rho
            g_D = None
            if want_D:
                flat = g_A.view(-1, Dc.shape[1])
                g_D = torch.zeros_like(Dc).index_add_(0, indices.reshape(-1), flat)
        return (
            g_D.to(d_dtype) if g_D is not None else None,
            g_r0.to(r_dtype) if want_r0 else None,
            None,
            None,
        )


def replay(
    D: torch.Tensor, r0: torch.Tensor, indices: torch.Tensor, updated: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable coefficients along a fixed index sequence (docs/methods.md#mpsae-replay).

    D [n_latents, d_in] (unit rows), r0 = x − b_pre [batch, d_in], indices/updated
    [batch, n_steps]: α_t = ⟨d_{j_t}, r^{t−1}⟩ along the given indices, the MP recursion with
    the selection held fixed, so the gradient equals backprop through the unrolled loop (the
    argmax is piecewise constant). Steps that did not update get α_t = 0 and no gradient.

    Returns (α [batch, T], Σ_t α_t d_{j_t} [batch, d_in]), in the correlation dtype.
    """
    return _Replay.apply(D, r0, indices, updated)


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
    """Textbook MP as public implementations write it (docs/methods.md#mpsae-speed): c = r Dᵀ
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
