"""The counting proxy: density maps, generated crowds, SPPLoss, the ShanghaiTech loader, metrics and training."""
from __future__ import annotations

import math
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.io import savemat
from torch import nn

from nasplat.registry import TASKS
from nasplat.tasks.counting import CountingTask, accuracy_from_mae, count_errors
from nasplat.tasks.crowd_data import (CrowdSpec, adaptive_sigmas, density_map, generate, open_crowd_source,
                                      read_points, render, resize_density)
from nasplat.tasks.spp_loss import SPPLoss


def tiny_counter() -> nn.Module:
    """A two-layer density regressor at output stride 2."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 1, 1))


class Zeros(nn.Module):
    """Predicts an empty density map at output stride 4: every predicted count is 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x), 1, x.shape[-2] // 4, x.shape[-1] // 4)


# --- density maps ------------------------------------------------------------------------------------------

def test_density_map_sums_to_the_head_count_even_at_the_border() -> None:
    """The tolerance, 1e-4 of the count, is float32 rounding of a sum of 1,200 pixels (about 1e-6 here);
    an unrenormalised kernel clipped at a corner would lose most of a head, and one at an edge half of one."""
    rng = np.random.default_rng(0)
    cases = [np.zeros((0, 2)), np.array([[0.0, 0.0]]), np.array([[40.0, 30.0], [39.5, 0.2]]),
             np.array([[10.0, 10.0]] * 3),  # coincident heads: distance 0
             rng.uniform(-3, 43, (300, 2)) * [1, 0.75]]  # some a little outside the image
    for points in cases:
        density = density_map(points, height=30, width=40)
        assert density.shape == (1, 30, 40) and density.dtype == torch.float32 and density.min() >= 0
        assert abs(density.sum().item() - len(points)) <= 1e-4 * max(1, len(points)), len(points)
    lone = density_map(np.array([[12.3, 7.8]]), height=30, width=40)
    assert divmod(int(lone.argmax()), 40) == (7, 12)  # peaks at the head's pixel (row 7, column 12)


def test_adaptive_sigma_grows_with_the_spacing_of_heads() -> None:
    def grid(spacing: float) -> np.ndarray:
        return np.array([(x, y) for y in range(5) for x in range(5)], dtype=float) * spacing + 5

    dense, sparse = adaptive_sigmas(grid(4.0)), adaptive_sigmas(grid(8.0))
    assert dense[12] == pytest.approx(0.3 * 4.0) and sparse[12] == pytest.approx(0.3 * 8.0)  # centre: 3 at spacing
    assert np.allclose(sparse, 2 * dense)
    assert adaptive_sigmas(np.array([[3.0, 4.0]]), lone_sigma=2.5).tolist() == [2.5]
    assert adaptive_sigmas(np.array([[0.0, 0.0], [10.0, 0.0]])).tolist() == pytest.approx([3.0, 3.0])  # k -> 1
    # in the map: a wider kernel spreads the same mass, so the sparse pair's peak is lower
    near = density_map(np.array([[20.0, 20.0], [24.0, 20.0]]), height=40, width=40)
    far = density_map(np.array([[10.0, 20.0], [30.0, 20.0]]), height=40, width=40)
    assert far.max() < 0.5 * near.max()


def test_resize_density_keeps_every_count() -> None:
    maps = torch.stack([density_map(np.random.default_rng(i).uniform(0, 64, (i * 7, 2)), height=64, width=64)
                        for i in range(4)])  # the first is empty
    for size in ((16, 16), (23, 23), (7, 9), (64, 64), (80, 80)):
        resized = resize_density(maps, size)
        assert resized.shape == (4, 1, *size)
        assert torch.allclose(resized.sum(dim=(1, 2, 3)), torch.tensor([0.0, 7, 14, 21]), atol=1e-3)
    assert resize_density(maps, (64, 64)) is maps


# --- the generated crowds ----------------------------------------------------------------------------------

def test_perspective_makes_figures_near_the_top_smaller() -> None:
    crowd = render(60, CrowdSpec(resolution=64), torch.Generator().manual_seed(0))
    y = torch.cat([p[:, 1] for p in crowd.points]).numpy()
    radius = torch.cat(list(crowd.radii)).numpy()
    assert len(y) > 300
    assert np.corrcoef(y, radius)[0, 1] > 0.7
    assert radius[y < 16].mean() < 0.7 * radius[y > 48].mean()
    for points, radii in zip(crowd.points, crowd.radii):  # within an image, beyond the +-15% jitter
        top, bottom = points[:, 1] < 16, points[:, 1] > 48
        if top.any() and bottom.any():
            assert radii[top].max() < radii[bottom].max()


def test_crowds_vary_in_density_and_cluster() -> None:
    """Counts span sparse and packed scenes, and heads gather in groups: the variance over mean of the head
    counts in a 4 x 4 grid of cells (the index of dispersion) is about 1 for uniform scatter, well above it
    for clusters."""
    def dispersion(points: torch.Tensor) -> float:
        cells = np.histogram2d(points[:, 0].numpy(), points[:, 1].numpy(), bins=4, range=[[0, 64], [0, 64]])[0]
        return cells.var() / cells.mean()

    crowd = render(80, CrowdSpec(resolution=64), torch.Generator().manual_seed(1))
    counts = np.array([len(p) for p in crowd.points])
    assert counts.min() >= 1 and counts.max() <= 60 and (counts <= 5).any() and (counts >= 40).any()
    busy = [p for p in crowd.points if len(p) >= 20]
    scattered = [torch.rand(len(p), 2, generator=torch.Generator().manual_seed(i)) * 64 for i, p in enumerate(busy)]
    assert len(busy) >= 10
    assert np.mean([dispersion(p) for p in scattered]) < 1.5 < 2.5 < np.mean([dispersion(p) for p in busy])


def test_generator_is_deterministic_per_seed_and_maps_match_the_heads() -> None:
    spec = CrowdSpec(resolution=32)
    a, b = (render(6, spec, torch.Generator().manual_seed(5)) for _ in range(2))
    other = render(6, spec, torch.Generator().manual_seed(6))
    assert a.images.shape == (6, 3, 32, 32) and a.images.dtype == torch.uint8
    assert torch.equal(a.images, b.images) and all(torch.equal(p, q) for p, q in zip(a.points, b.points))
    assert not torch.equal(a.images, other.images)
    data = generate(CrowdSpec(seed=3, train_size=10, val_size=5, resolution=32))
    again = generate(CrowdSpec(seed=3, train_size=10, val_size=5, resolution=32))
    assert data.train_x.shape == (10, 3, 32, 32) and data.val_density.shape == (5, 1, 32, 32)
    assert torch.equal(data.train_x, again.train_x)
    assert not torch.equal(data.train_x[:5], data.val_x)  # the splits are different draws
    counts = data.train_density.sum(dim=(1, 2, 3))
    assert torch.allclose(counts, counts.round(), atol=1e-3) and counts.min() >= 1


# --- SPPLoss ------------------------------------------------------------------------------------------------

def spike(row: int, col: int, side: int = 16) -> torch.Tensor:
    d = torch.zeros(1, 1, side, side)
    d[0, 0, row, col] = 1.0
    return d


def test_spp_loss_is_zero_only_for_equal_maps() -> None:
    maps = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    loss = SPPLoss()
    assert loss(maps, maps.clone()).item() == 0.0
    assert loss(maps, maps + 1e-3).item() > 0 and loss(maps, maps.flip(-1)).item() > 0
    assert torch.allclose(SPPLoss(levels=())(maps, maps.flip(-1)), F.mse_loss(maps, maps.flip(-1)))


def test_spp_pyramid_catches_misplaced_density_that_one_count_misses() -> None:
    target, misplaced = spike(2, 2) * 5, spike(13, 13) * 5  # the same count, the opposite corner
    terms = SPPLoss(levels=(1, 2, 4)).terms(misplaced, target)
    assert set(terms) == {0, 1, 2, 4}
    assert terms[1].item() == pytest.approx(0.0, abs=1e-9)  # the whole-image count agrees
    assert terms[2].item() > 0 and terms[4].item() > 0
    # plain MSE cannot tell a near miss from a far one; the pyramid can
    near, far = spike(3, 2) * 5, misplaced
    mse, spp = nn.MSELoss(), SPPLoss()
    assert mse(near, target).item() == pytest.approx(mse(far, target).item())
    assert spp(near, target).item() == pytest.approx(mse(near, target).item())  # same cell at every level
    # a one-pixel error weighs the same at every level (the area normalisation): the far miss costs the pixel
    # term plus the 2 x 2 and 4 x 4 levels, which see it in other cells
    assert spp(far, target).item() == pytest.approx(3 * spp(near, target).item())


def test_spp_loss_checks_its_input() -> None:
    assert set(SPPLoss(levels=(1, 4, 8)).terms(torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4))) == {0, 1}
    with pytest.raises(ValueError, match="grid sides"):
        SPPLoss(levels=(0, 2))
    with pytest.raises(ValueError, match="one shape"):
        SPPLoss()(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4))


# --- metrics and the task ------------------------------------------------------------------------------------

def test_count_errors_and_accuracy_on_a_known_case() -> None:
    mae, rmse = count_errors(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 5.0]))
    assert mae == pytest.approx(1.0) and rmse == pytest.approx(math.sqrt(5 / 3))
    assert accuracy_from_mae(0.0) == 100.0 and accuracy_from_mae(1.0) == 50.0
    assert accuracy_from_mae(2.0) < accuracy_from_mae(1.5)


def test_task_evaluates_an_empty_prediction_at_output_stride_4() -> None:
    task = CountingTask(base_resolution=32, limit_train=16, limit_val=12)
    counts = task.data().val_density.sum(dim=(1, 2, 3)).double()
    metrics = task.evaluate(Zeros(), input_size=32)
    assert metrics["mae"] == pytest.approx(counts.mean().item(), rel=1e-5)
    assert metrics["mse"] == pytest.approx(counts.pow(2).mean().sqrt().item(), rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(100 / (1 + metrics["mae"]))
    x, y = next(task.batches("val", input_size=32, batch_size=4, seed=0))
    assert x.shape == (4, 3, 32, 32) and y.shape == (4, 1, 32, 32)
    output = torch.zeros(4, 1, 8, 8, requires_grad=True)
    task.loss(output, y).backward()  # the target is pooled to the 8 x 8 output
    assert output.grad.shape == (4, 1, 8, 8)
    with pytest.raises(ValueError, match="N x 1 x h x w"):
        task.loss(torch.zeros(4, 10), y)
    with pytest.raises(ValueError, match="not a counting loss"):
        CountingTask(loss="l1")


def test_task_is_registered_through_its_entry_point() -> None:
    assert TASKS.get("counting") is CountingTask
    assert "counting" in {ep.name for ep in entry_points(group="nasplat.tasks")}
    task = CountingTask()
    assert task.num_classes == 1 and task.base_resolution == 64 and task.input_size(0.5) == 32
    assert task.describe()["loss"] == "spp"


def test_training_lowers_the_count_error_below_untrained_and_a_constant_guess() -> None:
    task = CountingTask(base_resolution=32, limit_train=64, limit_val=32, batch_size=16, lr=1e-2)
    data = task.data()
    true = data.val_density.sum(dim=(1, 2, 3))
    guess_mae, _ = count_errors(torch.full_like(true, data.train_density.sum(dim=(1, 2, 3)).mean().item()), true)
    torch.manual_seed(0)
    untrained = task.evaluate(tiny_counter(), input_size=32)
    epochs: list[int] = []
    trained = task.train_eval(tiny_counter(), input_size=32, epochs=8, seed=0,
                              on_epoch=lambda epoch, metrics: epochs.append(epoch))
    assert epochs == list(range(1, 9))
    assert trained["mae"] < 0.7 * untrained["mae"] and trained["mae"] < 0.8 * guess_mae
    assert trained["accuracy"] > untrained["accuracy"]
    assert {"mae", "mse", "accuracy", "loss", "train_loss", "train_seconds"} <= set(trained)
    mse_task = CountingTask(base_resolution=32, limit_train=64, limit_val=32, batch_size=16, lr=1e-2, loss="mse")
    assert mse_task.train_eval(tiny_counter(), input_size=32, epochs=8, seed=0)["mae"] < untrained["mae"]


# --- the ShanghaiTech loader ---------------------------------------------------------------------------------

def image_info(points: np.ndarray) -> np.ndarray:
    """ShanghaiTech's nesting: a 1 x 1 cell holding a 1 x 1 struct with fields location and number."""
    struct = np.empty((1, 1), dtype=[("location", "O"), ("number", "O")])
    struct[0, 0] = (np.asarray(points, dtype=float).reshape(-1, 2), np.array([[len(points)]]))
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = struct
    return cell


def write_part(root: Path, images: dict[str, tuple[int, int, list[tuple[float, float]]]]) -> None:
    (root / "images").mkdir(parents=True)
    (root / "ground_truth").mkdir()
    for name, (width, height, points) in images.items():
        Image.new("RGB", (width, height), (200, 30, 30)).save(root / "images" / f"{name}.jpg")
        savemat(root / "ground_truth" / f"GT_{name}.mat", {"image_info": image_info(np.array(points))})


def test_shanghaitech_loader_reads_the_train_and_test_folders(tmp_path: Path) -> None:
    write_part(tmp_path / "train_data", {"IMG_1": (40, 30, [(5, 5), (20, 15), (40, 30)]),  # (40, 30): the corner
                                         "IMG_2": (24, 36, [(3.5, 30.0)])})
    write_part(tmp_path / "test_data", {"IMG_1": (30, 30, [])})
    assert read_points(tmp_path / "train_data/ground_truth/GT_IMG_1.mat").shape == (3, 2)
    data = open_crowd_source(f"shanghaitech:{tmp_path}", resolution=16).load()
    assert data.train_x.shape == (2, 3, 16, 16) and data.val_x.shape == (1, 3, 16, 16)
    assert data.train_density.shape == (2, 1, 16, 16)
    assert data.train_density.sum(dim=(1, 2, 3)).tolist() == pytest.approx([3.0, 1.0], abs=1e-4)
    assert data.val_density.sum().item() == 0.0
    assert data.train_x[:, 0].float().mean() > 150 and data.train_x[:, 2].float().mean() < 80  # the red image
    task = CountingTask(data=f"shanghaitech:{tmp_path}", base_resolution=16)
    assert task.evaluate(Zeros(), input_size=16)["mae"] == pytest.approx(0.0)


def test_shanghaitech_loader_splits_a_single_folder(tmp_path: Path) -> None:
    write_part(tmp_path, {f"IMG_{i}": (20, 20, [(i, i)]) for i in range(1, 11)})
    data = open_crowd_source(f"shanghaitech:{tmp_path}", resolution=8).load()
    assert len(data.train_x) + len(data.val_x) == 10 and len(data.val_x) >= 1
    assert data.train_density.sum().item() == pytest.approx(len(data.train_x), abs=1e-4)


def test_shanghaitech_loader_rejects_broken_input_naming_the_file(tmp_path: Path) -> None:
    def error(data: str, *, load: bool = False) -> str:
        with pytest.raises(ValueError) as caught:
            source = open_crowd_source(data, resolution=8)
            if load:
                source.load()
        assert "\n" not in str(caught.value)
        return str(caught.value)

    assert "does not exist" in error(f"shanghaitech:{tmp_path / 'missing'}")
    assert "unknown crowd data source" in error("shanghaitech")

    write_part(tmp_path / "no_mat", {"IMG_1": (20, 20, [(1, 1)]), "IMG_2": (20, 20, [(2, 2)])})
    (tmp_path / "no_mat/ground_truth/GT_IMG_2.mat").unlink()
    message = error(f"shanghaitech:{tmp_path / 'no_mat'}")
    assert "IMG_2.jpg" in message and "GT_IMG_2.mat" in message

    for split in ("train_data", "test_data"):
        write_part(tmp_path / "no_field" / split, {"IMG_1": (20, 20, [(1, 1)])})
    broken = tmp_path / "no_field/train_data/ground_truth/GT_IMG_1.mat"
    savemat(broken, {"points": np.ones((3, 2))})
    assert read_points_error(broken, "no image_info")
    message = error(f"shanghaitech:{tmp_path / 'no_field'}", load=True)
    assert str(broken) in message and "found variables points" in message

    bad = tmp_path / "bad.mat"
    savemat(bad, {"image_info": image_info(np.ones((2, 2)))})
    bad.write_bytes(b"not a mat file at all")
    assert read_points_error(bad, "cannot read")
    struct = image_info(np.ones((2, 2)))
    struct[0, 0][0, 0] = (np.ones((2, 3)), np.array([[2]]))  # three columns, not (x, y)
    savemat(bad, {"image_info": struct})
    assert read_points_error(bad, "shape (2, 3)")


def read_points_error(path: Path, expected: str) -> bool:
    with pytest.raises(ValueError) as caught:
        read_points(path)
    message = str(caught.value)
    return str(path) in message and expected in message and "\n" not in message
