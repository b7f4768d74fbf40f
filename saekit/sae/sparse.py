"""Sparse codes in coordinate form, and the gather/scatter kernels that train on them.

TopK-style selection carries no gradient, so training splits in two (the same idea as the
MP-SAE replay, docs/methods.md#mpsae-replay):
choose (row, latent) pairs without autograd from the dense
pre-activations, then recompute only the chosen values with autograd. The backward then
touches B·k encoder rows and atoms instead of a dense [batch, n_latents] gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from saekit.sae import native


@dataclass
class SparseCode:
    """Non-zeros of a [batch, n_latents] code matrix, sorted by row.

    rows, cols: LongTensor [nnz]; values: Tensor [nnz] (may carry gradient). A (row, col) pair
    may repeat (matching pursuit re-selects atoms): repeated values add up.
    decoded: Σ_i f_i d_i [batch, d_out] without the bias, when the selector already computed
      it more cheaply than a gather (the MP-SAE replay); None otherwise.
    stats: per-token diagnostics of the selection by name, each [batch] (pursuit steps,
      tokens whose norm-matching prefix was capped, ...).
    """

    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    batch: int
    n_latents: int
    decoded: torch.Tensor | None = None
    stats: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_dense(self, detach: bool = True) -> torch.Tensor:
        """[batch, n_latents]; repeated entries summed. Detached unless asked (metrics and
        dead-latent tracking need no gradient; inference `encode` keeps it)."""
        values = self.values.detach() if detach else self.values
        out = values.new_zeros(self.batch * self.n_latents)
        out = out.index_add(0, self.rows * self.n_latents + self.cols, values)
        return out.view(self.batch, self.n_latents)

    def select(self, keep: torch.Tensor) -> SparseCode:
        return SparseCode(
            self.rows[keep], self.cols[keep], self.values[keep], self.batch, self.n_latents
        )


def dense_code(code: SparseCode | torch.Tensor, detach: bool = True) -> torch.Tensor:
    """A selector's output as a dense [batch, n_latents] matrix."""
    if isinstance(code, SparseCode):
        return code.to_dense(detach)
    return code.detach() if detach else code


def row_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) [batch, k] of each row's k largest scores, in descending order, as
    `scores.topk(k, dim=-1)`. On CPU for fp32/fp64 through the C kernel (sparse_kernels.c,
    several times faster than torch's at SAE shapes); equal scores keep the lower index.
    Without gradient: selection scores never carry one."""
    batch, n = scores.shape
    run = native.kernel("row_topk", scores.dtype) if scores.device.type == "cpu" else None
    if run is None or not 1 <= k <= n or batch == 0:
        return scores.detach().topk(k, dim=-1)
    scores = scores.detach().contiguous()
    values = scores.new_empty(batch, k)
    indices = torch.empty(batch, k, dtype=torch.long)

    def rows(start: int, stop: int, worker: int) -> None:
        run(
            native.ptr(scores) + start * n * scores.element_size(), stop - start, n, k,
            native.ptr(values) + start * k * values.element_size(),
            native.ptr(indices) + start * k * 8,
        )  # fmt: skip

    native.split_rows(batch, rows)
    return values, indices


def from_topk(indices: torch.Tensor, n_latents: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row top-k indices [batch, k] -> (rows, cols), each [batch * k]."""
    batch, k = indices.shape
    rows = torch.arange(batch, device=indices.device).repeat_interleave(k)
    return rows, indices.reshape(-1)


def row_offsets(rows: torch.Tensor, batch: int) -> torch.Tensor:
    """Start of each row's entries in a row-sorted entry list (embedding_bag offsets)."""
    offsets = torch.zeros(batch, dtype=torch.long, device=rows.device)
    offsets[1:] = torch.bincount(rows, minlength=batch).cumsum(0)[:-1]
    return offsets


class _SelectedPreActivations(torch.autograd.Function):
    """values[e] = <W_enc[cols[e]], x_c[rows[e]]> + b_enc[cols[e]] at the chosen entries.

    The forward reuses the values already computed by the no-grad dense matmul; the backward
    touches only the nnz entries: a sparse [n_latents, batch] x [batch, d_in] product for
    W_enc and an embedding_bag for x_c (each ~20x faster on CPU than fancy-index gathers of
    [nnz, d_in] temporaries).
    """

    @staticmethod
    def forward(ctx, x_centered, W_enc, b_enc, rows, cols, offsets, values):
        ctx.save_for_backward(x_centered, W_enc, rows, cols, offsets)
        ctx.has_bias = b_enc is not None
        return values.clone()

    @staticmethod
    def backward(ctx, grad):
        x_centered, W_enc, rows, cols, offsets = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = torch.zeros(W_enc.shape[0], dtype=grad.dtype, device=grad.device)
            grad_b.index_add_(0, cols, grad)
        native_grads = sparse_backward(
            W_enc, x_centered, rows, cols, grad,
            need_a=ctx.needs_input_grad[1], need_b=ctx.needs_input_grad[0],
        )  # fmt: skip
        if native_grads is not None:
            grad_w, grad_x, _ = native_grads
            return grad_x, grad_w, grad_b, None, None, None, None
        if ctx.needs_input_grad[0]:
            if offsets.numel():  # rows sorted: one embedding_bag
                grad_x = F.embedding_bag(cols, W_enc, offsets, mode="sum", per_sample_weights=grad)
            else:
                shape = (x_centered.shape[0], W_enc.shape[0])
                grad_x = _sparse_times(rows, cols, grad, shape, W_enc)
        if ctx.needs_input_grad[1]:
            shape = (W_enc.shape[0], x_centered.shape[0])
            grad_w = _sparse_times(cols, rows, grad, shape, x_centered)
        return grad_x, grad_w, grad_b, None, None, None, None


class _SparseDecode(torch.autograd.Function):
    """Σ_i f_i d_i per row by embedding_bag; the backward by the C kernel (sparse_backward),
    used only where that kernel runs."""

    @staticmethod
    def forward(ctx, values, W_dec, rows, cols, offsets):
        ctx.save_for_backward(values, W_dec, rows, cols)
        return F.embedding_bag(cols, W_dec, offsets, mode="sum", per_sample_weights=values)

    @staticmethod
    def backward(ctx, grad_out):
        values, W_dec, rows, cols = ctx.saved_tensors
        grad_w, _, grad_values = sparse_backward(
            W_dec, grad_out, rows, cols, values,
            need_a=ctx.needs_input_grad[1], need_dots=ctx.needs_input_grad[0],
        )  # fmt: skip
        return grad_values, grad_w, None, None, None


def sparse_backward(
    A: torch.Tensor, B: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
    coef: torch.Tensor, need_a: bool = False, need_b: bool = False, need_dots: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None] | None:  # fmt: skip
    """For entries e = (rows[e], cols[e]) with coefficients coef[e]: (grad_A, grad_B, dots) with
    grad_A[cols[e]] += coef[e]·B[rows[e]], grad_B[rows[e]] += coef[e]·A[cols[e]] and
    dots[e] = <A[cols[e]], B[rows[e]]>, each only if asked. One pass of the C kernel; None where
    it does not run (not CPU, a dtype other than fp32/fp64, mixed dtypes, no compiler)."""
    run = native.kernel("sparse_backward", A.dtype) if A.device.type == "cpu" else None
    if run is None or not (B.dtype == coef.dtype == A.dtype) or B.device.type != "cpu":
        return None
    A, B, coef = A.detach().contiguous(), B.detach().contiguous(), coef.detach().contiguous()
    rows, cols = rows.contiguous(), cols.contiguous()
    out_a = torch.zeros_like(A) if need_a else None
    out_b = torch.zeros_like(B) if need_b else None
    out_dots = coef.new_empty(coef.shape) if need_dots else None
    n_a, n_b, d = A.shape[0], B.shape[0], A.shape[1]

    def part(start: int, stop: int, worker: int) -> None:
        # Worker w owns B rows [start, stop) and the same share of A's rows: disjoint writes.
        a_lo, a_hi = n_a * start // n_b, n_a * stop // n_b
        status = run(
            native.ptr(A), native.ptr(B), native.ptr(rows), native.ptr(cols), native.ptr(coef),
            rows.numel(), d, a_lo, a_hi, start, stop,
            native.ptr(out_a), native.ptr(out_b), native.ptr(out_dots),
        )  # fmt: skip
        if status != 0:
            raise MemoryError("sparse_backward: no memory for the column sort")

    native.split_rows(n_b, part)
    return out_a, out_b, out_dots


def _sparse_times(
    rows: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
    shape: tuple[int, int],
    dense: torch.Tensor,
) -> torch.Tensor:
    """S @ dense for the sparse S [shape] with S[rows, cols] = values."""
    sparse = torch.sparse_coo_tensor(
        torch.stack([rows, cols]), values, shape, check_invariants=False
    )
    return torch.sparse.mm(sparse, dense)


def gather_values(
    x_centered: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor | None,
    rows: torch.Tensor,
    cols: torch.Tensor,
    pre: torch.Tensor | None = None,
    known: torch.Tensor | None = None,
) -> torch.Tensor:
    """Differentiable pre-activations at the chosen (row-sorted) entries only, [nnz].
    `pre` [batch, n_latents]: the same pre-activations computed without gradient, if at hand;
    `known` [nnz]: the values themselves, if the selection already read them."""
    with torch.no_grad():
        if known is not None:
            values = known
        elif pre is not None:
            values = pre[rows, cols]
        else:
            values = (x_centered[rows] * W_enc[cols]).sum(-1)
            if b_enc is not None:
                values = values + b_enc[cols]
    is_sorted = rows.numel() < 2 or bool((rows[1:] >= rows[:-1]).all())
    offsets = row_offsets(rows, x_centered.shape[0]) if is_sorted else rows.new_empty(0)
    return _SelectedPreActivations.apply(x_centered, W_enc, b_enc, rows, cols, offsets, values)


def sparse_decode(
    code: SparseCode, W_dec: torch.Tensor, b_dec: torch.Tensor | None
) -> torch.Tensor:
    """[batch, d_in] = Σ_i f_i d_i (+ b_dec), via embedding_bag (no [nnz, d_in] temporary);
    on CPU its backward goes through the C kernel."""
    offsets = row_offsets(code.rows, code.batch)
    on_cpu = W_dec.device.type == "cpu" and code.values.dtype == W_dec.dtype
    if on_cpu and native.kernel("sparse_backward", W_dec.dtype) is not None:
        out = _SparseDecode.apply(code.values, W_dec, code.rows, code.cols, offsets)
    else:
        out = F.embedding_bag(code.cols, W_dec, offsets, mode="sum", per_sample_weights=code.values)
    return out if b_dec is None else out + b_dec


def sort_by_row(rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entries chosen across the whole batch (BatchTopK) come unordered; decoding wants rows
    contiguous."""
    order = torch.argsort(rows * (cols.max() + 1 if cols.numel() else 1) + cols)
    return rows[order], cols[order]
