"""Configuration of the flow-matching actor (a small VLA-shaped policy).

Shapes are configuration, never assumed: the bimanual ARX X5 uses ``action_dim=14`` with two arms,
Meta-World uses ``action_dim=4``. The chunk horizon ``H`` is 50 for training (``HABC_METHOD.md``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

PARAMETRIZATIONS = ("clean_chunk", "velocity")
TIME_SCHEDULES = ("uniform", "beta")
IMAGE_AUGMENTS = ("none", "shift", "crop")  # habc_policy.core.images implements them


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {choices}")


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


@dataclass(frozen=True)
class FlowPolicyConfig:
    """Typed, validated configuration of :class:`~habc_policy.core.modeling_flow.FlowPolicy`.

    Attributes:
        horizon: H, rows of the predicted action chunk.
        action_dim: d, action dimensions per row.
        proprio_dim: p, proprioception dimensions.
        camera_names: names of the cameras fed to the image encoder; empty for state-only.
        image_size: (height, width) the images arrive in, uint8 HWC.
        cnn_channels: output channels of the image encoder's conv layers (first layer is a
            stride-4 patchify conv, the rest stride 2).
        prompt_buckets: size of the hashed-token vocabulary of the prompt embedding (bucket 0
            is padding).
        prompt_max_tokens: tokens kept per prompt.
        prompt_dim: width of the prompt embedding.
        feature_dim: width of the observation feature phi(s) the encoder outputs (the critic's
            input by default).
        hidden_dim: width of the action expert's residual MLP.
        num_blocks: residual blocks of the action expert.
        time_embed_dim: width of the sinusoidal flow-time embedding.
        parametrization: **(choice)** ``"clean_chunk"``: the expert predicts the clean chunk Â
            and ``v = (Â - A^τ) / max(1 - τ, min_one_minus_tau)`` (``notes/simulation.md``:
            direct velocity prediction failed on 50x14 chunks); alternative ``"velocity"``.
        time_schedule: **(choice)** ``"uniform"`` τ ~ U(0, 1); alternative ``"beta"``, the π0
            Beta(1.5, 1) schedule (mass near τ = 0, the noisy end).
        min_one_minus_tau: clamp of 1 - τ in the clean-chunk parametrization.
        num_inference_steps: Euler steps of the sampler (10).
        image_augment: train-time image augmentation in the learner's batch sampler, one of
            ``"none"``, ``"shift"`` (random shift by up to ``augment_pad`` px) or ``"crop"``
            (random crop ``2·augment_pad`` px smaller, resized back); see
            :mod:`habc_policy.core.images`. Never applied at serving time.
        augment_pad: pixels of the shift / crop margin.
        privileged_state_dim: trailing proprio dims that come from the simulator's privileged
            ``/habc/env_state`` (0: joints only). A policy with any cannot run on a real robot.
    """

    horizon: int = 50
    action_dim: int = 14
    proprio_dim: int = 14
    camera_names: tuple[str, ...] = ()
    image_size: tuple[int, int] = (96, 96)
    cnn_channels: tuple[int, ...] = (16, 32, 64)
    prompt_buckets: int = 1024
    prompt_max_tokens: int = 16
    prompt_dim: int = 32
    feature_dim: int = 256
    hidden_dim: int = 384
    num_blocks: int = 4
    time_embed_dim: int = 64
    parametrization: str = "clean_chunk"
    time_schedule: str = "uniform"
    min_one_minus_tau: float = 0.05
    num_inference_steps: int = 10
    image_augment: str = "none"
    augment_pad: int = 4
    privileged_state_dim: int = 0

    def __post_init__(self) -> None:
        for name in (
            "horizon",
            "action_dim",
            "proprio_dim",
            "prompt_buckets",
            "prompt_max_tokens",
            "prompt_dim",
            "feature_dim",
            "hidden_dim",
            "num_blocks",
            "time_embed_dim",
            "num_inference_steps",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an int, got {value!r}")
            _check_positive(name, value)
        if self.prompt_buckets < 2:
            raise ValueError(
                f"prompt_buckets must be >= 2 (bucket 0 is padding), got {self.prompt_buckets}"
            )
        if self.time_embed_dim % 2:
            raise ValueError(f"time_embed_dim must be even, got {self.time_embed_dim}")
        _check_choice("parametrization", self.parametrization, PARAMETRIZATIONS)
        _check_choice("time_schedule", self.time_schedule, TIME_SCHEDULES)
        _check_choice("image_augment", self.image_augment, IMAGE_AUGMENTS)
        for name in ("augment_pad", "privileged_state_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.privileged_state_dim >= self.proprio_dim:
            raise ValueError(
                f"privileged_state_dim {self.privileged_state_dim} must be < proprio_dim "
                f"{self.proprio_dim}"
            )
        if not 0.0 < self.min_one_minus_tau < 1.0:
            raise ValueError(f"min_one_minus_tau must be in (0, 1), got {self.min_one_minus_tau}")
        object.__setattr__(self, "camera_names", tuple(self.camera_names))
        object.__setattr__(self, "image_size", tuple(self.image_size))
        object.__setattr__(self, "cnn_channels", tuple(self.cnn_channels))
        if len(set(self.camera_names)) != len(self.camera_names):
            raise ValueError(f"camera_names has duplicates: {self.camera_names}")
        if len(self.image_size) != 2 or min(self.image_size) < 8:
            raise ValueError(f"image_size must be (height, width) >= 8, got {self.image_size}")
        if not self.cnn_channels or min(self.cnn_channels) <= 0:
            raise ValueError(
                f"cnn_channels must be non-empty and positive, got {self.cnn_channels}"
            )

    @property
    def chunk_numel(self) -> int:
        """H * d, the size of one flattened action chunk."""
        return self.horizon * self.action_dim

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FlowPolicyConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown FlowPolicyConfig keys {unknown}; valid keys: {sorted(known)}"
            )
        kwargs = dict(data)
        for key in ("camera_names", "image_size", "cnn_channels"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)
