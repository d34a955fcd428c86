"""Topic and service names of the habc node graph: the one place they are written.

Nodes, the launcher, the episode recorder and the bag reader import them from here, so a
renamed topic cannot leave one side listening where nobody publishes. Names a node takes as a
parameter (e.g. the arbiter's ``teleop_topic``) use these as their defaults; a deployment remaps
or overrides them in ``config/*.yaml``.
"""

from __future__ import annotations

# -- robot state and commands ------------------------------------------------------------------
#: sensor_msgs/JointState: the driver's measured joints (names: the backend's joint names).
JOINT_STATES = "/joint_states"
#: std_msgs/Float32MultiArray: the simulator's privileged object state (sim only).
ENV_STATE = "/habc/env_state"
#: habc_msgs/ExecutedCommand: the arbiter's command of every tick, tagged with its controller.
EXECUTED_COMMAND = "/habc/executed_command"
#: habc_msgs/ActionChunk: the policy server's chunks.
ACTION_CHUNK = "/habc/action_chunk"
#: std_msgs/Header: the policy server's heartbeat (the arbiter holds when it stops).
POLICY_HEARTBEAT = "/habc/policy_heartbeat"
#: std_msgs/Header: a chunk the arbiter dropped on arrival (stamp: the chunk's, frame_id: why,
#: e.g. ``max_jump: right_wrist_rotate by 1.80``);
#: the policy server computes the next one at once instead of at its trigger row.
CHUNK_REFUSED = "/habc/chunk_refused"
#: sensor_msgs/JointState: a teleop device's joint targets (the operator's commands).
TELEOP_COMMAND = "/habc/teleop_command"
#: sensor_msgs/Joy: the operator's pad (deadman, marks).
JOY = "/joy"
#: std_msgs/Bool: the e-stop (latched by the driver until ``~/reset_estop``).
ESTOP = "/estop"
#: diagnostic_msgs/DiagnosticArray: every node's health.
DIAGNOSTICS = "/diagnostics"

# -- episodes ----------------------------------------------------------------------------------
#: habc_msgs/EpisodeEvent: start and end of episodes, with their outcome.
EPISODE_EVENT = "/habc/episode_event"
#: the operator's outcome mark (pad buttons), forwarded by the arbiter.
EPISODE_MARK = "/habc/episode_mark"
#: habc_msgs/srv/StartEpisode, EndEpisode: served by the episode recorder.
START_EPISODE = "/habc/start_episode"
END_EPISODE = "/habc/end_episode"
#: habc_msgs/srv/AnnounceCheckpoint: the learner tells the policy server of a new checkpoint.
ANNOUNCE_CHECKPOINT = "/habc/announce_checkpoint"

# -- the driver's own topics (node name ``arx_x5_driver``) ---------------------------------------
DRIVER_NODE = "arx_x5_driver"
#: habc_msgs/ExecutedCommand: what the driver did with each command (applied, clamped, held).
APPLIED_COMMAND = f"/{DRIVER_NODE}/applied_command"
#: sensor_msgs/JointState: the measured position in the command's own space (hold position).
MEASURED_COMMAND = f"/{DRIVER_NODE}/measured_command"
#: std_msgs/Bool (latched): whether the driver's e-stop is latched.
ESTOP_LATCHED = f"/{DRIVER_NODE}/estop_latched"

# -- strings nodes and bags agree on -------------------------------------------------------------
#: ``applied_command.hold_reason`` of a command that arrived after the episode ended.
HOLD_EPISODE_OVER = "episode_over"


def camera_topic(camera: str, compressed: bool = False) -> str:
    """``/cameras/<camera>/image_raw[/compressed]`` of camera ``camera`` (``top``, …)."""
    if not camera or "/" in camera:
        raise ValueError(f"camera name must be a non-empty name without '/', got {camera!r}")
    base = f"/cameras/{camera}/image_raw"
    return base + "/compressed" if compressed else base
