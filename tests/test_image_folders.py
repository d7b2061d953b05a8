"""Image class folders as a stream: layouts, decoding, and one line for each problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from image_fixtures import FAST, bad_input, matrix_of, write_image_folders

from lifelong.data.image_folders import load_image_folders
from lifelong.errors import LifelongError


def test_image_folders_of_classes_and_of_tasks(cli, tmp_path: Path) -> None:
    write_image_folders(tmp_path / "classes", classes=4, per_class=10)
    code, _, err = cli(
        "run",
        "--data",
        str(tmp_path / "classes"),
        "--classes-per-task",
        "2",
        "--out",
        str(tmp_path / "a"),
        *FAST,
    )
    assert code == 0, err
    assert len(matrix_of(tmp_path / "a")) == 2
    write_image_folders(tmp_path / "tasks", classes=4, per_class=10, tasks=2, color=True)
    out = tmp_path / "b"
    code, _, err = cli(
        "run",
        "--data",
        str(tmp_path / "tasks"),
        "--augment",
        "--model",
        "reduced-resnet18:width=4",
        "--out",
        str(out),
        *FAST,
    )
    assert code == 0, err
    stream = json.loads((out / "run.json").read_text())["stream"]
    assert stream["tasks"] == {"task0": ["class0", "class1"], "task1": ["class2", "class3"]}
    loaded = load_image_folders(tmp_path / "tasks")
    assert loaded.input_shape == (3, 12, 12) and loaded.class_names == [
        "class0",
        "class1",
        "class2",
        "class3",
    ]


def test_image_size_resizes_and_gray_joins_colour(tmp_path: Path) -> None:
    from PIL import Image

    write_image_folders(tmp_path, classes=2, per_class=6)
    Image.new("RGB", (20, 16), (255, 0, 0)).save(tmp_path / "class0" / "big.png")
    with pytest.raises(LifelongError, match=r"differ in size.*--image-size"):
        load_image_folders(tmp_path, classes_per_task=1)
    stream = load_image_folders(tmp_path, classes_per_task=1, image_size=8)
    assert stream.input_shape == (3, 8, 8)


def test_image_folder_problems_say_so_in_one_line(cli, tmp_path: Path) -> None:
    root = write_image_folders(tmp_path / "imgs", classes=2, per_class=6)
    (root / "class1" / "0broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert "0broken.png' is not a readable image" in bad_input(
        cli, tmp_path, "--data", str(root), "--classes-per-task", "1"
    )
    (root / "class1" / "0broken.png").unlink()
    (root / "class2").mkdir()
    (root / "class2" / "notes.txt").write_text("no images here")
    assert "class2' holds no images" in bad_input(
        cli, tmp_path, "--data", str(root), "--classes-per-task", "1"
    )
    shutil.rmtree(root / "class2")
    assert "--classes-per-task N" in bad_input(cli, tmp_path, "--data", str(root))
    assert "--data-root" in bad_input(cli, tmp_path, "--benchmark", "split-digits", "--data-root", str(root))
    assert "drop --augment" in bad_input(cli, tmp_path, "--augment")


def test_sixteen_bit_gray_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    from PIL import Image

    for label, level in ((0, 1000), (1, 60000)):
        folder = tmp_path / f"class{label}"
        folder.mkdir()
        for i in range(4):
            Image.fromarray(np.full((4, 4), level, dtype=np.uint16)).save(folder / f"{i}.png")
    stream = load_image_folders(tmp_path, classes_per_task=2, test_size=0.5)
    pixels = torch.cat([stream[0].train.tensors[0], stream[0].test.tensors[0]]).unique().tolist()
    assert pixels == [round(1000 / 257), round(60000 / 257)]


def test_a_resumed_run_refuses_a_stream_cut_differently(cli, tmp_path: Path) -> None:
    root = write_image_folders(tmp_path / "imgs", classes=4, per_class=6, tasks=2)
    out = tmp_path / "run"
    code, _, err = cli("run", "--data", str(root), "--out", str(out), *FAST)
    assert code == 0, err
    saved = json.loads((out / "run.json").read_text())
    (out / "results.json").unlink()  # as if it had stopped before its end
    shutil.move(str(root / "task1" / "class3"), str(root / "task0" / "class3"))
    code, _, err = cli("run", "--resume", str(out), "--no-progress", "--report", "none")
    assert code == 2 and "not cut as when" in err
    assert json.loads((out / "run.json").read_text()) == saved


def test_decoding_shows_one_bar_that_counts_every_image_and_goes(tmp_path: Path) -> None:
    from rich.progress import Progress

    class Counted(Progress):
        advanced = 0

        def advance(self, task_id, advance: float = 1) -> None:  # type: ignore[no-untyped-def]
            Counted.advanced += 1
            super().advance(task_id, advance)

    write_image_folders(tmp_path, classes=2, per_class=5)
    progress = Counted(disable=True)
    load_image_folders(tmp_path, classes_per_task=1, progress=progress)
    assert Counted.advanced == 10 and not progress.tasks


def test_an_image_size_the_memory_cannot_hold_is_refused_before_decoding(cli, tmp_path: Path) -> None:
    root = write_image_folders(tmp_path / "imgs", classes=2, per_class=6)
    err = bad_input(cli, tmp_path, "--data", str(root), "--classes-per-task", "1", "--image-size", "1000000")
    assert "12 images of 1000000x1000000 needs" in err and "smaller --image-size" in err


def test_jpeg_bmp_and_webp_files_are_read_beside_png(tmp_path: Path) -> None:
    from PIL import Image

    root = write_image_folders(tmp_path, classes=2, per_class=6)
    for i, png in enumerate(sorted((root / "class1").glob("*.png"))):
        suffix = (".jpg", ".jpeg", ".bmp", ".webp")[i % 4]
        Image.open(png).save(png.with_suffix(suffix))
        png.unlink()
    stream = load_image_folders(root, classes_per_task=2, test_size=0.5)
    assert len(stream[0].train) + len(stream[0].test) == 12


def test_class_names_that_sort_alike_keep_one_order_whatever_order_they_come_in() -> None:
    import itertools

    from lifelong.data.image_folders import class_order

    names = ["dog1", "cat", "Cat", "dog01", "class10", "class2"]
    orders = {tuple(class_order(p)) for p in itertools.permutations(names)}
    assert orders == {("Cat", "cat", "class2", "class10", "dog01", "dog1")}


def test_channel_statistics_in_small_chunks_match_the_whole(tmp_path: Path) -> None:
    from lifelong.data.image_folders import channel_stats

    pixels = torch.randint(0, 256, (37, 3, 5, 4), dtype=torch.uint8)
    mean, std = channel_stats(pixels, chunk_pixels=50)  # a chunk of 2 images
    whole = pixels.double().div(255)
    assert mean == pytest.approx(whole.mean(dim=(0, 2, 3)).tolist(), rel=1e-12)
    assert std == pytest.approx(whole.std(dim=(0, 2, 3), unbiased=False).tolist(), rel=1e-9)


def test_a_run_folder_from_before_run_json_named_its_command_resumes_more_than_once(
    cli, tmp_path: Path
) -> None:
    """A stream whose cut is recorded rewrites run.json: it must stay readable as its own format."""
    root = write_image_folders(tmp_path / "imgs", classes=4, per_class=6, tasks=2)
    out = tmp_path / "run"
    code, _, err = cli("run", "--data", str(root), "--out", str(out), *FAST)
    assert code == 0, err
    saved = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps(saved["settings"]))  # the older layout: settings alone
    for _ in range(2):
        (out / "results.json").unlink()
        code, _, err = cli("run", "--resume", str(out), "--no-progress", "--report", "none")
        assert code == 0, err
    resumed = json.loads((out / "run.json").read_text())
    assert resumed["settings"] == saved["settings"] and resumed["stream"] == saved["stream"]
