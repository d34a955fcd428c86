"""The method plug-in interface: stage learners are found by their config's type, see the
trainer only through its public port, and the import arrows point one way."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from habc_learner.core.method_api import (
    StageLearner,
    TrainerPort,
    make_stage_learner,
    register_stage_learner,
)


@dataclass(frozen=True)
class _CountingConfig:
    scale: float = 2.0


class _Counting(StageLearner):
    """A toy stage: a one-parameter module moved by ``scale`` each step."""

    state_key = "counting"
    tensor_file = "counting.safetensors"

    def __init__(self, port: TrainerPort, config: _CountingConfig) -> None:
        super().__init__(port)
        self.config = config
        self.param = nn.Linear(1, 1, bias=False)
        self.steps = 0

    @property
    def stage(self) -> str:
        return f"count@{self.port.round_index}"

    def train_step(self) -> dict[str, float]:
        with torch.no_grad():
            self.param.weight += self.config.scale
        self.steps += 1
        return {"count/steps": float(self.steps)}

    def modules(self) -> dict[str, nn.Module]:
        return {"param": self.param}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def state_json(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state(
        self, tensors: dict[str, torch.Tensor], state: dict[str, Any], what: str
    ) -> None:
        self.param.weight.data.copy_(tensors["param.weight"])
        self.steps = int(state["steps"])


class _Port:
    round_index = 3


def test_stage_learners_are_found_by_config_type() -> None:
    assert make_stage_learner(None, _Port()) is None
    with pytest.raises(ValueError, match="no stage learner is registered for _CountingConfig"):
        make_stage_learner(_CountingConfig(), _Port())
    register_stage_learner(_CountingConfig, _Counting)
    register_stage_learner(_CountingConfig, _Counting)  # the same factory again: no-op
    with pytest.raises(ValueError, match="already registered"):
        register_stage_learner(_CountingConfig, lambda port, cfg: _Counting(port, cfg))
    learner = make_stage_learner(_CountingConfig(scale=0.5), _Port())
    assert isinstance(learner, _Counting) and learner.stage == "count@3"
    learner.param.weight.data.zero_()
    assert learner.train_step() == {"count/steps": 1.0}
    assert learner.module_tensors()["param.weight"].item() == 0.5


def test_methods_never_import_the_trainer() -> None:
    """trainer → methods → ire_vla → method_api: none of the three imports the trainer, not even
    for type checking (a stage learner sees the trainer only as a :class:`TrainerPort`)."""
    import habc_learner.core.ire_vla as ire_vla
    import habc_learner.core.method_api as method_api
    import habc_learner.core.methods as methods

    for module in (methods, ire_vla, method_api):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
            a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names
        }
        assert "habc_learner.core.trainer" not in imported, module.__name__
