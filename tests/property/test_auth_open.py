"""Hypothesis: whatever bytes arrive, an Opener refuses them or returns exactly what was sealed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podshare.exceptions import MessageRefused
from podshare.transport.auth import OVERHEAD, Authenticator, Refusal

SECRET = b"a shared secret of enough bytes"
NOW = 1_700_000_000.0
TOPIC = "ps/prop"
REASONS = {reason.value for reason in Refusal}

try:
    import cryptography  # noqa: F401
except ImportError:  # the AES-GCM suite is then refused, which the fixtures below allow for
    SUITES = [False]
else:
    SUITES = [False, True]

payloads = st.lists(st.binary(max_size=200), min_size=1, max_size=6)


def sealed_set(
    payloads: list[bytes], encrypt: bool
) -> tuple[Authenticator, list[tuple[bytes, bytes]]]:
    sender = Authenticator(SECRET, encrypt=encrypt)
    return sender, [(sender.seal(TOPIC, p, now=NOW), p) for p in payloads]


def edit(message: bytes, data: st.DataObject) -> bytes:
    """One arbitrary edit: flip, overwrite, insert, delete, truncate or extend."""
    kind = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "cut", "extend"]))
    i = data.draw(st.integers(0, len(message) - 1))
    b = bytearray(message)
    if kind == "flip":
        b[i] ^= data.draw(st.integers(1, 255))
    elif kind == "set":
        b[i] = data.draw(st.integers(0, 255))
    elif kind == "insert":
        b[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    elif kind == "delete":
        del b[i : i + data.draw(st.integers(1, 8))]
    elif kind == "cut":
        del b[i:]
    else:
        b += data.draw(st.binary(min_size=1, max_size=8))
    return bytes(b)


@pytest.mark.parametrize("encrypt", SUITES, ids=lambda e: "aead" if e else "mac")
@given(payloads=payloads, data=st.data())
def test_anything_received_is_refused_or_exactly_a_sealed_message(
    encrypt: bool, payloads: list[bytes], data: st.DataObject
) -> None:
    _, sealed = sealed_set(payloads, encrypt)
    by_message = dict(sealed)
    receiver = Authenticator(SECRET)
    opener = receiver.opener(TOPIC)
    genuine = [m for m, _ in sealed]
    opened: list[bytes] = []
    reasons: list[str] = []
    for _ in range(data.draw(st.integers(0, 20), label="messages")):
        kind = data.draw(st.sampled_from(["garbage", "genuine", "tampered", "truncated"]))
        if kind == "garbage":
            message = data.draw(st.binary(max_size=300))
        else:
            message = data.draw(st.sampled_from(genuine))  # drawn twice: a replay
            if kind == "tampered":
                message = edit(message, data)
            elif kind == "truncated":
                message = message[: data.draw(st.integers(0, len(message)))]
        try:
            payload = opener.open(message, now=NOW)
        except MessageRefused as exc:
            reasons.append(exc.reason)
            continue
        # It opened: it must be one of the sealed messages, byte for byte, seen once.
        assert message in by_message, "a message that was never sealed opened"
        assert payload == by_message[message]
        assert message not in opened, "a replay opened"
        opened.append(message)
    # Nothing refused left a trace: every genuine message not yet delivered still opens.
    for message, payload in sealed:
        if message not in opened:
            assert opener.open(message, now=NOW) == payload
            opened.append(message)
    stats = receiver.stats()
    assert stats.opened == len(opened) == len(sealed)
    assert set(reasons) <= REASONS
    assert stats.refused == len(reasons) == sum(getattr(stats, r) for r in REASONS)


@given(data=st.binary(max_size=OVERHEAD + 64))
def test_random_bytes_never_open(data: bytes) -> None:
    opener = Authenticator(SECRET).opener(TOPIC)
    with pytest.raises(MessageRefused):
        opener.open(data, now=NOW)


@given(
    width=st.integers(1, 40),
    order=st.lists(st.integers(0, 99), max_size=150),
)
def test_replay_window_matches_its_model(width: int, order: list[int]) -> None:
    """Delivered in any order, with duplicates: accepted iff new and within the window."""
    sender = Authenticator(SECRET)
    sealed = [sender.seal(TOPIC, b"%d" % i, now=NOW) for i in range(100)]  # sequence i + 1
    opener = Authenticator(SECRET, replay_window=width).opener(TOPIC)
    seen: set[int] = set()
    top = 0
    for i in order:
        seq = i + 1
        expected = seq not in seen and seq > top - width
        try:
            payload: bytes | None = opener.open(sealed[i], now=NOW)
        except MessageRefused as exc:
            payload, reason = None, exc.reason
        accepted = payload is not None
        assert accepted == expected, (seq, top, sorted(seen))
        if accepted:
            assert payload == b"%d" % i
        else:
            assert reason == "replayed"
        if accepted:
            seen.add(seq)
            top = max(top, seq)


@given(
    max_senders=st.integers(1, 8),
    picks=st.lists(st.integers(0, 29), max_size=120),
)
def test_sender_table_never_exceeds_its_bound(max_senders: int, picks: list[int]) -> None:
    """However many senders speak, in any order, the table stays within max_senders and
    no message opens twice."""
    senders = [Authenticator(SECRET) for _ in range(30)]
    receiver = Authenticator(SECRET, max_senders=max_senders)
    opener = receiver.opener(TOPIC)
    sent: list[bytes] = []
    for step, pick in enumerate(picks):
        now = NOW + step * 0.01
        if step % 3 == 2 and sent:  # every third step replays an earlier message
            message = sent[pick % len(sent)]
            with pytest.raises(MessageRefused):
                opener.open(message, now=now)
        else:
            message = senders[pick].seal(TOPIC, b"m", now=now)
            sent.append(message)
            assert opener.open(message, now=now) == b"m"  # fresh messages always open
        assert len(opener) <= max_senders
