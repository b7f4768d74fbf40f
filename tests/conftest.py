import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from saekit.sae import native  # noqa: E402

# Two shared cores: one thread per process keeps matmuls from fighting each other.
torch.set_num_threads(1)


@pytest.fixture(params=["native", "torch"])
def backend(request, monkeypatch):
    """Runs a test on the C kernels and on the torch path (SAEKIT_NATIVE=0)."""
    if request.param == "torch":
        monkeypatch.setenv("SAEKIT_NATIVE", "0")
        assert native.library() is None
    else:
        assert native.library() is not None, "C kernels failed to build (is `cc` installed?)"
    return request.param
