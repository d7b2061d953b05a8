"""Replay memories: `ReplayBuffer` holds preallocated tensors (inputs, labels, task ids and any extra
per-sample tensor, such as DER++'s logits) and updates them without Python loops over samples.
Replay, DER++ and A-GEM keep their samples in one.

- ``reservoir`` is Vitter's algorithm R: after ``seen`` samples, each one is stored with probability
  ``max_size / seen``, so old tasks keep their share instead of falling out first (the seed's FIFO flaw).
- ``class-balanced`` gives every class seen so far an equal share (±1 slot); a class with fewer samples
  keeps them all and lends its slots out. Within a class it is a reservoir too, kept as the samples
  with the smallest random keys, which is the same uniform subset algorithm R keeps and needs no
  per-sample bookkeeping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from lifelong.core.memory import check_fits
from lifelong.core.strategy import Batch
from lifelong.errors import LifelongError

Policy = Literal["reservoir", "class-balanced"]
POLICIES: tuple[str, ...] = ("reservoir", "class-balanced")


@dataclass
class Memories(Batch):
    """Samples drawn from a buffer; ``extras`` holds the extra tensors stored with them (logits, ...)."""

    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device) -> Memories:
        if self.x.device == device:  # one device holds a buffer: nothing to move (and no op to dispatch)
            return self
        return Memories(
            self.x.to(device),
            self.y.to(device),
            self.task_ids.to(device),
            {k: v.to(device) for k, v in self.extras.items()},
        )


def _check_fits(needed: int, max_size: int) -> None:
    """A buffer is allocated whole: refuse one larger than the machine's memory before asking for it."""
    check_fits(needed, f"a replay buffer of {max_size:,} samples", "choose a smaller buffer_size")


class ReplayBuffer:
    """A fixed-size memory of samples stored as tensors: ``add`` a batch, ``sample`` a random subset.

    ``add`` takes ``(x, y, task_ids, **extras)``, a Batch, or the seed's ``(x, y)`` pair. Randomness
    comes from the ``generator`` passed in (the run's RNG), else from torch's global one.
    """

    def __init__(self, max_size: int, policy: Policy = "reservoir", device: str | torch.device | None = None):
        if max_size < 1:
            raise LifelongError(f"replay buffer size must be at least 1, got {max_size}")
        if policy not in POLICIES:
            raise LifelongError(f"unknown buffer policy '{policy}'; choose one of: {', '.join(POLICIES)}")
        self.max_size, self.policy = max_size, policy
        self.device = torch.device(device) if device is not None else None
        self.seen = 0  # samples offered so far: algorithm R's counter
        self.size = 0
        self.store: dict[str, torch.Tensor] = {}
        self._columns: set[str] = set()
        self._extras: list[str] = []
        self._perm = torch.empty(0, dtype=torch.long)
        self._cursor = 0

    def __len__(self) -> int:
        return self.size

    @property
    def x(self) -> torch.Tensor:
        return self.store["x"][: self.size]

    @property
    def y(self) -> torch.Tensor:
        return self.store["y"][: self.size]

    @property
    def task_ids(self) -> torch.Tensor:
        return self.store["task_ids"][: self.size]

    def extra(self, name: str) -> torch.Tensor:
        return self.store[f"extra.{name}"][: self.size]

    # ---- adding ---------------------------------------------------------------------------------

    def add(
        self,
        x: torch.Tensor | Batch | Sequence[torch.Tensor],
        y: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        **extras: torch.Tensor,
    ) -> None:
        """Offer a batch of samples; the policy decides which are kept and which rows they replace."""
        if isinstance(x, Batch):
            batch = x
            x, y, task_ids = batch.x, batch.y, batch.task_ids
        elif not isinstance(x, torch.Tensor):
            parts = list(x)
            x, y, task_ids = parts[0], parts[1], parts[2] if len(parts) > 2 else task_ids
        if y is None:
            raise LifelongError("ReplayBuffer.add needs labels: add(x, y), add((x, y)) or add(batch)")
        n = len(y)
        if n == 0:
            return
        columns = {"x": x, "y": y, "task_ids": task_ids if task_ids is not None else torch.zeros_like(y)}
        columns |= {f"extra.{k}": v for k, v in extras.items()}
        if not self.store:
            self._allocate(columns)
        if columns.keys() != self._columns:
            raise LifelongError(
                f"ReplayBuffer.add got columns {sorted(columns)} but the buffer stores "
                f"{sorted(self._columns)}; pass the same extras on every add"
            )
        device = self.store["y"].device
        rows: slice | torch.Tensor = slice(self.seen, self.seen + n)  # filling up: rows in arrival order
        if self.policy == "class-balanced":
            columns["keys"] = torch.rand(n, generator=generator).to(device, non_blocking=True)
            rows = self._balanced_rows(columns["y"].to(device), columns["keys"])
        elif self.seen + n > self.max_size:
            rows = self._reservoir_rows(n, generator, device)
        for name, value in columns.items():
            column = self.store[name]
            if isinstance(rows, slice):
                column[rows] = value
            else:
                column.index_copy_(0, rows, value.to(device, column.dtype))
        self.seen += n
        self.size = min(self.max_size, self.size + n)

    def check_fits(self, sample: Sequence[torch.Tensor]) -> None:
        """Refuse, before any training, a buffer whose rows (one ``sample`` each: its tensors plus a
        task id) would not fit in memory once allocated."""
        row_bytes = sum(t.element_size() * max(t.numel(), 1) for t in sample) + 8
        _check_fits((self.max_size + 1) * row_bytes, self.max_size)

    def _allocate(self, columns: dict[str, torch.Tensor]) -> None:
        device = self.device or columns["x"].device
        # A spare row at index max_size takes the writes of rejected samples, so an update is one
        # fixed-shape scatter per column: no data-dependent shapes, no device sync.
        rows = self.max_size + 1
        row_bytes = sum(v[:1].element_size() * max(v[:1].numel(), 1) for v in columns.values())
        _check_fits(rows * row_bytes, self.max_size)
        self.store = {
            k: torch.zeros((rows, *v.shape[1:]), dtype=v.dtype, device=device) for k, v in columns.items()
        }
        self._columns = set(self.store) - {"keys"}
        self._extras = [k for k in self.store if k.startswith("extra.")]
        if self.policy == "class-balanced":
            self.store["keys"] = torch.zeros(rows, device=device)

    def _reservoir_rows(
        self, n: int, generator: torch.Generator | None, device: torch.device
    ) -> torch.Tensor:
        """Algorithm R for a whole batch: sample i (the ``seen + i + 1``-th overall) goes to a uniform
        row in ``[0, seen + i]`` and is kept only if that row exists and no later sample of the batch
        takes it too (as if added one at a time). Rejected samples go to the spare row.

        The decisions are a few tiny host-side numpy operations (the run's generator lives on the
        CPU anyway), so the device sees one index tensor and never waits."""
        seen, size = self.seen, self.max_size
        rows = torch.rand(n, generator=generator, dtype=torch.float64).numpy()
        rows = (rows * np.arange(seen + 1, seen + n + 1)).astype(np.int64)
        if seen < size:
            rows[: size - seen] = np.arange(seen, min(size, seen + n))
        rows[rows > size] = size
        order = np.argsort(rows, kind="stable")  # equal rows grouped, in arrival order
        ordered = rows[order]
        rows[order[:-1][ordered[:-1] == ordered[1:]]] = size  # all but the last of each group
        return torch.from_numpy(rows).to(device, non_blocking=True)

    def _balanced_rows(self, labels: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Water-filling over classes: rank every candidate (stored or new) within its class by key,
        keep the ``max_size`` lowest ranks. Equal ranks keep stored samples first, so a full class only
        loses rows when another class needs them."""
        m, n = self.size, len(labels)
        device = labels.device
        y = torch.cat([self.store["y"][:m], labels])
        key = torch.cat([self.store["keys"][:m], keys]).double()
        by_class = (y.double() + key).argsort()  # keys lie in [0, 1): sorts by class, then key
        sorted_y = y[by_class]
        position = torch.arange(m + n, device=device)
        first = torch.ones_like(sorted_y, dtype=torch.bool)
        first[1:] = sorted_y[1:] != sorted_y[:-1]
        rank = torch.empty_like(position)
        rank[by_class] = position - torch.cummax(torch.where(first, position, 0), 0).values
        is_new = (position >= m).double()
        keep = torch.zeros(m + n, dtype=torch.bool, device=device)
        keep[(rank * 4 + is_new * 2 + key).argsort()[: self.max_size]] = True
        # New samples that are kept fill, in order, the rows of evicted samples and then the free rows.
        occupied = torch.zeros(min(m + n, self.max_size), dtype=torch.bool, device=device)
        occupied[:m] = keep[:m]
        vacant_rows = occupied.int().argsort(stable=True)
        kept_new = keep[m:]
        slot = kept_new.long().cumsum(0) - 1
        rows = vacant_rows[slot.clamp(0, len(vacant_rows) - 1)]
        return torch.where(kept_new, rows, self.max_size)

    # ---- sampling -------------------------------------------------------------------------------

    def sample_indices(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``min(n, len(self))`` distinct stored rows, chosen uniformly at random.

        Successive calls walk one random permutation of the rows, so a call costs O(n) (a new
        permutation only every ``len(self) / n`` calls) and every stored sample is replayed equally often.
        """
        n = min(n, self.size)
        if len(self._perm) != self.size or self._cursor + n > self.size:
            self._perm = torch.randperm(self.size, generator=generator).to(
                self.store["y"].device, non_blocking=True
            )
            self._cursor = 0
        indices = self._perm[self._cursor : self._cursor + n]
        self._cursor += n
        return indices

    def sample(self, n: int, generator: torch.Generator | None = None) -> Memories:
        """A random subset of ``min(n, len(self))`` stored samples (the seed's ``sample(batch_size)``)."""
        if self.size == 0:
            raise LifelongError("the replay buffer is empty; add samples before sampling from it")
        return self.gather(self.sample_indices(n, generator))

    def gather(self, idx: torch.Tensor) -> Memories:
        """The stored samples at rows ``idx``."""
        extras = {k[6:]: self.store[k].index_select(0, idx) for k in self._extras}
        x, y, task_ids = (self.store[k].index_select(0, idx) for k in ("x", "y", "task_ids"))
        return Memories(x, y, task_ids, extras)

    # ---- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Filled rows as tensors plus plain ints and strings: safetensors + JSON, no pickle."""
        state: dict[str, Any] = {k: v[: self.size].clone() for k, v in self.store.items()}
        state |= {"perm": self._perm.clone(), "cursor": self._cursor}
        return state | {
            "max_size": self.max_size,
            "policy": self.policy,
            "seen": self.seen,
            "size": self.size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["max_size"]) != self.max_size or state["policy"] != self.policy:
            raise LifelongError(
                f"saved buffer is {state['policy']} of size {state['max_size']} but this one is "
                f"{self.policy} of size {self.max_size}; use the options the run was started with"
            )
        self.seen, self.size = int(state["seen"]), int(state["size"])
        tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and k != "perm"}
        self.store = {}
        if tensors:
            self._allocate(tensors)
            for k, v in tensors.items():
                self.store[k][: self.size] = v.to(self.store[k].device)
        device = self.store["y"].device if self.store else None
        self._perm, self._cursor = state["perm"].to(device), int(state["cursor"])
