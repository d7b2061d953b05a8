"""The `lifelong` process's heavy imports, made with the cyclic garbage collector paused.

Importing torch, transformers and what they bring allocates some 400,000 objects that live as long
as the process, and while they load, each full collection walks every object loaded so far again:
seven of them, 0.5-0.8 s of a 6 s `lifelong run` on split-digits. Paused during the imports and
frozen after (`gc.freeze`: never walked again), they cost nothing; cycles made later are collected
as usual. Only modules not loaded yet are imported this way, so a process that calls the commands
many times (a test suite) freezes once per module, not once per call. The imports' own garbage
(some 9,000 unreachable objects after torch, torch._dynamo and transformers) is frozen with them:
collecting it first would cost a full collection of everything, about what the pause saves.
"""

from __future__ import annotations

import gc
import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# torch.optim imports torch._dynamo on the first optimizer step (for its graph-break marker): 1.5 s
# and some 100,000 objects that every training command loads anyway.
TRAINING_MODULES = ("torch._dynamo",)


@contextmanager
def quiet_collector() -> Iterator[None]:
    """No cyclic collection inside; what is alive at the end is frozen (left out of later ones)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def import_quietly(*names: str) -> None:
    """Import the modules of ``names`` not loaded yet, under `quiet_collector`."""
    missing = [name for name in names if name not in sys.modules]
    if missing:
        with quiet_collector():
            for name in missing:
                importlib.import_module(name)
