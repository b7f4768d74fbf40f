"""The TopK training kernels (sparse_kernels.c): per-row top-k and the sparse backward, against
torch.topk and against autograd through dense codes, on the C kernels and on the torch path."""

from __future__ import annotations

import pytest
import torch

import saekit
from saekit.sae import native
from saekit.sae.sparse import SparseCode, from_topk, gather_values, row_topk, sparse_decode


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "batch,n,k",
    [(64, 4096, 32), (16, 4608, 128), (8, 17, 17), (8, 100, 1), (8, 33, 5), (4, 70000, 64)],
)
def test_row_topk_matches_torch(backend, dtype, batch, n, k):
    gen = torch.Generator().manual_seed(n + k)
    x = torch.randn(batch, n, generator=gen, dtype=dtype)
    for scores in (x, (3 * x).round(), -x.abs(), 1e-30 * x):  # ties, all negative, tiny
        values, indices = row_topk(scores, k)
        expected = scores.topk(k, dim=-1).values
        assert torch.equal(values, expected)
        assert torch.equal(scores.gather(1, indices), expected)
        assert (indices.sort(-1).values.diff(dim=-1) > 0).all()  # k distinct latents per row


def test_row_topk_ties_keep_the_lowest_index_and_infinities_order():
    scores = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0, 2.0], [0.0] * 6])
    values, indices = row_topk(scores, 2)
    assert indices.tolist() == [[1, 2], [0, 1]] and values.tolist() == [[2, 2], [0, 0]]
    x = torch.randn(4, 5000, generator=torch.Generator().manual_seed(0))
    x[0, 9], x[1, ::7], x[2, 11] = float("inf"), float("-inf"), float("-inf")
    values, indices = row_topk(x, 3)
    assert torch.equal(values, x.topk(3, dim=-1).values) and indices[0, 0] == 9


def test_row_topk_with_nan_still_returns_valid_latents():
    x = torch.randn(3, 5000, generator=torch.Generator().manual_seed(1))
    x[1, 7] = float("nan")
    _, indices = row_topk(x, 8)
    assert ((indices >= 0) & (indices < 5000)).all()
    assert all(len(set(row.tolist())) == 8 for row in indices)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_backward_matches_dense_autograd(backend, dtype):
    """Encoder values gathered at the top-k, ReLU'd, decoded: every gradient equals autograd
    through the dense code matrix."""
    gen = torch.Generator().manual_seed(2)
    batch, d, n, k = 48, 24, 200, 7
    x, W_enc, b_enc, W_dec = (
        torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_()
        for shape in ((batch, d), (n, d), (n,), (n, d))
    )
    rows, cols = from_topk((x @ W_enc.T + b_enc).detach().topk(k, dim=-1).indices, n)

    def sparse():
        values = gather_values(x, W_enc, b_enc, rows, cols).relu()
        return sparse_decode(SparseCode(rows, cols, values, batch, n), W_dec, None).pow(2).sum()

    def dense():
        pre = x @ W_enc.T + b_enc
        codes = torch.zeros(batch, n, dtype=dtype).index_put((rows, cols), pre[rows, cols].relu())
        return (codes @ W_dec).pow(2).sum()

    got = torch.autograd.grad(sparse(), (x, W_enc, b_enc, W_dec))
    want = torch.autograd.grad(dense(), (x, W_enc, b_enc, W_dec))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol * float(w.abs().max()))


def test_topk_training_step_is_the_same_on_both_paths(monkeypatch):
    """One TopK training step (AuxK included) gives the same loss and gradients with the C
    kernels and with the torch path."""
    x = torch.randn(256, 32, generator=torch.Generator().manual_seed(3))
    dead = torch.zeros(512, dtype=torch.bool)
    dead[::3] = True

    def step():
        sae = saekit.create("topk", d_in=32, n_latents=512, k=8, k_aux=16)
        ctx = saekit.sae.base.TrainContext(dead_mask=dead)
        out = sae.training_forward(x, ctx)
        sum(out.losses.values()).backward()
        return out, {n: p.grad for n, p in sae.named_parameters()}

    assert native.library() is not None
    fast, fast_grads = step()
    monkeypatch.setenv("SAEKIT_NATIVE", "0")
    slow, slow_grads = step()
    assert torch.equal(fast.codes != 0, slow.codes != 0) and set(fast.losses) == {"mse", "auxk"}
    for name in fast.losses:
        torch.testing.assert_close(fast.losses[name], slow.losses[name])
    for name, g in fast_grads.items():
        torch.testing.assert_close(g, slow_grads[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_radial_gradient_removal(backend, dtype):
    """g_i − ⟨g_i, d_i⟩ d_i with d_i the unit atom: what is left is orthogonal to the atom."""
    sae = saekit.create("topk", d_in=40, n_latents=300, k=4).to(dtype)
    sae.W_dec.grad = torch.randn(300, 40, generator=torch.Generator().manual_seed(4), dtype=dtype)
    W, g = sae.W_dec.detach(), sae.W_dec.grad.clone()
    d = W / W.norm(dim=-1, keepdim=True)
    sae.remove_parallel_decoder_grad()
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(
        sae.W_dec.grad, g - (g * d).sum(-1, keepdim=True) * d, rtol=tol, atol=tol
    )
    assert float((sae.W_dec.grad * d).sum(-1).abs().max()) < tol
