"""Graceful drain of `stratus serve` on SIGTERM (a rolling replacement, a scale-in, `systemctl stop`).

In order, once the signal arrives (`DrainingServer.shutdown`; uvicorn notices it within 0.1 s):

1. the data plane reports not ready (`plane.draining`): `/v2/health/ready` answers 503 and gRPC
   ServerReady false to whoever still asks on a connection that is open;
2. both ports stop accepting connections: the HTTP listener is closed; the gRPC server is stopped
   with a grace of `--drain-timeout` (grpc-core sends GOAWAY, refuses new calls with UNAVAILABLE,
   which stock clients retry on another connection, and lets calls in progress finish);
3. every open HTTP connection is told to finish (`runtime.serve.front.FrontProtocol.shutdown`):
   a request in progress, a streamed generation included, runs to its end and its response says
   `Connection: close`; a request that starts on a kept-alive connection within
   DRAIN_IDLE_SECONDS of the signal is served the same way (a client may have sent it just before
   it learned of the drain); a connection idle after that is closed;
4. when the last connection and request are done, or `--drain-timeout` seconds after the signal,
   whichever comes first, the requests still running are cancelled (logged with their count; a
   generation then stops at its next token), the application shuts down (model poller, worker
   threads, the access log flushed) and `stratus serve` exits 0.

`--generate-timeout` bounds each generation on its own; keep it at or below `--drain-timeout` so a
drain never cuts one short. The load balancer's deregistration delay should exceed
`--drain-timeout` (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import logging
import time

import uvicorn

from runtime.serve.dataplane import DataPlane

log = logging.getLogger("stratus.serve")


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the drain above in place of its own shutdown.

    Args:
        config: the uvicorn config (its app the HTTP adapter of `plane`).
        plane: the data plane both ports share (its readiness turns false on the signal).
        drain_timeout: seconds in-flight requests get before they are cancelled.
        grpc_server: the gRPC port's `grpc.aio.Server`, drained alongside (None: no gRPC port).
    """

    def __init__(self, config: uvicorn.Config, *, plane: DataPlane, drain_timeout: float, grpc_server=None):
        super().__init__(config)
        self.plane = plane
        self.drain_timeout = drain_timeout
        self.grpc_server = grpc_server

    async def shutdown(self, sockets=None) -> None:
        started = time.monotonic()
        state = self.server_state
        self.plane.draining = True
        log.info(
            "draining: not ready, no new connections; %d open HTTP connections, %d HTTP requests in flight, "
            "up to %g s (--drain-timeout)",
            len(state.connections),
            len(state.tasks),
            self.drain_timeout,
        )
        for server in self.servers:
            server.close()
        grpc_stop = None
        if self.grpc_server is not None:
            grpc_stop = asyncio.ensure_future(self.grpc_server.stop(grace=self.drain_timeout))
        for connection in list(state.connections):
            connection.shutdown()
        cancelled = await self._wait(started + self.drain_timeout)
        if grpc_stop is not None:
            await grpc_stop  # returns by the same deadline: grpc-core cancels what is left at its grace
        if not self.force_exit:
            await self.lifespan.shutdown()
        log.info(
            "drained in %.1f s (%d HTTP requests cancelled at the deadline)", time.monotonic() - started, cancelled
        )

    async def _wait(self, deadline: float) -> int:
        """Wait until no connection and no request is left, or until `deadline`; then cancel what
        still runs and return how many requests that was."""
        state = self.server_state
        while (state.connections or state.tasks) and not self.force_exit and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        tasks = list(state.tasks)
        if tasks:
            log.error("drain deadline: cancelling %d HTTP requests still in flight", len(tasks))
            for task in tasks:
                task.cancel(msg="stratus serve: --drain-timeout reached")
            await asyncio.wait(tasks, timeout=1.0)
        for connection in list(state.connections):
            connection.transport.close()
        return len(tasks)
