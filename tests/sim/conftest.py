"""Fixtures of the simulation tests (one connected backend per task, reused)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from arx_x5_driver.core.config import SimAlohaConfig
from arx_x5_driver.core.sim_aloha import SimAlohaBackend


@pytest.fixture(scope="module")
def transfer_robot() -> Iterator[SimAlohaBackend]:
    with SimAlohaBackend(SimAlohaConfig(task="transfer_cube")) as robot:
        yield robot  # type: ignore[misc]


@pytest.fixture(scope="module")
def insertion_robot() -> Iterator[SimAlohaBackend]:
    with SimAlohaBackend(SimAlohaConfig(task="insertion")) as robot:
        yield robot  # type: ignore[misc]
