"""The policy server's ``remote`` backend: a π0-class policy served over openpi's protocol.

:class:`RemotePolicyClient` is the transport: connect, read the metadata, send an observation,
receive a chunk. :class:`RemotePolicy` dresses it as the policy server's local policy
(``config``, ``checkpoint_id``, ``learner_step``, ``sample_actions``), so the node's inference
loop, the arbiter, the recorder and the learner stay unchanged.

Safety: every failure ends in a hold, never a stale chunk.

- A request that gets no answer within ``request_timeout_s`` raises :class:`RemoteTimeout`
  and **drops the connection**: its late answer can never be read as the answer to a later
  request (openpi's protocol has no request ids; strict request/answer alternation on a fresh
  connection is what pairs them).
- A dead server, a refused connection, a server error (a text frame), a malformed answer or a
  metadata mismatch raise :class:`RemotePolicyError` subclasses; the node publishes nothing,
  and the arbiter holds once the current chunk runs out.
- Reconnects are attempted on the next request, no sooner than an exponential back-off
  (``retry_initial_s`` doubling up to ``retry_max_s``) after the last failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

from habc_bridge.core import msgpack_numpy
from habc_bridge.core import openpi_protocol as proto

REMOTE_SCHEMES = ("ws://", "wss://")


class RemotePolicyError(RuntimeError):
    """No chunk from the remote policy this time (the caller holds)."""


class RemoteUnavailable(RemotePolicyError):
    """Not connected, and connecting failed or waits out its back-off."""


class RemoteTimeout(RemotePolicyError):
    """The server did not answer in time; the connection was dropped."""


class RemoteServerError(RemotePolicyError):
    """The server answered with an error (openpi sends its traceback as a text frame)."""


class RemoteIncompatible(RemotePolicyError):
    """The server's metadata or answer does not fit the configured policy."""


def is_remote(checkpoint: str) -> bool:
    """Whether a ``checkpoint`` parameter names a remote policy (``ws://`` / ``wss://``)."""
    return checkpoint.startswith(REMOTE_SCHEMES)


class RemotePolicyClient:
    """One websocket connection to an openpi-protocol server, re-opened after failures."""

    def __init__(
        self,
        uri: str,
        *,
        connect_timeout_s: float = 2.0,
        request_timeout_s: float = 1.0,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
        api_key: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not is_remote(uri):
            raise ValueError(f"remote policy URI must start with {REMOTE_SCHEMES}, got {uri!r}")
        for name, value in (
            ("connect_timeout_s", connect_timeout_s),
            ("request_timeout_s", request_timeout_s),
            ("retry_initial_s", retry_initial_s),
            ("retry_max_s", retry_max_s),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.uri = uri
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self._headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        self._clock = clock
        self._ws: ClientConnection | None = None
        self._metadata: dict[str, Any] = {}
        self._policy_id = ""
        self._retry_delay = retry_initial_s
        self._next_attempt = float("-inf")
        self.connects = 0
        self.failures = 0
        #: Called with the metadata of every new connection; raising rejects the server.
        self.on_metadata: Callable[[dict[str, Any]], None] | None = None

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def metadata(self) -> dict[str, Any]:
        """Metadata of the current (or last) connection."""
        return dict(self._metadata)

    @property
    def policy_id(self) -> str:
        """:func:`~habc_bridge.core.openpi_protocol.remote_policy_id` of the current server."""
        return self._policy_id

    def fail(self, exc: RemotePolicyError) -> RemotePolicyError:
        """Drop the connection, schedule the next attempt, return ``exc`` for raising."""
        self.close()
        self.failures += 1
        self._next_attempt = self._clock() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2.0, self.retry_max_s)
        return exc

    def ensure_connected(self) -> None:
        """Connect (and read the metadata) unless connected; raises :class:`RemotePolicyError`."""
        if self._ws is not None:
            return
        wait = self._next_attempt - self._clock()
        if wait > 0:
            raise RemoteUnavailable(f"{self.uri}: not connected; next attempt in {wait:.2f} s")
        try:
            ws = connect(
                self.uri,
                compression=None,
                max_size=None,
                open_timeout=self.connect_timeout_s,
                additional_headers=self._headers,
                legacy=True,  # websockets 17: a plain connection, closed by close()
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            raise self.fail(
                RemoteUnavailable(f"{self.uri}: cannot connect: {type(exc).__name__}: {exc}")
            ) from exc
        self._ws = ws
        try:
            first = ws.recv(timeout=self.connect_timeout_s)
        except (TimeoutError, ConnectionClosed) as exc:
            raise self.fail(
                RemoteUnavailable(f"{self.uri}: no metadata after connecting: {exc}")
            ) from exc
        try:
            if isinstance(first, str):
                raise RemoteServerError(f"{self.uri}: server error instead of metadata: {first}")
            metadata = msgpack_numpy.unpackb(first)
            if not isinstance(metadata, dict):
                raise RemoteIncompatible(f"{self.uri}: metadata is not a map: {metadata!r}")
            if self.on_metadata is not None:
                self.on_metadata(metadata)
        except RemotePolicyError as exc:
            raise self.fail(exc) from exc
        except (ValueError, proto.ProtocolError) as exc:
            raise self.fail(RemoteIncompatible(f"{self.uri}: {exc}")) from exc
        self._metadata = metadata
        self._policy_id = proto.remote_policy_id(metadata, self.uri)
        self._retry_delay = self.retry_initial_s
        self.connects += 1

    def infer(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """Send one observation and return the server's answer map (not yet validated)."""
        self.ensure_connected()
        ws = self._ws
        assert ws is not None
        try:
            ws.send(msgpack_numpy.packb(dict(obs)))
            answer = ws.recv(timeout=self.request_timeout_s)
        except TimeoutError as exc:
            raise self.fail(
                RemoteTimeout(
                    f"{self.uri}: no answer within {self.request_timeout_s:.3f} s; "
                    "connection dropped so a late answer is never used"
                )
            ) from exc
        except (ConnectionClosed, OSError) as exc:
            raise self.fail(
                RemoteUnavailable(f"{self.uri}: connection lost: {type(exc).__name__}: {exc}")
            ) from exc
        if isinstance(answer, str):
            raise self.fail(RemoteServerError(f"{self.uri}: server error:\n{answer}"))
        try:
            response = msgpack_numpy.unpackb(answer)
        except msgpack_numpy.WireFormatError as exc:
            raise self.fail(RemoteIncompatible(f"{self.uri}: {exc}")) from exc
        if not isinstance(response, dict):
            raise self.fail(RemoteIncompatible(f"{self.uri}: answer is not a map"))
        return response

    def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.close()

    def __enter__(self) -> RemotePolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class RemotePolicyConfig:
    """What the policy server needs to know of a remote policy (the parameters ``remote.*``).

    Attributes mirror :class:`~habc_policy.core.configuration_flow.FlowPolicyConfig`'s fields the
    server reads: ``proprio_dim`` (state sent), ``camera_names`` (habc names, sent under
    ``camera_map``'s openpi names), ``image_size`` (h, w) sent, ``horizon`` (the declared chunk
    length; answers must hold at least ``min_rows`` rows), ``action_dim``.
    """

    proprio_dim: int = 14
    action_dim: int = 14
    horizon: int = 50
    camera_names: tuple[str, ...] = ("top", "left_wrist", "right_wrist")
    image_size: tuple[int, int] = (224, 224)
    camera_map: Mapping[str, str] = field(default_factory=lambda: dict(proto.DEFAULT_CAMERA_MAP))
    image_layout: str = "chw"
    min_rows: int = 1

    def __post_init__(self) -> None:
        for name in ("proprio_dim", "action_dim", "horizon", "min_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"remote {name} must be >= 1, got {getattr(self, name)}")
        if self.image_layout not in proto.IMAGE_LAYOUTS:
            raise ValueError(f"image_layout must be one of {proto.IMAGE_LAYOUTS}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size must be (h, w), got {self.image_size}")
        object.__setattr__(self, "camera_names", tuple(self.camera_names))
        object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))

    def check_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Refuse a server whose metadata declares dims that differ from this config."""
        for key, mine in (("action_dim", self.action_dim), ("state_dim", self.proprio_dim)):
            if key in metadata and proto.metadata_int(metadata, key, mine) != mine:
                raise RemoteIncompatible(
                    f"server declares {key}={metadata[key]}, this policy server sends/expects "
                    f"{mine} (set remote.{'proprio_dim' if key == 'state_dim' else key})"
                )
        if "action_horizon" in metadata:
            horizon = proto.metadata_int(metadata, "action_horizon", self.min_rows)
            if horizon < self.min_rows:
                raise RemoteIncompatible(
                    f"server's action_horizon {horizon} < the {self.min_rows} rows executed"
                )
        cams = metadata.get("cameras")
        if isinstance(cams, (list, tuple)):
            wanted = {proto.openpi_camera(c, self.camera_map) for c in self.camera_names}
            if missing := sorted(set(map(str, cams)) - wanted):
                raise RemoteIncompatible(
                    f"server wants cameras {missing} that are not sent (sent: {sorted(wanted)})"
                )


class RemotePolicy:
    """A remote policy in the shape of the policy server's :class:`LoadedPolicy`."""

    def __init__(self, client: RemotePolicyClient, config: RemotePolicyConfig) -> None:
        self.client = client
        self.config = config
        client.on_metadata = config.check_metadata

    @property
    def checkpoint_id(self) -> str:
        """The remote policy's id (:func:`openpi_protocol.remote_policy_id`), or the URI
        before the first connection."""
        return self.client.policy_id or self.client.uri

    @property
    def learner_step(self) -> int:
        """The server's ``learner_step`` metadata (habc servers), else -1 (unknown)."""
        value = self.client.metadata.get("learner_step", -1)
        return int(value) if isinstance(value, (int, np.integer)) else -1

    def connect(self) -> None:
        """Try to connect now (raises :class:`RemotePolicyError`; later requests retry)."""
        self.client.ensure_connected()

    def sample_actions(
        self,
        proprio: np.ndarray,
        prompt: str,
        images: Mapping[str, np.ndarray] | None = None,
        seed: int | None = None,
    ) -> np.ndarray:
        """One chunk ``[H, action_dim]`` float32 from the remote policy, or an exception.

        ``seed`` travels as ``habc_seed`` (honoured by habc's own server, ignored by openpi's).
        """
        cfg = self.config
        obs = proto.build_observation(
            proprio, images, prompt, cfg.camera_map, cfg.image_layout, seed=seed
        )
        response = self.client.infer(obs)
        try:
            return proto.parse_actions(response, cfg.action_dim, cfg.min_rows)
        except proto.ProtocolError as exc:
            raise self.client.fail(RemoteIncompatible(f"{self.client.uri}: {exc}")) from exc

    def close(self) -> None:
        self.client.close()


#: Declares one parameter and returns its value: ``(name, default, description) -> value``.
ParamGetter = Callable[[str, Any, str], Any]


def remote_policy_from_params(get: ParamGetter, uri: str, min_rows: int) -> RemotePolicy:
    """Build the remote backend from the policy server's ``remote.*`` parameters.

    ``uri`` is the server's ``checkpoint`` parameter (``ws://HOST:PORT``); ``min_rows`` the rows
    of each chunk the arbiter executes (a shorter answer is refused).
    """
    cameras = str(get("remote.cameras", "top,left_wrist,right_wrist", "habc cameras sent"))
    size = [int(s) for s in get("remote.image_size", [224, 224], "(h, w) of the images sent")]
    config = RemotePolicyConfig(
        proprio_dim=int(get("remote.proprio_dim", 14, "state dims sent")),
        action_dim=int(get("remote.action_dim", 14, "action dims expected back")),
        horizon=int(get("remote.horizon", 50, "declared chunk length of the remote policy")),
        camera_names=tuple(c.strip() for c in cameras.split(",") if c.strip()),
        image_size=(size[0], size[1]) if len(size) == 2 else (0, 0),
        camera_map=proto.parse_camera_map(
            str(get("remote.camera_map", "", "habc:openpi camera names ('' = the default map)"))
        ),
        image_layout=str(get("remote.image_layout", "chw", "chw (openpi ALOHA) or hwc")),
        min_rows=min_rows,
    )
    api_key = str(get("remote.api_key", "", "sent as 'Authorization: Api-Key KEY' ('' none)"))
    client = RemotePolicyClient(
        uri,
        connect_timeout_s=float(get("remote.connect_timeout_s", 2.0, "connect + metadata (s)")),
        request_timeout_s=float(
            get("remote.request_timeout_s", 1.0, "no answer by then: drop, reconnect, hold (s)")
        ),
        retry_initial_s=float(get("remote.retry_initial_s", 0.2, "first reconnect back-off (s)")),
        retry_max_s=float(get("remote.retry_max_s", 5.0, "longest reconnect back-off (s)")),
        api_key=api_key or None,
    )
    return RemotePolicy(client, config)
