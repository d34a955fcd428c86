"""ros2 launch habc bringup.launch.py [backend:=sim|arx] [policy:=auto|state|vision]
[cameras:=...] [image_size:=N] [task:=...] [operator:=scripted|joystick] [learner:=true|false]
[run_dir:=...]

Builds the nodes of config/graph.yaml — the same description the project launcher
(`habc-launch`) reads — as launch_ros Node actions.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from habc_learner.bringup import load_graph, resolve


def _nodes(context, graph):
    given = {name: LaunchConfiguration(name).perform(context) for name in graph.arguments}
    return [
        Node(
            package=spec.package,
            executable=spec.executable,
            name=spec.name,
            parameters=[*(str(p) for p in spec.parameter_files), dict(spec.overrides)],
            remappings=list(spec.remappings),
            output="screen",
        )
        for spec in resolve(graph, given)
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
