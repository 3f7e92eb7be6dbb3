"""Shared test setup: artefacts go to a temporary DESUPCON_HOME, never into the repository."""

import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """Each test writes checkpoints, logs and plots under its own temporary output root."""
    root = tmp_path / "home"
    monkeypatch.setenv("DESUPCON_HOME", str(root))
    return root


@pytest.fixture
def one_thread():
    """One torch thread for the test: bit-identical CPU results need the same thread count, networks this
    small run fastest on one, and it leaves a core to each process of a two-rank test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smoke_home(tmp_path_factory):
    """An output root where the smoke teacher and its projection head are trained once per session."""
    from desupcon.study.profiles import PROFILES
    from desupcon.study.train import train

    root = tmp_path_factory.mktemp("smoke_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DESUPCON_HOME", str(root))
        profile = PROFILES["smoke"]
        train(profile.teacher_config())
        train(profile.projection_config())
    return root


class _LargestTensor(TorchDispatchMode):
    """Records the bytes of the largest tensor any torch operation returns while the mode is active."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        sizes = [t.numel() * t.element_size() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        self.bytes = max([self.bytes, *sizes])
        return out


@pytest.fixture
def largest_tensor():
    """``with largest_tensor() as largest: ...`` then ``largest.bytes``: the biggest tensor made inside (torch
    allocations are invisible to tracemalloc)."""
    return _LargestTensor
