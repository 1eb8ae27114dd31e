import os

import pytest
import torch

from .helpers import save_noise

# Nothing in the tests may reach a model hub: fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny():
    from audit.models import load_model

    return load_model("audit-tiny", "none", device="cpu", seed=0)


@pytest.fixture(scope="session")
def towers(tiny):
    from audit.encoders import Towers

    return Towers(tiny)


@pytest.fixture
def small_folder(tmp_path):
    root = tmp_path / "ds"
    for i in range(5):
        save_noise(root / ("cat" if i % 2 else "dog") / f"{i}.png", seed=i)
    save_noise(root / "top.png", seed=9)
    return root
