"""Adversarial examples in pixel space (FGSM with a random start, PGD) and the classification task's option."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nasplat.cli import main
from nasplat.registry import TASKS
from nasplat.tasks.adversarial import fgsm, pgd
from test_classification import write_cifar

EPS, STEP = 8 / 255, 2 / 255


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A few CIFAR-10 python batches: training on them takes a second, generating the default set minutes."""
    return f"cifar10:{write_cifar(tmp_path_factory.mktemp('cifar'))}"


def _normalised() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixels with values at 0 and 1 (where clipping bites), their normalisation by uneven channel stats, and
    those stats."""
    gen = torch.Generator().manual_seed(0)
    pixels = torch.rand(16, 3, 8, 8, generator=gen)
    pixels[:, :, 0] = 0.0
    pixels[:, :, 1] = 1.0
    mean = torch.tensor([0.2, 0.5, 0.7]).view(1, 3, 1, 1)
    std = torch.tensor([0.1, 0.3, 0.25]).view(1, 3, 1, 1)
    return pixels, (pixels - mean) / std, mean, std


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor]:
    """A linear classifier fitted to labels that a linear map of the normalised pixels of `_normalised()` defines."""
    _, x, _, _ = _normalised()
    torch.manual_seed(0)
    y = (x.flatten(1) @ torch.randn(192, 4)).argmax(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 4))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model, y


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
@pytest.mark.parametrize("normalised", [True, False])
def test_attacks_stay_in_the_pixel_ball_and_the_image_range(trained, attack, normalised):
    pixels, x, mean, std = _normalised()
    model, y = trained
    stats = {"mean": mean, "std": std} if normalised else {}
    options = {"eps": EPS, "step": STEP, "loss_fn": F.cross_entropy, **stats}
    source = x if normalised else pixels
    adv = fgsm(model, source, y, **options) if attack == "fgsm" else pgd(model, source, y, iters=5, **options)
    adv_pixels = adv * std + mean if normalised else adv
    assert (adv_pixels - pixels).abs().max() <= EPS + 1e-5
    assert adv_pixels.min() >= -1e-5 and adv_pixels.max() <= 1 + 1e-5
    assert (adv_pixels - pixels).abs().max() > EPS / 2  # it moved: eps was not scaled away by std
    assert all(p.grad is None for p in model.parameters())  # only the input's gradient was taken


def test_pgd_raises_the_loss_of_a_trained_model_over_clean_and_over_noise(trained):
    pixels, x, mean, std = _normalised()
    model, y = trained
    clean = F.cross_entropy(model(x), y).item()
    noise = (pixels + torch.empty_like(pixels).uniform_(-EPS, EPS)).clamp(0, 1)
    noisy = F.cross_entropy(model((noise - mean) / std), y).item()
    adv = pgd(model, x, y, eps=EPS, step=STEP, iters=7, loss_fn=F.cross_entropy, mean=mean, std=std)
    attacked = F.cross_entropy(model(adv), y).item()
    one_step = F.cross_entropy(model(fgsm(model, x, y, eps=EPS, step=EPS, loss_fn=F.cross_entropy, mean=mean,
                                          std=std, random_start=False)), y).item()
    assert attacked > 1.5 * max(clean, noisy) and one_step > clean


def test_attack_arguments_are_checked():
    pixels, x, mean, std = _normalised()
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 4))
    y = torch.zeros(16, dtype=torch.long)
    with pytest.raises(ValueError, match="iters >= 1"):
        pgd(model, x, y, eps=EPS, step=STEP, iters=0, loss_fn=F.cross_entropy)
    with pytest.raises(ValueError, match="both mean and std"):
        fgsm(model, x, y, eps=EPS, step=STEP, loss_fn=F.cross_entropy, mean=mean)


def _tiny_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10))


def test_adversarial_training_reports_robust_accuracy_each_epoch(cifar):
    task = TASKS.create("classification", data=cifar, batch_size=64, base_resolution=16, adversarial="pgd",
                        adv_iters=2)
    epochs: list[dict[str, float]] = []
    final = task.train_eval(_tiny_cnn(), input_size=16, epochs=2, seed=0,
                            on_epoch=lambda epoch, metrics: epochs.append(metrics))
    assert len(epochs) == 2 and final == epochs[-1]
    assert all(0 <= m["robust_accuracy"] <= m["accuracy"] for m in epochs)
    model = _tiny_cnn()
    again = task.evaluate(model, input_size=16)
    assert again["robust_accuracy"] == task.evaluate(model, input_size=16)["robust_accuracy"]  # seeded starts
    assert task.describe()["adversarial"] == "pgd"
    x, y = next(task.batches("train", input_size=16, batch_size=8, seed=0))
    assert not torch.equal(task.adversarial_batch(model, x, y, input_size=16), x)
    plain = TASKS.create("classification", data=cifar, base_resolution=16)
    assert "robust_accuracy" not in plain.evaluate(model, input_size=16)
    assert plain.adversarial_batch(model, x, y, input_size=16) is x


@pytest.mark.parametrize("options, message", [
    ({"adversarial": "fgm"}, "use one of none, fgsm, pgd"),
    ({"adversarial": "pgd", "adv_iters": 0}, "adv_iters"),
    ({"adversarial": "fgsm", "adv_eps": 8}, "pixel units"),
    ({"adversarial": "fgsm", "adv_step": "2/255"}, "pixel units"),
])
def test_bad_adversarial_options_fail_clearly(options, message):
    with pytest.raises(ValueError, match=message):
        TASKS.create("classification", **options)


def test_the_cli_turns_a_bad_option_into_one_line_and_exit_2(tmp_path, capsys):
    code = main(["search", "tinynet", "--out", str(tmp_path), "--task-option", "adversarial=bogus", "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "adversarial='bogus'" in err and "none, fgsm, pgd" in err and len(err.splitlines()) == 1
