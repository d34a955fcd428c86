"""ros2 launch habc bringup.launch.py [backend:=sim|arx] [policy:=auto|state|vision]
[cameras:=...] [image_size:=N] [task:=...] [operator:=scripted|joystick] [learner:=true|false]
[run_dir:=...]

Builds the nodes of config/graph.yaml — the same description the project launcher
(`habc-launch`) reads — as launch_ros Node actions, and behaves like `habc-launch`:

- every argument is checked first (unknown names, values outside the choices, e.g.
  `task:=nonexistent`) and every executable is looked up before any node starts: a bad
  argument or a missing package (`operator:=joystick` without `joy`) fails the launch with a
  non-zero code and no node running;
- a `required` node that exits takes the whole graph down and the launch returns non-zero
  (`habc-launch` returns 2, `ros2 launch` 1);
- SIGINT stops every node.

What upstream launch does differently and this file cannot change: SIGTERM to the `ros2
launch` process does not forward to the nodes (they are orphaned; use SIGINT, or habc-launch,
which stops every node on either), and launch_ros writes each node's `-p` overrides to a
temporary parameter file in /tmp.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from habc_learner.bringup import load_graph, resolve
from habc_learner.launcher import find_executable


class RequiredNodeExited(RuntimeError):
    """A required node is gone: the launch must stop with a non-zero code."""


def _required_exit(context, name):
    event = getattr(context.locals, "event", None)
    code = getattr(event, "returncode", None)
    if context.is_shutdown:  # stopping anyway (SIGINT, or another node's exit)
        return None
    # Raising makes launch log it, shut every node down and return 1.
    raise RequiredNodeExited(f"required node {name} exited with code {code}: stopping the graph")


def _nodes(context, graph):
    given = {name: LaunchConfiguration(name).perform(context) for name in graph.arguments}
    unknown = sorted(set(context.launch_configurations) - set(graph.arguments))
    if unknown:
        raise ValueError(
            f"unknown launch argument(s) {unknown}; arguments: {sorted(graph.arguments)}"
        )
    specs = resolve(graph, given)  # values outside the choices raise here
    for spec in specs:  # every executable before any node starts
        find_executable(spec)
    return [
        Node(
            package=spec.package,
            executable=spec.executable,
            name=spec.name,
            parameters=[*(str(p) for p in spec.parameter_files), dict(spec.overrides)],
            remappings=list(spec.remappings),
            output="screen",
            on_exit=[OpaqueFunction(function=_required_exit, args=[spec.name])]
            if spec.required
            else None,
        )
        for spec in specs
    ]


def generate_launch_description():
    graph = load_graph()
    arguments = [
        DeclareLaunchArgument(
            arg.name,
            default_value=arg.default,
            choices=list(arg.choices) or None,
            description=arg.description,
        )
        for arg in graph.arguments.values()
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_nodes, args=[graph])])
