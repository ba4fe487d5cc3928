"""NatsTransport's options, subjects and asyncio-only check: no server is needed here."""

from __future__ import annotations

import pytest
import trio
from nats.js.api import StreamConfig

import podshare.transport
from podshare.exceptions import ConfigurationError
from podshare.persistence.nats import NatsKVPersistence
from podshare.transport import NatsTransport
from podshare.transport.nats import default_stream_config


@pytest.mark.parametrize(
    "kwargs",
    [
        {"servers": []},
        {"servers": "http://localhost"},
        {"max_message_size": 0},
        {"timeout": 0},
        {"reconnect_time_wait": -1},
        {"ping_interval": float("inf")},
        {"max_reconnect_attempts": 0},
        {"max_outstanding_pings": 0},
        {"subscription_buffer": 0},
        {"user": "u"},
        {"token": "t", "user": "u", "password": "p"},
        {"subject_prefix": "a b"},
        {"subject_prefix": "a.*"},
        {"subject_prefix": "a..b"},
        {"encrypt": True},
        {"secret": "too short"},
        {"jetstream": "yes"},
        {"jetstream": StreamConfig(name="mine")},
        {"jetstream": StreamConfig(subjects=["x"])},
        {"on_error": "not callable"},
    ],
)
def test_bad_options_raise_configuration_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        NatsTransport(**kwargs)  # type: ignore[arg-type]


def test_subjects_streams_and_default_persistence() -> None:
    core = NatsTransport(["nats://a:1", "b:2"], subject_prefix="")
    assert core.subject_for("ps/app.config#pod 1") == "ps.~YXBwLmNvbmZpZw._~cG9kIDE"
    assert core.stream_for("ps/orders") is None
    assert not core.jetstream
    assert core.default_persistence() is None
    js = NatsTransport(jetstream=True)
    stream = js.stream_for("ps/orders")
    assert stream is not None
    assert stream.startswith("podshare_ps_orders-")
    assert js.stream_for("ps/orders#pod-1") is None
    assert js.stream_for("pl/live") is None
    assert js.stream_for("cr/ns#node") is None
    assert isinstance(js.default_persistence(), NatsKVPersistence)
    # Different store names never share a stream, even when their readable parts do.
    assert js.stream_for("ps/a.b") != js.stream_for("ps/a_b")


def test_default_stream_config_is_a_fresh_bounded_copy() -> None:
    first, second = default_stream_config(), default_stream_config()
    assert first == second
    assert first is not second
    assert first.max_age
    assert first.max_bytes
    assert first.max_msgs
    assert first.name is None
    assert not first.subjects


def test_lazy_export() -> None:
    assert podshare.transport.NatsTransport is NatsTransport
    assert "NatsTransport" in podshare.transport.__all__


def test_persistence_options_are_checked() -> None:
    tr = NatsTransport()
    for kwargs in (
        {"bucket": "a.b"},
        {"bucket": ""},
        {"replicas": 0},
        {"storage": "disk"},
        {"max_bytes": 0},
        {"timeout": -1},
    ):
        with pytest.raises(ConfigurationError):
            NatsKVPersistence(tr, **kwargs)
    assert NatsKVPersistence(tr).shared is True


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_trio_constructor_raises_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="needs asyncio"):
        NatsTransport("nats://127.0.0.1:1")


def test_trio_enter_raises_configuration_error() -> None:
    # Built outside any event loop, the check happens on `async with`.
    tr = NatsTransport("nats://127.0.0.1:1")

    async def main() -> None:
        with pytest.raises(ConfigurationError, match="needs asyncio"):
            async with tr:
                pass

    trio.run(main)
