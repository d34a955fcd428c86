"""Topic and service names are written once (``habc_common.topics``): the graph description,
the node parameter files and every module use those names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from habc_common import topics
from tests.conftest import REPO_ROOT

NAMES = {v for k, v in vars(topics).items() if k.isupper() and isinstance(v, str) and "/" in v}
CAMERA_PATTERNS = {topics.camera_topic("*"), topics.camera_topic("*", compressed=True)}


OUR_PACKAGES = ("habc_policy", "habc_learner", "arx_x5_driver", "habc_bridge")


def _interfaces() -> list[tuple[str, str]]:
    """``(node, name)`` of every interface our nodes declare (not, e.g., the joy package's)."""
    graph = yaml.safe_load((REPO_ROOT / "config" / "graph.yaml").read_text())
    out = []
    for node in graph["nodes"]:
        if node["package"] not in OUR_PACKAGES:
            continue
        for names in node.get("interfaces", {}).values():
            if isinstance(names, list):
                out += [(node["name"], n) for n in names]
    return out


def test_camera_topics() -> None:
    assert topics.camera_topic("top") == "/cameras/top/image_raw"
    assert topics.camera_topic("top", compressed=True) == "/cameras/top/image_raw/compressed"
    with pytest.raises(ValueError, match="without '/'"):
        topics.camera_topic("top/left")


def test_every_absolute_name_in_the_graph_is_a_known_name() -> None:
    absolute = [(node, n) for node, n in _interfaces() if n.startswith("/")]
    assert len(absolute) > 20  # the walk found the graph's interface lists
    unknown = [(node, n) for node, n in absolute if n not in NAMES | CAMERA_PATTERNS]
    assert not unknown, unknown
    # ... and the driver's own (node-relative) names resolve to the shared ones
    relative = {n for node, n in _interfaces() if node == topics.DRIVER_NODE and n[0] == "~"}
    for name in (topics.APPLIED_COMMAND, topics.MEASURED_COMMAND, topics.ESTOP_LATCHED):
        assert "~/" + name.rsplit("/", 1)[1] in relative


def test_parameter_files_default_to_the_shared_names() -> None:
    params = yaml.safe_load((REPO_ROOT / "config" / "arbiter.yaml").read_text())
    p = params["intervention_arbiter"]["ros__parameters"]
    assert p["teleop_topic"] == topics.TELEOP_COMMAND
    assert p["estop_state_topic"] == topics.ESTOP_LATCHED
    assert p["measured_topic"] == topics.MEASURED_COMMAND
    assert p["policy_heartbeat_topic"] == topics.POLICY_HEARTBEAT
    assert p["end_episode_service"] == topics.END_EPISODE


def _string_constants(path: Path) -> list[tuple[int, str]]:
    """String literals of ``path`` outside docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_no_module_writes_a_shared_name_out() -> None:
    sources = [
        p
        for p in (REPO_ROOT / "src").rglob("*.py")
        if "habc_common" not in p.parts and "__pycache__" not in p.parts
    ]
    assert len(sources) > 50
    written = [
        f"{p.relative_to(REPO_ROOT)}:{line}: {value!r}"
        for p in sources
        for line, value in _string_constants(p)
        if value in NAMES
    ]
    assert not written, written
