"""Unit tests for Stamp and HLC (podshare.crdt.clock)."""

from __future__ import annotations

import time

import pytest

from podshare.crdt import HLC, Stamp
from podshare.crdt.clock import MAX_COUNTER, MAX_TIME
from podshare.exceptions import ConfigurationError, DecodeError


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: int = 1_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_stamps_order_by_time_then_counter_then_origin() -> None:
    stamps = [
        Stamp(2, 0, "a"),
        Stamp(1, 5, "z"),
        Stamp(1, 5, "b"),
        Stamp(1, 0, "z"),
        Stamp(3, 0, ""),
    ]
    assert sorted(stamps) == [
        Stamp(1, 0, "z"),
        Stamp(1, 5, "b"),
        Stamp(1, 5, "z"),
        Stamp(2, 0, "a"),
        Stamp(3, 0, ""),
    ]


def test_stamp_wire_round_trip() -> None:
    s = Stamp(1_700_000_000_123, 42, "pod-7")
    assert s.to_wire() == [1_700_000_000_123, 42, "pod-7"]
    assert Stamp.from_wire(s.to_wire()) == s
    assert Stamp.from_wire(tuple(s.to_wire())) == s
    assert type(Stamp.from_wire(s.to_wire())) is Stamp


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "1,2,a",
        {"time": 1},
        [1, 2],
        [1, 2, "a", 4],
        [True, 0, "a"],
        [1, False, "a"],
        [-1, 0, "a"],
        [1, -1, "a"],
        [1.0, 0, "a"],
        [1, 0, b"a"],
        [1, 0, None],
        [1, 0, "x" * 257],
        [MAX_TIME + 1, 0, "a"],
        [1, MAX_COUNTER + 1, "a"],
    ],
)
def test_stamp_from_wire_rejects_malformed(bad: object) -> None:
    with pytest.raises(DecodeError):
        Stamp.from_wire(bad)


def test_stamp_from_wire_accepts_limits() -> None:
    assert Stamp.from_wire([MAX_TIME, MAX_COUNTER, "x" * 256]).counter == MAX_COUNTER


def test_now_uses_wall_clock_and_counts_within_a_millisecond() -> None:
    wall = FakeClock(5_000)
    clock = HLC("a", time_source=wall)
    assert clock.now() == Stamp(5_000, 0, "a")
    assert clock.now() == Stamp(5_000, 1, "a")
    wall.now = 5_001
    assert clock.now() == Stamp(5_001, 0, "a")
    assert clock.last == Stamp(5_001, 0, "a")


def test_now_stays_monotonic_when_wall_clock_goes_back() -> None:
    wall = FakeClock(9_000)
    clock = HLC("a", time_source=wall)
    first = clock.now()
    wall.now = 1_000
    second = clock.now()
    assert second > first
    assert second == Stamp(9_000, 1, "a")


def test_observe_orders_later_stamps_after_remote_even_with_lagging_wall_clock() -> None:
    clock = HLC("a", time_source=FakeClock(1_000))
    remote = Stamp(50_000, 9, "b")
    assert clock.observe(remote) is False
    after = clock.now()
    assert after > remote
    assert after == Stamp(50_000, 10, "a")


def test_observe_of_equal_time_and_counter_with_greater_origin() -> None:
    clock = HLC("a", time_source=FakeClock(1_000))
    clock.now()
    remote = Stamp(1_000, 0, "zzz")
    clock.observe(remote)
    assert clock.now() > remote


def test_observe_of_older_stamp_does_not_move_clock() -> None:
    clock = HLC("a", time_source=FakeClock(1_000))
    issued = clock.now()
    assert clock.observe(Stamp(10, 0, "b")) is False
    assert clock.last == issued


def test_observe_follows_a_stamp_up_to_the_bound() -> None:
    clock = HLC("a", time_source=FakeClock(1_000), max_skew_ms=100)
    at_bound = Stamp(1_100, 0, "b")
    assert clock.observe(at_bound) is False  # exactly at the bound: followed
    assert clock.now() > at_bound


def test_observe_reports_a_stamp_beyond_the_bound_and_follows_it_only_to_the_bound() -> None:
    clock = HLC("a", time_source=FakeClock(1_000), max_skew_ms=100)
    far = Stamp(1_101, 0, "b")
    assert clock.observe(far) is True
    stamp = clock.now()
    assert stamp < far  # not dragged past the bound by one stamp
    assert stamp.time == 1_100  # but as far as the bound allows
    # A forged stamp at the top of the wire's range changes nothing more.
    assert clock.observe(Stamp(2**53 - 1, 2**32 - 1, "evil")) is True
    assert clock.now().time == 1_100


def test_counter_overflow_moves_to_next_millisecond() -> None:
    clock = HLC("a", time_source=FakeClock(1_000))
    clock.observe(Stamp(1_000, MAX_COUNTER, "b"))
    assert clock.now() == Stamp(1_001, 0, "a")


def test_default_time_source_is_wall_clock_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    stamp = HLC("a").now()
    after = time.time_ns() // 1_000_000
    assert before <= stamp.time <= after


def test_initial_last_is_zero_and_properties() -> None:
    clock = HLC("node-1", max_skew_ms=5)
    assert clock.last == Stamp(0, 0, "")
    assert clock.origin == "node-1"
    assert clock.max_skew_ms == 5


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"origin": ""}, "origin"),
        ({"origin": "x" * 257}, "origin"),
        ({"origin": 7}, "origin"),
        ({"origin": "a", "time_source": 5}, "time_source"),
        ({"origin": "a", "max_skew_ms": -1}, "max_skew_ms"),
        ({"origin": "a", "max_skew_ms": 1.5}, "max_skew_ms"),
        ({"origin": "a", "max_skew_ms": True}, "max_skew_ms"),
    ],
)
def test_bad_arguments_raise_configuration_error_naming_the_option(
    kwargs: dict[str, object], option: str
) -> None:
    with pytest.raises(ConfigurationError, match=option):
        HLC(**kwargs)  # type: ignore[arg-type]
