"""A fuzz test over the command line itself (issue "Nothing lost, nothing injected, no traceback",
acceptance 2). Hypothesis draws command lines for `run`, `report`, `adapters list|show|export|delete`,
`pretrain`, `finetune` and `perplexity` from a grammar of valid and hostile values: markup brackets,
control characters, U+2028, surrogates, huge, negative and non-finite numbers, empty strings, and
paths that are files, folders, missing, too long, under a file, or another run's folder; the files
they name come from the same grammar (nesting 100,000 deep, lone surrogates, lists as labels, YAML
aliases, results with 1e308 and 10**400).

For every command line: exit 0, or exit 2 with exactly one error line and no traceback; no input file
changed or deleted; another run's folder and the adapter library left as they were unless the
command was asked to change them (--overwrite, --resume, `adapters delete`). Valid values are kept
small (one epoch, two tasks, tiny files), so a command line that passes validation trains in seconds.
Examples are drawn from a fixed seed (derandomize), so CI sees the same cases every time.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lifelong.cli.app import main

# ---- the grammar ------------------------------------------------------------------------------------

HOSTILE_TEXT = [
    "[/red]",
    "[link=file:///etc/passwd]click[/link]",
    "[bold]x",
    "\x1b[31mred\x1b[0m",
    "a\u2028b\u0085c",
    "\udcff\udc80",  # what a command line of bytes that are not UTF-8 becomes in Python
    "",
    " ",
    "x" * 300,
    "-",
    ":",
    "=,=",
    "%s%n{0}",
    "naive+",
    "a:b=1,b=2",
]
NUMBERS = [
    "0",
    "-1",
    "-0",
    "1",
    "2",
    "0.5",
    "inf",
    "-inf",
    "nan",
    "1e309",
    "1e-320",
    "4294967296",
    "99999999999999999999",
    "1" * 400,
    "0x10",
    "",
]
# Paths are names inside the sandbox, resolved per example (see `Sandbox.path`).
PATHS = [
    "inputs/data.csv",
    "inputs/hostile.csv",
    "inputs/list-label.jsonl",
    "inputs/deep.jsonl",
    "inputs/surrogate.jsonl",
    "inputs/u2028.jsonl",
    "inputs/empty-answer.jsonl",
    "inputs/instruct.jsonl",
    "inputs/empty.csv",
    "inputs/binary.jsonl",
    "inputs/a.txt",
    "inputs/folder",
    "inputs/alias.yaml",
    "inputs/deep.yaml",
    "inputs/afile/sub",
    "inputs/" + "n" * 300,
    "missing/nowhere.csv",
    "shared-run",
    "report-hostile",
    "library",
    "/dev/null",
    ".",
    "",
]


def values(*pools: list[str]) -> st.SearchStrategy[str]:
    return st.sampled_from([v for pool in pools for v in pool])


def either(valid: list[str], hostile: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A flag's value: as often one of its ``valid`` values as a hostile one, so that command lines that
    pass validation and train are drawn too."""
    return st.sampled_from(valid) | hostile


TEXT = values(HOSTILE_TEXT)
NUMBER = values(NUMBERS)
PATH = values(PATHS)
ANY = values(HOSTILE_TEXT, NUMBERS, PATHS)

RUN_FLAGS: dict[str, st.SearchStrategy[str]] = {
    "--benchmark": st.sampled_from(
        ["permuted-digits:tasks=2", "split-digits:tasks=2", "permuted-digits:tasks=100000000", "nope"]
    )
    | TEXT,
    "--strategy": st.sampled_from(
        [
            "naive",
            "ewc:lambda=1,lambda=2",
            "replay:replay_ratio=nan",
            "replay:buffer_size=99999999999999999999",
        ]
    )
    | TEXT,
    "--model": st.sampled_from(["mlp:hidden=8", "mlp:hidden=-1", "mlp:hidden=1e400"]) | TEXT,
    "--epochs": either(["1"], NUMBER),
    "--batch-size": either(["16"], NUMBER),
    "--lr": either(["0.01"], NUMBER),
    "--seed": either(["3"], NUMBER),
    "--test-size": either(["0.25"], NUMBER),
    "--optimizer": either(["sgd"], TEXT),
    "--scenario": either(["domain"], TEXT),
    "--precision": either(["no"], TEXT),
    "--device": either(["cpu"], TEXT),
    "--data": either(["inputs/data.csv", "inputs/hostile.csv"], PATH),
    "--task-column": st.sampled_from(["task"]) | TEXT,
    "--label-column": either(["label"], TEXT),
    "--classes-per-task": either(["1"], NUMBER),
    "--config": PATH,
    "--threads": either(["1"], NUMBER),
    "--processes": st.sampled_from(["0", "-1", "99999999999999999999", "x"]),
    "--resume": PATH,
    "--out": PATH,
}
PRETRAIN_FLAGS: dict[str, st.SearchStrategy[str]] = {
    "--strategy": st.sampled_from(["naive", "ewc:lambda=inf", "replay"]) | TEXT,
    "--corpus": either(["inputs/a.txt"], PATH | TEXT),
    "--model": st.sampled_from(["tiny-llama:layers=99999999999", "inputs/folder"]) | TEXT,
    "--epochs": either(["1"], NUMBER),
    "--first-epochs": either(["0.5"], NUMBER),
    "--lr": either(["0.01"], NUMBER),
    "--block-size": either(["8"], NUMBER),
    "--batch-size": either(["4"], NUMBER),
    "--replay-ratio": NUMBER,
    "--warmup-ratio": either(["0.2"], NUMBER),
    "--grad-accum": either(["2"], NUMBER),
    "--eval-blocks": either(["2"], NUMBER),
    "--stop-ratio": either(["2.5"], NUMBER),
    "--schedule": either(["constant"], TEXT),
    "--precision": st.sampled_from(["no", "fp16"]) | TEXT,
    "--text-field": TEXT,
    "--seed": either(["3"], NUMBER),
    "--config": PATH,
    "--out": PATH,
    "--resume": PATH,
}
FINETUNE_FLAGS: dict[str, st.SearchStrategy[str]] = {
    "--strategy": st.sampled_from(["naive", "self-replay:ratio=nan", "lwf:prompts=[/x]"]) | TEXT,
    "--data": either(["inputs/instruct.jsonl"], PATH | TEXT),
    "--replay": PATH,
    "--epochs": either(["1"], NUMBER),
    "--lr": either(["0.01"], NUMBER),
    "--batch-size": either(["4"], NUMBER),
    "--max-length": either(["32"], NUMBER),
    "--max-new-tokens": either(["1"], NUMBER),
    "--lora-r": NUMBER,
    "--replay-ratio": NUMBER,
    "--eval-examples": either(["1"], NUMBER),
    "--metric": st.sampled_from(["nope:fn", "os:nope", "exact"]) | TEXT,
    "--precision": st.sampled_from(["no", "fp16"]) | TEXT,
    "--seed": either(["3"], NUMBER),
    "--config": PATH,
    "--out": PATH,
}
PERPLEXITY_FLAGS: dict[str, st.SearchStrategy[str]] = {
    "--model": st.sampled_from(["tiny-llama"]) | PATH | TEXT,
    "--data": PATH | TEXT,
    "--split": st.sampled_from(["all", "heldout"]) | TEXT,
    "--block-size": either(["8"], NUMBER),
    "--batch-size": either(["2"], NUMBER),
    "--max-blocks": either(["3"], NUMBER),
    "--text-field": TEXT,
    "--device": either(["cpu"], TEXT),
}
# What a command line starts from: small valid settings, each replaced by a drawn flag of that name.
RUN_BASE = {"--strategy": "naive", "--epochs": "1", "--benchmark": "permuted-digits:tasks=2"}
PRETRAIN_BASE = {
    "--strategy": "naive",
    "--corpus": "inputs/a.txt",
    "--epochs": "1",
    "--first-epochs": "1",
    "--block-size": "16",
}
FINETUNE_BASE = {
    "--strategy": "naive",
    "--data": "inputs/instruct.jsonl",
    "--epochs": "1",
    "--max-new-tokens": "2",
}
PERPLEXITY_BASE = {"--model": "tiny-llama", "--data": "inputs/a.txt", "--block-size": "16"}
PATH_FLAGS = {"--data", "--config", "--resume", "--out", "--corpus", "--replay", "--model"}


@st.composite
def flags(
    draw: st.DrawFn, grammar: dict[str, st.SearchStrategy[str]], base: dict[str, str]
) -> dict[str, str]:
    """``base`` with one or two of ``grammar``'s flags drawn over it."""
    names = draw(st.lists(st.sampled_from(sorted(grammar)), min_size=1, max_size=2, unique=True))
    return {**base, **{name: draw(grammar[name]) for name in names}}


# ---- the sandbox: inputs no command may change, and the folders some may ------------------------------


class Sandbox:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0

    def path(self, name: str) -> str:
        """A grammar path as the command line gets it: sandbox names absolute, others as they are."""
        if name in PATHS and name not in ("", ".", "/dev/null"):
            return str(self.root / name)
        return name

    def out(self) -> str:
        self.count += 1
        return str(self.root / "work" / f"out-{self.count}")


def digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (links as their targets) by its content hash."""
    out = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            out[key] = "-> " + os.readlink(path)
        elif path.is_file():
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[key] = "folder"
    return out


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    root = tmp_path_factory.mktemp("fuzz")
    inputs = root / "inputs"
    (inputs / "folder").mkdir(parents=True)
    # Not empty: a run may fill an empty folder given as --out, but must leave one holding a file it
    # did not write untouched.
    (inputs / "folder" / "notes.txt").write_text("a user's file\n")
    (root / "work").mkdir()
    rows = [
        {"f0": i * 0.1, "f1": label + i * 0.01, "label": label, "task": t}
        for t in "ab"
        for label in (0, 1)
        for i in range(8)
    ]
    header = "f0,f1,label,task\n"
    (inputs / "data.csv").write_text(
        header + "".join(f"{r['f0']},{r['f1']},{r['label']},{r['task']}\n" for r in rows)
    )
    hostile_rows = "".join(f"{r['f0']},{r['f1']},{r['label']},[/x]{r['task']}\x1b[2J\n" for r in rows)
    (inputs / "hostile.csv").write_text('f0,"f1\x1b[31m[/b]",label,task\n' + hostile_rows)
    (inputs / "list-label.jsonl").write_text(
        "".join(json.dumps({**r, "label": [r["label"]]}) + "\n" for r in rows)
    )
    (inputs / "deep.jsonl").write_text(
        '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + ', "completion": "x"}\n'
    )
    instruct = [{"prompt": f"q{i} \u2028 [/x]", "completion": f"a{i}"} for i in range(12)]
    (inputs / "instruct.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in instruct)
    )
    (inputs / "u2028.jsonl").write_text(
        "".join(json.dumps({**r, "text": "x\u2028y"}, ensure_ascii=False) + "\n" for r in instruct)
    )
    (inputs / "surrogate.jsonl").write_text('{"prompt": "\\ud800", "completion": "x"}\n{"text": "\\udfff"}\n')
    empty_answer = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}
    ] * 3
    (inputs / "empty-answer.jsonl").write_text("".join(json.dumps(r) + "\n" for r in empty_answer))
    (inputs / "empty.csv").write_text("")
    (inputs / "binary.jsonl").write_bytes(bytes(range(256)) * 4)
    (inputs / "a.txt").write_text("the cat sat on the mat. " * 40 + "\n" + "def f(x): return x + 1\n" * 40)
    (inputs / "alias.yaml").write_text("a: &a [1, 1]\nb: &b [*a, *a]\nc: [*b, *b]\n")
    (inputs / "deep.yaml").write_text("epochs: " + "[" * 10_000 + "]" * 10_000 + "\n")
    (inputs / "afile").write_text("a file where a folder is expected\n")
    _library(root / "library")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root / "work")
        patch.setenv("HOME", str(root / "work"))
        patch.setenv("LIFELONG_CACHE", str(tmp_path_factory.getbasetemp() / "llm-cache"))
        code, _, err = invoke(
            [
                "run",
                "-s",
                "naive",
                "--epochs",
                "1",
                "--benchmark",
                "permuted-digits:tasks=2",
                "--out",
                str(root / "shared-run"),
                "--no-progress",
            ]
        )
        assert code == 0, err
        _hostile_report(root / "shared-run", root / "report-hostile")
        yield Sandbox(root)


def _library(root: Path) -> None:
    """Adapter folders whose lifelong.json fields have the wrong kinds, and one with no record."""
    base = {"format": 1, "base": {"name": "[/x]", "config_hash": "0"}, "weights_sha256": ""}
    wrong = {
        "eval-text": {"eval": {"metric": "[link=file:///etc/passwd]x[/link]", "value": "high"}},
        "eval-list": {"eval": [1]},
        "lora-list": {"lora": [1]},
        "created-int": {"created": 5},
        "targets-int": {"lora": {"target_modules": 5}, "parents": 3},
        "r-text": {"lora": {"r": "abc"}, "kind": "[red]merged"},
    }
    for task, fields in wrong.items():
        (root / task).mkdir(parents=True)
        (root / task / "lifelong.json").write_text(json.dumps({**base, **fields}))
    (root / "no-record").mkdir()


def _hostile_report(run: Path, out: Path) -> None:
    """A run folder whose results.json holds numbers a plot cannot place and a name no font has."""
    out.mkdir()
    text = (run / "results.json").read_text()
    doc = json.loads(text)
    result = doc["results"][0]
    result["strategy"] = "\ud800x[/b]"
    result["accuracy_matrix"][0][0] = 1.7e308
    result["accuracy_matrix"][1][0] = -1.7e308
    (out / "results.json").write_text(json.dumps(doc).replace("1.7e+308", "1" + "0" * 400, 1))


# ---- running a command line -------------------------------------------------------------------------


def invoke(args: list[str]) -> tuple[int, str, str]:
    """The real entry point in-process: (exit status, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["lifelong", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def check(sandbox: Sandbox, args: list[str], may_change: Callable[[str], bool] = lambda _: False) -> None:
    """Run ``args``; assert the outcome and that nothing outside what it may change was touched."""
    guarded = {
        name: digest(sandbox.root / name) for name in ("inputs", "shared-run", "report-hostile", "library")
    }
    code, stdout, stderr = invoke(args)
    event(
        f"exit {code}"
    )  # how many command lines ran and how many were refused: --hypothesis-show-statistics
    shown = f"lifelong {' '.join(map(repr, args))}\n{stdout}{stderr}"
    assert "Traceback" not in stdout + stderr, shown
    assert code in (0, 2), shown
    if code == 2:
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), shown
    for name, before in guarded.items():
        if not may_change(name):
            assert digest(sandbox.root / name) == before, f"{name} changed by: {shown}"


def command_line(sandbox: Sandbox, command: list[str], given: dict[str, str], out: bool = True) -> list[str]:
    args = list(command)
    if out and "--out" not in given and "--resume" not in given:
        args += ["--out", sandbox.out()]
    for flag, value in given.items():
        args += [flag, sandbox.path(value) if flag in PATH_FLAGS else value]
    return args


FUZZ = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def run_folder_changes(given: dict[str, str]) -> Callable[[str], bool]:
    """A command may change another run's folder only when told to (--overwrite, --resume)."""
    return lambda name: name == "shared-run" and ("--resume" in given or "--overwrite" in given)


@settings(FUZZ, max_examples=50)
@given(given=flags(RUN_FLAGS, RUN_BASE), overwrite=st.booleans())
def test_run_command_lines(sandbox: Sandbox, given: dict[str, str], overwrite: bool) -> None:
    args = command_line(sandbox, ["run", "--no-progress"], given) + (["--overwrite"] if overwrite else [])
    check(sandbox, args, run_folder_changes({**given, **({"--overwrite": ""} if overwrite else {})}))


@settings(FUZZ, max_examples=16)
@given(given=flags(PRETRAIN_FLAGS, PRETRAIN_BASE))
def test_pretrain_command_lines(sandbox: Sandbox, given: dict[str, str]) -> None:
    check(sandbox, command_line(sandbox, ["pretrain", "--no-progress"], given), run_folder_changes(given))


@settings(FUZZ, max_examples=16)
@given(given=flags(FINETUNE_FLAGS, FINETUNE_BASE))
def test_finetune_command_lines(sandbox: Sandbox, given: dict[str, str]) -> None:
    check(sandbox, command_line(sandbox, ["finetune", "--no-progress"], given), run_folder_changes(given))


@settings(FUZZ, max_examples=30)
@given(given=flags(PERPLEXITY_FLAGS, PERPLEXITY_BASE))
def test_perplexity_command_lines(sandbox: Sandbox, given: dict[str, str]) -> None:
    check(sandbox, command_line(sandbox, ["perplexity"], given, out=False))


@settings(FUZZ, max_examples=40)
@given(
    runs=st.lists(either(["shared-run", "report-hostile"], PATH | TEXT), min_size=1, max_size=2),
    out=st.none() | PATH | st.just("fresh"),
)
def test_report_command_lines(sandbox: Sandbox, runs: list[str], out: str | None) -> None:
    args = ["report", *map(sandbox.path, runs)]
    if out is not None:
        args += ["--out", sandbox.out() if out == "fresh" else sandbox.path(out)]
    # `report` rewrites the reports of the runs it is given, and nothing else.
    check(sandbox, args, lambda name: name in ("shared-run", "report-hostile") and name in " ".join(runs))


ADAPTER_TASKS = (
    st.sampled_from(["eval-text", "lora-list", "r-text", "no-record", "missing", "../library"]) | TEXT
)


@settings(FUZZ, max_examples=50)
@given(
    command=st.sampled_from(["list", "show", "export", "delete"]),
    task=ADAPTER_TASKS,
    root=st.sampled_from(["library"]) | PATH,
    target=PATH | st.just("fresh"),
    json_=st.booleans(),
)
def test_adapters_command_lines(
    sandbox: Sandbox, command: str, task: str, root: str, target: str, json_: bool
) -> None:
    args = ["adapters", command, "--root", sandbox.path(root)]
    if command != "list":
        args.insert(2, task)
    if command == "export":
        args += [
            "--out",
            sandbox.out() if target == "fresh" else sandbox.path(target),
            "--base",
            sandbox.path(target),
        ]
    if command == "delete":
        args.append("--yes")
    if json_ and command in ("list", "show"):
        args.append("--json")
    # Only `adapters delete` changes the library, and only the named adapter's folder.
    before = digest(sandbox.root / "library")
    check(sandbox, args, lambda name: name == "library" and command == "delete")
    after = digest(sandbox.root / "library")
    changed = {k.split("/")[0] for k in before.keys() ^ after.keys()}
    changed |= {k.split("/")[0] for k in before.keys() & after.keys() if before[k] != after[k]}
    assert changed <= {task}, f"adapters {command} {task!r} changed {changed}"
