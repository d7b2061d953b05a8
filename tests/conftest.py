from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
import torch

from lifelong.cli import main

# The tests train tiny models, for which one thread is fastest; on a shared 2-core machine, two
# threads per process mostly wait for each other.
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
