"""A websocket policy server speaking openpi's protocol (see :mod:`openpi_protocol`).

Transport only: it knows an :class:`InferencePolicy` (``metadata`` + ``infer(obs) -> dict``)
and nothing about models. It runs on ``websockets``' threaded server: one thread per client,
inference serialized by a lock (one model, one request at a time). Per connection:

1. send the metadata (one binary frame);
2. for each binary frame: decode it, call ``infer``, add ``server_timing`` ``{"infer_ms"}``,
   send the answer;
3. on any error: send the traceback as a text frame and close with 1011 (internal error), as
   openpi's server does; the server itself keeps serving other and later clients.

``GET /healthz`` answers 200. The server binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import http
import logging
import threading
import time
import traceback
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.sync.server import Request, Response, Server, ServerConnection, serve

from habc_bridge.core import msgpack_numpy

LOCALHOST = "127.0.0.1"
DEFAULT_PORT = 8000
log = logging.getLogger(__name__)


class InferencePolicy(Protocol):
    """What the server serves: openpi's ``BasePolicy`` plus its metadata."""

    @property
    def metadata(self) -> dict[str, Any]: ...

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]: ...


def _health_check(connection: ServerConnection, request: Request) -> Response | None:
    if request.path == "/healthz":
        return connection.respond(http.HTTPStatus.OK, "OK\n")
    return None


class PolicyWebsocketServer:
    """Serve ``policy`` on ``ws://host:port``; ``port=0`` lets the OS choose (see :attr:`port`)."""

    def __init__(
        self,
        policy: InferencePolicy,
        host: str = LOCALHOST,
        port: int = DEFAULT_PORT,
        api_key: str | None = None,
    ) -> None:
        self.policy = policy
        self._api_key = api_key
        self._infer_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.requests_served = 0
        self._server: Server = serve(
            self._handler,
            host,
            port,
            compression=None,
            max_size=None,
            process_request=self._process_request,
        )
        self.host, self.port = self._server.socket.getsockname()[:2]

    @property
    def uri(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def describe(self) -> str:
        """One line for the start-up log: where it listens and who can reach it."""
        reach = (
            "localhost only; pass --host 0.0.0.0 to expose it"
            if self.host in (LOCALHOST, "localhost", "::1")
            else "reachable from other machines"
        )
        return f"serving on {self.uri} ({reach})"

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        health = _health_check(connection, request)
        if health is not None:
            return health
        key = self._api_key
        if key is not None and request.headers.get("Authorization") != f"Api-Key {key}":
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "bad or missing api key\n")
        return None

    def _handler(self, ws: ServerConnection) -> None:
        try:  # read once: the socket may be gone by the time we log its closing
            peer = ws.remote_address
        except OSError:
            peer = "?"
        log.info("connection from %s opened", peer)
        ws.send(msgpack_numpy.packb(self.policy.metadata))
        while True:
            try:
                frame = ws.recv()
            except ConnectionClosed:
                log.info("connection from %s closed", peer)
                return
            try:
                if isinstance(frame, str):
                    raise msgpack_numpy.WireFormatError("observations travel as binary frames")
                obs = msgpack_numpy.unpackb(frame)
                with self._infer_lock:
                    t0 = time.monotonic()
                    action = dict(self.policy.infer(obs))
                    infer_ms = (time.monotonic() - t0) * 1000.0
                action["server_timing"] = {"infer_ms": infer_ms}
                ws.send(msgpack_numpy.packb(action))
                self.requests_served += 1
            except ConnectionClosed:
                return
            except Exception:
                error = traceback.format_exc()
                log.warning("request from %s failed:\n%s", peer, error)
                try:
                    ws.send(error)
                    ws.close(CloseCode.INTERNAL_ERROR, "internal server error; traceback sent")
                except ConnectionClosed:
                    pass
                return

    def serve_forever(self) -> None:
        """Block serving until :meth:`shutdown` (or Ctrl-C in the caller)."""
        self._server.serve_forever()

    def run(self) -> int:
        """A command's main loop: serve until Ctrl-C, then shut down; exit status 0."""
        try:
            self.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self.shutdown()
        return 0

    def start(self) -> PolicyWebsocketServer:
        """Serve from a daemon thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="ws-server", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop accepting, close every connection, join the serving thread."""
        self._server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def __enter__(self) -> PolicyWebsocketServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
