"""One graph description: the launch file and the project launcher build the same nodes."""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any

import pytest

from habc_learner.bringup import condition_holds, load_graph, resolve, resolve_arguments
from tests.conftest import REPO_ROOT

CONFIG = REPO_ROOT / "config"


def names(given: dict[str, str]) -> list[str]:
    return [s.name for s in resolve(load_graph(CONFIG), given)]


def test_default_sim_graph() -> None:
    assert names({}) == [
        "arx_x5_driver",
        "policy_server",
        "intervention_arbiter",
        "scripted_operator",
        "episode_recorder",
        "learner",
    ]
    given = {"run_dir": "/data/run7", "policy_checkpoint": "/data/run7/learner/checkpoints"}
    specs = {s.name: s for s in resolve(load_graph(CONFIG), given)}
    assert specs["episode_recorder"].overrides["bag_dir"] == "/data/run7/bags/rollouts"
    assert specs["learner"].overrides["bag_dirs"] == ["/data/run7/bags"]
    assert specs["policy_server"].overrides["checkpoint"] == "/data/run7/learner/checkpoints"
    assert specs["arx_x5_driver"].required and not specs["learner"].required
    args = specs["learner"].ros_args()
    assert args[:3] == ["--ros-args", "-r", "__node:=learner"]
    assert 'bag_dirs:=["/data/run7/bags"]' in args


def test_override_values_survive_the_command_line() -> None:
    import rclpy
    from rclpy.context import Context

    from habc_learner.bringup import NodeSpec

    overrides = {
        "empty": "",
        "word": "true",
        "num": "1.5",
        "path": "/a b/c",
        "list": ["x", "y"],
        "flag": False,
        "rate": 2.0,
    }
    args = NodeSpec("probe", "pkg", "exe", (), overrides).ros_args()
    context = Context()
    rclpy.init(args=["probe", *args], context=context)
    try:
        node = rclpy.create_node("probe", context=context)
        got = {k: node.declare_parameter(k, v).value for k, v in overrides.items()}
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
    assert got == overrides


def test_arguments_select_nodes() -> None:
    assert "joy" in names({"operator": "joystick"})
    assert "scripted_operator" not in names({"operator": "joystick"})
    assert "scripted_operator" not in names({"backend": "arx"})  # never on the real robot
    assert "learner" not in names({"learner": "false"})
    with pytest.raises(ValueError, match="not one of"):
        names({"backend": "gazebo"})
    with pytest.raises(ValueError, match="unknown launch argument"):
        names({"bakend": "sim"})
    with pytest.raises(ValueError, match="not 'name == value'"):
        condition_holds("backend = sim", resolve_arguments(load_graph(CONFIG), {}))


def test_every_parameter_file_names_its_node() -> None:
    import yaml

    for spec in resolve(load_graph(CONFIG), {}):
        for path in spec.parameter_files:
            doc = yaml.safe_load(path.read_text())
            assert spec.name in doc and "ros__parameters" in doc[spec.name], path


# -- the launch file, run against stand-ins for launch / launch_ros ---------------------------
class _Recorded:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


def _fake_launch_modules(calls: list[_Recorded]) -> dict[str, types.ModuleType]:
    """Minimal launch / launch_ros with the real constructors' keyword names."""

    class LaunchDescription(_Recorded):
        pass

    class DeclareLaunchArgument(_Recorded):
        def __init__(
            self,
            name: str,
            *,
            default_value: Any = None,
            description: str = "",
            choices: Any = None,
            **kw: Any,
        ) -> None:
            super().__init__(
                name, default_value=default_value, description=description, choices=choices, **kw
            )

    class OpaqueFunction(_Recorded):
        def __init__(self, *, function: Any, args: Any = None, kwargs: Any = None) -> None:
            super().__init__(function=function, args=args or [], kwargs=kwargs or {})

    class LaunchConfiguration:
        def __init__(self, variable_name: str, *, default: Any = None) -> None:
            self.name = variable_name

        def perform(self, context: Any) -> str:
            return context.launch_configurations[self.name]

    class Node(_Recorded):
        def __init__(
            self,
            *,
            executable: str,
            package: str | None = None,
            name: str | None = None,
            parameters: Any = None,
            remappings: Any = None,
            output: str = "log",
            **kw: Any,
        ) -> None:
            super().__init__(
                executable=executable,
                package=package,
                name=name,
                parameters=parameters,
                remappings=remappings,
                output=output,
                **kw,
            )
            calls.append(self)

    launch = types.ModuleType("launch")
    launch.LaunchDescription = LaunchDescription
    actions = types.ModuleType("launch.actions")
    actions.DeclareLaunchArgument, actions.OpaqueFunction = DeclareLaunchArgument, OpaqueFunction
    subs = types.ModuleType("launch.substitutions")
    subs.LaunchConfiguration = LaunchConfiguration
    ros = types.ModuleType("launch_ros")
    ros_actions = types.ModuleType("launch_ros.actions")
    ros_actions.Node = Node
    return {
        "launch": launch,
        "launch.actions": actions,
        "launch.substitutions": subs,
        "launch_ros": ros,
        "launch_ros.actions": ros_actions,
    }


@pytest.mark.parametrize(
    "given",
    [{}, {"operator": "joystick", "learner": "false"}, {"backend": "arx", "run_dir": "/r"}],
)
def test_launch_file_and_launcher_describe_the_same_graph(
    given: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[_Recorded] = []
    for name, module in _fake_launch_modules(calls).items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setenv("AMENT_PREFIX_PATH", "")  # read the repository's config/
    spec = importlib.util.spec_from_file_location(
        "bringup_launch", REPO_ROOT / "launch" / "bringup.launch.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "find_executable", lambda spec: spec.executable)  # no install
    description = module.generate_launch_description()
    *declared, opaque = description.args[0]
    graph = load_graph(CONFIG)
    assert [d.args[0] for d in declared] == list(graph.arguments)
    assert {d.args[0]: d.kwargs["default_value"] for d in declared} == {
        a.name: a.default for a in graph.arguments.values()
    }
    values = {a.name: a.default for a in graph.arguments.values()} | given
    context = types.SimpleNamespace(launch_configurations=values)
    opaque.kwargs["function"](context, *opaque.kwargs["args"])
    from_launch = [
        (
            n.kwargs["name"],
            n.kwargs["package"],
            n.kwargs["executable"],
            n.kwargs["parameters"],
            n.kwargs["remappings"],
        )
        for n in calls
    ]
    from_launcher = [
        (
            s.name,
            s.package,
            s.executable,
            [*(str(p) for p in s.parameter_files), dict(s.overrides)],
            list(s.remappings),
        )
        for s in resolve(graph, given)
    ]
    assert from_launch == from_launcher
    assert len(from_launch) >= 4


def test_sim_task_must_be_a_sim_task_but_a_real_cell_names_its_own() -> None:
    graph = load_graph(CONFIG)
    with pytest.raises(ValueError, match=r"task:='nonexistent' is not one of .*when backend"):
        resolve(graph, {"task": "nonexistent"})
    assert resolve(graph, {"task": "insertion"})
    driver = next(s for s in resolve(graph, {"backend": "arx", "task": "fold_towel"}))
    assert [p.name for p in driver.parameter_files] == ["driver.yaml", "driver_arx.yaml"]


def test_policy_vision_wires_cameras_and_drops_env_state() -> None:
    graph = load_graph(CONFIG)
    assert resolve_arguments(graph, {})["policy"] == "state"  # sim default
    assert resolve_arguments(graph, {"backend": "arx"})["policy"] == "vision"  # robot default
    assert resolve_arguments(graph, {"backend": "arx", "policy": "state"})["policy"] == "state"
    given = {"policy": "vision", "cameras": "top,left_wrist", "image_size": "32"}
    specs = {s.name: s for s in resolve(graph, given)}
    driver = specs["arx_x5_driver"].overrides
    assert driver["cameras"] == "top,left_wrist" and driver["publish_env_state"] is False
    assert "publish_env_state:=false" in specs["arx_x5_driver"].ros_args()
    assert specs["episode_recorder"].overrides["cameras"] == "top,left_wrist"
    learner = specs["learner"].overrides
    assert learner["policy.cameras"] == "top,left_wrist" and learner["policy.image_size"] == "32"
    assert specs["policy_server"].overrides["backend"] == "sim"
    # The state graph leaves the parameter files' values alone.
    state = {s.name: s for s in resolve(graph, {})}
    assert "publish_env_state" not in state["arx_x5_driver"].overrides
    assert "policy.cameras" not in state["learner"].overrides
    arx = {s.name: s for s in resolve(graph, {"backend": "arx"})}
    assert arx["policy_server"].overrides["backend"] == "arx"
    assert arx["arx_x5_driver"].overrides["publish_env_state"] is False
    with pytest.raises(ValueError, match="policy"):
        resolve_arguments(graph, {"policy": "blind"})
