"""The flow-matching actor, shaped like a small VLA.

    observation encoder φ(s): [small CNN per camera (shared weights)] + proprio MLP
                              + hashed-token prompt embedding  ->  features [B, F]
    action expert:            (A^τ [B, H, d], τ [B], features)  ->  Â or v  [B, H, d]

The encoder output φ(s) is also the critic's frozen input by default (detached by the learner).
Everything is written in torch (no torchvision), and everything downloaded is nothing: the prompt
embedding hashes word tokens into a fixed number of buckets.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from habc_policy.core import flow_matching as fm
from habc_policy.core.configuration_flow import FlowPolicyConfig

_TOKEN_RE = re.compile(r"[a-z0-9]+")


def tokenize_prompt(prompt: str, num_buckets: int, max_tokens: int) -> np.ndarray:
    """Hash a language prompt into bucket ids, [max_tokens] int64, 0 = padding.

    Lower-cased alphanumeric words, each mapped to ``1 + crc32(word) % (num_buckets - 1)``:
    stable across processes and machines (unlike ``hash``). Longer prompts are truncated.
    """
    if num_buckets < 2 or max_tokens < 1:
        raise ValueError(
            f"need num_buckets >= 2 and max_tokens >= 1, got {num_buckets}, {max_tokens}"
        )
    words = _TOKEN_RE.findall(prompt.lower())[:max_tokens]
    ids = np.zeros(max_tokens, dtype=np.int64)
    for i, word in enumerate(words):
        ids[i] = 1 + zlib.crc32(word.encode("utf-8")) % (num_buckets - 1)
    return ids


def sinusoidal_embedding(tau: Tensor, dim: int, max_period: float = 100.0) -> Tensor:
    """Sinusoidal embedding of flow time τ ∈ [0, 1], [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=tau.device, dtype=tau.dtype) / half
    )
    angles = tau[:, None] * freqs[None, :] * 2.0 * math.pi
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ImageEncoder(nn.Module):
    """Small CNN: a stride-4 patchify conv, stride-2 convs, GroupNorm + SiLU, global mean pool.

    Input uint8 images [N, h, w, 3] (HWC, as cameras deliver them); output [N, channels[-1]].
    """

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for i, out_ch in enumerate(channels):
            kernel, stride = (4, 4) if i == 0 else (3, 2)
            layers += [
                nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=0 if i == 0 else 1),
                nn.GroupNorm(min(8, out_ch), out_ch),
                nn.SiLU(),
            ]
            in_ch = out_ch
        self.net = nn.Sequential(*layers)
        self.out_dim = in_ch

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be [N, h, w, 3], got {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).float() / 255.0 * 2.0 - 1.0
        return self.net(x).mean(dim=(2, 3))


class ObservationEncoder(nn.Module):
    """φ(s): proprio MLP + per-camera CNN features + prompt embedding -> [B, feature_dim]."""

    def __init__(self, config: FlowPolicyConfig) -> None:
        super().__init__()
        self.config = config
        width = config.feature_dim
        self.proprio_mlp = nn.Sequential(
            nn.Linear(config.proprio_dim, width), nn.SiLU(), nn.Linear(width, width)
        )
        self.prompt_embedding = nn.EmbeddingBag(
            config.prompt_buckets, config.prompt_dim, mode="mean", padding_idx=0
        )
        in_dim = width + config.prompt_dim
        if config.camera_names:
            self.image_encoder: ImageEncoder | None = ImageEncoder(config.cnn_channels)
            # A learned per-camera embedding added to the shared CNN's features.
            self.camera_embedding = nn.Parameter(
                torch.zeros(len(config.camera_names), self.image_encoder.out_dim)
            )
            in_dim += len(config.camera_names) * self.image_encoder.out_dim
        else:
            self.image_encoder = None
        self.fuse = nn.Sequential(
            nn.Linear(in_dim, width), nn.SiLU(), nn.Linear(width, width), nn.LayerNorm(width)
        )

    def forward(
        self,
        proprio: Tensor,
        prompt_tokens: Tensor,
        images: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        """Args: normalized proprio [B, p]; prompt_tokens [B, L] int64; images cam -> uint8
        [B, h, w, 3] (required for every configured camera). Returns features [B, F]."""
        cfg = self.config
        if proprio.ndim != 2 or proprio.shape[1] != cfg.proprio_dim:
            raise ValueError(f"proprio must be [B, {cfg.proprio_dim}], got {tuple(proprio.shape)}")
        parts = [self.proprio_mlp(proprio), self.prompt_embedding(prompt_tokens)]
        if self.image_encoder is not None:
            images = images or {}
            missing = [c for c in cfg.camera_names if c not in images]
            if missing:
                raise ValueError(
                    f"missing images for cameras {missing}; expected {cfg.camera_names}"
                )
            batch = proprio.shape[0]
            stacked = torch.cat([images[c] for c in cfg.camera_names], dim=0)
            feats = self.image_encoder(stacked).reshape(len(cfg.camera_names), batch, -1)
            feats = feats + self.camera_embedding[:, None, :]
            parts.append(feats.permute(1, 0, 2).reshape(batch, -1))
        return self.fuse(torch.cat(parts, dim=-1))


class _ResidualBlock(nn.Module):
    """x + W2 · SiLU(W1 · LayerNorm(x)), the last layer zero-initialized (identity at init)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(nn.functional.silu(self.fc1(self.norm(x))))


class ActionExpert(nn.Module):
    """Residual MLP: (A^τ [B, H, d], τ [B], features [B, F]) -> output [B, H, d].

    The flattened noisy chunk, the time embedding and φ(s) are concatenated at the input (the
    residual-MLP actor of ``notes/simulation.md``, ~1.9 M parameters at width 384 × 4 blocks).
    """

    def __init__(self, config: FlowPolicyConfig) -> None:
        super().__init__()
        self.config = config
        cond_dim = config.feature_dim + config.time_embed_dim
        self.time_mlp = nn.Sequential(
            nn.Linear(config.time_embed_dim, config.time_embed_dim),
            nn.SiLU(),
            nn.Linear(config.time_embed_dim, config.time_embed_dim),
        )
        self.inp = nn.Linear(config.chunk_numel + cond_dim, config.hidden_dim)
        self.blocks = nn.ModuleList(
            _ResidualBlock(config.hidden_dim) for _ in range(config.num_blocks)
        )
        self.out_norm = nn.LayerNorm(config.hidden_dim)
        self.out = nn.Linear(config.hidden_dim, config.chunk_numel)

    def forward(self, noisy: Tensor, tau: Tensor, features: Tensor) -> Tensor:
        cfg = self.config
        expected = (noisy.shape[0], cfg.horizon, cfg.action_dim)
        if tuple(noisy.shape) != expected:
            raise ValueError(f"noisy chunk must be {expected}, got {tuple(noisy.shape)}")
        t_emb = self.time_mlp(sinusoidal_embedding(tau.to(noisy.dtype), cfg.time_embed_dim))
        cond = torch.cat([features, t_emb], dim=-1)
        x = self.inp(torch.cat([noisy.flatten(1), cond], dim=-1))
        for block in self.blocks:
            x = block(x)
        return self.out(self.out_norm(x)).reshape(expected)


class FlowPolicy(nn.Module):
    """Flow-matching actor: encoder + action expert, in normalized action/proprio space."""

    def __init__(self, config: FlowPolicyConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ObservationEncoder(config)
        self.expert = ActionExpert(config)

    def encode(
        self,
        proprio: Tensor,
        prompt_tokens: Tensor,
        images: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        """φ(s), [B, F]."""
        return self.encoder(proprio, prompt_tokens, images)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Parameters of φ(s), the observation encoder: the backbone iRe-VLA freezes in its RL
        stage. Together with :meth:`head_parameters` these are all the model's parameters."""
        return list(self.encoder.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the action expert, the light action head."""
        return list(self.expert.parameters())

    def velocity(self, noisy: Tensor, tau: Tensor, features: Tensor) -> Tensor:
        """v_θ(A^τ, τ | o), [B, H, d], through the configured parametrization."""
        out = self.expert(noisy, tau, features)
        if self.config.parametrization == "clean_chunk":
            return fm.velocity_from_clean(out, noisy, tau, self.config.min_one_minus_tau)
        return out

    def per_sample_loss(
        self,
        features: Tensor,
        actions: Tensor,
        mask: Tensor | None,
        noise: Tensor,
        tau: Tensor,
        expert: nn.Module | None = None,
        entry_mean: str = "unmasked",
    ) -> Tensor:
        """Unreduced flow-matching loss ℓ_i of Eq. 1, [B].

        ``"velocity"``: mean_{h,d} m·‖v_θ − u‖². ``"clean_chunk"``: mean_{h,d} m·‖Â − A‖², which
        is the velocity loss times (1 − τ)² (``notes/simulation.md``).

        Args:
            features: φ(s) [B, F]; actions: normalized clean chunk A [B, H, d]; mask: m
                [B, H, d] or None; noise: ε [B, H, d]; tau: τ [B].
            expert: an action expert of the same config to evaluate instead of ``self.expert``
                (e.g. a frozen snapshot, for a likelihood-ratio surrogate); None: ``self.expert``.
            entry_mean: ``"unmasked"`` (mean over the window's target entries) or
                ``"all_entries"`` (over all H·d); :func:`flow_matching.masked_mse_per_sample`.
        """
        noisy = fm.interpolate(actions, noise, tau)
        out = (self.expert if expert is None else expert)(noisy, tau, features)
        if self.config.parametrization == "clean_chunk":
            return fm.masked_mse_per_sample(out, actions, mask, entry_mean)
        return fm.masked_mse_per_sample(out, fm.target_velocity(actions, noise), mask, entry_mean)

    def draw_noise_and_tau(
        self, batch_size: int, generator: torch.Generator | None, device: torch.device | str
    ) -> tuple[Tensor, Tensor]:
        """ε ~ N(0, I) [B, H, d] and τ [B] from ``generator`` (seeded and reproducible)."""
        cfg = self.config
        noise = torch.randn(
            batch_size, cfg.horizon, cfg.action_dim, generator=generator, device=device
        )
        tau = fm.sample_tau(batch_size, cfg.time_schedule, generator=generator, device=device)
        return noise, tau

    def compute_loss(
        self,
        proprio: Tensor,
        prompt_tokens: Tensor,
        actions: Tensor,
        mask: Tensor | None = None,
        images: Mapping[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Encode and return (per-sample loss [B], features φ(s) [B, F])."""
        features = self.encode(proprio, prompt_tokens, images)
        noise, tau = self.draw_noise_and_tau(actions.shape[0], generator, actions.device)
        return self.per_sample_loss(features, actions, mask, noise, tau), features

    @torch.no_grad()
    def sample_actions(
        self,
        proprio: Tensor,
        prompt_tokens: Tensor,
        images: Mapping[str, Tensor] | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        num_steps: int | None = None,
    ) -> Tensor:
        """Sample normalized chunks [B, H, d] with the Euler sampler (``num_inference_steps``)."""
        cfg = self.config
        features = self.encode(proprio, prompt_tokens, images)
        if noise is None:
            noise = torch.randn(
                proprio.shape[0],
                cfg.horizon,
                cfg.action_dim,
                generator=generator,
                device=proprio.device,
            )
        steps = cfg.num_inference_steps if num_steps is None else num_steps
        return fm.euler_sample(lambda x, t: self.velocity(x, t, features), noise, steps)
