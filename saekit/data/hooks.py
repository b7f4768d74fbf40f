"""Hookpoints: read (or replace) module activations in a model's forward pass.

A *hookpoint* is a module path from ``model.named_modules()`` (e.g. ``"model.layers.15"``
for decoder layer 15 of a Llama-style model), read either at the module's output or its
first input. A *site* names one of the two explicitly: ``"model.layers.6.mlp:in"`` (input)
or ``"model.layers.6.mlp:out"`` (output); a bare path means the caller's default ``which``.
`hook_sites` is the one way into a model: it calls a function on each site's activation
and lets it replace the activation. ``capture`` uses it to record several sites in one
forward and stops the forward as soon as the last of them has fired (by raising a private
exception from the hook), so capturing layer 7 of a 30-layer model costs about 8 layers of
compute; splicing, steering and gradient capture (`saekit.data.gradients`) are other
functions on the same sites.

A *hookpoint pair* ``SOURCE->TARGET`` (`HookPair`) names the input and the reconstruction
target of a transcoder, captured in the same forward: ``model.layers.6.mlp:in->out`` is the
MLP's input and its output (a bare ``in``/``out`` target reuses the source's module), and
``model.layers.5->model.layers.6.mlp`` two module outputs.

Note the index shift of Hugging Face ``output_hidden_states``: ``hidden_states[L + 1]`` is
the output of ``model.layers.L`` (index 0 is the embedding output), and the last entry is
taken after the final norm.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

Which = Literal["output", "input"]


class _StopForward(Exception):
    """Raised by a capture hook once every requested activation has been recorded."""


class UnknownHookpoint(KeyError, ValueError):
    """A module path the model does not have. A KeyError for lookups, and a ValueError so
    that the CLI reports it as a one-line user error; str() is the message without the
    quotes KeyError adds."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def get_module(model: nn.Module, hookpoint: str) -> nn.Module:
    """The module at ``hookpoint`` (a module path, or a site with its ``:in``/``:out``
    suffix); an unknown path raises UnknownHookpoint with the closest valid ones."""
    hookpoint = parse_site(hookpoint)[0]
    if hookpoint:
        # a walk down the path, not a list of every module: capture looks its sites up
        # on every forward
        try:
            return model.get_submodule(hookpoint)
        except AttributeError:
            pass
    names = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(hookpoint, names, n=5, cutoff=0.5) or names[:5]
    raise UnknownHookpoint(
        f"unknown hookpoint {hookpoint!r}; close matches: {', '.join(close)} "
        "(`saekit hookpoints <model>` lists them all)"
    )


_SUFFIXES: dict[str, Which] = {"in": "input", "out": "output"}
_PAIR_HELP = (
    "write SOURCE->TARGET, each a module path with an optional :in (its input) or :out, "
    "e.g. model.layers.6.mlp:in->out"
)


def parse_site(site: str, which: Which = "output") -> tuple[str, Which]:
    """``"M:in"`` -> (M, "input"), ``"M:out"`` -> (M, "output"), a bare ``"M"`` -> (M, which)."""
    module, colon, suffix = site.rpartition(":")
    if not colon:
        return site, which
    if suffix not in _SUFFIXES or not module:
        raise ValueError(f"bad hookpoint {site!r}: the only suffixes are :in and :out")
    return module, _SUFFIXES[suffix]


def site_name(module: str, which: Which) -> str:
    """The explicit site string: ``"M:in"`` or ``"M:out"``."""
    return f"{module}:{'in' if which == 'input' else 'out'}"


def is_pair(hookpoint: str) -> bool:
    """Whether a hookpoint string names a SOURCE->TARGET pair."""
    return "->" in hookpoint


@dataclass(frozen=True)
class HookPair:
    """Source and target of a transcoder, as explicit sites (``"M:in"``, ``"M:out"``).

    ``str(pair)`` is the canonical spelling, used as the name of the pair in cache
    manifests and SAE metadata: ``M:in->out`` for one module, ``A->B:in`` across modules
    (the ``:out`` of an output is left out)."""

    source: str
    target: str

    @classmethod
    def parse(cls, text: str) -> HookPair:
        parts = [p.strip() for p in text.split("->")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"bad hookpoint pair {text!r}: {_PAIR_HELP}")
        try:
            src_module, src_which = parse_site(parts[0])
            dst = parts[1].removeprefix(":")
            if dst in _SUFFIXES:  # "M:in->out": the same module
                dst_module, dst_which = src_module, _SUFFIXES[dst]
            else:
                dst_module, dst_which = parse_site(parts[1])
        except ValueError:
            raise ValueError(
                f"bad hookpoint pair {text!r}: the only suffixes are :in and :out"
            ) from None
        if (src_module, src_which) == (dst_module, dst_which):
            raise ValueError(f"bad hookpoint pair {text!r}: source and target are the same")
        return cls(site_name(src_module, src_which), site_name(dst_module, dst_which))

    @property
    def sites(self) -> tuple[str, str]:
        return self.source, self.target

    def describe(self, d_in: int, d_out: int | None) -> dict[str, Any]:
        """The ``pair`` entry of a stream's describe(): where x and extras["target"] come from."""
        return {"source": self.source, "target": self.target, "d_in": d_in, "d_out": d_out}

    def __str__(self) -> str:
        (sm, sw), (tm, tw) = parse_site(self.source), parse_site(self.target)
        src = sm + (":in" if sw == "input" else "")
        if tm == sm:
            return f"{src}->{'in' if tw == 'input' else 'out'}"
        return f"{src}->{tm}{':in' if tw == 'input' else ''}"


def canonical_hookpoint(hookpoint: str) -> str:
    """A pair in its canonical spelling (see HookPair); any other hookpoint unchanged."""
    return str(HookPair.parse(hookpoint)) if is_pair(hookpoint) else hookpoint


def first_tensor(value: Any) -> torch.Tensor | None:
    """The activation tensor inside a module's output: the value itself, the first element
    of a tuple/list, or the first tensor field of a ModelOutput-like mapping."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value:
        return first_tensor(value[0])
    if isinstance(value, dict):
        for v in value.values():
            if isinstance(v, torch.Tensor):
                return v
    return None


def _input_key(args: tuple, kwargs: dict) -> int | str | None:
    """Where a module's first input is: the first positional tensor (its index), else the
    ``hidden_states`` keyword, else the first tensor keyword (its name)."""
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            return i
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return "hidden_states"
    return next((k for k, v in kwargs.items() if isinstance(v, torch.Tensor)), None)


def _with_first_tensor(value: Any, new: torch.Tensor, site: str) -> Any:
    """A module output with its activation tensor (see `first_tensor`) replaced by ``new``."""
    if isinstance(value, torch.Tensor):
        return new
    if isinstance(value, tuple) and value:
        return (_with_first_tensor(value[0], new, site), *value[1:])
    raise TypeError(f"cannot replace the output of {site!r}: it is {type(value).__name__}")


SiteFn = Callable[[torch.Tensor], torch.Tensor | None]


def _install(model: nn.Module, site: str, which: Which, fn: SiteFn) -> Any:
    module = get_module(model, site)
    if parse_site(site, which)[1] == "output":

        def output_hook(_m: nn.Module, _a: tuple, output: Any) -> Any:
            x = first_tensor(output)
            if x is None:
                raise TypeError(f"hookpoint {site!r} has no tensor output")
            new = fn(x)
            return None if new is None else _with_first_tensor(output, new, site)

        return module.register_forward_hook(output_hook)

    # A pre-hook: an input is read (or replaced) before the module itself runs.
    def input_hook(_m: nn.Module, args: tuple, kwargs: dict) -> Any:
        key = _input_key(args, kwargs)
        if key is None:
            raise TypeError(f"hookpoint {site!r} has no tensor input")
        new = fn(args[key] if isinstance(key, int) else kwargs[key])
        if new is None:
            return None
        if isinstance(key, int):
            return (*args[:key], new, *args[key + 1 :]), kwargs
        return args, {**kwargs, key: new}

    return module.register_forward_pre_hook(input_hook, with_kwargs=True)


@contextmanager
def hook_sites(
    model: nn.Module, fns: Mapping[str, SiteFn], which: Which = "output"
) -> Iterator[None]:
    """Within the block, every forward of ``model`` calls ``fns[site](x)`` with the activation
    x [batch, seq, d] of each site, and a returned tensor replaces x in the forward (None
    leaves it). This is saekit's one way into a model: capture, splicing, steering and
    gradient capture are all this with different functions.

    A site is a module path read at ``which``, or carries its own ``:in``/``:out`` suffix.
    x is the module's output (a tensor, the first element of a tuple, or the first tensor of
    a ModelOutput, which can be read but not replaced) or its first input (the first
    positional tensor, else ``hidden_states=``, else the first tensor keyword argument).
    """
    if which not in ("output", "input"):
        raise ValueError(f"which must be 'output' or 'input', got {which!r}")
    handles = []
    try:
        for site, fn in fns.items():
            handles.append(_install(model, site, which, fn))
        yield
    finally:
        for h in handles:
            h.remove()


def _run(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> Any:
    # use_cache=False: no KV cache is built for a single scoring pass.
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)


@torch.no_grad()
def list_hookpoints(model: nn.Module, n_tokens: int = 4) -> list[tuple[str, int]]:
    """Every module whose output is a [batch, seq, width] tensor, with its width.

    Widths are read from one tiny forward (1 x ``n_tokens`` tokens) with a hook on every
    module; modules are listed in ``named_modules`` order.
    """
    widths: dict[str, int] = {}
    handles = []

    def make_hook(name: str) -> Callable:
        def hook(_module: nn.Module, _args: tuple, output: Any) -> None:
            t = first_tensor(output)
            if t is not None and t.ndim == 3 and t.shape[:2] == (1, n_tokens):
                widths.setdefault(name, t.shape[-1])

        return hook

    # Not `hook_sites`: this probes every module, also those whose output holds no tensor,
    # which hook_sites refuses.
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(make_hook(name)))
    try:
        device = next(model.parameters()).device
        ids = torch.ones(1, n_tokens, dtype=torch.long, device=device)
        _run(model, ids, torch.ones_like(ids))
    finally:
        for h in handles:
            h.remove()
    return [(name, widths[name]) for name, _ in model.named_modules() if name in widths]


def capture_hooks(
    model: nn.Module,
    sites: Sequence[str],
    which: Which,
    out: dict[str, torch.Tensor],
    stop: bool = True,
) -> AbstractContextManager[None]:
    """Record each site's activation into ``out[site]`` during a forward (`hook_sites`).
    With ``stop``, the last recorded site raises a private exception that ends the forward
    (`capture` catches it); without it the forward runs on, and a later hook reads ``out``
    and removes what it used (transcoder splicing: the source feeds the target's
    replacement)."""
    wanted = set(sites)

    def recorder(name: str) -> SiteFn:
        def record(value: torch.Tensor) -> None:
            if name in out:
                raise RuntimeError(
                    f"hookpoint {name!r} ran twice in one forward; its activation is ambiguous"
                )
            # clone: later in-place ops of the model must not change what we recorded.
            out[name] = value.detach().clone()
            if stop and wanted.issubset(out):
                raise _StopForward

        return record

    return hook_sites(model, {name: recorder(name) for name in sites}, which)


@torch.no_grad()
def capture(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    hookpoints: Sequence[str],
    which: Which = "output",
    check_finite: bool = True,
) -> dict[str, torch.Tensor]:
    """Activations of several hookpoints from ONE forward, truncated after the last of them.

    input_ids, attention_mask: [batch, seq].
    hookpoints: module paths (read at ``which``) or sites (``"M:in"``, ``"M:out"``).
    Returns {hookpoint: [batch, seq, width]} in the model's dtype, keyed as given.
    """
    hookpoints = list(dict.fromkeys(hookpoints))
    if not hookpoints:
        raise ValueError("no hookpoints given")
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, seq], got {tuple(input_ids.shape)}")
    out: dict[str, torch.Tensor] = {}
    with capture_hooks(model, hookpoints, which, out):
        try:
            _run(model, input_ids, attention_mask)
        except _StopForward:
            pass
    missing = [h for h in hookpoints if h not in out]
    if missing:
        raise RuntimeError(f"hookpoints {missing} did not run during the forward pass")
    if check_finite:
        for name, act in out.items():
            check_activations_finite(act, name)
    return out


def check_activations_finite(act: torch.Tensor, name: str) -> None:
    """Raise if an activation tensor holds NaN or Inf (a diverged model or an fp16 overflow)."""
    if not all_finite(act):
        bad = ~torch.isfinite(act)
        idx = bad.nonzero()[0].tolist()
        raise FloatingPointError(
            f"non-finite activations at hookpoint {name!r}: {int(bad.sum())} values, first at "
            f"index {idx}; try float32 weights or check the model"
        )


def all_finite(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite. A NaN or Inf makes the sum non-finite, so a
    finite sum (one reduction, ~20x cheaper than an elementwise isfinite) settles it; only
    a non-finite sum, which may be an overflow of finite values, needs the full check."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())
