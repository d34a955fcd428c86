"""Checkpoint I/O: safetensors files plus a JSON manifest, written atomically, never unpickled.

Layout of one checkpoint directory::

    step_000006000/
        manifest.json        format, policy config, learner step, sha256 of every file,
                             content sha256 (hash of the file hashes) and checkpoint id
        model.safetensors    FlowPolicy state dict
        normalizer.safetensors
        ...                  any extra files the learner adds (critic, optimizer, RNG, JSON state)

The directory is staged under a temporary name in the same parent and moved into place with
``os.replace`` (atomic on POSIX), so a reader never sees a half-written checkpoint. A ``LATEST``
file in the parent names the newest one and is itself replaced atomically.

Loading checks the manifest format, every file's sha256, the content hash and every tensor's
name and shape against the model built from the manifest's config. Only safetensors and JSON
are read: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from habc_policy.core.configuration_flow import FlowPolicyConfig
from habc_policy.core.images import resize_rgb
from habc_policy.core.modeling_flow import FlowPolicy, tokenize_prompt
from habc_policy.core.normalize import Normalizer

CHECKPOINT_FORMAT = "habc-checkpoint/1"
MANIFEST_NAME = "manifest.json"
LATEST_NAME = "LATEST"
MODEL_FILE = "model.safetensors"
NORMALIZER_FILE = "normalizer.safetensors"
CHECKPOINT_ID_LENGTH = 16


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupted or does not match its manifest."""


class DivergedModelError(CheckpointError):
    """Refused to write a checkpoint: some of its floating-point tensors are NaN or inf."""


def non_finite_tensors(files: Mapping[str, Mapping[str, Tensor]]) -> list[str]:
    """``file:tensor`` names of every floating-point tensor holding a NaN or an inf."""
    bad = []
    for file, tensors in files.items():
        for name, t in tensors.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad.append(f"{file}:{name}")
    return bad


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_sha256(file_hashes: Mapping[str, str]) -> str:
    """Hash of the (sorted) file names and file hashes: the checkpoint's content hash."""
    digest = hashlib.sha256()
    for name in sorted(file_hashes):
        digest.update(f"{name}\0{file_hashes[name]}\n".encode())
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checkpoint(
    directory: str | Path,
    tensor_files: Mapping[str, Mapping[str, Tensor]],
    json_files: Mapping[str, Any] | None = None,
    manifest: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a checkpoint directory atomically and return its manifest.

    Args:
        directory: final checkpoint directory (must not exist unless ``overwrite``).
        tensor_files: file name (``*.safetensors``) -> flat name -> tensor.
        json_files: file name (``*.json``) -> JSON-serializable object.
        manifest: extra manifest fields (config, learner_step, ...).
        overwrite: replace an existing checkpoint directory.
    """
    directory = Path(directory)
    json_files = dict(json_files or {})
    for name in list(tensor_files) + list(json_files):
        if "/" in name or name == MANIFEST_NAME:
            raise ValueError(f"invalid checkpoint file name {name!r}")
    if directory.exists() and not overwrite:
        raise FileExistsError(f"checkpoint directory {directory} already exists")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        hashes: dict[str, str] = {}
        for name, tensors in tensor_files.items():
            flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
            save_file(flat, str(staging / name))
            hashes[name] = _sha256_file(staging / name)
        for name, obj in json_files.items():
            (staging / name).write_text(json.dumps(obj, indent=1, sort_keys=True))
            hashes[name] = _sha256_file(staging / name)
        content = content_sha256(hashes)
        full_manifest = {
            **dict(manifest or {}),
            "format": CHECKPOINT_FORMAT,
            "files": hashes,
            "content_sha256": content,
            "checkpoint_id": content[:CHECKPOINT_ID_LENGTH],
        }
        manifest_path = staging / MANIFEST_NAME
        with manifest_path.open("w") as f:
            json.dump(full_manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(staging)
        if directory.exists():
            trash = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(directory, trash)
            os.replace(staging, directory)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, directory)
        _fsync_dir(directory.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return full_manifest


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Read and validate ``manifest.json`` and every file hash; return the manifest."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory} has no {MANIFEST_NAME}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise CheckpointError(f"{path}: format {found!r}, expected {CHECKPOINT_FORMAT!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise CheckpointError(f"{path}: manifest lists no files")
    for name, expected in files.items():
        file_path = directory / name
        if not file_path.is_file():
            raise CheckpointError(f"{directory}: file {name!r} listed in the manifest is missing")
        actual = _sha256_file(file_path)
        if actual != expected:
            raise CheckpointError(
                f"{directory}: sha256 mismatch for {name!r} (manifest {expected[:12]}…, "
                f"file {actual[:12]}…): corrupted or modified"
            )
    content = content_sha256(files)
    if manifest.get("content_sha256") != content:
        raise CheckpointError(f"{directory}: content_sha256 does not match the file hashes")
    if manifest.get("checkpoint_id") != content[:CHECKPOINT_ID_LENGTH]:
        raise CheckpointError(f"{directory}: checkpoint_id does not match the content hash")
    return manifest


def read_checkpoint(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, Any], dict[str, dict[str, Tensor]], dict[str, Any]]:
    """Validate and read a checkpoint: (manifest, tensor files, JSON files)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    tensors: dict[str, dict[str, Tensor]] = {}
    jsons: dict[str, Any] = {}
    for name in manifest["files"]:
        if name.endswith(".safetensors"):
            try:
                tensors[name] = load_file(str(directory / name), device=str(device))
            except Exception as exc:  # safetensors raises its own error types
                raise CheckpointError(f"{directory}: cannot read {name!r}: {exc}") from exc
        elif name.endswith(".json"):
            jsons[name] = json.loads((directory / name).read_text())
        else:
            raise CheckpointError(f"{directory}: unexpected file type {name!r}")
    return manifest, tensors, jsons


def update_latest(root: str | Path, checkpoint_name: str) -> None:
    """Atomically point ``root/LATEST`` at ``checkpoint_name``."""
    root = Path(root)
    tmp = root / f".{LATEST_NAME}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.write_text(checkpoint_name + "\n")
    os.replace(tmp, root / LATEST_NAME)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The checkpoint ``root/LATEST`` names, or ``None`` if there is none yet."""
    pointer = Path(root) / LATEST_NAME
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text().strip()
    if not path.is_dir():
        raise CheckpointError(f"{pointer} names {path.name!r}, which does not exist")
    return path


def checkpoint_name(learner_step: int) -> str:
    """Directory name of the checkpoint at ``learner_step``."""
    return f"step_{learner_step:09d}"


def load_state_dict_strict(
    module: torch.nn.Module, tensors: Mapping[str, Tensor], what: str
) -> None:
    """``module.load_state_dict`` with every missing/unexpected/mis-shaped key named."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{what}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        )
    for key, value in expected.items():
        if tuple(tensors[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{what}: {key!r} has shape {tuple(tensors[key].shape)}, "
                f"the config expects {tuple(value.shape)}"
            )
    module.load_state_dict(dict(tensors), strict=True)


def save_policy(
    directory: str | Path,
    policy: FlowPolicy,
    normalizer: Normalizer,
    learner_step: int,
    extra_tensor_files: Mapping[str, Mapping[str, Tensor]] | None = None,
    extra_json_files: Mapping[str, Any] | None = None,
    extra_manifest: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a policy checkpoint (model + normalizer + extras) atomically; return its manifest."""
    if normalizer.proprio.dim != policy.config.proprio_dim:
        raise ValueError(
            f"normalizer proprio dim {normalizer.proprio.dim} != config {policy.config.proprio_dim}"
        )
    if normalizer.action.dim != policy.config.action_dim:
        raise ValueError(
            f"normalizer action dim {normalizer.action.dim} != config {policy.config.action_dim}"
        )
    tensor_files: dict[str, Mapping[str, Tensor]] = {
        MODEL_FILE: policy.state_dict(),
        NORMALIZER_FILE: normalizer.state_dict(),
    }
    for name, tensors in (extra_tensor_files or {}).items():
        if name in tensor_files:
            raise ValueError(f"extra file name {name!r} collides with {sorted(tensor_files)}")
        tensor_files[name] = tensors
    if bad := non_finite_tensors(tensor_files):  # a diverged model never becomes a checkpoint
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DivergedModelError(
            f"refusing to write checkpoint {directory}: non-finite values in {shown}"
        )
    manifest = {
        **dict(extra_manifest or {}),
        "policy_config": policy.config.to_dict(),
        "learner_step": int(learner_step),
    }
    return write_checkpoint(directory, tensor_files, extra_json_files, manifest, overwrite)


@dataclass
class LoadedPolicy:
    """A ready-to-serve policy: model in eval mode, its normalizer and its manifest."""

    model: FlowPolicy
    normalizer: Normalizer
    manifest: dict[str, Any]
    device: torch.device

    @property
    def config(self) -> FlowPolicyConfig:
        return self.model.config

    @property
    def checkpoint_id(self) -> str:
        return str(self.manifest["checkpoint_id"])

    @property
    def learner_step(self) -> int:
        return int(self.manifest["learner_step"])

    @torch.no_grad()
    def sample_actions(
        self,
        proprio: np.ndarray,
        prompt: str,
        images: Mapping[str, np.ndarray] | None = None,
        seed: int | None = None,
        num_steps: int | None = None,
    ) -> np.ndarray:
        """Sample an action chunk in robot units.

        Args:
            proprio: raw proprioception [p] or [B, p].
            prompt: language prompt.
            images: camera name -> uint8 [h, w, 3] (or [B, h, w, 3]); required for every
                configured camera; resized to the config's ``image_size`` when they differ
                (:func:`habc_policy.core.images.resize_rgb`, as in training).
            seed: seeds the noise (deterministic output); ``None`` draws fresh noise.
            num_steps: Euler steps (default: the config's 10).

        Returns:
            float32 chunk [H, d] (or [B, H, d] for batched input), unnormalized.
        """
        cfg = self.config
        q = np.asarray(proprio, dtype=np.float32)
        single = q.ndim == 1
        if single:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != cfg.proprio_dim:
            raise ValueError(
                f"proprio must be [{cfg.proprio_dim}] or [B, {cfg.proprio_dim}], got {q.shape}"
            )
        batch = q.shape[0]
        q_t = self.normalizer.normalize_proprio(torch.from_numpy(q).to(self.device))
        tokens = torch.from_numpy(
            np.tile(tokenize_prompt(prompt, cfg.prompt_buckets, cfg.prompt_max_tokens), (batch, 1))
        ).to(self.device)
        image_t: dict[str, Tensor] | None = None
        if cfg.camera_names:
            images = images or {}
            missing = [c for c in cfg.camera_names if c not in images]
            if missing:
                raise ValueError(
                    f"missing images for cameras {missing}; expected {cfg.camera_names}"
                )
            image_t = {}
            for cam in cfg.camera_names:
                img = np.asarray(images[cam], dtype=np.uint8)
                if img.ndim == 3:
                    img = img[None]
                if img.shape[1:3] != tuple(cfg.image_size):  # the size the policy was trained at
                    img = np.stack([resize_rgb(i, cfg.image_size) for i in img])
                image_t[cam] = torch.from_numpy(np.ascontiguousarray(img)).to(self.device)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed)
        chunk = self.model.sample_actions(
            q_t, tokens, image_t, generator=generator, num_steps=num_steps
        )
        out = self.normalizer.clip_action(self.normalizer.unnormalize_action(chunk))
        out = out.cpu().numpy().astype(np.float32)
        return out[0] if single else out


def load_policy(directory: str | Path, device: str | torch.device = "cpu") -> LoadedPolicy:
    """Load, validate and return a ready policy from a checkpoint directory.

    Only ``model.safetensors``, ``normalizer.safetensors`` and the manifest are read (plus the
    hash check of every file). Raises :class:`CheckpointError` on any mismatch.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    for name in (MODEL_FILE, NORMALIZER_FILE):
        if name not in manifest["files"]:
            raise CheckpointError(f"{directory}: manifest has no {name!r}; not a policy checkpoint")
    if "policy_config" not in manifest or "learner_step" not in manifest:
        raise CheckpointError(f"{directory}: manifest lacks policy_config or learner_step")
    try:
        config = FlowPolicyConfig.from_dict(manifest["policy_config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory}: invalid policy_config: {exc}") from exc
    device = torch.device(device)
    model = FlowPolicy(config)
    try:
        model_tensors = load_file(str(directory / MODEL_FILE), device="cpu")
        norm_tensors = load_file(str(directory / NORMALIZER_FILE), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{directory}: cannot read safetensors: {exc}") from exc
    load_state_dict_strict(model, model_tensors, f"{directory}/{MODEL_FILE}")
    try:
        normalizer = Normalizer.from_state_dict(norm_tensors)
    except ValueError as exc:
        raise CheckpointError(f"{directory}/{NORMALIZER_FILE}: {exc}") from exc
    if normalizer.proprio.dim != config.proprio_dim or normalizer.action.dim != config.action_dim:
        raise CheckpointError(
            f"{directory}: normalizer dims ({normalizer.proprio.dim}, {normalizer.action.dim}) do "
            f"not match the config ({config.proprio_dim}, {config.action_dim})"
        )
    model.to(device).eval()
    return LoadedPolicy(model=model, normalizer=normalizer, manifest=manifest, device=device)
