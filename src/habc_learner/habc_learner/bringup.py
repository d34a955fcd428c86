"""The bringup graph (``config/graph.yaml``): parsing, argument resolution, command lines.

One description of nodes, parameter files, overrides and conditions, read by both
``launch/bringup.launch.py`` (launch_ros) and the project launcher ``habc-launch``
(:mod:`habc_learner.launcher`). Pure: no rclpy, no launch.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

GRAPH_FILE = "graph.yaml"
_SUBST = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Argument:
    """A launch argument. ``choices_when``: ``(condition, choices)`` pairs, choices that apply
    only while the condition holds (``task`` is one of the sim's tasks when ``backend == sim``;
    a real cell names its own tasks). ``auto`` resolves the value ``"auto"`` from another
    argument: ``{"from": "backend", "arx": "vision", "sim": "state"}``."""

    name: str
    default: str
    choices: tuple[str, ...] = ()
    description: str = ""
    choices_when: tuple[tuple[str, tuple[str, ...]], ...] = ()
    auto: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeSpec:
    """One node of the resolved graph."""

    name: str
    package: str
    executable: str
    parameter_files: tuple[Path, ...]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    remappings: tuple[tuple[str, str], ...] = ()
    required: bool = False

    def ros_args(self) -> list[str]:
        """``--ros-args`` of this node's command line (name, files, overrides, remappings)."""
        args = ["--ros-args", "-r", f"__node:={self.name}"]
        for path in self.parameter_files:
            args += ["--params-file", str(path)]
        for key, value in self.overrides.items():
            args += ["-p", f"{key}:={_param_text(value)}"]
        for src, dst in self.remappings:
            args += ["-r", f"{src}:={dst}"]
        return args


@dataclass(frozen=True)
class Graph:
    arguments: Mapping[str, Argument]
    nodes: tuple[Mapping[str, Any], ...]
    config_dir: Path


def _param_text(value: Any) -> str:
    """A parameter value as ``-p name:=value`` wants it (YAML), strings kept strings.

    ``""`` becomes ``''`` (rcl rejects an empty value) and strings YAML would read as another
    type (``"true"``, ``"1.5"``, ``"null"``) are quoted.
    """
    if isinstance(value, (list, tuple)):  # strings double-quoted: YAML 1.1 reads y/no as bools
        items = (json.dumps(v) if isinstance(v, str) else _param_text(v) for v in value)
        return "[" + ", ".join(items) + "]"
    if isinstance(value, str):
        try:
            plain = value != "" and yaml.safe_load(value) == value
        except yaml.YAMLError:
            plain = False
        if plain:
            return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")


def default_config_dir() -> Path:
    """The ``config/`` this code runs with: the installed ``share/habc/config`` of the first
    ``AMENT_PREFIX_PATH`` prefix that has one, else the repository's ``config/``."""
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        candidate = Path(prefix) / "share" / "habc" / "config"
        if prefix and (candidate / GRAPH_FILE).is_file():
            return candidate
    # src/habc_learner/habc_learner/bringup.py -> repository root
    return Path(__file__).resolve().parents[3] / "config"


def load_graph(config_dir: str | Path | None = None) -> Graph:
    """Parse ``graph.yaml`` of ``config_dir``; raises ``ValueError`` naming what is wrong."""
    config_dir = Path(config_dir) if config_dir is not None else default_config_dir()
    path = config_dir / GRAPH_FILE
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or "nodes" not in doc:
        raise ValueError(f"{path}: expected 'arguments' and 'nodes'")
    arguments = {}
    for name, spec in (doc.get("arguments") or {}).items():
        arguments[name] = Argument(
            name=name,
            default=str(spec.get("default", "")),
            choices=tuple(str(c) for c in spec.get("choices", ())),
            description=str(spec.get("description", "")),
            choices_when=tuple(
                (str(cond), tuple(str(c) for c in values))
                for cond, values in (spec.get("choices_when") or {}).items()
            ),
            auto={str(k): str(v) for k, v in (spec.get("auto") or {}).items()},
        )
    for arg in arguments.values():
        if arg.auto and arg.auto.get("from") not in arguments:
            raise ValueError(f"{path}: argument {arg.name!r}: auto.from must name an argument")
    nodes = tuple(doc["nodes"])
    seen = set()
    for node in nodes:
        for key in ("name", "package", "executable"):
            if key not in node:
                raise ValueError(f"{path}: a node lacks '{key}': {node}")
        if node["name"] in seen:
            raise ValueError(f"{path}: node name {node['name']!r} appears twice")
        seen.add(node["name"])
        for file in node.get("parameters", ()):
            for variant in _file_variants(str(file), arguments, path):
                if not (config_dir / variant).is_file():
                    raise ValueError(f"{path}: node {node['name']!r}: no parameter file {variant}")
    return Graph(arguments, nodes, config_dir)


def _file_variants(file: str, arguments: Mapping[str, Argument], path: Path) -> list[str]:
    """Every name a parameter file can take: ``driver_{backend}.yaml`` for each choice of
    ``backend`` (an argument used in a file name must have choices)."""
    variants = [file]
    for name in _SUBST.findall(file):
        arg = arguments.get(name)
        if arg is None or not arg.choices:
            raise ValueError(
                f"{path}: parameter file {file!r} uses {{{name}}}, which is not an argument "
                "with choices"
            )
        variants = [v.replace(f"{{{name}}}", c) for v in variants for c in arg.choices]
    return variants


def resolve_arguments(graph: Graph, given: Mapping[str, str]) -> dict[str, str]:
    """Defaults overlaid with ``given``; unknown names and values outside the choices raise."""
    values = {name: arg.default for name, arg in graph.arguments.items()}
    for name, value in given.items():
        if name not in graph.arguments:
            raise ValueError(f"unknown launch argument {name!r}; arguments: {sorted(values)}")
        choices = graph.arguments[name].choices
        if choices and value not in choices:
            raise ValueError(f"{name}:={value!r} is not one of {list(choices)}")
        values[name] = value
    for name, arg in graph.arguments.items():
        if arg.auto and values[name] == "auto":
            source = values[arg.auto["from"]]
            if source not in arg.auto:
                raise ValueError(f"{name}:=auto has no value for {arg.auto['from']}:={source}")
            values[name] = arg.auto[source]
    for name, arg in graph.arguments.items():
        for condition, choices in arg.choices_when:
            if condition_holds(condition, values) and values[name] not in choices:
                raise ValueError(
                    f"{name}:={values[name]!r} is not one of {list(choices)} (when {condition})"
                )
    return values


def _substitute(value: Any, args: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return _SUBST.sub(lambda m: args[m.group(1)], value)
    if isinstance(value, list):
        return [_substitute(v, args) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, args) for k, v in value.items()}
    return value


def condition_holds(condition: str, args: Mapping[str, str]) -> bool:
    """``"operator == scripted and backend == sim"`` against the argument values."""
    for term in condition.split(" and "):
        left, sep, right = term.partition("==")
        if not sep:
            raise ValueError(f"condition term {term!r} is not 'name == value'")
        name, value = left.strip(), right.strip()
        if name not in args:
            raise ValueError(f"condition names unknown argument {name!r}")
        if args[name] != value:
            return False
    return True


def resolve(graph: Graph, given: Mapping[str, str] | None = None) -> list[NodeSpec]:
    """The nodes to start for the launch arguments ``given``."""
    args = resolve_arguments(graph, given or {})
    specs = []
    for node in graph.nodes:
        if "if" in node and not condition_holds(str(node["if"]), args):
            continue
        overrides = dict(node.get("overrides") or {})
        for case in node.get("when") or ():  # [{if: condition, overrides: {...}}], in order
            if condition_holds(str(case["if"]), args):
                overrides.update(case.get("overrides") or {})
        specs.append(
            NodeSpec(
                name=node["name"],
                package=node["package"],
                executable=node["executable"],
                parameter_files=tuple(
                    graph.config_dir / _substitute(str(f), args) for f in node.get("parameters", ())
                ),
                overrides=_substitute(overrides, args),
                remappings=tuple(
                    (str(k), _substitute(str(v), args))
                    for k, v in (node.get("remappings") or {}).items()
                ),
                required=bool(node.get("required", False)),
            )
        )
    return specs
