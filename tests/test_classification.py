"""The classification proxy: generated data, CIFAR-10 batches, image folders, training and its failures."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nasplat.registry import TASKS
from nasplat.tasks.classification import DEFAULT_EPOCHS, ClassificationTask
from nasplat.tasks.datasets import TEXTURES, SyntheticSpec, generate


@pytest.fixture(autouse=True, scope="module")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The generated set's disk cache goes to a temporary folder, not the user's ~/.cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    yield
    patch.undo()


def tiny_cnn(num_classes: int = 10) -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2), *block(32, 32),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))


class NaNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean((2, 3))) * float("nan")


# --- the generated set --------------------------------------------------------------------------------------

def test_generated_set_is_deterministic_per_seed_with_the_stated_shape() -> None:
    spec = SyntheticSpec(train_size=120, val_size=30)
    a, b = generate(spec, disk_cache=False), generate(SyntheticSpec(train_size=120, val_size=30), disk_cache=False)
    assert a.train_x.shape == (120, 3, 64, 64) and a.val_x.shape == (30, 3, 64, 64)
    assert a.train_x.dtype == torch.uint8 and a.train_y.dtype == torch.int64
    assert a.classes == tuple(TEXTURES) and len(a.classes) == 10
    assert sorted(a.train_y.unique().tolist()) == list(range(10))  # balanced: 12 of each class
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    other = generate(SyntheticSpec(seed=1, train_size=120, val_size=30), disk_cache=False)
    assert not torch.equal(a.train_x, other.train_x)
    assert not torch.equal(a.train_x[:30], a.val_x)  # the splits are different draws


def test_generated_set_round_trips_through_the_disk_cache() -> None:
    from nasplat.tasks import datasets

    spec = SyntheticSpec(seed=7, train_size=20, val_size=10)
    first = generate(spec)
    datasets._GENERATED.clear()  # the next call must read the file
    assert torch.equal(generate(spec).train_x, first.train_x)
    assert spec.key() != SyntheticSpec(seed=8, train_size=20, val_size=10).key()


# --- training ----------------------------------------------------------------------------------------------

def test_task_is_registered_and_exposes_its_default_epochs() -> None:
    assert TASKS.get("classification") is ClassificationTask
    assert ClassificationTask.DEFAULT_EPOCHS == DEFAULT_EPOCHS >= 1
    task = ClassificationTask()
    assert task.num_classes == 10 and task.base_resolution == 64 and task.input_size(0.5) == 32


def test_train_eval_learns_is_reproducible_and_reports_every_epoch() -> None:
    task = ClassificationTask(limit_train=3000, limit_val=400, lr=1e-2)
    epochs: list[tuple[int, dict[str, float]]] = []
    first = task.train_eval(tiny_cnn(), input_size=32, epochs=2, seed=3,
                            on_epoch=lambda e, m: epochs.append((e, m)))
    assert [e for e, _ in epochs] == [1, 2]
    assert epochs[-1][1]["accuracy"] == first["accuracy"]
    assert {"accuracy", "loss", "train_loss", "train_seconds"} <= set(first)
    assert first["accuracy"] > 30  # chance is 10; a tiny CNN reaches 50-60 here
    torch.manual_seed(123)  # a different RNG state at build time must not matter
    again = task.train_eval(tiny_cnn(), input_size=32, epochs=2, seed=3)
    assert again["accuracy"] == first["accuracy"] and again["loss"] == first["loss"]


def test_nan_loss_raises_floating_point_error() -> None:
    task = ClassificationTask(limit_train=64, limit_val=32)
    with pytest.raises(FloatingPointError, match="loss is nan"):
        task.train_eval(NaNNet(), input_size=16, epochs=1, seed=0)


# --- CIFAR-10 python batches ---------------------------------------------------------------------------------

def write_cifar(folder: Path, *, per_batch: int = 60) -> Path:
    """The real layout: pickled dicts with b'data' (N x 3072 uint8, channel planes) and b'labels'."""
    root = folder / "cifar-10-batches-py"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        labels = [i % 10 for i in range(per_batch)]
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        data[:, :1024] = np.array(labels, dtype=np.uint8)[:, None] * 25  # a learnable red channel
        with (root / name).open("wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data}, f)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with (root / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f)
    return root


def test_cifar10_batches_load_and_train(tmp_path: Path) -> None:
    root = write_cifar(tmp_path)
    for location in (tmp_path, root):  # the folder holding cifar-10-batches-py, or that folder itself
        task = ClassificationTask(data=f"cifar10:{location}")
        assert task.num_classes == 10 and task.classes[0] == "airplane" and task.base_resolution == 32
    data = task.data()
    assert data.train_x.shape == (120, 3, 32, 32) and data.val_x.shape == (60, 3, 32, 32)
    assert int(data.train_x[1, 0, 0, 0]) == 25 and data.train_y[1] == 1  # red plane first, as CIFAR stores it
    result = task.train_eval(tiny_cnn(), input_size=task.input_size(1.0), epochs=1, seed=0)
    assert 0 <= result["accuracy"] <= 100


def test_cifar10_bad_paths_say_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cifar10:.*does not exist.*cifar-10-batches-py"):
        ClassificationTask(data=f"cifar10:{tmp_path / 'nowhere'}")
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"no data_batch_1 in .*expected.*found readme.txt"):
        ClassificationTask(data=f"cifar10:{tmp_path}")
    (tmp_path / "data_batch_1").write_bytes(b"not a pickle")
    (tmp_path / "test_batch").write_bytes(b"not a pickle")
    task = ClassificationTask(data=f"cifar10:{tmp_path}")
    with pytest.raises(ValueError, match=r"cannot unpickle .*data_batch_1"):
        task.data()
    with (tmp_path / "data_batch_1").open("wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), dtype=np.uint8), b"labels": [0, 1, 2, 3]}, f)
    with pytest.raises(ValueError, match=r"is not a CIFAR-10 python batch .*shape \(4, 100\)"):
        ClassificationTask(data=f"cifar10:{tmp_path}").data()


# --- image folders ---------------------------------------------------------------------------------------------

def write_images(folder: Path, classes: dict[str, tuple[int, int, int]], count: int) -> None:
    from PIL import Image

    for name, colour in classes.items():
        (folder / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (40 + i, 30), colour).save(folder / name / f"{i}.png")


def test_image_folder_with_train_and_val_loads_and_trains(tmp_path: Path) -> None:
    colours = {"cat": (200, 30, 30), "dog": (30, 200, 30), "eel": (30, 30, 200)}
    write_images(tmp_path / "train", colours, 6)
    write_images(tmp_path / "val", colours, 2)
    task = ClassificationTask(data=f"folder:{tmp_path}", base_resolution=24)
    assert task.classes == ("cat", "dog", "eel") and task.num_classes == 3
    data = task.data()
    assert data.train_x.shape == (18, 3, 24, 24) and data.val_x.shape == (6, 3, 24, 24)
    assert data.train_x[0, :, 12, 12].tolist() == [200, 30, 30]
    result = task.train_eval(tiny_cnn(3), input_size=16, epochs=1, seed=0)
    assert 0 <= result["accuracy"] <= 100


def test_single_image_tree_is_split_deterministically(tmp_path: Path) -> None:
    write_images(tmp_path, {"a": (0, 0, 0), "b": (255, 255, 255)}, 20)
    first = ClassificationTask(data=f"folder:{tmp_path}").data()
    second = ClassificationTask(data=f"folder:{tmp_path}").data()
    assert len(first.train_x) + len(first.val_x) == 40 and 0 < len(first.val_x) < 20
    assert torch.equal(first.val_x, second.val_x) and torch.equal(first.train_y, second.train_y)


def test_image_folder_bad_paths_say_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"folder:.*does not exist.*expected PATH/train/<class>"):
        ClassificationTask(data=f"folder:{tmp_path / 'nowhere'}")
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"no class folders with images in .*found notes.txt"):
        ClassificationTask(data=f"folder:{tmp_path}")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    task = ClassificationTask(data=f"folder:{tmp_path}")
    with pytest.raises(ValueError, match=r"cannot read image .*broken.png"):
        task.data()


def test_unknown_data_source_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"unknown data source 'imagenet'.*'synthetic'"):
        ClassificationTask(data="imagenet")
