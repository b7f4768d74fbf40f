"""Matching-pursuit kernels (saekit/sae/pursuit.py): Gram path vs direct loop, replay gradients
vs the naive unrolled loop, stopping rules, re-selection. Tests taking `backend` run twice:
on the C kernels (pursuit_kernels.c) and on the torch path (SAEKIT_NATIVE=0)."""

import os
import subprocess
import sys

import pytest
import torch

from saekit.sae import native
from saekit.sae.pursuit import (
    SIGNS,
    _argmax,
    choose_method,
    gram_matrix,
    naive_pursuit,
    replay,
    scatter_codes,
    select_atoms,
)


def dictionary(p: int, d: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(p, d, generator=g, dtype=dtype)
    return D / D.norm(dim=1, keepdim=True)


def inputs(n: int, d: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def residual_norms(D, r0, sel) -> torch.Tensor:
    """[batch, T + 1]: ‖r^t‖ after each step, from the recorded selection."""
    steps = sel.coefs.unsqueeze(-1) * D[sel.indices]  # [batch, T, d]
    partial = torch.cat([torch.zeros_like(steps[:, :1]), steps.cumsum(1)], 1)
    return (r0.unsqueeze(1) - partial).norm(dim=-1)


@pytest.mark.parametrize("sign", SIGNS)
def test_gram_paths_equal_direct_fp64(sign, backend):
    D, x = dictionary(512, 64, 0), inputs(64, 64, 1)
    ref = select_atoms(D, x, 128, sign, method="direct")
    assert ref.updated.all()
    for method in ("gram", "gram_rows"):
        sel = select_atoms(D, x, 128, sign, method=method, refresh_every=None)
        assert torch.equal(sel.indices, ref.indices)
        torch.testing.assert_close(sel.codes(512), ref.codes(512), atol=1e-12, rtol=0)


@pytest.mark.parametrize("sign", SIGNS)
def test_gram_path_equals_direct_fp32(sign, backend):
    D, x = dictionary(512, 64, 2, torch.float32), inputs(64, 64, 3, torch.float32)
    ref = select_atoms(D, x, 128, sign, method="direct")
    sel = select_atoms(D, x, 128, sign, method="gram", refresh_every=32)
    same = (sel.indices == ref.indices).all(1)
    # nonneg/signed residuals stay large enough for fp32 to agree on every selection; under
    # abs the dictionary spans R^64 and ‖r‖ falls ~1e4-fold in 128 steps, so near-ties late
    # in the pursuit can flip in fp32 (the direct loop itself disagrees with fp64 there).
    assert same.float().mean() >= (1.0 if sign != "abs" else 0.95)
    torch.testing.assert_close(sel.codes(512)[same], ref.codes(512)[same], atol=2e-5, rtol=0)


def test_argmax_blocks_match_torch():
    for p in (300, 1000, 4096):
        c = inputs(37, p, p, torch.float32)
        assert torch.equal(_argmax(c, "nonneg"), c.argmax(1))
        assert torch.equal(_argmax(c, "abs"), c.abs().argmax(1))
        c[:, -1] = 100.0  # the winner in the tail that does not fill a block
        assert (_argmax(c, "signed") == p - 1).all()


def test_choose_method():
    # training shapes: the Gram pays (p < (T − 1)·B); one token: only with a cached Gram
    assert choose_method(4608, 576, 1024, 32) == "gram"
    assert choose_method(4608, 576, 1, 32) == "direct"
    assert choose_method(4608, 576, 1, 32, have_gram=True) == "gram"
    assert choose_method(4608, 576, 1024, 32, gram_budget_bytes=2**20) == "gram_rows"


@pytest.mark.parametrize("sign", SIGNS)
def test_replay_gradients_equal_naive_unrolled_loop(sign, backend):
    D0, x0 = dictionary(64, 16, 4), inputs(48, 16, 5)
    b0 = 0.1 * inputs(1, 16, 6)[0]
    w, v = inputs(48, 16, 7), inputs(48, 64, 8)
    kw = dict(residual_threshold=0.9)  # samples stop at different steps

    def grads(fn):
        D, b, x = (t.clone().requires_grad_(True) for t in (D0, b0, x0))
        codes, x_hat, steps = fn(D, b, x)
        loss = (x_hat * w).sum() + (codes * v).sum()
        return torch.autograd.grad(loss, (D, b, x)), codes.detach(), steps

    def ours(D, b, x):
        sel = select_atoms(D, x - b, 40, sign, method="gram", **kw)
        alpha, recon = replay(D, x - b, sel.indices, sel.updated)
        return scatter_codes(alpha, sel.indices, 64), b + recon, sel.n_steps

    g_ref, codes_ref, steps_ref = grads(lambda D, b, x: naive_pursuit(D, x, b, 40, sign, **kw))
    g, codes, steps = grads(ours)
    assert torch.equal(steps, steps_ref)
    assert len(set(steps.tolist())) > 3 and (steps < 40).any()
    sel = select_atoms(D0, x0 - b0, 40, sign, **kw)
    reselected = [len(set(j[:n].tolist())) < n for j, n in zip(sel.indices, sel.n_steps)]
    if sign != "abs":  # abs re-selects less often on this data; see test_reselection_*
        assert sum(reselected) > 0
    torch.testing.assert_close(codes, codes_ref, atol=1e-12, rtol=0)
    for a, b in zip(g, g_ref):
        assert (a - b).abs().max() < 1e-10


def test_replay_coefficients_equal_selection_and_mask_skipped_steps(backend):
    D, x = dictionary(128, 24, 9), inputs(32, 24, 10)
    sel = select_atoms(D, x, 30, "nonneg", relative_threshold=0.2)
    alpha, recon = replay(D, x, sel.indices, sel.updated)
    assert (~sel.updated).any()
    torch.testing.assert_close(alpha, sel.coefs, atol=1e-12, rtol=0)
    assert (alpha[~sel.updated] == 0).all()
    torch.testing.assert_close(recon, sel.codes(128) @ D, atol=1e-12, rtol=0)


@pytest.mark.parametrize("sign", SIGNS)
def test_error_is_monotone_in_steps(sign, backend):
    D, x = dictionary(256, 32, 11), inputs(40, 32, 12)
    sel = select_atoms(D, x, 64, sign)
    norms = residual_norms(D, x, sel)
    assert (norms[:, 1:] <= norms[:, :-1] + 1e-12).all()
    # unit atoms: ‖r^t‖² = ‖r^{t−1}‖² − α_t² exactly (docs/methods.md#mpsae-forward)
    drop = norms[:, :-1].pow(2) - norms[:, 1:].pow(2)
    torch.testing.assert_close(drop, sel.coefs.pow(2), atol=1e-10, rtol=0)
    assert norms[:, -1].mean() < 0.5 * norms[:, 0].mean()


def test_reselection_accumulates():
    # Two atoms at 36.87° in R²: classic MP alternates between them and never stops, each
    # step removing a factor 0.64 of the previous coefficient.
    D = torch.tensor([[1.0, 0.0], [0.8, 0.6]], dtype=torch.float64)
    x = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    sel = select_atoms(D, x, 4, "abs", method="direct")
    assert sel.indices.tolist() == [[1, 0, 1, 0]]
    torch.testing.assert_close(
        sel.coefs, torch.tensor([[0.6, -0.48, 0.384, -0.3072]], dtype=torch.float64)
    )
    torch.testing.assert_close(
        sel.codes(2), torch.tensor([[-0.48 - 0.3072, 0.6 + 0.384]], dtype=torch.float64)
    )
    codes, _, _ = naive_pursuit(D, x, None, 4, "abs")
    torch.testing.assert_close(codes, sel.codes(2))
    # nonneg cannot take the negative step: it stops after the first, with all c ≤ 0
    nonneg = select_atoms(D, x, 4, "nonneg")
    assert nonneg.n_steps.tolist() == [1]


def test_nonneg_stops_when_every_correlation_is_negative():
    D = torch.eye(4, dtype=torch.float64)
    x = torch.tensor([[-1.0, -2.0, -3.0, -4.0], [1.0, -2.0, 3.0, -4.0]], dtype=torch.float64)
    assert select_atoms(D, x, 4, "nonneg").n_steps.tolist() == [0, 2]
    # signed max: takes the least negative correlation, then stalls at the atom it zeroed
    assert select_atoms(D, x, 4, "signed").n_steps.tolist() == [1, 2]
    sel = select_atoms(D, x, 4, "abs")
    torch.testing.assert_close(sel.codes(4), x)  # orthonormal dictionary: exact in 4 steps


@pytest.mark.parametrize("method", ["direct", "gram"])
def test_threshold_stopping_per_input(method, backend):
    D = dictionary(256, 32, 13)
    x = inputs(64, 32, 14) * torch.linspace(0.2, 3.0, 64, dtype=torch.float64)[:, None]
    tau = 1.5
    sel = select_atoms(D, x, 50, "nonneg", residual_threshold=tau, method=method)
    steps = sel.n_steps
    assert len(set(steps.tolist())) > 5
    assert (steps[x.norm(dim=1) < tau] == 0).all()
    norms = residual_norms(D, x, sel)
    rows = torch.arange(64)
    stopped = steps < 50
    # each sample stops at the first step whose residual is below τ, not before
    assert (norms[rows, steps][stopped] < tau).all()
    moved = steps > 0
    assert (norms[rows, steps - 1][moved] >= tau).all()
    _, _, naive_steps = naive_pursuit(D, x, None, 50, "nonneg", residual_threshold=tau)
    assert torch.equal(naive_steps, steps)

    rel = select_atoms(D, x, 50, "nonneg", relative_threshold=0.3, method=method)
    rel_norms = residual_norms(D, x, rel)
    ratio = (rel_norms[rows, rel.n_steps] / rel_norms[:, 0]).pow(2)
    assert (ratio[rel.n_steps < 50] < 0.3).all()
    assert (rel_norms[rows, rel.n_steps - 1] / rel_norms[:, 0]).pow(2).min() >= 0.3


def test_native_kernels_match_torch_path(monkeypatch):
    """fp32 at training-like sizes, with refreshes, a threshold and all sign rules: the C
    kernels make the torch path's selections, coefficients and gradients."""
    D0, x = dictionary(700, 48, 15, torch.float32), 3 * inputs(300, 48, 16, torch.float32)
    w = inputs(300, 48, 17, torch.float32)

    def run():
        out = []
        for sign in SIGNS:
            sel = select_atoms(D0, x, 40, sign, method="gram", refresh_every=16,
                               relative_threshold=0.05)  # fmt: skip
            D = D0.clone().requires_grad_(True)
            r0 = x.clone().requires_grad_(True)
            alpha, recon = replay(D, r0, sel.indices, sel.updated)
            ((recon * w).sum() + alpha.pow(2).sum()).backward()
            out.append((sel, alpha.detach(), D.grad, r0.grad))
        return out

    assert native.library() is not None
    fast = run()
    monkeypatch.setenv("SAEKIT_NATIVE", "0")
    slow = run()
    for (s1, a1, gD1, gr1), (s2, a2, gD2, gr2) in zip(fast, slow):
        assert (~s1.updated).any() and s1.updated.any()
        assert torch.equal(s1.updated, s2.updated)
        assert torch.equal(s1.indices[s1.updated], s2.indices[s2.updated])
        torch.testing.assert_close(s1.coefs, s2.coefs, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(a1, a2, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(gD1, gD2, atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(gr1, gr2, atol=1e-3, rtol=1e-4)


def test_replay_backward_twice_through_a_retained_graph(backend):
    D0, x = dictionary(64, 12, 15), inputs(16, 12, 16)
    sel = select_atoms(D0, x, 8, "nonneg")
    D = D0.clone().requires_grad_(True)
    alpha, recon = replay(D, x, sel.indices, sel.updated)
    loss = recon.pow(2).sum() + alpha.sum()
    (first,) = torch.autograd.grad(loss, D, retain_graph=True)
    (second,) = torch.autograd.grad(loss, D)
    assert first.abs().sum() > 0
    torch.testing.assert_close(first, second, atol=0, rtol=0)


def test_gram_rebuilt_in_place(backend):
    D = dictionary(300, 16, 17, torch.float32)
    G = gram_matrix(D)
    torch.testing.assert_close(G, D @ D.T, atol=1e-5, rtol=0)
    assert torch.equal(G, G.T)
    D2 = dictionary(300, 16, 18, torch.float32)
    G2 = gram_matrix(D2, out=G)
    assert G2.data_ptr() == G.data_ptr()
    torch.testing.assert_close(G2, D2 @ D2.T, atol=1e-5, rtol=0)
    assert torch.equal(G2, G2.T)
    G64 = gram_matrix(D2.double())
    torch.testing.assert_close(G64, D2.double() @ D2.double().T, atol=1e-12, rtol=0)
    assert gram_matrix(D2, out=torch.empty(3, 3)).shape == (300, 300)  # wrong shape: new one


def test_kernels_split_over_threads_agree_with_one_thread():
    D0, x = dictionary(500, 32, 19, torch.float32), 2 * inputs(512, 32, 20, torch.float32)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            sel = select_atoms(D0, x, 24, "abs", method="gram", refresh_every=8)
            D = D0.clone().requires_grad_(True)
            alpha, recon = replay(D, x, sel.indices, sel.updated)
            recon.pow(2).sum().backward()
        finally:
            torch.set_num_threads(1)
        results.append((sel.indices, alpha.detach(), D.grad))
    (i1, a1, g1), (i2, a2, g2) = results
    assert native.split_rows(512, lambda *a: None) == 1
    assert torch.equal(i1, i2) and torch.equal(a1, a2)  # per-sample work: bit-identical
    torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-5)  # summed per worker


def test_pursuit_rejects_non_finite_input():
    D, x = dictionary(64, 8, 21), inputs(4, 8, 22)
    x[2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        select_atoms(D, x, 4)


def test_without_a_compiler_the_torch_path_runs(tmp_path):
    """A machine without `cc`: one warning-free fallback to torch, same codes."""
    code = (
        "import torch, warnings; warnings.simplefilter('error')\n"
        "from saekit.sae import native\n"
        "from saekit.sae.pursuit import select_atoms\n"
        "assert native.library() is None\n"
        "g = torch.Generator().manual_seed(0)\n"
        "D = torch.nn.functional.normalize(torch.randn(300, 16, generator=g), dim=1)\n"
        "x = torch.randn(50, 16, generator=g)\n"
        "a = select_atoms(D, x, 10, method='gram').indices\n"
        "b = select_atoms(D, x, 10, method='direct').indices\n"
        "assert torch.equal(a, b)\n"
        "print('ok')\n"
    )
    env = {**os.environ, "CC": str(tmp_path / "no-such-cc"), "SAEKIT_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert not (tmp_path / "native").exists()


def test_one_cache_directory_and_its_old_name(tmp_path, monkeypatch):
    from saekit.data.models import cache_root

    monkeypatch.delenv("SAEKIT_CACHE", raising=False)
    monkeypatch.setenv("SAEKIT_CACHE_DIR", str(tmp_path / "old"))
    with pytest.warns(FutureWarning, match="SAEKIT_CACHE_DIR is deprecated"):
        assert cache_root() == tmp_path / "old"
    monkeypatch.setenv("SAEKIT_CACHE", str(tmp_path / "new"))
    assert cache_root() == tmp_path / "new"


def test_a_failing_build_warns_once_and_falls_back(tmp_path):
    cc = tmp_path / "cc"
    cc.write_text("#!/bin/sh\necho 'cc: broken' >&2\nexit 1\n")
    cc.chmod(0o755)
    code = (
        "import warnings\n"
        "from saekit.sae import native\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    assert native.library() is None and native.library() is None\n"
        "print(len(w), w[0].message)\n"
    )
    env = {**os.environ, "CC": str(cc), "SAEKIT_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("1 saekit: C kernels unavailable, using the torch path")
    assert "broken" in out.stdout
