import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

# Two shared cores: one thread per process keeps matmuls from fighting each other.
torch.set_num_threads(1)
