"""A toy space and task registered for tests of the runner, the run directory and the CLI.

The task trains for real but on a tiny problem, so a whole search takes a second or two. Importing this
module registers them (test processes import it; entry points are only for installed plug-ins).
"""
from __future__ import annotations

import os
import time

import torch
from torch import nn

from nasplat.errors import UserError
from nasplat.registry import SPACES, register_space, register_task
from nasplat.space import Choice, FloatRange, SearchSpace, Target
from nasplat.tasks.base import Task


class ToySpace(SearchSpace):
    """Two conv layers: width and a scale that sets the proxy resolution."""

    default_task = "toy"

    def parameters(self):
        return {"width": Choice((4, 8, 16)), "scale": FloatRange(0.5, 1.0)}

    def build(self, arch, *, num_classes=None):
        w = arch["width"]
        return nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, num_classes or 10))

    def target(self, arch):
        return Target((1, 3, 16, 16), 10)

    def proxy_scale(self, arch):
        return arch["scale"]

    def smallest(self):
        return self.arch({"width": 4, "scale": 0.5})


class ToyTask(Task):
    """Colour-mean classification on 128 random 16x16 images; TOY_SLEEP adds seconds per epoch."""

    num_classes = 4
    base_resolution = 16
    default_epochs = 2

    def __init__(self, *, data: str = "toy"):
        if data != "toy":
            raise UserError(f"toy task: unknown data {data!r}; use 'toy'")

    def train_eval(self, model, *, input_size, epochs, seed, on_epoch=None):
        g = torch.Generator().manual_seed(1234)
        x = torch.rand(128, 3, input_size, input_size, generator=g)
        y = (x.mean(dim=(2, 3)).argmax(1) + (x[:, 0, 0, 0] > 0.5).long()) % self.num_classes
        torch.manual_seed(seed)
        for module in model.modules():  # weights from the seed alone, whatever this process drew before
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        for epoch in range(1, epochs + 1):
            time.sleep(float(os.environ.get("TOY_SLEEP", "0")))
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if os.environ.get("TOY_NAN_WIDTH") == str(model[0].out_channels):
                loss = torch.tensor(float("nan"))
            if on_epoch:  # accuracy per epoch, as the classification task reports it (ASHA compares it)
                with torch.no_grad():
                    acc = (model(x).argmax(1) == y).float().mean().item() * 100
                on_epoch(epoch, {"loss": loss.item(), "accuracy": acc})
        with torch.no_grad():
            acc = (model(x).argmax(1) == y).float().mean().item() * 100
        return {"accuracy": acc if loss == loss else float("nan"), "loss": loss.item()}


if "toy" not in SPACES.names():
    register_space("toy")(ToySpace)
    register_task("toy")(ToyTask)
