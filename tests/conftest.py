"""The device the model, search, training, evaluation and viz tests run on.

``cuda`` when a GPU is there (so ``make gpu-check``'s pytest runs them on it), else ``cpu``.
A test that only makes sense on the CPU does not take this fixture and says why.
"""

import os

import pytest
import torch

# cuBLAS reads its workspace setting once, at the first CUDA matrix product of the process; a
# test that turns on deterministic kernels later (profile.deterministic) needs it from the start.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@pytest.fixture(scope="session")
def device() -> torch.device:
    """torch.device("cuda") when available, else torch.device("cpu")."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
