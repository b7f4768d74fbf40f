"""The SAEs a run trains: every architecture named, crossed with every value of every
architecture option (a list of values sweeps), each built as a config the registry checks."""

from __future__ import annotations

import itertools
import os
from dataclasses import fields
from typing import Any

# Far beyond any SAE trained today (2^16 = 65,536 latents per d_in... 2^26 in all), and a
# clear line instead of an allocation that swaps or dies.
MAX_LATENTS = 2**26

Runs = dict[str, tuple[str, dict[str, Any]]]  # SAE name -> (architecture, config fields)


def architecture_names(text: str) -> list[str]:
    """'topk, batchtopk' -> ['topk', 'batchtopk']; unknown names fail, listing the valid."""
    from saekit.sae import get_architecture

    names = [a.strip() for a in text.split(",") if a.strip()]
    if not names:
        raise ValueError(f"--architecture must name at least one architecture, got {text!r}")
    for name in names:
        get_architecture(name)
    return names


def expand(
    architectures: list[str],
    options: dict[str, list[Any]],
    d_in: int,
    n_latents: int | None = None,
    seed: int = 0,
    d_out: int | None = None,
) -> Runs:
    """name -> (architecture, config fields) for every point of the sweep. `options`: option
    name ("k") or "ARCH.name" (that architecture only, winning over the plain name) -> values.
    With ``d_out`` (paired data: the stream carries a target) every SAE is a transcoder
    predicting it. n_latents defaults to 8 x d_in."""
    from saekit.options import check_config_values
    from saekit.sae import get_architecture

    valid = {a: {f.name for f in fields(get_architecture(a).Config)} for a in architectures}
    check_option_names(options, architectures, valid)
    target = _transcode_fields(architectures, valid, options, d_out)
    runs: Runs = {}
    for arch in architectures:
        mine = {k: v for k, v in options.items() if "." not in k and k in valid[arch]}
        mine |= {k.split(".", 1)[1]: v for k, v in options.items() if k.startswith(arch + ".")}
        for combo in itertools.product(*mine.values()):
            chosen = dict(zip(mine, combo))
            try:
                check_config_values(get_architecture(arch).Config, chosen)
            except ValueError as e:
                raise ValueError(f"-o for {arch}: {e}") from None
            label = "-".join([arch, *(f"{k}{v}" for k, v in chosen.items() if len(mine[k]) > 1)])
            runs[label] = (
                arch,
                {
                    "d_in": d_in,
                    "n_latents": n_latents or 8 * d_in,
                    "seed": seed,
                    **chosen,
                    **target,
                },
            )
    return runs


def check_option_names(
    options: dict[str, list[Any]], architectures: list[str], valid: dict[str, set[str]]
) -> None:
    from saekit.sae import architectures as registered

    for key in options:
        arch, dot, name = key.rpartition(".")
        if dot and arch not in architectures:
            raise ValueError(
                f"option {key!r} names architecture {arch!r}, not one of {', '.join(architectures)}"
            )
        if dot and name not in valid[arch]:
            raise ValueError(f"architecture {arch!r} has no option {name!r}")
        if not dot and not any(key in v for v in valid.values()):
            raise ValueError(
                f"option {key!r} does not apply to {', '.join(architectures)} "
                f"(known architectures: {', '.join(registered())})"
            )


def _transcode_fields(
    architectures: list[str],
    valid: dict[str, set[str]],
    options: dict[str, list[Any]],
    d_out: int | None,
) -> dict[str, Any]:
    """Config fields that make every SAE of the run predict the stream's target, or {}."""
    from saekit.sae import get_architecture

    asked = [v for k, vals in options.items() if k.rpartition(".")[2] == "transcode" for v in vals]
    if d_out is None:
        defaults = [
            f.default
            for a in architectures
            for f in fields(get_architecture(a).Config)
            if f.name == "transcode"
        ]
        if any(v is True for v in asked + defaults):
            raise ValueError(
                "a transcoder needs paired data (an input and a target): e.g. "
                "--data model:default@model.layers.6.mlp:in->out"
            )
        return {}
    if any(v is not True for v in asked):
        raise ValueError(
            "paired data (SOURCE->TARGET) trains transcoders only: drop transcode=false"
        )
    unable = [a for a in architectures if not {"transcode", "d_out"} <= valid[a]]
    if unable:
        raise ValueError(
            f"architecture(s) {', '.join(unable)} cannot predict a target (no transcode option); "
            "paired data (SOURCE->TARGET) needs transcoders"
        )
    return {"transcode": True, "d_out": d_out}


def check_memory(runs: Runs, d_in: int) -> None:
    """Refuse a sweep whose weights and optimiser state cannot fit in this machine's memory
    (W_enc, W_dec, their gradients and two Adam moments: ~6 x n_latents x d_in floats each)."""
    need = sum(6 * 4 * int(cfg["n_latents"]) * d_in for _, cfg in runs.values())
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > have:
        n = max(int(cfg["n_latents"]) for _, cfg in runs.values())
        raise ValueError(
            f"n_latents={n} x d_in={d_in} needs ~{need / 2**30:.1f} GiB to train "
            f"{len(runs)} SAE(s); this machine has {have / 2**30:.1f} GiB (lower --n-latents)"
        )
