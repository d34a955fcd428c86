"""The packages' arrows point one way: every habc package another one imports is declared in the
importer's package.xml, and the declared dependencies form no cycle.

The order, bottom up: habc_common (names, bag format) → arx_x5_driver (robot backends, safety,
kinematics) → habc_policy (policy core, arbiter, policy server) → habc_sim (expert, operator,
in-process rollouts, demo recording) → habc_learner → habc_bridge. One arrow points back by
design, as a plug-in loaded by name: the policy server's remote backend (a ``ws://`` checkpoint)
comes from habc_bridge, imported only when such a checkpoint is served.
"""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from graphlib import CycleError, TopologicalSorter

from tests.conftest import REPO_ROOT

SRC = REPO_ROOT / "src"
PACKAGES = (
    "habc_common",
    "arx_x5_driver",
    "habc_policy",
    "habc_sim",
    "habc_learner",
    "habc_bridge",
)
INTERFACES = ("habc_msgs",)
#: (importing module, imported package): the plug-in arrows, each imported lazily by name.
PLUGINS = {("habc_policy/nodes/policy_server.py", "habc_bridge")}


def declared(package: str) -> set[str]:
    root = ET.parse(SRC / package / "package.xml").getroot()
    tags = ("depend", "exec_depend", "build_depend")
    return {e.text.strip() for t in tags for e in root.iter(t) if e.text}


def imports(package: str) -> dict[str, set[str]]:
    """habc package -> the modules of ``package`` that import it (any import, lazy included)."""
    found: dict[str, set[str]] = {}
    for path in sorted((SRC / package / package).rglob("*.py")):
        rel = str(path.relative_to(SRC / package))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != package and top in PACKAGES + INTERFACES:
                    found.setdefault(top, set()).add(rel)
    return found


def test_every_imported_package_is_declared() -> None:
    undeclared = []
    for package in PACKAGES:
        deps = declared(package)
        for other, modules in imports(package).items():
            modules = {m for m in modules if (m, other) not in PLUGINS}
            if modules and other not in deps:
                undeclared.append((package, other, sorted(modules)[:3]))
    assert not undeclared, undeclared


def test_the_declared_arrows_form_no_cycle() -> None:
    graph = {p: declared(p) & set(PACKAGES) for p in PACKAGES}
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise AssertionError(f"package dependency cycle: {exc.args[1]}") from None
    assert order.index("habc_common") < order.index("arx_x5_driver") < order.index("habc_policy")
    assert order.index("habc_policy") < order.index("habc_sim") < order.index("habc_learner")
    assert graph["habc_common"] == set()


def test_the_stand_ins_and_the_robot_need_no_learner() -> None:
    """The simulation's stand-ins run without the learner; the driver and the policy without
    the stand-ins (the arbiter's jog uses the backend's kinematics, not the scripted expert)."""
    assert "habc_learner" not in imports("habc_sim")
    for package in ("arx_x5_driver", "habc_policy"):
        assert not {"habc_learner", "habc_sim"} & set(imports(package)), package
    assert set(imports("habc_common")) == set()
