"""The optimisers `saekit train --optimizer` offers beside Adam.

- ``signsgd-sf``: sign descent with schedule-free averaging (Defazio et al. 2024, "The Road
  Less Scheduled", arXiv:2405.15682, Algorithm 1 with the update direction replaced by its
  sign). The parameters hold the point where gradients are taken, y = (1-β)·z + β·x; the
  weights worth keeping are the average x, so the trainer calls `use_average()` before it
  evaluates or saves and `use_gradient_point()` before the next step.
- ``muon``: momentum orthogonalised by a Newton-Schulz iteration for every matrix (Jordan et
  al. 2024; scaled as in Liu et al. 2025, "Muon is Scalable for LLM Training",
  arXiv:2502.16982, so its update RMS matches Adam's and one learning rate serves both), with
  Adam for vectors (biases, thresholds).

All three keep their whole state in `state_dict()`, so a checkpoint resumes them exactly.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

OPTIMIZERS = ("adam", "signsgd-sf", "muon")


def check_optimizer(name: str) -> None:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def make_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float]
) -> torch.optim.Optimizer:
    params = list(params)
    if name == "adam":
        # The fused kernel: one pass over each tensor instead of a dozen (3.5x on CPU).
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=fused or None)
    if name == "signsgd-sf":
        return ScheduleFreeSignSGD(params, lr=lr)
    if name == "muon":
        return Muon(params, lr=lr, adam_betas=betas)
    check_optimizer(name)
    raise AssertionError(name)


class ScheduleFreeSignSGD(torch.optim.Optimizer):
    """z ← z − γ_t·sign(∇f(y)); x ← (1 − c)·x + c·z with c = γ_t² / Σ_{s≤t} γ_s²; y = (1−β)z + βx.

    Weighting the average by γ² is the paper's choice under warm-up: steps taken at a small
    warm-up rate count for little.
    """

    def __init__(self, params, lr: float, beta: float = 0.9) -> None:
        super().__init__(params, dict(lr=lr, beta=beta))
        self.averaging = False  # True while the parameters hold x (see use_average)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ARG002 - the Optimizer signature
        if self.averaging:
            raise RuntimeError("call use_gradient_point() before the next optimiser step")
        for group in self.param_groups:
            lr, beta = group["lr"], group["beta"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["z"] = p.detach().clone()
                    state["x"] = p.detach().clone()
                    # a Python float: load_state_dict would cast a tensor to the parameter's dtype
                    state["weight_sum"] = 0.0
                z, x = state["z"], state["x"]
                z.add_(p.grad.sign(), alpha=-lr)
                state["weight_sum"] += lr * lr
                c = lr * lr / state["weight_sum"] if lr > 0 else 0.0
                x.lerp_(z, c)
                p.copy_(torch.lerp(z, x, beta))
        return None

    @torch.no_grad()
    def constrain(self, project) -> None:
        """Apply the SAE's in-place constraint (unit-norm decoder rows, ...) to z and x as well
        as to the parameters y: projecting y alone would let z drift off the constraint set."""
        states = list(self._states())
        for key in ("z", "x"):
            for p, state in states:
                p.copy_(state[key])
            project()
            for p, state in states:
                state[key].copy_(p)
        for group in self.param_groups:
            for p in group["params"]:
                if self.state.get(p):
                    p.copy_(torch.lerp(self.state[p]["z"], self.state[p]["x"], group["beta"]))
        project()

    @torch.no_grad()
    def use_average(self) -> None:
        """Put the averaged weights x into the parameters (to evaluate or save them)."""
        if not self.averaging:
            for p, state in self._states():
                state["y"] = p.detach().clone()
                p.copy_(state["x"])
        self.averaging = True

    @torch.no_grad()
    def use_gradient_point(self) -> None:
        """Put the parameters y back, bit for bit, to take the next step."""
        if self.averaging:
            for p, state in self._states():
                p.copy_(state.pop("y"))
        self.averaging = False

    def _states(self):
        for group in self.param_groups:
            for p in group["params"]:
                if self.state.get(p):
                    yield p, self.state[p]


# Quintic Newton-Schulz coefficients that push every singular value into ~[0.7, 1.2] in five
# steps (Jordan et al. 2024): exact orthogonality is not needed, speed is.
_NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalise(m: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """≈ U·Vᵀ of m's SVD, by a Newton-Schulz iteration on the Frobenius-normalised matrix."""
    a, b, c = _NS_COEFFS
    x = m / (m.norm() + 1e-7)
    wide = x.shape[0] <= x.shape[1]
    if not wide:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


class Muon(torch.optim.Optimizer):
    """Matrices: B ← μB + G; W ← W − lr·0.2·√max(r, c)·orth(G + μB) (Nesterov). Vectors: Adam."""

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.95,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, adam_betas=adam_betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ARG002 - the Optimizer signature
        for group in self.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.ndim == 2:
                    self._muon(p, lr, group["momentum"])
                else:
                    self._adam(p, lr, group["adam_betas"], group["eps"])
        return None

    def _muon(self, p: torch.Tensor, lr: float, mu: float) -> None:
        state = self.state[p]
        if not state:
            state["momentum"] = torch.zeros_like(p)
        buf = state["momentum"]
        buf.mul_(mu).add_(p.grad)
        update = orthogonalise(p.grad + mu * buf)
        p.add_(update, alpha=-lr * 0.2 * max(p.shape) ** 0.5)

    def _adam(self, p: torch.Tensor, lr: float, betas: tuple[float, float], eps: float) -> None:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["m"] = torch.zeros_like(p)
            state["v"] = torch.zeros_like(p)
        state["step"] += 1
        b1, b2 = betas
        state["m"].lerp_(p.grad, 1 - b1)
        state["v"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
        m_hat = state["m"] / (1 - b1 ** state["step"])
        v_hat = state["v"] / (1 - b2 ** state["step"])
        p.addcdiv_(m_hat, v_hat.sqrt().add_(eps), value=-lr)
