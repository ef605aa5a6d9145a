"""Optimizers stepped eagerly and compiled side by side, on the same small model and gradients."""

from __future__ import annotations

from collections.abc import Iterator

import torch

import fusec


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def set_grads(model: torch.nn.Module, step: int) -> None:
    """The same gradients for every model at a given step, on each parameter's device."""
    generator = torch.Generator().manual_seed(step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator).to(p.device)


def stepped(eager_model: torch.nn.Module, model: torch.nn.Module, eager_opt: torch.optim.Optimizer,
            opt: torch.optim.Optimizer, steps: int) -> Iterator:
    """`steps` eager steps of `eager_opt` and compiled steps of `opt`, each under a StepLR that
    changes lr every step; yields the compiled step after each."""
    schedulers = [torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.7) for o in (eager_opt, opt)]
    step = fusec.compile(opt.step)
    for i in range(steps):
        set_grads(eager_model, i)
        set_grads(model, i)
        eager_opt.step()
        step()
        for scheduler in schedulers:
            scheduler.step()
        yield step
