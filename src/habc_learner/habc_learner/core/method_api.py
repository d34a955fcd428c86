"""What a learner method may use of the trainer, and the interface of a method with stages.

Two kinds of method plug into :class:`~habc_learner.core.trainer.Trainer`:

- **Weighting methods** (SFT, Imit-DAgger, Imit-Recap, HABC-V, HABC, …) keep the trainer's
  weighted flow-matching step. A method is a frozen
  :class:`~habc_learner.core.methods.MethodConfig`: which sources it samples, how episodes are
  labeled, which critic heads it trains (what it needs from the trainer), and the name of its
  weighting rule, one function ``(method, WeightInputs) -> (w̃, g)`` registered in
  :data:`~habc_learner.core.methods.WEIGHTINGS`.
- **Stage methods** (iRe-VLA's RL/SL stages) replace the step with their own. Such a method is a
  :class:`StageLearner` built from its stage config (``MethodConfig.ire_vla``) by the factory
  registered for that config's type (:func:`register_stage_learner`). It sees the trainer only
  through :class:`TrainerPort`, a read-only view of the trainer's public state; the trainer
  advances the learner step and checkpoints what the stage learner exposes.

The arrows point one way: ``trainer → methods → ire_vla → method_api``; nothing here imports
the trainer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from habc_learner.core.replay import ReplayStore
from habc_policy.core.modeling_flow import FlowPolicy
from habc_policy.core.normalize import Normalizer


class TrainerPort(Protocol):
    """What a stage learner may read and use of the trainer (all public, nothing private).

    ``config`` is the :class:`~habc_learner.core.trainer.TrainerConfig`; ``actor_optimizer``
    optimizes the whole policy (a stage that trains the whole model steps it); ``rng`` and
    ``generator`` are the run's random streams (checkpointed by the trainer); ``round_index``
    and ``learner_step`` are read-only here: the trainer advances them.
    """

    @property
    def config(self) -> Any: ...

    @property
    def policy(self) -> FlowPolicy: ...

    @property
    def store(self) -> ReplayStore: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def rng(self) -> np.random.Generator: ...

    @property
    def generator(self) -> torch.Generator: ...

    @property
    def actor_optimizer(self) -> torch.optim.Optimizer: ...

    @property
    def round_index(self) -> int: ...

    @property
    def learner_step(self) -> int: ...

    def ensure_normalizer(self) -> Normalizer: ...


class StageLearner(ABC):
    """A method that replaces the trainer's weighted step with stages of its own.

    The trainer calls :meth:`train_step` once per learner step (and then advances
    ``learner_step`` itself), logs what it returns, and saves :meth:`module_tensors` in
    ``tensor_file``, :meth:`state_json` under ``state_key`` of its state and the
    :meth:`optimizers` with its own; :meth:`load_state` restores them.
    """

    #: key of this learner's JSON state in the trainer's checkpoint state.
    state_key: ClassVar[str]
    #: safetensors file of this learner's modules inside a checkpoint.
    tensor_file: ClassVar[str]
    #: whether it runs data-parallel (its own optimizers would need a gradient all-reduce).
    data_parallel: ClassVar[bool] = False

    def __init__(self, port: TrainerPort) -> None:
        self.port = port

    @property
    @abstractmethod
    def stage(self) -> str:
        """The stage of the trainer's current round (shown in progress bars and logs)."""

    @abstractmethod
    def train_step(self) -> dict[str, float]:
        """One learner step of the current stage; returns every logged scalar."""

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Modules to checkpoint, by prefix."""

    @abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers to checkpoint, by prefix (not the trainer's ``actor_optimizer``)."""

    @abstractmethod
    def state_json(self) -> dict[str, Any]:
        """JSON-able state to checkpoint."""

    @abstractmethod
    def load_state(self, tensors: dict[str, Tensor], state: dict[str, Any], what: str) -> None:
        """Restore from :meth:`module_tensors` and :meth:`state_json` output (``what`` names
        the file in errors)."""

    def module_tensors(self) -> dict[str, Tensor]:
        """Every module's state dict, keys prefixed ``"<module>."``."""
        return {
            f"{prefix}.{k}": v
            for prefix, module in self.modules().items()
            for k, v in module.state_dict().items()
        }


StageFactory = Callable[[TrainerPort, Any], StageLearner]
_STAGE_LEARNERS: dict[type, StageFactory] = {}


def register_stage_learner(config_type: type, factory: StageFactory) -> None:
    """Make ``factory(port, config)`` the stage learner of methods whose stage config is a
    ``config_type`` (one factory per type)."""
    if config_type in _STAGE_LEARNERS and _STAGE_LEARNERS[config_type] is not factory:
        raise ValueError(f"a stage learner for {config_type.__name__} is already registered")
    _STAGE_LEARNERS[config_type] = factory


def make_stage_learner(stage_config: Any, port: TrainerPort) -> StageLearner | None:
    """The stage learner for ``stage_config`` (None: the method has no stages)."""
    if stage_config is None:
        return None
    factory = _STAGE_LEARNERS.get(type(stage_config))
    if factory is None:
        raise ValueError(
            f"no stage learner is registered for {type(stage_config).__name__}; registered: "
            f"{sorted(t.__name__ for t in _STAGE_LEARNERS)}"
        )
    return factory(port, stage_config)
