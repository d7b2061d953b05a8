"""Files written so that a crash never leaves a half-written one that looks whole."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from lifelong.errors import LifelongError

# The temporary file `atomic_write_bytes` writes first: ".<name>.<mkstemp's 8 random characters>.tmp".
ATOMIC_TEMP = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results and reports are meant to be shared
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, allow_nan=False) + "\n").encode("utf-8"))


def json_digest(value: Any) -> str:
    """SHA-256 of ``value`` as canonical JSON: the same for a value and for its JSON round trip."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, allow_nan=False).encode()).hexdigest()


def write_checked_json(path: Path, value: dict[str, Any]) -> None:
    """Write ``value`` atomically with the checksum of its content, for `read_checked_json`."""
    atomic_write_json(path, {**value, "sha256": json_digest(value)})


def read_checked_json(path: Path) -> dict[str, Any] | None:
    """What `write_checked_json` wrote to ``path``; None if the file cannot be read, is not such a
    document, or was changed since."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(value, dict):
            return None
        checksum = value.pop("sha256", None)
        return value if checksum == json_digest(value) else None
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None


# ---- checkpoints: tensors in safetensors, everything else in JSON, a manifest of checksums ----------

CHECKPOINT_FORMAT = 1
TENSORS_FILE, STATE_FILE, MANIFEST_FILE = "tensors.safetensors", "state.json", "manifest.json"
CHECKPOINT_FILES = (
    TENSORS_FILE,
    STATE_FILE,
    MANIFEST_FILE,
)  # a checkpoint's own, beside what ``files`` wrote


def flatten_state(state: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor of a nested state into ``tensors`` under a dotted key; return the JSON rest.

    Tensors are replaced by ``{"__tensor__": key}`` so `unflatten_state` can put them back.
    """
    if isinstance(state, torch.Tensor):
        # safetensors refuses shared or strided storage: store an owned, contiguous copy.
        tensors[prefix] = state.detach().to("cpu").contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(state, dict):
        return {str(k): flatten_state(v, f"{prefix}.{k}", tensors) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(state)]
    if state is None or isinstance(state, bool | int | float | str):
        return state
    raise LifelongError(
        f"state entry '{prefix}' is a {type(state).__name__}; state may hold only tensors and JSON values"
    )


def unflatten_state(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict):
        if set(tree) == {"__tensor__"}:
            return tensors[tree["__tensor__"]]
        return {k: unflatten_state(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [unflatten_state(v, tensors) for v in tree]
    return tree


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(
    folder: Path,
    tensors: dict[str, torch.Tensor],
    state: dict[str, Any],
    files: Callable[[Path], None] | None = None,
) -> None:
    """Write a checkpoint folder whole or not at all.

    Files go into ``<folder>.partial``, each flushed to disk, the manifest of checksums last; then the
    folder is renamed into place. A crash at any point leaves either no ``folder`` or a complete one.
    ``files(partial)`` may write more files there first (a Hugging Face model folder, say): the
    manifest covers them too, so they are committed, and verified, with the rest.
    """
    from safetensors.torch import save

    partial = folder.with_name(folder.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    if files is not None:
        files(partial)
    atomic_write_bytes(partial / TENSORS_FILE, save(tensors))
    atomic_write_json(partial / STATE_FILE, state)
    names = sorted(p.relative_to(partial).as_posix() for p in partial.rglob("*") if p.is_file())
    for name in names:
        _sync(partial / name)
    atomic_write_json(
        partial / MANIFEST_FILE,
        {"format": CHECKPOINT_FORMAT, "files": {name: sha256_file(partial / name) for name in names}},
    )
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(partial, folder)


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _listed(name: Any) -> bool:
    """A manifest entry names a file inside the checkpoint folder, never one outside it."""
    return isinstance(name, str) and not Path(name).is_absolute() and ".." not in Path(name).parts


# Only the newest task's checkpoint is kept, so a damaged one leaves no earlier task to go back to.
_NO_RESUME = (
    "it is the only checkpoint kept, so this strategy cannot resume: delete {0} to train it again "
    "from its first task, or start a new run"
)


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Verify the manifest's checksums, then load tensors (safetensors, never pickle) and JSON state."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        files = manifest["files"]
        if (
            manifest.get("format") != CHECKPOINT_FORMAT
            or not {TENSORS_FILE, STATE_FILE} <= set(files)
            or not all(_listed(name) for name in files)
        ):
            raise ValueError("unknown format")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise LifelongError(
            f"checkpoint {folder} has no valid {MANIFEST_FILE}; {_NO_RESUME.format(folder.parent)}"
        ) from None
    for name, expected in files.items():
        path = folder / name
        if not path.is_file() or sha256_file(path) != expected:
            raise LifelongError(
                f"checkpoint file {path} does not match its checksum in {MANIFEST_FILE} (changed or truncated); "
                + _NO_RESUME.format(folder.parent)
            )
    try:
        tensors = load((folder / TENSORS_FILE).read_bytes())
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except (SafetensorError, ValueError, UnicodeDecodeError, RecursionError) as err:
        raise LifelongError(
            f"checkpoint {folder} cannot be read ({err}); {_NO_RESUME.format(folder.parent)}"
        ) from None
    if not isinstance(state, dict):
        raise LifelongError(
            f"checkpoint {folder}'s {STATE_FILE} is not a mapping; {_NO_RESUME.format(folder.parent)}"
        )
    return tensors, state


@contextmanager
def restoring(folder: Path) -> Iterator[None]:
    """Around loading a checkpoint's content into a model and strategies: a checkpoint whose checksums
    match can still hold the wrong things (a file written by hand, another version): a missing key, a
    value of the wrong kind, a tensor of the wrong shape. Each is one `LifelongError`, not a traceback."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as err:
        detail = (str(err).strip().splitlines() or [""])[0][:160]
        raise LifelongError(
            f"checkpoint {folder} does not hold the state this run saves ({type(err).__name__}: {detail}); "
            + _NO_RESUME.format(folder.parent)
        ) from None


def latest_checkpoint(strategy_dir: Path) -> Path | None:
    """The checkpoint of the last completed task (``task-<i>``), ignoring unfinished ``.partial`` ones."""
    done = [p for p in strategy_dir.glob("task-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return max(done, key=lambda p: int(p.name.split("-", 1)[1]), default=None)
