"""uvicorn servers in a thread for tests, started and stopped without uvicorn's fixed waits.

uvicorn's `Server` looks at `should_exit` every 0.1 s (`main_loop`) and, on shutdown, sleeps
0.1 s after asking open connections to close before it waits for them. A test server stops
once per test or module, so those waits (~0.15-0.2 s a stop here) add up over the suite. This
`Server` wakes its main loop when `stop()` is called and polls the connections' closing every
5 ms; the shutdown is otherwise uvicorn 0.55's `Server.shutdown` (connections shut down, tasks
awaited within `timeout_graceful_shutdown`, then the application's lifespan shutdown).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import uvicorn

POLL = 0.005


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            try:
                await asyncio.wait_for(self._wake.wait(), 0.1)
            except TimeoutError:
                pass

    def stop(self) -> None:
        """Ask the server to exit (from any thread) and wake its main loop at once."""
        self.should_exit = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop closed in between: nothing left to wake
                pass

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        # uvicorn sleeps 0.1 s here; idle keep-alive connections close within a few polls
        deadline = time.monotonic() + 0.1
        while self.server_state.connections and time.monotonic() < deadline:
            await asyncio.sleep(POLL)
        try:
            async with asyncio.timeout(self.config.timeout_graceful_shutdown):
                await self._wait_tasks_to_complete()
        except TimeoutError:
            for t in self.server_state.tasks:
                t.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
        if not self.force_exit:
            await self.lifespan.shutdown()


def run_in_thread(app: Any, port: int, **config: Any) -> tuple[Server, threading.Thread]:
    """`app` served on 127.0.0.1:`port` in a daemon thread; returns once it accepts connections."""
    config.setdefault("log_level", "warning")
    config.setdefault("access_log", False)
    server = Server(uvicorn.Config(app, host="127.0.0.1", port=port, **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.005)
    return server, thread
