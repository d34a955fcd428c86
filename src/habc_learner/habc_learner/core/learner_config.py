"""One typed, validated configuration of a learner job: the CLI, YAML files and the learner node.

:class:`LearnerConfig` holds every knob of a learner job: the method, the critic
(:class:`~habc_learner.core.critic.CriticConfig`), the windows
(:class:`~habc_learner.core.windows.WindowConfig`), the replay store, the stale cutoff, the
optimizer and the policy with its cameras. It is parsed by draccus (LeRobot's config library):

    habc-learn --config_path learner.yaml --critic.efficiency_target td --policy.cameras '[top]'

- a YAML file (``--config_path``; the ``learner_config.json`` saved in every checkpoint is one)
  gives any subset of the keys, CLI flags ``--section.key value`` override it;
- ``habc-learn --help`` lists the methods and every knob with its default
  (:class:`DefaultsHelpFormatter`);
- a bad value names its key and the valid choices (:func:`explain`).

The learner node's ROS parameters are the same keys, flattened with dots (``critic.lr``; a
nested map in a ROS parameter file): :func:`node_parameter_defaults` and
:func:`from_node_parameters` are the one mapping between the two.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

import draccus

from habc_learner.core.critic import (
    EFFICIENCY_TARGETS,
    FEATURE_SOURCES,
    TD_BOOTSTRAPS,
    CriticConfig,
)
from habc_learner.core.labeling import FAILED_CORRECTIONS, LABELING_MODES
from habc_learner.core.methods import METHODS
from habc_learner.core.windows import WindowConfig

#: The learner's methods (see :mod:`habc_learner.core.methods`).
MethodName = Literal[tuple(METHODS)]
ImageAugment = Literal["none", "shift", "crop"]

#: Saved next to every checkpoint (inside its directory, hashed by its manifest).
CONFIG_FILE = "learner_config.json"


@dataclass(frozen=True)
class PolicyKnobs:
    """The policy a job trains and what it sees.

    Shape knobs left unset (None) come from the checkpoint the job resumes or starts from
    (``init_checkpoint``), or are the :class:`~habc_policy.core.configuration_flow.FlowPolicyConfig`
    defaults for a policy sized from the bags; a set one that differs from the checkpoint's is
    refused (it would change the model's shape).
    """

    # Cameras of an image policy (empty: state-only); with cameras the proprioception is the
    # joints alone and /habc/env_state is never read. Frames are decoded once per bag.
    cameras: tuple[str, ...] = ()
    # (height, width) the image policy sees; frames are resized to it once, in the image cache.
    image_size: tuple[int, int] = (96, 96)
    # Train-time image augmentation of a new image policy.
    image_augment: ImageAugment = "shift"
    # Pixels of the shift / crop margin.
    augment_pad: int = 4
    # State-only policies in simulation: feed the privileged /habc/env_state.
    use_env_state: bool = True
    # H, rows of the action chunk (must equal window.horizon).
    horizon: int | None = None
    feature_dim: int | None = None
    hidden_dim: int | None = None
    num_blocks: int | None = None
    cnn_channels: tuple[int, ...] | None = None
    prompt_dim: int | None = None
    prompt_buckets: int | None = None
    prompt_max_tokens: int | None = None
    time_embed_dim: int | None = None
    parametrization: Literal["clean_chunk", "velocity"] | None = None
    time_schedule: Literal["uniform", "beta"] | None = None
    num_inference_steps: int | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "cameras", tuple(c.strip() for c in self.cameras if c and c.strip()))
        size = self.image_size
        if isinstance(size, int):
            size = (size, size)
        set_(self, "image_size", tuple(int(v) for v in size))
        if len(self.image_size) != 2 or min(self.image_size) < 8:
            raise ValueError(f"image_size must be (height, width) >= 8, got {self.image_size}")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras has duplicates: {self.cameras}")
        if self.image_augment not in get_args(ImageAugment):
            raise ValueError(
                f"image_augment={self.image_augment!r} is not one of {get_args(ImageAugment)}"
            )
        if self.augment_pad < 0:
            raise ValueError(f"augment_pad must be >= 0, got {self.augment_pad}")

    SHAPE_KNOBS = (
        "horizon",
        "feature_dim",
        "hidden_dim",
        "num_blocks",
        "cnn_channels",
        "prompt_dim",
        "prompt_buckets",
        "prompt_max_tokens",
        "time_embed_dim",
        "parametrization",
        "time_schedule",
        "num_inference_steps",
    )

    def shape_overrides(self) -> dict[str, Any]:
        """The shape knobs that are set, as ``FlowPolicyConfig`` keyword arguments."""
        return {k: getattr(self, k) for k in self.SHAPE_KNOBS if getattr(self, k) is not None}


@dataclass(frozen=True)
class OptimizerKnobs:
    """Actor optimization (AdamW); the critic's are ``critic.lr`` / ``critic.weight_decay``."""

    actor_lr: float = 1e-4
    weight_decay: float = 0.0
    # Gradient-norm clip of actor and critic.
    grad_clip: float = 1.0


@dataclass(frozen=True)
class ReplayKnobs:
    """The replay store and the held-out splits."""

    # Rollout episodes held out (Imit-Recap threshold selection).
    heldout_fraction: float = 0.1
    # Re-select the Imit-Recap threshold every this many learner steps.
    recap_threshold_every: int = 500
    # Held-out windows scored to select it.
    recap_heldout_windows: int = 2048


@dataclass(frozen=True)
class LearnerConfig:
    """A learner job (``habc-learn`` and the learner node)."""

    # Folders searched recursively for episode bags (with fleet: roots of <robot_id>/<episode>).
    bag_dirs: tuple[Path, ...] = (Path("runs/bags"),)
    # Checkpoints (checkpoints/), TensorBoard logs (tensorboard/), the job state.
    out_dir: Path = Path("runs/learner")
    # Learner method (see habc_learner.core.methods).
    method: MethodName = "habc"
    # Gradient steps of one round.
    steps_per_round: int = 1000
    # New usable episodes that trigger a round.
    min_new_episodes: int = 1
    # Demonstrations count toward min_new_episodes (false in an online bringup).
    count_demos: bool = True
    # Policy to start from (e.g. the SFT checkpoint) when out_dir holds no checkpoint yet.
    init_checkpoint: Path | None = None
    # Per-process batch (the global batch on N torchrun processes is N times it).
    batch_size: int = 256
    # cpu | cuda (torchrun: one GPU per process, cuda:<LOCAL_RANK>).
    device: str = "cpu"
    # Seeds model init, batch sampling and flow noise.
    seed: int = 0
    # Stale-rollout cutoff in learner steps.
    stale_cutoff: int = 10000
    # Bag folders are fleet roots: <root>/<robot_id>/<episode>/ (robot id on every window).
    fleet: bool = False
    # Torch intra-op threads per process.
    torch_threads: int = 1
    # Added to the training thread's niceness (0-19; raising it needs no privilege): on a
    # machine shared with the control path (policy server, arbiter, driver) training yields the
    # CPU to them. The learner node's file sets 10.
    cpu_nice: int = 0
    # Seconds between scans while watching.
    poll_period_s: float = 5.0
    # Rounds to run without watch (CLI only; the node always watches).
    rounds: int = 1
    # Keep following the folders (CLI only; the node always watches).
    watch: bool = False
    # Progress bars.
    progress: bool = True
    critic: CriticConfig = field(default_factory=CriticConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    replay: ReplayKnobs = field(default_factory=ReplayKnobs)
    optimizer: OptimizerKnobs = field(default_factory=OptimizerKnobs)
    policy: PolicyKnobs = field(default_factory=PolicyKnobs)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        dirs = (self.bag_dirs,) if isinstance(self.bag_dirs, (str, Path)) else self.bag_dirs
        set_(self, "bag_dirs", tuple(Path(d) for d in dirs))
        set_(self, "out_dir", Path(self.out_dir))
        if self.init_checkpoint is not None:
            set_(self, "init_checkpoint", Path(self.init_checkpoint))
        if not self.bag_dirs:
            raise ValueError("bag_dirs must name at least one folder")
        if self.method not in METHODS:
            from habc_learner.core.methods import get_method

            get_method(self.method)  # raises with "did you mean"
        for name in ("steps_per_round", "min_new_episodes", "batch_size", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.cpu_nice <= 19:
            raise ValueError(f"cpu_nice must be in 0..19, got {self.cpu_nice}")
        if self.torch_threads < 1 or self.poll_period_s <= 0 or self.stale_cutoff < 1:
            raise ValueError("torch_threads and stale_cutoff must be >= 1, poll_period_s > 0")

    # Legacy attribute names of the job (before the policy section existed).
    @property
    def cameras(self) -> tuple[str, ...]:
        return self.policy.cameras

    @property
    def image_size(self) -> tuple[int, int]:
        return self.policy.image_size

    @property
    def image_augment(self) -> str:
        return self.policy.image_augment

    @property
    def augment_pad(self) -> int:
        return self.policy.augment_pad

    @property
    def use_env_state(self) -> bool:
        return self.policy.use_env_state

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the form saved next to every checkpoint; loadable by ``--config_path``)."""
        return json.loads(json.dumps(draccus.encode(self), default=str))


def yield_cpu(nice: int) -> int:
    """Raise the calling thread's niceness by ``nice`` (threads it starts later inherit it) and
    return the new value. On Linux a thread's niceness is its own, so call this in the thread
    that then starts the training work (:attr:`LearnerConfig.cpu_nice`)."""
    import os

    return os.nice(nice)


# --------------------------------------------------------------------------------- parsing
#: Flags of ``habc-learn`` before the typed config, still accepted: flag -> (key, kind).
LEGACY_FLAGS: dict[str, tuple[str, str]] = {
    "--bags": ("bag_dirs", "list"),
    "--out": ("out_dir", "value"),
    "--steps": ("steps_per_round", "value"),
    "--init": ("init_checkpoint", "value"),
    "--min-new": ("min_new_episodes", "value"),
    "--batch-size": ("batch_size", "value"),
    "--threads": ("torch_threads", "value"),
    "--nice": ("cpu_nice", "value"),
    "--poll": ("poll_period_s", "value"),
    "--watch": ("watch", "true"),
    "--no-env-state": ("policy.use_env_state", "false"),
    "--cameras": ("policy.cameras", "csv"),
    "--image-size": ("policy.image_size", "size"),
    "--augment": ("policy.image_augment", "value"),
    "--augment-pad": ("policy.augment_pad", "value"),
}


BOOL_WORDS = ("true", "false", "yes", "no", "on", "off", "1", "0")


def translate_legacy(argv: list[str]) -> list[str]:
    """Rewrite the old flags (``--bags A B --min-new 3 --cameras top,left``) as config keys."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, inline = arg.partition("=")
        if flag not in LEGACY_FLAGS:
            out.append(arg)
            i += 1
            continue
        key, kind = LEGACY_FLAGS[flag]
        i += 1
        values: list[str] = [inline] if eq else []
        if kind in ("list", "size") and not eq:
            while i < len(argv) and not argv[i].startswith("--"):
                values.append(argv[i])
                i += 1
        elif kind in ("value", "csv") and not eq and i < len(argv):
            values.append(argv[i])
            i += 1
        if kind == "true":  # "--watch", or "--watch true" (the config key's own spelling)
            if not eq and i < len(argv) and argv[i].lower() in BOOL_WORDS:
                values = [argv[i]]
                i += 1
            out += [f"--{key}", values[0] if values else "true"]
        elif kind == "false":
            out += [f"--{key}", "false"]
        elif kind == "list":
            out += [f"--{key}", "[" + ",".join(values) + "]"]
        elif kind == "csv":
            names = [c.strip() for v in values for c in v.split(",") if c.strip()]
            out += [f"--{key}", "[" + ",".join(names) + "]"]
        elif kind == "size":
            size = values * 2 if len(values) == 1 else values
            out += [f"--{key}", "[" + ",".join(size) + "]"]
        else:
            out += [f"--{key}", *values]
    return out


def flat_defaults(config: Any = None, prefix: str = "") -> dict[str, Any]:
    """``{"critic.lr": 3e-4, …}``: every knob of ``config`` (default: the defaults) by key."""
    config = LearnerConfig() if config is None else config
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flat_defaults(value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = value
    return out


class DefaultsHelpFormatter(draccus.help_formatter.SimpleHelpFormatter):
    """draccus's help with ``(default: …)`` after every knob (draccus leaves defaults out when
    a YAML file may set them)."""

    DEFAULTS: ClassVar[dict[str, Any]] = {}
    #: Valid values of the string knobs the section dataclasses validate themselves.
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "critic.features": FEATURE_SOURCES,
        "critic.efficiency_target": EFFICIENCY_TARGETS,
        "critic.td_bootstrap": TD_BOOTSTRAPS,
        "window.labeling": LABELING_MODES,
        "window.failed_corrections": FAILED_CORRECTIONS,
    }

    def _format_action(self, action: argparse.Action) -> str:
        # argparse prints no help line (hence no default) for a blank help string.
        if action.dest in self.DEFAULTS:
            action.help = self._get_help_string(action)
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = (action.help or "").strip()
        if action.dest in self.DEFAULTS and "default: " not in text:
            default = self.DEFAULTS[action.dest]
            shown = "unset" if default is None else default
            if isinstance(default, tuple):
                shown = "[" + ",".join(str(v) for v in default) + "]"
            choices = self.CHOICES.get(action.dest)
            one_of = f"one of {', '.join(choices)}; " if choices else ""
            text = f"{text} ({one_of}default: {shown})".strip()
        return text


def _dataclass_for(path: tuple[str, ...]) -> type | None:
    cls: Any = LearnerConfig
    for name in path:
        hints = get_type_hints(cls)
        cls = hints.get(name)
        if cls is None:
            return None
    return cls


def explain(exc: BaseException) -> str:
    """The message a person needs from a parsing error: the key and its valid values."""
    causes = []
    e: BaseException | None = exc
    while e is not None:
        causes.append(e)
        e = e.__cause__ or e.__context__
    for e in causes:  # draccus's own decoding errors name the key: `policy.horizon`: …
        if isinstance(e, draccus.utils.DecodingError):
            return " ".join(str(e).split())
    root = causes[-1]
    where = ""
    for e in causes:  # "Couldn't instantiate class CriticConfig" -> the section's key
        text = str(e)
        for f in dataclasses.fields(LearnerConfig):
            tpe = get_type_hints(LearnerConfig)[f.name]
            if isinstance(tpe, type) and f"class {tpe.__name__} " in text + " ":
                where = f.name
    message = str(root)
    return f"{where}.{message}" if where and not message.startswith(where) else message


def parse_cli(argv: list[str] | None, prog: str = "habc-learn") -> LearnerConfig:
    """Parse ``argv`` (``--config_path FILE`` then ``--key value`` overrides; the old flags are
    translated); exits with status 2 and a message naming the key on a bad value."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    DefaultsHelpFormatter.DEFAULTS = flat_defaults()
    parser = draccus.argparsing.ArgumentParser(
        LearnerConfig,
        formatter_class=DefaultsHelpFormatter,
        prog=prog,
        description=__doc__.split("\n\n")[0] + "\n\nmethods: " + ", ".join(METHODS),
        exit_on_error=False,
    )
    try:
        return parser.parse_args(translate_legacy(argv))
    except SystemExit:
        raise
    except Exception as exc:  # draccus wraps the ValueError of __post_init__
        print(f"{prog}: error: {explain(exc)}", file=sys.stderr)
        raise SystemExit(2) from exc


def load(data: dict[str, Any]) -> LearnerConfig:
    """A config from a nested dict (a YAML file's content); ValueError naming the key."""
    try:
        return draccus.decode(LearnerConfig, data)
    except Exception as exc:
        raise ValueError(explain(exc)) from exc


# ------------------------------------------------------------------------- the learner node
#: Keys the node does not declare (it always watches, never draws progress bars).
NODE_SKIPS = ("rounds", "watch", "progress")
#: The node's defaults where they differ from the CLI's: in an online bringup demonstrations
#: are training data but only rollouts trigger a round, ten at a time.
NODE_DEFAULTS = {"count_demos": False, "min_new_episodes": 10}


def _to_parameter(value: Any) -> Any:
    """A ROS parameter value: paths as strings, names as "a,b", None as ""."""
    if value is None:
        return ""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        if value and all(isinstance(v, Path) for v in value):
            return [str(v) for v in value]
        if all(isinstance(v, str) for v in value):
            return ",".join(value)
        return list(value)
    return value


def node_parameter_defaults() -> dict[str, Any]:
    """The learner node's parameters (flat keys) with their defaults in ROS types."""
    return {
        key: _to_parameter(NODE_DEFAULTS.get(key, value))
        for key, value in flat_defaults().items()
        if key.split(".")[0] not in NODE_SKIPS
    }


def _from_parameter(key: str, value: Any) -> Any:
    """The inverse of :func:`_to_parameter` for ``key``'s type."""
    path = tuple(key.split("."))
    owner = _dataclass_for(path[:-1])
    assert owner is not None
    tpe = get_type_hints(owner)[path[-1]]
    optional = get_origin(tpe) in (Union, types.UnionType) and type(None) in get_args(tpe)
    if optional:
        tpe = next(a for a in get_args(tpe) if a is not type(None))
        if value in ("", None):
            return None
    if get_origin(tpe) is tuple:
        if key == "policy.image_size":
            return list(parse_image_size(value))
        inner = get_args(tpe)[0]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if inner is int:
            return [int(v) for v in value]
        return [str(v) for v in value]
    return value


def from_node_parameters(values: dict[str, Any]) -> LearnerConfig:
    """A config from the node's parameter values (flat keys, ROS types); ValueError naming the
    key on a bad one."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _from_parameter(key, value)
    return load({**nested, "progress": False})


def parse_image_size(value: object) -> tuple[int, int]:
    """``image_size`` as N, [H, W], "N" or "HxW" -> (H, W); ValueError naming the forms."""
    try:
        if isinstance(value, str):
            parts = [int(v) for v in value.lower().replace("x", " ").replace(",", " ").split()]
        elif isinstance(value, int):
            parts = [value]
        else:
            parts = [int(v) for v in value]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise ValueError(f"image_size must be N, [H, W], 'N' or 'HxW', got {value!r}")
    return parts[0], parts[1]


# ------------------------------------------------------------------------------ resume check
#: Keys whose change changes a checkpoint's tensors (their shapes or what they mean).
SHAPE_KEYS = (
    "method",
    "critic.features",
    "critic.hidden_dim",
    "critic.num_layers",
    "critic.ensemble",
    "critic.value_bins",
    "window.horizon",
    "policy.cameras",
    "policy.image_size",
    "policy.use_env_state",
)


def shape_changes(saved: dict[str, Any], config: LearnerConfig) -> list[str]:
    """``key: saved -> new`` for every :data:`SHAPE_KEYS` entry ``config`` changes relative to
    the config ``saved`` with a checkpoint. The policy's own shape knobs are checked against the
    checkpoint's policy config itself (``LearnerJob``)."""
    old = flat_defaults(load(saved))
    new = flat_defaults(config)
    changes = []
    for key in SHAPE_KEYS:
        if old[key] != new[key]:
            changes.append(f"{key}: {old[key]!r} -> {new[key]!r}")
    return changes
