"""What the tests share: waiting for a condition, capturing errors, callreply handlers, servers.

Nothing here is collected as a test. Test modules import from this module (and from
``tests._callreply``), never from one another.

- `eventually` waits for a condition, re-checking it whenever one of the given sources
  reports something (a store's events, a pycrdt document's transactions, an
  `anyio.Event`, a `Notifier`) and, as a bounded fallback, every few milliseconds. It
  fails with an `AssertionError` naming the condition and the timeout.
- `ErrorLog` is an ``on_error`` callback that keeps what it receives.
- `echo`, `answering`, `raising` and `Held` are callreply handlers.
- `read_until` reads a child process's output up to a marker; `RedisServer` is a
  ``redis-server`` child process (the fixtures that start one live in
  ``tests/integration/conftest.py``).
"""

from __future__ import annotations

import inspect
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Final, cast

import anyio
import anyio.lowlevel
from anyio.abc import ByteReceiveStream, TaskStatus

from podshare.callreply import Handler
from podshare.exceptions import ClosedError, PodshareError
from podshare.store import Store

__all__ = [
    "DEFAULT_TIMEOUT",
    "ErrorLog",
    "Held",
    "Notifier",
    "RedisServer",
    "answering",
    "echo",
    "eventually",
    "free_port",
    "raising",
    "read_until",
]

#: How long `eventually` waits unless told otherwise (seconds). Generous: a loaded
#: two-core CI machine must not fail a test that would pass given a moment more.
DEFAULT_TIMEOUT: Final = 10.0
# The fallback re-check interval when no source can wake the waiter: the condition
# depends on state nothing announces (an endpoint's routes, a transport's connections).
_POLL_ALONE: Final = 0.005
# With sources, the poll only catches what they do not report (counters, say).
_POLL_WITH_SOURCES: Final = 0.05
# A store watcher opened by eventually() holds this many events before it is dropped
# (it is drained at once, so only a starved event loop could fill it).
_WATCH_BUFFER: Final = 100_000

#: Something that opens a stream of notifications: ``doc.events`` of a pycrdt ``Doc``,
#: ``lambda: store.watch(key="k")``.
Feed = Callable[[], AbstractAsyncContextManager[AsyncIterator[object]]]


class Notifier:
    """A change signal: `notify` wakes every `eventually` waiting on it.

    For code a test instruments itself (a wrapped ``publish``, a writer's progress): call
    ``notify()`` after each change and pass the notifier as ``wake=[notifier]``.
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = anyio.Event()

    def notify(self) -> None:
        """Wake the current waiters; later waiters wait for the next notification."""
        self._event.set()
        self._event = anyio.Event()

    async def wait(self) -> None:
        """Return at the next `notify`."""
        await self._event.wait()


class _Flag:
    """Set by any source, consumed by the waiting loop (so no notification is lost)."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        # Replaced before the condition is checked again: whatever sets it from now on
        # happened after that check's inputs were read.
        self._event = anyio.Event()


async def eventually(
    condition: Callable[[], bool],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    stores: Iterable[Store[Any]] = (),
    feeds: Iterable[Feed] = (),
    wake: Iterable[anyio.Event | Notifier] = (),
    poll: float | None = None,
    what: str | None = None,
) -> None:
    """Return once ``condition()`` holds; fail if it still does not after ``timeout`` s.

    The condition is checked at once, then again whenever a source reports something:

    - ``stores``: any event of these stores (data changes and membership), through a
      watcher of their own opened before the first check, so nothing is missed;
    - ``feeds``: any item of these streams (``doc.events`` of a pycrdt ``Doc``);
    - ``wake``: an `anyio.Event` being set, a `Notifier` notifying.

    Whatever the sources, it is also re-checked every ``poll`` seconds (5 ms without
    sources, 50 ms with them), for state that nothing announces: a source makes the wait
    end sooner, but no condition needs one to be seen.

    Raises:
        AssertionError: the condition did not hold within ``timeout``; the message
            names ``what`` (default: the condition's source text).
    """
    feeds = [*(_store_feed(store) for store in stores), *feeds]
    wake = list(wake)
    if poll is None:
        poll = _POLL_WITH_SOURCES if feeds or wake else _POLL_ALONE
    with anyio.move_on_after(timeout):
        try:
            async with anyio.create_task_group() as tg:
                flag = _Flag()
                for feed in feeds:
                    await tg.start(_pump, feed, flag)
                for source in wake:
                    await tg.start(_relay, source, flag)
                while not condition():
                    with anyio.move_on_after(poll):
                        await flag.wait()
                tg.cancel_scope.cancel()
        except ExceptionGroup as group:
            # The condition itself raised: show that error, not a task group around it.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        return
    if condition():  # it became true just as the time ran out
        return
    raise AssertionError(
        f"eventually: {what or _describe(condition)} did not hold within {timeout:g} s"
    )


def _store_feed(store: Store[Any]) -> Feed:
    return lambda: store.watch(members=True, buffer=_WATCH_BUFFER)


async def _pump(feed: Feed, flag: _Flag, *, task_status: TaskStatus[None]) -> None:
    started = False
    try:
        while True:
            async with feed() as items:
                if not started:
                    task_status.started()
                    started = True
                async for _ in items:
                    flag.set()
            # The stream ended (a dropped watcher): look again, then open a fresh one.
            flag.set()
            await anyio.lowlevel.checkpoint()
    except ClosedError:
        # The store closed (or was never open): no more events, the poll goes on.
        if not started:
            task_status.started()
        flag.set()


async def _relay(
    source: anyio.Event | Notifier, flag: _Flag, *, task_status: TaskStatus[None]
) -> None:
    # Started with tg.start: waiting before the first check, so no notification is lost.
    task_status.started()
    if isinstance(source, anyio.Event):
        await source.wait()  # set once, set for good: one wake-up is all it can give
        flag.set()
        return
    while True:
        await source.wait()
        flag.set()


def _describe(condition: Callable[[], bool]) -> str:
    """The condition's name, or a lambda's source text."""
    name = getattr(condition, "__qualname__", None) or repr(condition)
    if "<lambda>" not in name:
        return name
    try:
        source = inspect.getsource(condition)
    except (OSError, TypeError):
        return name
    start = source.find("lambda")
    text = " ".join(source[start if start >= 0 else 0 :].split())
    return text if len(text) <= 200 else text[:197] + "..."


# --- errors ----------------------------------------------------------------------------


class ErrorLog:
    """An ``on_error`` callback that keeps every error it is given, in order.

    Example::

        errors = ErrorLog()
        async with Store("app", transport, on_error=errors) as store:
            ...
            await errors.wait_for(3)
        assert all(isinstance(e, DecodeError) for e in errors.errors)
    """

    __slots__ = ("changed", "errors")

    def __init__(self) -> None:
        self.errors: list[PodshareError] = []
        #: Notified after each error (pass it to `eventually` as ``wake=``).
        self.changed = Notifier()

    def __call__(self, error: PodshareError) -> None:
        self.errors.append(error)
        self.changed.notify()

    def __len__(self) -> int:
        return len(self.errors)

    async def wait_for(self, count: int, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Return once at least ``count`` errors were reported."""
        await eventually(
            lambda: len(self.errors) >= count,
            wake=[self.changed],
            timeout=timeout,
            what=f"at least {count} errors reported to on_error",
        )


# --- callreply handlers ----------------------------------------------------------------


async def echo(payload: bytes) -> bytes:
    """Answer ``b"echo:" + payload``."""
    await anyio.lowlevel.checkpoint()
    return b"echo:" + payload


def answering(reply: bytes) -> Handler:
    """A handler that answers ``reply`` whatever it is sent (to tell owners apart)."""

    async def handler(_payload: bytes) -> bytes:
        await anyio.lowlevel.checkpoint()
        return reply

    return handler


def raising(error_type: type[Exception], message: str) -> Handler:
    """A handler that raises ``error_type(message)`` on every call."""

    async def handler(_payload: bytes) -> bytes:
        await anyio.lowlevel.checkpoint()
        raise error_type(message)

    return handler


class Held:
    """A handler that holds every call until `release` (or forever: never released).

    ``started`` is set when the first call arrives; ``cancelled`` when a held call is
    cancelled (the caller gave up, the owner closed).
    """

    __slots__ = ("_released", "cancelled", "reply", "started")

    def __init__(self, reply: bytes = b"released") -> None:
        self.reply = reply
        self.started = anyio.Event()
        self.cancelled = anyio.Event()
        self._released = anyio.Event()

    def release(self) -> None:
        """Let every held call (and every later one) answer ``reply``."""
        self._released.set()

    async def __call__(self, _payload: bytes) -> bytes:
        self.started.set()
        try:
            await self._released.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled.set()
            raise
        return self.reply


# --- processes and servers -------------------------------------------------------------


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def read_until(
    stream: ByteReceiveStream, marker: str, *, timeout: float = DEFAULT_TIMEOUT
) -> str:
    """Read ``stream`` (a child's stdout or stderr) until ``marker`` appears; return the text.

    Raises:
        AssertionError: the stream ended, or ``timeout`` passed, before ``marker``.
    """
    seen = ""
    with anyio.move_on_after(timeout):
        async for chunk in stream:
            seen += chunk.decode(errors="replace")
            if marker in seen:
                return seen
        raise AssertionError(f"the stream ended before {marker!r}; it said:\n{seen}")
    raise AssertionError(f"no {marker!r} within {timeout:g} s; the stream said:\n{seen}")


def _ping(port: int, password: str | None = None) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            if password is None:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
            sock.sendall(f"AUTH {password}\r\nPING\r\n".encode())
            answer = b""
            while answer.count(b"\r\n") < 2:
                chunk = sock.recv(64)
                if not chunk:
                    return False
                answer += chunk
            return answer == b"+OK\r\n+PONG\r\n"
    except OSError:
        return False


class RedisServer:
    """A redis-server child process on a fixed loopback port, which tests can kill and restart.

    ``url`` stays valid across restarts, so clients reconnect to the same address, as they
    would after a real Redis restart or failover.
    """

    def __init__(
        self, binary: str, port: int, workdir: Path, *, password: str | None = None
    ) -> None:
        self.binary = binary
        self.port = port
        self.workdir = workdir
        self.password = password  # the readiness probe authenticates with it
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The running server process (to signal it: SIGSTOP freezes it)."""
        assert self._process is not None, "not running"
        return self._process

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self.running and self._process is not None else None

    def start(self, *extra: str, config: Path | None = None) -> None:
        """Start the server and return once it answers PING (or fail after 10 s).

        ``config`` is a configuration file given before the options (a sentinel needs
        one it can rewrite).
        """
        assert not self.running, "already running"
        self._process = subprocess.Popen(
            [
                self.binary,
                *([str(config)] if config is not None else []),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(self.workdir),
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        # Readiness of a child process: poll its port until it answers, bounded in time.
        while not _ping(self.port, self.password):
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer PING on port {self.port}")
            time.sleep(0.01)

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL), as a crash would, and reap it."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    def restart(self) -> None:
        """Kill the server and start a fresh, empty one on the same port."""
        self.kill()
        self.start()


# -- Redis Sentinel ------------------------------------------------------------------------
# A master, one replica and three sentinels, all on free loopback ports, all with
# passwords (the servers' and the sentinels' differ, so a test shows they are kept apart).

SENTINEL_SERVICE = "mymaster"
MASTER_PASSWORD = "master-secret"  # a throwaway test server's
SENTINEL_PASSWORD = "sentinel-secret"  # likewise


class SentinelGroup:
    """A Sentinel-managed master/replica pair: ``master``, ``replica``, ``sentinels``."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.master = RedisServer(binary, free_port(), workdir / "master", password=MASTER_PASSWORD)
        self.replica = RedisServer(
            binary, free_port(), workdir / "replica", password=MASTER_PASSWORD
        )
        self.sentinels = [
            RedisServer(binary, free_port(), workdir / f"sentinel-{i}", password=SENTINEL_PASSWORD)
            for i in range(3)
        ]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """``[(host, port), ...]`` of the sentinels."""
        return [("127.0.0.1", s.port) for s in self.sentinels]

    @property
    def servers(self) -> list[RedisServer]:
        return [self.master, self.replica, *self.sentinels]

    def start(self) -> None:
        auth = ("--requirepass", MASTER_PASSWORD, "--masterauth", MASTER_PASSWORD)
        for server in self.servers:
            server.workdir.mkdir(parents=True, exist_ok=True)
        self.master.start(*auth)
        self.replica.start(*auth, "--replicaof", "127.0.0.1", str(self.master.port))
        for sentinel in self.sentinels:
            config = sentinel.workdir / "sentinel.conf"
            config.write_text(
                f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {SENTINEL_SERVICE} 500\n"
                f"sentinel failover-timeout {SENTINEL_SERVICE} 4000\n"
                f"sentinel parallel-syncs {SENTINEL_SERVICE} 1\n"
                f"sentinel auth-pass {SENTINEL_SERVICE} {MASTER_PASSWORD}\n"
                f"sentinel sentinel-pass {SENTINEL_PASSWORD}\n"
                f"requirepass {SENTINEL_PASSWORD}\n"
            )
            sentinel.start("--sentinel", config=config)
        self._wait_until_monitored()

    def _wait_until_monitored(self, timeout: float = 30.0) -> None:
        """Poll until every sentinel knows the replica and the two other sentinels.

        Sentinels find each other through hello messages every 2 s; a failover before
        that cannot reach its quorum. Readiness of child processes: polled, bounded.
        """
        import redis

        deadline = time.monotonic() + timeout
        clients = [
            redis.Redis(port=s.port, password=SENTINEL_PASSWORD, socket_timeout=1)
            for s in self.sentinels
        ]
        try:
            while True:
                try:
                    if all(
                        len(cast(list[Any], c.sentinel_slaves(SENTINEL_SERVICE))) == 1
                        and len(cast(list[Any], c.sentinel_sentinels(SENTINEL_SERVICE))) == 2
                        for c in clients
                    ):
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the sentinels did not discover each other in time")
                time.sleep(0.1)
        finally:
            for c in clients:
                c.close()

    def master_address(self) -> tuple[str, int]:
        """The master's address as the first answering sentinel reports it."""
        import redis

        for s in self.sentinels:
            if not s.running:
                continue
            client = redis.Redis(port=s.port, password=SENTINEL_PASSWORD, socket_timeout=1)
            try:
                host, port = cast(
                    tuple[Any, Any], client.sentinel_get_master_addr_by_name(SENTINEL_SERVICE)
                )
                return str(host, "ascii") if isinstance(host, bytes) else host, int(port)
            except redis.RedisError:
                continue
            finally:
                client.close()
        raise RuntimeError("no sentinel answers")

    def stop(self) -> None:
        """Kill every process of the group (by its pid) and reap it."""
        for server in self.servers:
            server.kill()


async def check_echo_skipping(mine: Any, theirs: Any, topic: str = "echo-skip") -> None:
    """Assert what ``mine.subscribe_skipping`` promises (both transports entered, on one
    network or server): it leaves out the messages ``mine`` publishes whose bytes at the
    offset start with the prefix, and nothing else; a plain subscription of the same
    topic in the same process, and ``theirs``, still get every message, in order."""
    prefix, offset = b"\x00me\x07", 4
    own = b"head" + prefix + b"own write"
    other = b"head" + b"\x00yo\x07" + b"another write"
    short = b"hea"  # shorter than offset + prefix: never skipped
    end = b"head-end"
    async with (
        mine.subscribe_skipping(topic, prefix=prefix, offset=offset) as skipping,
        mine.subscribe(topic) as plain,
        theirs.subscribe(topic) as remote,
    ):
        for message in (own, other, short, end):
            await mine.publish(topic, message)

        async def collect(messages: AsyncIterator[bytes]) -> list[bytes]:
            got: list[bytes] = []
            with anyio.fail_after(DEFAULT_TIMEOUT):
                async for message in messages:
                    got.append(message)
                    if message == end:
                        return got
            return got

        assert await collect(skipping) == [other, short, end]
        assert await collect(plain) == [own, other, short, end]
        assert await collect(remote) == [own, other, short, end]
