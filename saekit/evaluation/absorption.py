"""Feature absorption on the first-letter task (docs/evaluation.md#absorption; Chanin et al.
2024, arXiv:2409.14507, as SAEBench runs it, arXiv:2503.09532).

The task, built once per (model, hookpoint) by `first_letter_task` and shared by every SAE:
  words    tokens of the LM's tokenizer whose decoded text is ASCII letters with at most one
           leading space; at most `max_words` of them, drawn at random.
  prompts  `n_icl` lines "{w} has the first letter: {L}" about other words, then
           "{word} has the first letter:". A word is kept only if the prompt cut after the
           word tokenises to a prefix of the whole prompt's tokens ending in the word's own
           token (the suffix did not merge into it): its position is then the last token of
           that prefix, for any tokenizer. The LM is causal, so the activation there does
           not depend on the suffix, and the forward stops at the word.
  split    words grouped by their lowercase spelling (" Cat" with "cat"); TEST_FRACTION of
           the groups are held out.
  probe    a 26-way softmax regression on the train words' activations (standardised, L2);
           û_L is its weight for letter L in the activation's own units, normalised.

Per SAE (`absorption_metrics`), for each letter whose probe F1 on the test words exceeds
LETTER_F1_MIN:
  main latents: an L1 logistic regression of "letter L" against the rest on the train
    words' codes ranks latents by weight; for k = 1 … MAX_K a class-balanced logistic
    regression on the top k gives a test F1; k grows while the F1 improves by more than
    F1_JUMP. num_split_features = |main| − 1 (0 without a main latent).
  every test word of letter L the probe classifies right: with x the activation as the
    SAE's coder sees it, proj = ⟨x, û_L⟩, a_j = f_j⟨d_j, û_L⟩ (the projection of f_j d_j
    on û_L, right for atoms of any norm), m = Σ_main a_j, s = the sum of the 3 largest a_j
    over non-main latents with cos(d_j, û_L) ≥ 0.1 and a_j > 0. Its absorption fraction is
    0 if m ≥ proj or s/proj < 0.4, else 1 if m ≤ 0, else min(s, proj − m)/(min(s, proj − m)
    + m). Fully absorbed: every main latent off (|f_j| < 1e-8: signed codes count), proj >
    0, and the latent with the largest a_j has cos ≥ 0.025 and a_j/proj ≥ 0.4.
Letters count equally in the means. SAEBench asks for at least MIN_LETTERS kept letters; a
model that spells poorly (135M parameters) keeps fewer, which is reported, not an error.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from saekit.data.hooks import Which
from saekit.evaluation.base import EvalRun, Skip
from saekit.evaluation.probing import (
    encode_all,
    fit_logistic,
    last_token_activations,
    single_threaded_blas,
)
from saekit.sae.base import SAE

LETTERS = string.ascii_uppercase
WORD = re.compile(r" ?[A-Za-z]+")
SUFFIX = " has the first letter:"
TEST_FRACTION = 0.25
PROBE_C = 1.0  # letter probe: inverse L2 strength on standardised activations
L1_C = 0.1  # latent ranking: inverse L1 strength on standardised codes
BALANCED_C = 1.0  # the k-sparse probes (sklearn's default, as SAEBench)
MAX_K = 10
F1_JUMP = 0.03
LETTER_F1_MIN = 0.6
MIN_LETTERS = 20
CANDIDATE_COS = 0.1
N_CANDIDATES = 3
ABSORBED_SHARE = 0.4
FULL_COS = 0.025
OFF = 1e-8


class NoWords(ValueError):
    """No letter-only token of the tokenizer stays a single token in its prompt."""


def first_letter(word: str) -> int:
    """Letter index 0..25 of a word's first letter (a leading space ignored)."""
    return LETTERS.index(word.lstrip()[0].upper())


def letter_tokens(tokenizer: Any) -> list[tuple[int, str]]:
    """(token id, decoded text) of every non-special token made only of ASCII letters, one
    leading space allowed."""
    special = set(tokenizer.all_special_ids)
    texts = ((i, tokenizer.decode([i])) for i in range(len(tokenizer)) if i not in special)
    return [(i, text) for i, text in texts if WORD.fullmatch(text)]


def first_letter_prompts(words: Sequence[str], n_icl: int, seed: int = 0) -> list[str]:
    """Per word, its prompt cut after the word: n_icl example lines about other words (drawn
    at random), then the word. The whole prompt is this + SUFFIX."""
    rng = np.random.default_rng(seed)
    n_icl = min(n_icl, len(words) - 1)
    heads = []
    for i, word in enumerate(words):
        others = rng.choice(len(words) - 1, size=n_icl, replace=False)
        others += others >= i  # every word but this one
        lines = [f"{words[j]}{SUFFIX} {LETTERS[first_letter(words[j])]}" for j in others]
        heads.append("\n".join([*lines, word]))
    return heads


def word_positions(tokenizer: Any, heads: Sequence[str], token_ids: Sequence[int]) -> list[int]:
    """Per prompt, the position of its word's token in the whole prompt (head + SUFFIX), or
    −1 where the word is not that one token there, or sits at position 0 (the attention
    sink)."""
    head_ids = tokenizer(list(heads))["input_ids"]
    full_ids = tokenizer([h + SUFFIX for h in heads])["input_ids"]
    return [
        len(h) - 1 if len(h) > 1 and h[-1] == t and f[: len(h)] == h else -1
        for h, f, t in zip(head_ids, full_ids, token_ids)
    ]


def f1_score(predicted: np.ndarray, true: np.ndarray) -> float:
    """F1 of boolean predictions; NaN when there are neither positives nor predictions."""
    denominator = int(predicted.sum() + true.sum())
    return 2 * int((predicted & true).sum()) / denominator if denominator else float("nan")


def fit_letter_probe(
    x: torch.Tensor, y: np.ndarray, n_classes: int = 26, C: float = PROBE_C
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax regression, argmin C·Σ_i CE(W z_i + b, y_i) + ½‖W‖², on x standardised per
    dimension. Returns (W [n_classes, d], b [n_classes]) acting on raw x, float64."""
    x = x.double()
    mu, sd = x.mean(0), x.std(0)
    sd = torch.where(sd > 0, sd, torch.ones_like(sd))
    z, target = (x - mu) / sd, torch.as_tensor(y, dtype=torch.long)
    W = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [W, b], max_iter=500, tolerance_grad=1e-8, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        ce = torch.nn.functional.cross_entropy(z @ W.T + b, target, reduction="sum")
        loss = C * ce + 0.5 * W.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    W_raw = W.detach() / sd
    return W_raw, b.detach() - W_raw @ mu


@dataclass
class FirstLetterTask:
    """The words, their activations and the letter probe of one (model, hookpoint): built
    once by `first_letter_task`, scored against any number of SAEs by `absorption_metrics`."""

    words: list[str]  # decoded tokens [n]
    prompts: list[str]  # [n] each cut after its word (the whole prompt: + SUFFIX)
    letters: np.ndarray  # [n] 0..25
    x: torch.Tensor  # [n, d] activation at the word's token
    test: np.ndarray  # [n] bool: held out
    directions: torch.Tensor  # [26, d] float64, unit û_L
    predicted: np.ndarray  # [n] the probe's letter
    probe_f1: np.ndarray  # [26] on the test words (NaN: letter absent)
    n_letter_tokens: int  # letter-only tokens in the vocabulary
    n_dropped: int  # drawn words that are not one token in their prompt
    settings: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        test = self.test
        return {
            "n_letter_tokens": self.n_letter_tokens,
            "n_words": len(self.words),
            "n_words_dropped": self.n_dropped,
            "n_train_words": int((~test).sum()),
            "n_test_words": int(test.sum()),
            "probe_test_accuracy": float((self.predicted[test] == self.letters[test]).mean()),
            "settings": self.settings,
        }


@torch.no_grad()
def first_letter_task(
    model: torch.nn.Module,
    tokenizer: Any,
    hookpoint: str,
    which: Which = "output",
    max_words: int = 2000,
    n_icl: int = 10,
    seed: int = 0,
    batch_size: int = 32,
) -> FirstLetterTask:
    """Draw the words, read their activations and fit the letter probe (module docstring)."""
    vocab = letter_tokens(tokenizer)
    rng = np.random.default_rng(seed)
    drawn = [vocab[i] for i in np.sort(rng.permutation(len(vocab))[:max_words])]
    heads = first_letter_prompts([text for _, text in drawn], n_icl, seed)
    positions = word_positions(tokenizer, heads, [i for i, _ in drawn])
    kept = [i for i, p in enumerate(positions) if p >= 0]
    if not kept:
        raise NoWords(
            f"none of the {len(drawn)} drawn letter-only tokens stays one token in its prompt"
        )
    words = [drawn[i][1] for i in kept]
    # The head ends at the word: its last token's activation is the word's (causal LM).
    x = last_token_activations(
        model, tokenizer, [heads[i] for i in kept], hookpoint, which, batch_size,
        max_length=max(positions) + 1,
    )  # fmt: skip
    letters = np.array([first_letter(w) for w in words])
    groups = np.unique([w.strip().lower() for w in words], return_inverse=True)[1]
    held = rng.permutation(groups.max() + 1)[: round(TEST_FRACTION * (groups.max() + 1))]
    test = np.isin(groups, held)
    W, b = fit_letter_probe(x[torch.from_numpy(~test)], letters[~test], len(LETTERS))
    predicted = (x.double() @ W.T + b).argmax(1).numpy()
    probe_f1 = np.array(
        [f1_score(predicted[test] == L, letters[test] == L) for L in range(len(LETTERS))]
    )
    return FirstLetterTask(
        words=words,
        prompts=[heads[i] for i in kept],
        letters=letters,
        x=x,
        test=test,
        directions=W / W.norm(dim=1, keepdim=True).clamp_min(1e-300),
        predicted=predicted,
        probe_f1=probe_f1,
        n_letter_tokens=len(vocab),
        n_dropped=len(drawn) - len(kept),
        settings={"max_words": max_words, "n_icl": n_icl, "seed": seed, "hookpoint": hookpoint,
                  "which": which, "prompt": "{word}" + SUFFIX},
    )  # fmt: skip


# ---- scoring an SAE ---------------------------------------------------------------------------


def balanced_probe_f1(
    f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray, y_test: np.ndarray
) -> float:
    """Test F1 of a class-balanced L2 logistic regression (features standardised on train)."""
    mu, sd = f_train.mean(0), f_train.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    n, n_pos = len(y_train), int(y_train.sum())
    weight = np.where(y_train, n / (2 * n_pos), n / (2 * (n - n_pos)))
    w, b = fit_logistic((f_train - mu) / sd, y_train, BALANCED_C, "l2", sample_weight=weight)
    return f1_score(((f_test - mu) / sd) @ w + b > 0, y_test)


def main_latents(
    f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray, y_test: np.ndarray
) -> tuple[list[int], list[float]]:
    """(the letter's main latents, test F1 of the k-sparse probe for k = 1, 2, …): latents
    ranked by the weight of an L1 probe, k grown while F1 improves by more than F1_JUMP.
    Only latents with a positive weight are ranked, so a letter no latent indicates has
    none."""
    alive = np.flatnonzero((f_train != 0).any(0))
    if len(alive) == 0 or y_train.all() or not y_train.any():
        return [], []
    sd = f_train[:, alive].std(0)
    w, _ = fit_logistic(f_train[:, alive] / np.where(sd > 0, sd, 1.0), y_train, L1_C, "l1")
    order = np.argsort(-w, kind="stable")[: min(MAX_K, int((w > 0).sum()))]
    ranked = alive[order]
    f1s = [
        balanced_probe_f1(f_train[:, ranked[:k]], y_train, f_test[:, ranked[:k]], y_test)
        for k in range(1, len(ranked) + 1)
    ]
    k = 1
    while k < len(f1s) and f1s[k] - f1s[k - 1] > F1_JUMP:
        k += 1
    return ranked[: min(k, len(ranked))].tolist(), f1s


def score_words(
    proj: np.ndarray, a: np.ndarray, codes: np.ndarray, cos: np.ndarray, main: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(absorption fraction [n], fully absorbed [n] bool) of n words of one letter.

    proj [n] = ⟨x, û_L⟩; a [n, p] = f_j⟨d_j, û_L⟩; codes [n, p]; cos [p] = cos(d_j, û_L)."""
    is_main = np.zeros(a.shape[1], dtype=bool)
    is_main[list(main)] = True
    m = a[:, is_main].sum(1)
    candidates = np.where(~is_main & (cos >= CANDIDATE_COS) & (a > 0), a, 0.0)
    s = np.sort(candidates, axis=1)[:, -N_CANDIDATES:].sum(1)
    share = s / np.where(proj > 0, proj, 1.0)
    absorbed = np.minimum(s, proj - m)
    fraction = np.clip(absorbed / np.where(absorbed + m > 0, absorbed + m, 1.0), 0.0, 1.0)
    fraction = np.where(m <= 0, 1.0, fraction)
    fraction = np.where((proj <= 0) | (m >= proj) | (share < ABSORBED_SHARE), 0.0, fraction)
    top = a.argmax(1)
    a_top = a[np.arange(len(a)), top]
    full = (
        (np.abs(codes[:, is_main]) < OFF).all(1)
        & (proj > 0)
        & (cos[top] >= FULL_COS)
        & (a_top / np.where(proj > 0, proj, 1.0) >= ABSORBED_SHARE)
    )
    return fraction, full


@torch.no_grad()
def absorption_metrics(sae: SAE, task: FirstLetterTask) -> dict[str, Any]:
    """Absorption fraction, full-absorption rate and split features per letter and their
    means over the letters the probe reads well (module docstring)."""
    if sae.is_transcoder or sae.d_in != task.x.shape[1]:
        raise ValueError(
            f"the SAE (d_in {sae.d_in}) does not read the task's activations "
            f"(width {task.x.shape[1]}) as an autoencoder"
        )
    codes = encode_all(sae, task.x)
    x_seen = sae.coder_input(task.x.float())[0].double()  # e.g. standardised per token
    W_dec = sae.W_dec.detach().double()
    along = W_dec @ task.directions.T  # [p, 26]: ⟨d_j, û_L⟩
    cos = along / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-300)
    proj_all = (x_seen @ task.directions.T).numpy()  # [n, 26]
    train, test = ~task.test, task.test
    codes_train, codes_test = codes[train], codes[test]
    per_letter: dict[str, Any] = {}
    with single_threaded_blas():
        for L, letter in enumerate(LETTERS):
            f1 = float(task.probe_f1[L])
            row: dict[str, Any] = {"probe_f1": f1, "kept": bool(f1 > LETTER_F1_MIN)}
            per_letter[letter] = row
            if not row["kept"]:
                continue
            is_letter = task.letters == L
            main, f1s = main_latents(codes_train, is_letter[train], codes_test, is_letter[test])
            words = np.flatnonzero(test & is_letter & (task.predicted == L))
            fraction, full = score_words(
                proj_all[words, L], codes[words] * along[:, L].numpy(), codes[words],
                cos[:, L].numpy(), main,
            )  # fmt: skip
            row.update(
                main_latents=main,
                sparse_probe_f1=f1s,
                num_split_features=max(len(main) - 1, 0),
                n_words_scored=len(words),
                absorption_fraction=float(fraction.mean()),
                full_absorption_rate=float(full.mean()),
            )
    kept = [r for r in per_letter.values() if r["kept"]]
    out: dict[str, Any] = {
        **task.describe(),
        "n_letters_kept": len(kept),
        "min_letters": MIN_LETTERS,
        "mean_absorption_fraction_score": _mean(r["absorption_fraction"] for r in kept),
        "mean_full_absorption_score": _mean(r["full_absorption_rate"] for r in kept),
        "mean_num_split_features": _mean(r["num_split_features"] for r in kept),
        "letters": per_letter,
    }
    if len(kept) < MIN_LETTERS:
        out["note"] = (
            f"only {len(kept)} letters have probe F1 > {LETTER_F1_MIN} (SAEBench asks for "
            f"{MIN_LETTERS}): the model spells poorly at this hookpoint, the means are noisy"
        )
    return out


def _mean(values: Any) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def absorption_group(run: EvalRun) -> dict[str, Any]:
    """The absorption group; the task (words, activations, probe) is built once per model
    and hookpoint and shared by every SAE of the run."""
    model, tokenizer, source = run.require_model()
    run.require_not_transcoder("absorption reads letter directions in the SAE's input space; "
                               "a transcoder's atoms live at its target")  # fmt: skip
    s = run.settings
    key = ("first_letter_task", source, s.absorption_words, s.absorption_icl, s.seed)
    if key not in run.shared:
        try:
            run.shared[key] = first_letter_task(
                model, tokenizer, source.hookpoint, source.which,  # type: ignore[arg-type]
                s.absorption_words, s.absorption_icl, s.seed,
            )  # fmt: skip
        except NoWords as why:
            raise Skip(str(why)) from None
    task = run.shared[key]
    if task.x.shape[1] != run.sae.d_in:
        raise Skip(f"activations at {source.hookpoint} have width {task.x.shape[1]}, "
                   f"SAE d_in {run.sae.d_in}")  # fmt: skip
    return {"absorption": {**absorption_metrics(run.label_free.sae, task), **run.mode_note()}}


__all__ = [
    "LETTERS",
    "FirstLetterTask",
    "NoWords",
    "absorption_group",
    "absorption_metrics",
    "first_letter_prompts",
    "first_letter_task",
    "fit_letter_probe",
    "letter_tokens",
    "main_latents",
    "score_words",
    "word_positions",
]
