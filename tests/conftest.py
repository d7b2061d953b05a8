from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import pytest
import torch

from lifelong.cli.app import main

# The tests train tiny models, for which one thread is fastest; on a shared 2-core machine, two
# threads per process mostly wait for each other.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Every test on one thread, also after a test that changed it (``--threads``)."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    """Run the real `lifelong` entry point in-process: (exit status, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["lifelong", *args])
        code = 0
        try:
            main()
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def llm_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The cache of built models (tiny-llama) in the test session's folder, shared by the LLM tests."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIFELONG_CACHE", str(tmp_path_factory.getbasetemp() / "llm-cache"))
        yield
