"""A TCP proxy for fault tests: forwards to the broker, and `cut()` drops every
connection through it at once, as a broken network would."""
from __future__ import annotations

import asyncio
import ssl
import threading


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, ssl_context: "ssl.SSLContext | None" = None) -> None:
        self.target = (target_host, target_port)
        self.ssl_context = ssl_context  # set: clients speak TLS to the proxy (a TLS listener for the broker)
        self.port = 0
        self.cuts = 0
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.base_events.Server | None = None
        self._refusing = False
        self._silent = False
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> "TcpProxy":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self._silent:  # a black hole: bytes go in, nothing comes out, nobody hangs up
                    continue
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def cut(self) -> None:
        """Drop every open connection (new ones are still accepted)."""
        async def drop() -> None:
            for w in list(self._writers):
                w.transport.abort()
            self._writers.clear()
        asyncio.run_coroutine_threadsafe(drop(), self._loop).result(5)
        self.cuts += 1

    def silence(self, silent: bool) -> None:
        """While silent, open connections stay open but nothing gets through either
        way, and new ones are accepted into the same silence (a network partition)."""
        self._silent = silent

    def refuse(self, refusing: bool) -> None:
        """While refusing, new connections are closed at once (a broker that is down)."""
        self._refusing = refusing

    def stop(self) -> None:
        self.cut()
        async def close() -> None:
            if self._server:
                self._server.close()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class Cutter:
    """Cuts a proxy's connections every `interval` seconds in a background thread."""

    def __init__(self, proxy: TcpProxy, interval: float) -> None:
        self.proxy = proxy
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.proxy.cut()

    def __enter__(self) -> "Cutter":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
