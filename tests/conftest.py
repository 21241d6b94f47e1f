"""Fixtures shared by several test modules, and the test session's environment."""

import os

# tests never reach a model hub: transformers looks in local folders only (set before any test module imports it)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny networks on one torch thread: fastest for them, and on shared CPUs it avoids threads
    spinning against other processes (which made the same tests up to 100x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
