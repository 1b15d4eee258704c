"""The DARTS architect: first- and second-order architecture gradients, and the expected-cost penalty."""
from __future__ import annotations

import torch
from torch import nn

from nasplat.oneshot.architect import Architect


class Mixed(nn.Module):
    """A one-edge supernet: softmax(alpha)-weighted sum of three small nonlinear ops."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.ops = nn.ModuleList(nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1)) for _ in range(3))
        self.alpha = nn.Parameter(torch.randn(3) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.alpha.softmax(0)
        return sum(w * op(x) for w, op in zip(weights, self.ops))

    def weights(self) -> list[nn.Parameter]:
        return list(self.ops.parameters())


def _batches() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    x, xv = torch.randn(16, 4, generator=gen), torch.randn(16, 4, generator=gen)
    return (x, x.sum(1, keepdim=True)), (xv, xv.sum(1, keepdim=True))


def _loss(model: Mixed):
    return lambda batch: ((model(batch[0]) - batch[1]) ** 2).mean()


def test_second_order_gradient_matches_the_exact_unrolled_gradient() -> None:
    model = Mixed()
    train, val = _batches()
    xi = 0.05
    # exact: d/d alpha of L_val(w - xi * grad_w L_train(w, alpha), alpha), by double backprop on a functional copy
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    call = torch.func.functional_call
    weight_names = [k for k in params if k != "alpha"]
    train_loss = ((call(model, params, (train[0],)) - train[1]) ** 2).mean()
    grads = torch.autograd.grad(train_loss, [params[k] for k in weight_names], create_graph=True)
    unrolled = {**params, **{k: params[k] - xi * g for k, g in zip(weight_names, grads)}}
    val_loss = ((call(model, unrolled, (val[0],)) - val[1]) ** 2).mean()
    exact = torch.autograd.grad(val_loss, params["alpha"])[0]

    architect = Architect(weights=model.weights(), alphas=[model.alpha], loss=_loss(model), order=2, lr=0.0)
    before = [w.detach().clone() for w in model.weights()]
    architect.step(train, val, w_lr=xi, w_decay=0.0)
    assert torch.allclose(model.alpha.grad, exact, rtol=1e-3, atol=1e-6), (model.alpha.grad, exact)
    first_order = torch.autograd.grad(_loss(model)(val), model.alpha)[0]
    assert not torch.allclose(first_order, exact, rtol=1e-3, atol=1e-6)  # so the check above tells them apart
    assert all(torch.equal(w, b) for w, b in zip(model.weights(), before))  # the weights are put back


def test_first_order_step_moves_alpha_against_the_validation_gradient() -> None:
    model = Mixed()
    train, val = _batches()
    expected = torch.autograd.grad(_loss(model)(val), model.alpha)[0]
    start = model.alpha.detach().clone()
    architect = Architect(weights=model.weights(), alphas=[model.alpha], loss=_loss(model), order=1, lr=0.01,
                          weight_decay=0.0)
    architect.step(train, val, w_lr=0.1)
    assert torch.allclose(model.alpha.grad, expected)
    moved = model.alpha.detach() - start
    assert torch.all(torch.sign(moved[expected.abs() > 1e-8]) == -torch.sign(expected[expected.abs() > 1e-8]))


def test_penalty_shifts_weight_off_the_costly_op_in_both_orders() -> None:
    for order in (1, 2):
        model = Mixed()
        train, val = _batches()
        costs = torch.tensor([10.0, 1.0, 1.0])
        penalty = lambda m=model: 5.0 * (m.alpha.softmax(0) * costs).sum()  # noqa: E731
        architect = Architect(weights=model.weights(), alphas=[model.alpha], loss=_loss(model), order=order,
                              lr=0.05, weight_decay=0.0, penalty=penalty)
        before = model.alpha.softmax(0)[0].item()
        for _ in range(20):
            out = architect.step(train, val, w_lr=0.01)
        assert out["penalty"] > 0
        assert model.alpha.softmax(0)[0].item() < before - 0.1
