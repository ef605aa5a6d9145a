"""PyTorch Lightning's `Trainer.fit` with fusec: three steps equal to an eager run's, for a module
compiled with `torch.compile(lit, backend="fusec")`, with `fusec.compile(lit)`, and compiled in
`configure_model` under `strategy="ddp_spawn"` on two CPU processes; a checkpoint loads into an
uncompiled module."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torch._dynamo.eval_frame import OptimizedModule

import fusec
import fusec.frontend

pl = pytest.importorskip("lightning.pytorch", reason="lightning is not installed (pip install -e '.[train]')")

STEPS = 3
BATCH = 4


class Regressor(pl.LightningModule):
    def __init__(self, compile_in_configure_model: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 1))
        self.compile_in_configure_model = compile_in_configure_model

    def configure_model(self) -> None:
        # Under ddp_spawn this runs in each process, before DDP wraps the module (a module
        # compiled inside DDP's forward with nn.Module.compile is not traced by Dynamo).
        if self.compile_in_configure_model and not isinstance(self.net, OptimizedModule):
            self.net = fusec.compile(self.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    def on_train_end(self) -> None:
        if self.compile_in_configure_model:  # in each spawned process: fusec ran the graphs
            report = fusec.report_of(self.net)
            assert report.graphs and all(g.fallback is None for g in report.graphs), report.summary()
            assert report.stats["ran"]["kernels"] > 0 and report.stats["ran"]["through_torch"] == 0


class Losses(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def _data(batch: int) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS * 8, 8, generator=generator)
    y = torch.randn(STEPS * 8, 1, generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)


def _fit(model, batch: int = BATCH, **trainer_args) -> tuple[pl.Trainer, list[float]]:
    losses = Losses()
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[losses],
                         **{"devices": 1, **trainer_args})
    trainer.fit(model, _data(batch))
    return trainer, losses.losses


def _assert_same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("how", ["torch.compile", "fusec.compile"])
def test_trainer_fit_on_a_compiled_module_equals_eager(how, tmp_path):
    _, eager_losses = _fit(eager := Regressor())
    lit = Regressor()
    compiled = torch.compile(lit, backend="fusec") if how == "torch.compile" else fusec.compile(lit)
    with mock.patch.object(fusec.frontend, "compile_graph", wraps=fusec.frontend.compile_graph) as compiles:
        trainer, losses = _fit(compiled)
    assert compiles.call_count >= 2  # fusec compiled the training step's forward and backward
    assert len(losses) == STEPS
    torch.testing.assert_close(losses, eager_losses, rtol=1e-5, atol=1e-6)
    _assert_same_parameters(lit, eager)
    if how == "fusec.compile":
        report = fusec.report_of(compiled)
        assert report.graphs and all(g.fallback is None for g in report.graphs)
        assert report.stats["ran"]["kernels"] > 0
    trainer.save_checkpoint(tmp_path / "fit.ckpt")
    fresh = Regressor()
    fresh.load_state_dict(torch.load(tmp_path / "fit.ckpt", weights_only=True)["state_dict"])
    _assert_same_parameters(fresh, eager)


def test_ddp_spawn_with_the_module_compiled_in_configure_model_equals_eager():
    # The trained weights come back to this process through a checkpoint the first spawned
    # process saves (loaded with strict=False): the compiled module's keys must be its own.
    _fit(eager := Regressor(), strategy="ddp_spawn", devices=2)
    lit = Regressor(compile_in_configure_model=True)
    _fit(lit, strategy="ddp_spawn", devices=2)
    assert not torch.equal(lit.net[0].weight, Regressor().net[0].weight)  # it trained
    _assert_same_parameters(lit, eager)
