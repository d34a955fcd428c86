"""Build a robot backend from its config or its name.

Backend modules are imported here, inside the factory, so that importing
``arx_x5_driver.core`` pulls in no simulator and no vendor SDK; the SDKs themselves are
imported only when a backend connects.
"""

from __future__ import annotations

from typing import Any

from arx_x5_driver.core.config import (
    CONFIG_CLASSES,
    ArxConfig,
    BackendConfig,
    MetaWorldConfig,
    SimAlohaConfig,
    did_you_mean,
)
from arx_x5_driver.core.robot import ArmBackend

BACKENDS = tuple(CONFIG_CLASSES)  # ("sim", "arx", "metaworld")
DEFAULT_BACKEND = "sim"


def make_config(name: str = DEFAULT_BACKEND, **fields: Any) -> BackendConfig:
    """The config of backend ``name`` with ``fields`` (validated by the dataclass)."""
    cls = CONFIG_CLASSES.get(name)
    if cls is None:
        raise ValueError(
            f"unknown backend {name!r}; choose one of {BACKENDS}" + did_you_mean(name, BACKENDS)
        )
    try:
        return cls(**fields)
    except TypeError as exc:
        allowed = sorted(f for f in cls.__dataclass_fields__ if f != "backend")
        raise ValueError(f"bad field for backend {name!r}: {exc}; fields: {allowed}") from exc


def make_backend(config: BackendConfig | str | None = None, **fields: Any) -> ArmBackend:
    """A (not yet connected) backend for ``config``, or for a backend name plus fields.

    ``make_backend()`` is the simulated robot; ``make_backend("metaworld", task="reach-v3")``;
    ``make_backend(ArxConfig(left_interface="can0", right_interface="can1"))``.
    """
    if config is None or isinstance(config, str):
        config = make_config(config or DEFAULT_BACKEND, **fields)
    elif fields:
        raise ValueError("pass either a config object or a backend name with fields, not both")
    if isinstance(config, SimAlohaConfig):
        from arx_x5_driver.core.sim_aloha import SimAlohaBackend

        return SimAlohaBackend(config)
    if isinstance(config, ArxConfig):
        from arx_x5_driver.core.arx import ArxBackend

        return ArxBackend(config)
    if isinstance(config, MetaWorldConfig):
        from arx_x5_driver.core.metaworld_backend import MetaWorldBackend

        return MetaWorldBackend(config)
    raise TypeError(
        f"config must be one of {[c.__name__ for c in CONFIG_CLASSES.values()]}, got "
        f"{type(config).__name__}"
    )
