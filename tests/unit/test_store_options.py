"""Store options: every bad option raises ConfigurationError naming it; good ones pass."""

from __future__ import annotations

import gc
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import pytest

from podshare.crdt import GSet, PNCounter
from podshare.exceptions import ClosedError, ConfigurationError
from podshare.store import Store
from podshare.transport import MemoryTransport

# Alone on its transport, a store need not wait for peers to answer.
ALONE: dict[str, Any] = {"hydrate_timeout": 0}


@dataclass(frozen=True)
class Config:
    rate_limit: int


class MaxMerger:
    def merge(self, a: int, b: int) -> int:
        return max(a, b)


@pytest.fixture
def tr() -> MemoryTransport:
    # Constructing a store never touches the transport, so it need not be open.
    return MemoryTransport()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("node_id", ""),
        ("node_id", "a#b"),
        ("node_id", 5),
        ("node_id", "x" * 257),
        ("codec", "yaml"),
        ("codec", 42),
        ("on_error", "print"),
        ("logger", "podshare"),
        ("merger", object()),
        ("watch_buffer", 0),
        ("watch_buffer", 2.5),
        ("watch_buffer", True),
        ("tombstone_ttl", 0),
        ("tombstone_ttl", -1.0),
        ("tombstone_ttl", math.inf),
        ("tombstone_ttl", "1"),
        ("compaction_interval", 0),
        ("compaction_interval", math.nan),
        ("hydrate_timeout", -0.1),
        ("hydrate_timeout", None),
        ("max_clock_skew", 0),
        ("anti_entropy_interval", -5),
        ("anti_entropy_interval", False),
        ("heartbeat_interval", 0),
        ("down_after", 0),
    ],
)
def test_bad_option_is_named(tr: MemoryTransport, option: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=option):
        Store("app", tr, **{option: value})


@pytest.mark.parametrize("name", ["", "a#b", "x" * 201, None, 3])
def test_bad_name_is_named(tr: MemoryTransport, name: Any) -> None:
    with pytest.raises(ConfigurationError, match="name"):
        Store(name, tr)


def test_bad_transport_is_named() -> None:
    with pytest.raises(ConfigurationError, match="transport"):
        Store("app", object())  # type: ignore[arg-type]


def test_down_after_must_exceed_heartbeat_interval(tr: MemoryTransport) -> None:
    with pytest.raises(ConfigurationError, match="down_after"):
        Store("app", tr, heartbeat_interval=2.0, down_after=2.0)


def test_unsupported_type_is_named(tr: MemoryTransport) -> None:
    with pytest.raises(ConfigurationError, match="type"):
        Store("app", tr, type=object)


def test_conflicting_type_parameter_and_option(tr: MemoryTransport) -> None:
    with pytest.raises(ConfigurationError, match="type"):
        Store[Config]("app", tr, type=int)
    assert Store[Config]("app", tr, type=Config).value_type is Config


def test_good_options_are_accepted(tr: MemoryTransport) -> None:
    store: Store[Any] = Store(
        "app",
        tr,
        node_id="pod-1",
        codec="msgpack",
        on_error=print,
        logger=logging.getLogger("test"),
        watch_buffer=1,
        tombstone_ttl=0.5,
        compaction_interval=1,
        hydrate_timeout=0,
        max_clock_skew=1,
        anti_entropy_interval=0.25,
        heartbeat_interval=0.1,
        down_after=0.3,
    )
    assert store.node_id == "pod-1"
    assert store.name == "app"
    assert store.value_type is None


def test_the_default_node_id_is_the_processs(
    tr: MemoryTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PODSHARE_NODE_ID", raising=False)
    one: Store[Any] = Store("identity-one", tr)
    other: Store[Any] = Store("identity-two", tr)
    # Every store of a process is one node: host name and pid, no "#".
    assert one.node_id == other.node_id
    assert one.node_id.endswith(f"-{os.getpid()}")
    assert "#" not in one.node_id


def test_podshare_node_id_is_read_when_a_store_is_built(
    tr: MemoryTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PODSHARE_NODE_ID", "pod-7")
    assert Store("identity-env", tr).node_id == "pod-7"
    monkeypatch.setenv("PODSHARE_NODE_ID", "pod-8")
    assert Store("identity-env", tr).node_id == "pod-8"
    monkeypatch.setenv("PODSHARE_NODE_ID", "bad#id")
    with pytest.raises(ConfigurationError, match="PODSHARE_NODE_ID"):
        Store("identity-env", tr)


def test_a_second_replica_of_one_store_in_one_process_gets_a_derived_id(
    tr: MemoryTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PODSHARE_NODE_ID", "pod-1")
    stores: list[Store[Any]] = [Store("identity-three", tr) for _ in range(3)]
    first, second, third = stores
    del stores
    assert [first.node_id, second.node_id, third.node_id] == ["pod-1", "pod-1~2", "pod-1~3"]
    del second  # a replica that goes away gives its id back
    gc.collect()
    assert Store("identity-three", tr).node_id == "pod-1~2"
    assert first.node_id == "pod-1"
    assert third.node_id == "pod-1~3"


def test_class_getitem() -> None:
    assert Store[Config] is Store[Config]
    assert len({Store[Config], Store[int]}) == 2
    assert issubclass(Store[Config], Store)
    assert Store[Config].__name__ == "Store[Config]"


# In a merger store, `set` joins the value into the key; in a plain one, it replaces it.


@pytest.mark.anyio
async def test_a_type_with_a_merge_method_is_its_own_merger(tr: MemoryTransport) -> None:
    async with tr, Store[GSet[str]]("tags", tr, **ALONE) as tags:
        await tags.set("k", GSet(["a"]))
        await tags.set("k", GSet(["b"]))
        assert tags["k"] == GSet(["a", "b"])


@pytest.mark.anyio
async def test_the_type_option_finds_the_merger_too(tr: MemoryTransport) -> None:
    async with tr, Store("hits", tr, type=PNCounter, **ALONE) as hits:
        await hits.set("n", PNCounter().increment("a", 2))
        await hits.set("n", PNCounter().increment("b", 3))
        assert hits["n"].value == 5  # both writes count; a plain store would keep 3


@pytest.mark.anyio
async def test_a_plain_type_is_last_writer_wins(tr: MemoryTransport) -> None:
    async with tr, Store[int]("plain", tr, **ALONE) as plain:
        await plain.set("k", 5)
        await plain.set("k", 3)
        assert plain["k"] == 3


@pytest.mark.anyio
async def test_a_merger_option_joins_plain_values(tr: MemoryTransport) -> None:
    async with tr, Store[int]("custom", tr, merger=MaxMerger(), **ALONE) as custom:
        await custom.set("k", 5)
        await custom.set("k", 3)
        assert custom["k"] == 5  # max(5, 3): joined, not replaced


def test_unopened_store_refuses_use(tr: MemoryTransport) -> None:
    store: Store[Any] = Store("app", tr)
    with pytest.raises(ClosedError):
        store.get("k")
    with pytest.raises(ClosedError):
        store["k"]
    with pytest.raises(ClosedError):
        store.watch()
    with pytest.raises(ClosedError):
        store.snapshot()
    assert store.stats().keys == 0
