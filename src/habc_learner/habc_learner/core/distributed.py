"""Data-parallel learner rounds with ``torch.distributed`` (DDP), launched by ``torchrun``.

    torchrun --nproc-per-node 2 -m habc_learner.learn --bags runs/bags --out runs/learner

Every rank holds the same replay store (rank 0 scans the bag folders and broadcasts what it
read; :mod:`habc_learner.learn`). One learner step on W ranks with per-rank batch B is one step
of a global batch of W·B windows:

- **sampling**: the window rows of the global batch are drawn from the trainer's index RNG,
  which every rank seeds identically and advances identically; rank r keeps rows r, r+W, r+2W,
  … (a strided shard, like ``DistributedSampler``: the source groups of the draw are spread
  over the ranks). Image augmentation of a rank's shard uses its own RNG, seeded by
  (seed, rank, round).
- **flow noise**: ε and τ are drawn for the global batch from the shared generator; each rank
  keeps its shard's rows. With the same data and seed, W ranks see exactly the windows and
  noise one rank sees with batch W·B.
- **gradients**: actor and critic modules are wrapped together in one
  :class:`~torch.nn.parallel.DistributedDataParallel` (:class:`LearnerModules`), whose forward
  runs the step's differentiable part; DDP all-reduces (averages) their gradients in the
  backward pass. Eq. 8's normalization and the actor's weight-sum reduction use global sums
  (:func:`all_gather_cat`), so the actor's gradient is the global batch's.
- **outputs**: only rank 0 writes checkpoints, TensorBoard and the job state; the logged
  scalars are means over the ranks (:func:`mean_over_ranks`).

A checkpoint holds no world size: a run resumes on any number of ranks (the per-rank batch
is the config's ``batch_size``; the global batch is W times it). When a rank dies, torchrun
stops the others; checkpoints are written atomically, so the last one stays whole.
Multi-node: torchrun's own rendezvous (``--nnodes 2 --rdzv-backend c10d --rdzv-endpoint
HOST:PORT``), see the README.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

#: torchrun's environment variables.
ENV_WORLD_SIZE, ENV_RANK, ENV_LOCAL_RANK = "WORLD_SIZE", "RANK", "LOCAL_RANK"


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: ``rank`` of ``world_size`` (``local_rank`` on its node).
    ``world_size == 1`` is the single-process learner: every helper is then a no-op."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, world_size={self.world_size})")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and the job state."""
        return self.rank == 0

    def device(self, device: str) -> str:
        """This rank's device: ``cuda`` becomes ``cuda:<local_rank>`` (one GPU per rank)."""
        if self.enabled and device == "cuda":
            return f"cuda:{self.local_rank}"
        return device


SINGLE = DistContext()


def context_from_env(environ: Mapping[str, str] | None = None) -> DistContext:
    """The context torchrun describes in the environment (single process without it)."""
    env = os.environ if environ is None else environ
    world = int(env.get(ENV_WORLD_SIZE, "1"))
    if world <= 1:
        return SINGLE
    return DistContext(
        rank=int(env[ENV_RANK]), world_size=world, local_rank=int(env.get(ENV_LOCAL_RANK, "0"))
    )


def init(device: str, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group torchrun set up (NCCL for ``cuda``, gloo for ``cpu``); the
    context of a single process without torchrun. ``timeout_s`` bounds every collective
    (a round's step may wait that long for a slow rank's scan)."""
    ctx = context_from_env()
    if not ctx.enabled or dist.is_initialized():
        return ctx
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return ctx


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op on one process)."""
    if ctx.enabled:
        dist.barrier()


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects: paths, decisions)."""
    if not ctx.enabled:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_rows(ctx: DistContext, n: int) -> slice:
    """This rank's rows of a global batch of ``n`` = W·B rows: r, r+W, r+2W, …"""
    return slice(ctx.rank, n, ctx.world_size)


def all_gather_cat(ctx: DistContext, value: Tensor) -> Tensor:
    """The ranks' equally sized ``value`` tensors concatenated in rank order (detached)."""
    if not ctx.enabled:
        return value.detach()
    parts = [torch.empty_like(value) for _ in range(ctx.world_size)]
    dist.all_gather(parts, value.detach().contiguous())
    return torch.cat(parts)


def mean_over_ranks(ctx: DistContext, info: dict[str, float]) -> dict[str, float]:
    """Each scalar averaged over the ranks that defined it (a key a rank did not log, or logged
    as NaN, is left out of that key's mean; NaN where no rank defined it)."""
    if not ctx.enabled:
        return info
    gathered: list[dict[str, float] | None] = [None] * ctx.world_size
    dist.all_gather_object(gathered, info)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for part in gathered:
        for key, value in (part or {}).items():
            sums.setdefault(key, 0.0)
            counts.setdefault(key, 0)
            if value == value:  # not NaN
                sums[key] += value
                counts[key] += 1
    return {k: sums[k] / counts[k] if counts[k] else float("nan") for k in sums}


class LearnerModules(nn.Module):
    """The trainable modules of a learner step (actor, critic heads, critic encoder) under one
    parent, so one :class:`DistributedDataParallel` wraps them all. Its forward runs a closure
    over the raw modules: everything the closure differentiates is part of DDP's backward."""

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleDict(dict(modules))

    def forward(self, step: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return step(*args, **kwargs)


def wrap(
    ctx: DistContext,
    modules: Mapping[str, nn.Module],
    device: torch.device,
    find_unused: bool = False,
) -> nn.Module:
    """DDP over ``modules`` (rank 0's weights are broadcast to every rank on construction).
    ``find_unused``: some steps leave parameters out of the differentiated outputs (the critic
    after early stopping); DDP then looks for them every step (an extra graph traversal)."""
    from torch.nn.parallel import DistributedDataParallel

    parent = LearnerModules(modules)
    ids = [device.index or 0] if device.type == "cuda" else None
    return DistributedDataParallel(parent, device_ids=ids, find_unused_parameters=find_unused)
