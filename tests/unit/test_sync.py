"""The blocking API (podshare.sync) over MemoryTransport: threads, watches, errors, closing.

These tests drive the blocking API from plain threads, so they are not ``anyio`` tests;
the ``backend`` fixture runs the background event loop under asyncio and under trio.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from podshare import EventKind
from podshare.exceptions import (
    ClosedError,
    ConfigurationError,
    InvalidValue,
    NoRoute,
    RemoteError,
    StoreNotEmpty,
)
from podshare.sync import SyncStore, open_endpoint, open_store
from podshare.transport import MemoryNetwork, MemoryTransport

TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True)
class Limit:
    per_second: int


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "trio":
        pytest.importorskip("trio", reason="the trio extra is not installed")
    return name


@pytest.fixture
def net() -> MemoryNetwork:
    return MemoryNetwork()


@pytest.fixture
def pair(net: MemoryNetwork, backend: str) -> Iterator[tuple[SyncStore[Limit], SyncStore[Limit]]]:
    with (
        open_store(
            "limits", lambda: MemoryTransport(network=net), type=Limit, backend=backend
        ) as a,
        open_store(
            "limits", lambda: MemoryTransport(network=net), type=Limit, backend=backend
        ) as b,
    ):
        yield a, b


def eventually(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll a condition other threads make true (replication offers no event here)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.002)


def portal_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("podshare ")]


def test_reads_and_writes(backend: str) -> None:
    with open_store("counts", MemoryTransport, type=int, backend=backend) as store:
        assert store.synced
        assert store.name == "counts"
        assert store.value_type is int
        store.set("a", 1)
        store.set_many({"b": 2, "c": 3})
        assert store.get("a") == 1
        assert store.get("zz", 0) == 0
        assert store["b"] == 2
        assert "c" in store
        assert len(store) == 3
        assert sorted(store) == ["a", "b", "c"]
        assert sorted(store.keys()) == ["a", "b", "c"]
        assert dict(store.items()) == {"a": 1, "b": 2, "c": 3}
        assert store.update("a", lambda n: n + 10) == 11
        store.delete("c")
        store.delete_many(["b", "missing"])
        assert store.snapshot() == {"a": 11}
        store.refresh()
        store.wait_synced()
        assert store.node_id in store.members()
        assert store.stats().writes_local >= 5
        with pytest.raises(KeyError):
            store["b"]
        assert repr(store).endswith("open>")


def test_replication_and_watch(pair: tuple[SyncStore[Limit], SyncStore[Limit]]) -> None:
    a, b = pair
    with b.watch(prefix="api:") as events:
        a.set("api:x", Limit(10))
        a.set("other", Limit(1))
        a.delete("api:x")
        first, second = next(events), next(events)
    assert (first.kind, first.key, first.value) == (EventKind.SET, "api:x", Limit(10))
    assert (second.kind, second.key) == (EventKind.DELETE, "api:x")
    eventually(lambda: b.get("other") == Limit(1))
    assert not events.dropped
    assert list(events) == []  # closed when the block ended


def test_errors_are_podshare_exceptions(pair: tuple[SyncStore[Limit], SyncStore[Limit]]) -> None:
    a, _ = pair
    with pytest.raises(InvalidValue):
        a.set("k", 5)  # type: ignore[arg-type]
    with pytest.raises(InvalidValue):
        a.set("", Limit(1))
    with pytest.raises(InvalidValue):
        a.set_many({"ok": Limit(1), "bad": "x"})  # type: ignore[dict-item]
    assert "ok" not in a  # validated before anything changed
    with pytest.raises(ConfigurationError):
        a.watch(key="a", prefix="b").__enter__()

    def broken(_current: Limit | None) -> Limit:
        raise ZeroDivisionError("the update function's own error")

    with pytest.raises(ZeroDivisionError, match="own error"):
        a.update("k", broken)  # the function's own error, unchanged


def test_delete_many_is_the_async_stores_one_batch_validated_first(
    pair: tuple[SyncStore[Limit], SyncStore[Limit]],
) -> None:
    a, b = pair
    a.set_many({f"k{i}": Limit(i) for i in range(20)})
    eventually(lambda: len(b) == 20)
    before = a.stats().messages_sent
    with b.watch(prefix="k") as events:
        a.delete_many(f"k{i}" for i in range(10))
        deleted = {next(events).key for _ in range(10)}
    assert a.stats().messages_sent - before == 1  # one batch, not one message per key
    assert deleted == {f"k{i}" for i in range(10)}
    eventually(lambda: len(b) == 10)
    with pytest.raises(InvalidValue):
        a.delete_many(["k10", "", "k11"])
    assert "k10" in a  # as Store.delete_many: a bad key deletes nothing
    assert "k11" in a


def test_version_and_try_set_are_the_async_stores_optimistic_check(
    pair: tuple[SyncStore[Limit], SyncStore[Limit]],
) -> None:
    a, b = pair
    assert a.version("k") is None
    assert a.try_set("k", Limit(1), None)  # None: only if absent
    assert not a.try_set("k", Limit(2), None)  # no longer absent
    version = a.version("k")
    assert version is not None
    assert version.origin == a.node_id
    eventually(lambda: b.version("k") == version)  # the same stamp on every replica
    b.set("k", Limit(3))  # a newer write elsewhere moves the version on
    eventually(lambda: a.get("k") == Limit(3))
    assert not a.try_set("k", Limit(4), version)
    assert a.get("k") == Limit(3)
    assert a.try_set("k", Limit(5), a.version("k"))
    eventually(lambda: b.get("k") == Limit(5))


def test_ttl_expires_and_a_filtered_watch_sees_it_expire(
    pair: tuple[SyncStore[Limit], SyncStore[Limit]],
) -> None:
    a, b = pair
    wanted = {EventKind.SET, EventKind.EXPIRED}
    with b.watch(filter=lambda ev: ev.kind in wanted and ev.key.startswith("s:")) as events:
        a.set("other", Limit(0), ttl=60)
        a.set_many({"s:1": Limit(1), "s:2": Limit(2)}, ttl=0.2)
        a.set("s:3", Limit(3), ttl=0.2)
        got = [(ev.kind.name, ev.key) for ev in (next(events) for _ in range(6))]
    # Each key is set, then expires; none of the keys the filter refuses came through.
    assert sorted(got) == [(kind, f"s:{i}") for kind in ("EXPIRED", "SET") for i in (1, 2, 3)]
    assert got.index(("SET", "s:3")) < got.index(("EXPIRED", "s:3"))
    assert b.snapshot() == {"other": Limit(0)}
    eventually(lambda: a.stats().expired == 3)
    with pytest.raises(InvalidValue, match="ttl"):
        a.set("bad", Limit(1), ttl=0)


def test_seed_loads_an_empty_replica_without_events(backend: str) -> None:
    with open_store("seeded", MemoryTransport, type=int, backend=backend) as store:
        with store.watch() as events:
            store.seed({"a": 1, "b": 2})
            store.set("c", 3)
            first = next(events)  # the write's event is the first: seeding sent none
        assert (first.key, first.value) == ("c", 3)
        assert store.snapshot() == {"a": 1, "b": 2, "c": 3}
        with pytest.raises(StoreNotEmpty):
            store.seed({"d": 4})
        assert "d" not in store


def test_options_errors_leave_nothing_running(backend: str) -> None:
    before = len(portal_threads())
    with pytest.raises(ConfigurationError, match="watch_buffer"):
        open_store("x", MemoryTransport, watch_buffer=0, backend=backend)
    with pytest.raises(ConfigurationError, match="transport_factory"):
        open_store("x", "redis://nowhere")  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="must return a transport"):
        open_store("x", lambda: object(), backend=backend)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError):
        SyncStore()
    assert len(portal_threads()) == before


def test_async_factory(backend: str) -> None:
    async def make() -> MemoryTransport:
        return MemoryTransport()

    with open_store("x", make, backend=backend) as store:
        store.set("a", [1, 2])
        assert store["a"] == [1, 2]


def test_factory_runs_on_the_store_thread() -> None:
    seen: list[str] = []

    def factory() -> MemoryTransport:
        seen.append(threading.current_thread().name)
        return MemoryTransport()

    with open_store("thread-check", factory):
        pass
    assert seen == ["podshare asyncio loop"]


def test_use_after_close_raises_closed_error(backend: str) -> None:
    store = open_store("x", MemoryTransport, backend=backend)
    store.set("a", 1)
    store.close()
    store.close()  # idempotent
    assert store.closed
    assert repr(store).endswith("closed>")
    for call in (
        lambda: store.set("a", 2),
        lambda: store.delete("a"),
        lambda: store.update("a", lambda v: v),
        lambda: store.set_many({"b": 1}),
        lambda: store.delete_many(["a"]),
        lambda: store.refresh(),
        lambda: store.get("a"),
        lambda: store["a"],
        lambda: "a" in store,
        lambda: len(store),
        lambda: store.snapshot(),
        lambda: store.watch(),
    ):
        with pytest.raises(ClosedError):
            call()
    assert not portal_threads()  # the last one closed: the loop thread is gone


def test_closing_the_store_ends_every_watch_iterator(backend: str) -> None:
    store = open_store("x", MemoryTransport, backend=backend)
    opened = threading.Barrier(4)
    seen: dict[int, list[str]] = {}

    def consume(n: int) -> None:
        with store.watch() as events:
            seen[n] = []
            opened.wait(TIMEOUT)
            for event in events:
                seen[n].append(event.key)

    threads = [threading.Thread(target=consume, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    opened.wait(TIMEOUT)
    store.set("k", 1)
    eventually(lambda: all(seen[n] == ["k"] for n in range(3)))
    store.close()
    for t in threads:
        t.join(TIMEOUT)
        assert not t.is_alive(), "a watch iterator kept its thread blocked after close"


def test_closing_a_watch_from_another_thread_ends_its_iteration(backend: str) -> None:
    with open_store("x", MemoryTransport, backend=backend) as store:
        watch = store.watch(key="k")
        watch.__enter__()
        ended = threading.Event()

        def consume() -> None:
            for _ in watch:
                pass
            ended.set()

        t = threading.Thread(target=consume)
        t.start()
        watch.close()
        assert ended.wait(TIMEOUT)
        t.join(TIMEOUT)
        with pytest.raises(RuntimeError):
            watch.__enter__()


def test_many_threads_hammering_writes_and_reads(
    pair: tuple[SyncStore[Limit], SyncStore[Limit]],
) -> None:
    a, b = pair
    writers, writes = 8, 100

    def write(w: int) -> int:
        for i in range(writes):
            a.set(f"w{w}:{i}", Limit(i))
            # Reads in the middle of other threads' writes never fail or tear.
            assert a.get(f"w{w}:{i}") == Limit(i)
            len(a)
            a.snapshot()
            list(a.items())
            a.update("total", lambda cur: Limit((cur.per_second if cur else 0) + 1))
        return w

    with concurrent.futures.ThreadPoolExecutor(max_workers=writers) as pool:
        assert sorted(pool.map(write, range(writers))) == list(range(writers))
    expected = writers * writes + 1
    assert len(a) == expected
    # update() reads and writes without a gap: no increment was lost.
    assert a["total"] == Limit(writers * writes)
    eventually(lambda: b.snapshot() == a.snapshot())
    # Group commit: many concurrent writers share messages.
    assert a.stats().messages_sent < 2 * writers * writes


def test_update_function_calling_the_store_is_refused(backend: str) -> None:
    with open_store("x", MemoryTransport, backend=backend) as store:

        def reenter(value: Any) -> Any:
            store.set("other", 1)  # would wait for the thread it runs on
            return value

        with pytest.raises(RuntimeError, match="own event loop thread"):
            store.update("k", reenter)
        assert "other" not in store


def test_store_left_open_closes_at_interpreter_exit() -> None:
    """A store never closed, with a non-daemon thread blocked in a watch: exit still
    closes the store (ending the watch) instead of hanging."""
    script = textwrap.dedent(
        """
        import atexit, threading
        from podshare.sync import open_store
        from podshare.transport import MemoryTransport

        store = open_store("left-open", MemoryTransport)
        ready = threading.Event()

        def consume():
            with store.watch() as events:
                ready.set()
                for _ in events:
                    pass
            print("watch ended", flush=True)

        threading.Thread(target=consume).start()   # not a daemon
        ready.wait(10)
        # A pool worker blocked on a watch too (pools join their workers at exit).
        import concurrent.futures
        pool = concurrent.futures.ThreadPoolExecutor(1)
        pooled = threading.Event()

        def pooled_consume():
            with store.watch() as events:
                pooled.set()
                for _ in events:
                    pass

        pool.submit(pooled_consume)
        pooled.wait(10)
        store.set("k", 1)
        atexit.register(lambda: print("closed:", store.closed, flush=True))
        print("leaving", flush=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["leaving", "watch ended", "closed: True"], result


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_closed_error_not_a_hang() -> None:
    script = textwrap.dedent(
        """
        import os
        from podshare.exceptions import ClosedError
        from podshare.sync import open_store
        from podshare.transport import MemoryTransport

        store = open_store("pre-fork", MemoryTransport)
        store.set("k", 1)
        pid = os.fork()
        if pid == 0:
            errors = 0
            for call in (lambda: store.get("k"), lambda: store.set("k", 2), store.close):
                try:
                    call()
                except ClosedError:
                    errors += 1
            # close() on a detached store is a no-op; the other two raise.
            os._exit(0 if errors == 2 and store.closed else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert store.get("k") == 1          # the parent's store is untouched
        store.set("k", 3)
        store.close()
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# -- callreply ----------------------------------------------------------------------------


def test_endpoint_calls_plain_functions_in_worker_threads(net: MemoryNetwork, backend: str) -> None:
    handler_threads: list[str] = []

    def push(payload: bytes) -> bytes:
        handler_threads.append(threading.current_thread().name)
        return b"got " + payload

    def boom(_payload: bytes) -> bytes:
        raise ValueError("no such user")

    with (
        open_endpoint(lambda: MemoryTransport(network=net), "pod-a", backend=backend) as a,
        open_endpoint(lambda: MemoryTransport(network=net), "pod-b", backend=backend) as b,
    ):
        a.register("user:1", "push", push)
        a.register("user:1", "boom", boom)
        assert a.targets() == frozenset({"user:1"})
        eventually(lambda: b.owner("user:1") == "pod-a")
        assert b.routes() == {"user:1": "pod-a"}
        assert b.members() >= {"pod-a", "pod-b"}
        assert b.call("user:1", "push", b"hi", timeout=5) == b"got hi"
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            replies = list(pool.map(lambda i: b.call("user:1", "push", b"%d" % i), range(16)))
        assert replies == [b"got %d" % i for i in range(16)]
        with pytest.raises(RemoteError) as info:
            b.call("user:1", "boom", b"")
        assert info.value.type_name == "ValueError"
        with pytest.raises(NoRoute):
            b.call("user:2", "push", b"")
        assert b.stats().calls_remote >= 17
        a.unregister("user:1")
        eventually(lambda: b.owner("user:1") is None)

        async def handler(payload: bytes) -> bytes:
            return payload

        with pytest.raises(ConfigurationError, match="plain function"):
            a.register("user:3", "push", handler)  # type: ignore[arg-type]
    assert handler_threads
    assert not any(name.startswith("podshare ") for name in handler_threads)
    with pytest.raises(ClosedError):
        b.call("user:1", "push", b"")
    with pytest.raises(ClosedError):
        b.owner("user:1")
