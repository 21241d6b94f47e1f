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


def write_fake_totalsegmentator(root, class_map: dict, api_source: str):
    """A stand-in ``totalsegmentator`` package under ``root`` (``map_to_binary.class_map`` and
    ``python_api.totalsegmentator`` from ``api_source``) for the separate-interpreter tests; returns ``root``, the
    folder to put on that interpreter's PYTHONPATH."""
    import textwrap

    package = root / "totalsegmentator"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "map_to_binary.py").write_text(f"class_map = {class_map!r}\n")
    (package / "python_api.py").write_text(textwrap.dedent(api_source))
    return root
