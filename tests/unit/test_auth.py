"""The sans-I/O authenticator: sealing, every refusal reason, windows, the sender bound."""

from __future__ import annotations

import logging
import struct

import pytest

from podshare.exceptions import AuthenticationError, ConfigurationError, MessageRefused
from podshare.transport import auth as auth_module
from podshare.transport.auth import (
    HEADER_SIZE,
    OVERHEAD,
    TAG_SIZE,
    Authenticator,
    AuthStats,
    Refusal,
    RefusalLog,
)

SECRET = b"a shared secret of enough bytes"
OTHER = b"another secret, also long enough"
NOW = 1_700_000_000.0  # seconds since the epoch; every call gets time passed in
TOPIC = "ps/config"


def refusal(opener: auth_module.Opener, message: bytes, now: float = NOW) -> str:
    """The reason ``opener`` refuses ``message`` (fails the test if it opens)."""
    with pytest.raises(MessageRefused) as info:
        opener.open(message, now=now)
    return info.value.reason


def header(message: bytes) -> tuple[int, int, bytes, bytes, int, int]:
    fields: tuple[int, int, bytes, bytes, int, int] = struct.unpack_from(">BB4s16sQQ", message)
    return fields


@pytest.fixture(params=[False, True], ids=["mac", "aead"])
def encrypt(request: pytest.FixtureRequest) -> bool:
    if request.param:
        pytest.importorskip("cryptography", reason="AES-GCM needs the encryption extra")
    value: bool = request.param
    return value


# --- sealing and opening ---------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 100, 10_000])
def test_round_trip_and_exact_overhead(encrypt: bool, size: int) -> None:
    sender, receiver = Authenticator(SECRET, encrypt=encrypt), Authenticator(SECRET)
    payload = bytes(i % 251 for i in range(size))
    sealed = sender.seal(TOPIC, payload, now=NOW)
    assert len(sealed) == size + OVERHEAD == size + sender.overhead
    opened = receiver.opener(TOPIC).open(sealed, now=NOW)
    assert opened == payload
    assert type(opened) is bytes
    assert sender.stats().sealed == 1
    assert receiver.stats() == AuthStats(opened=1)


def test_header_layout() -> None:
    auth = Authenticator(SECRET)
    first = auth.seal(TOPIC, b"a", now=NOW)
    second = auth.seal("ps/other", b"b", now=NOW + 1)
    v1, suite1, key1, sender1, seq1, time1 = header(first)
    _, _, key2, sender2, seq2, time2 = header(second)
    assert (v1, suite1, seq1, time1) == (1, 1, 1, int(NOW * 1000))
    # One sender and one counter across topics; the key id names the secret, not the topic.
    assert (key1, sender1) == (key2, sender2)
    assert (seq2, time2) == (2, int(NOW * 1000) + 1000)
    assert len(first) - HEADER_SIZE - TAG_SIZE == 1


def test_encrypted_payload_is_not_in_the_clear() -> None:
    pytest.importorskip("cryptography", reason="AES-GCM needs the encryption extra")
    payload = b"the secret plans for tomorrow" * 4
    sealed = Authenticator(SECRET, encrypt=True).seal(TOPIC, payload, now=NOW)
    assert header(sealed)[1] == 2
    assert payload[:16] not in sealed
    mac_sealed = Authenticator(SECRET).seal(TOPIC, payload, now=NOW)
    assert payload in mac_sealed  # the MAC suite authenticates only


def test_a_receiver_opens_both_suites() -> None:
    pytest.importorskip("cryptography", reason="AES-GCM needs the encryption extra")
    receiver = Authenticator(SECRET).opener(TOPIC)  # encrypt=False on this side
    assert receiver.open(Authenticator(SECRET, encrypt=True).seal(TOPIC, b"x", now=NOW), now=NOW)
    assert receiver.open(Authenticator(SECRET).seal(TOPIC, b"y", now=NOW), now=NOW) == b"y"


def test_opening_accepts_any_buffer() -> None:
    auth = Authenticator(SECRET)
    sealed = auth.seal(TOPIC, b"payload", now=NOW)
    assert auth.opener(TOPIC).open(memoryview(bytearray(sealed)), now=NOW) == b"payload"  # type: ignore[arg-type]


# --- refusals ----------------------------------------------------------------------------


def test_every_single_byte_tampered_is_refused(encrypt: bool) -> None:
    sender = Authenticator(SECRET, encrypt=encrypt)
    sealed = sender.seal(TOPIC, b"a small payload", now=NOW)
    receiver = Authenticator(SECRET)
    opener = receiver.opener(TOPIC)
    reasons = set()
    for i in range(len(sealed)):
        for flip in (0x01, 0x80):
            tampered = bytearray(sealed)
            tampered[i] ^= flip
            reasons.add(refusal(opener, bytes(tampered)))
    # Bytes 0-1 name the format, 2-5 the key; every other byte breaks the tag.
    assert reasons == {"unknown_version", "unknown_key", "bad_tag"}
    assert receiver.stats().opened == 0
    # The attempts left nothing behind: the untouched message still opens, once.
    assert opener.open(sealed, now=NOW) == b"a small payload"
    assert refusal(opener, sealed) == "replayed"


def test_every_truncation_is_refused() -> None:
    sealed = Authenticator(SECRET).seal(TOPIC, b"payload", now=NOW)
    opener = Authenticator(SECRET).opener(TOPIC)
    reasons = {refusal(opener, sealed[:n]) for n in range(len(sealed))}
    assert reasons == {"truncated", "bad_tag"}
    assert all(refusal(opener, sealed[:n]) == "truncated" for n in range(OVERHEAD))
    assert refusal(opener, sealed + b"\x00") == "bad_tag"


def test_wrong_secret_is_an_unknown_key() -> None:
    sealed = Authenticator(OTHER).seal(TOPIC, b"x", now=NOW)
    receiver = Authenticator(SECRET)
    assert refusal(receiver.opener(TOPIC), sealed) == "unknown_key"
    assert receiver.stats() == AuthStats(refused=1, unknown_key=1)


def test_a_message_verifies_only_on_its_own_topic() -> None:
    auth = Authenticator(SECRET)
    sealed = auth.seal("ps/a", b"x", now=NOW)
    assert refusal(auth.opener("ps/b"), sealed) == "bad_tag"
    assert refusal(auth.opener("ps/a#node"), sealed) == "bad_tag"
    assert auth.opener("ps/a").open(sealed, now=NOW) == b"x"


def test_unknown_version_and_suite() -> None:
    sealed = Authenticator(SECRET).seal(TOPIC, b"x", now=NOW)
    opener = Authenticator(SECRET).opener(TOPIC)
    assert refusal(opener, b"\x02" + sealed[1:]) == "unknown_version"
    assert refusal(opener, sealed[:1] + b"\x03" + sealed[2:]) == "unknown_version"
    # A plain (unauthenticated) podshare message starts with a msgpack array header.
    assert refusal(opener, b"\x94\x01\x04\xa5pod-a" + bytes(60)) == "unknown_version"


def test_aead_without_cryptography_is_refused_not_crashed(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("cryptography", reason="sealing the message needs the encryption extra")
    sealed = Authenticator(SECRET, encrypt=True).seal(TOPIC, b"x", now=NOW)
    monkeypatch.setattr(auth_module._Crypto, "aesgcm", None)
    opener = Authenticator(SECRET).opener(TOPIC)
    assert refusal(opener, sealed) == "unknown_version"
    with pytest.raises(ConfigurationError, match="encryption"):
        Authenticator(SECRET, encrypt=True)


def test_message_refused_is_an_authentication_error() -> None:
    opener = Authenticator(SECRET).opener(TOPIC)
    with pytest.raises(AuthenticationError, match="truncated"):
        opener.open(b"short", now=NOW)


# --- time window -----------------------------------------------------------------------


def test_time_window_edges() -> None:
    sender = Authenticator(SECRET)
    receiver = Authenticator(SECRET, time_window=10.0)
    opener = receiver.opener(TOPIC)
    sent_at = NOW
    # Exactly 10 s old or ahead is inside; 1.5 ms more is outside.
    assert opener.open(sender.seal(TOPIC, b"old", now=sent_at), now=sent_at + 10.0) == b"old"
    assert opener.open(sender.seal(TOPIC, b"new", now=sent_at), now=sent_at - 10.0) == b"new"
    late, early = sent_at + 10.0015, sent_at - 10.0015
    assert refusal(opener, sender.seal(TOPIC, b"x", now=sent_at), now=late) == "too_old"
    assert refusal(opener, sender.seal(TOPIC, b"x", now=sent_at), now=early) == "too_new"
    assert refusal(opener, sender.seal(TOPIC, b"x", now=0.0)) == "too_old"
    assert refusal(opener, sender.seal(TOPIC, b"x", now=2.0**62)) == "too_new"
    stats = receiver.stats()
    assert (stats.too_old, stats.too_new, stats.opened) == (2, 2, 2)


# --- replays ---------------------------------------------------------------------------


def test_replay_is_refused_and_each_subscription_gets_one_copy() -> None:
    auth = Authenticator(SECRET)
    sealed = auth.seal(TOPIC, b"once", now=NOW)
    own, other = auth.opener(TOPIC), auth.opener(TOPIC)  # two subscriptions of the sender
    # The sender's own echo is delivered (stores filter their own messages themselves)...
    assert own.open(sealed, now=NOW) == b"once"
    assert other.open(sealed, now=NOW) == b"once"
    # ...and a copy replayed later is not, to either.
    assert refusal(own, sealed, now=NOW + 1) == "replayed"
    assert refusal(other, sealed, now=NOW + 1) == "replayed"
    assert auth.stats().replayed == 2


def test_replay_window_edges() -> None:
    width = 64
    sender = Authenticator(SECRET)
    opener = Authenticator(SECRET, replay_window=width).opener(TOPIC)
    sealed = [sender.seal(TOPIC, b"%d" % seq, now=NOW) for seq in range(1, 301)]  # seq = i + 1
    top = 150
    assert opener.open(sealed[top - 1], now=NOW) == b"150"
    # The oldest sequence still inside the window (top - width + 1) arrives late: accepted once.
    assert opener.open(sealed[top - width], now=NOW) == b"%d" % (top - width + 1)
    assert refusal(opener, sealed[top - width]) == "replayed"
    # One below the window cannot be told from a replay: refused.
    assert refusal(opener, sealed[top - width - 1]) == "replayed"
    # Out of order inside the window: each accepted exactly once.
    for seq in (149, 120, 148):
        assert opener.open(sealed[seq - 1], now=NOW) == b"%d" % seq
        assert refusal(opener, sealed[seq - 1]) == "replayed"
    # A jump of at least the window clears it; the old top is now too far behind.
    assert opener.open(sealed[249], now=NOW) == b"250"
    assert refusal(opener, sealed[top - 1]) == "replayed"
    assert refusal(opener, sealed[150]) == "replayed"  # seq 151, never seen, now too old
    assert opener.open(sealed[248], now=NOW) == b"249"


def test_senders_are_bounded_and_evicted_senders_cannot_be_replayed() -> None:
    receiver = Authenticator(SECRET, max_senders=4)
    opener = receiver.opener(TOPIC)
    senders = [Authenticator(SECRET) for _ in range(10)]
    first = [s.seal(TOPIC, b"first", now=NOW + i * 0.001) for i, s in enumerate(senders)]
    for message in first:
        assert opener.open(message, now=NOW) == b"first"
        assert len(opener) <= 4
    assert len(opener) == 4
    assert receiver.stats().senders_evicted == 6
    # An evicted sender's earlier message is refused (older than the eviction watermark)...
    assert refusal(opener, first[0]) == "replayed"
    assert refusal(opener, first[5]) == "replayed"
    # ...and its newer messages are accepted again.
    assert opener.open(senders[0].seal(TOPIC, b"later", now=NOW + 1), now=NOW + 1) == b"later"
    # Held senders still refuse their own replays.
    assert refusal(opener, first[9]) == "replayed"


def test_silent_senders_are_forgotten_after_the_time_window() -> None:
    receiver = Authenticator(SECRET, time_window=5.0, max_senders=100)
    opener = receiver.opener(TOPIC)
    for _ in range(50):
        opener.open(Authenticator(SECRET).seal(TOPIC, b"x", now=NOW), now=NOW)
    assert len(opener) == 50
    late = NOW + 6.0
    opener.open(Authenticator(SECRET).seal(TOPIC, b"y", now=late), now=late)
    assert len(opener) == 1  # pruned, not evicted: nothing they sent opens any more
    assert receiver.stats().senders_evicted == 0


def test_sequence_exhaustion_continues_as_a_new_sender() -> None:
    auth = Authenticator(SECRET)
    opener = Authenticator(SECRET).opener(TOPIC)
    auth._seq = 2**64 - 2  # as after 2**64 - 2 messages
    last = auth.seal(TOPIC, b"last", now=NOW)
    after = auth.seal(TOPIC, b"after", now=NOW)
    assert header(last)[4] == 2**64 - 1
    assert header(after)[4] == 1
    assert header(after)[3] != header(last)[3]
    assert opener.open(last, now=NOW) == b"last"
    assert opener.open(after, now=NOW) == b"after"


# --- keys and options ----------------------------------------------------------------------


def test_key_rotation_first_seals_every_one_opens() -> None:
    old, new = Authenticator(OTHER), Authenticator(SECRET)
    rolling = Authenticator([SECRET, OTHER])
    opener = rolling.opener(TOPIC)
    assert opener.open(old.seal(TOPIC, b"old", now=NOW), now=NOW) == b"old"
    assert opener.open(new.seal(TOPIC, b"new", now=NOW), now=NOW) == b"new"
    by_rolling = rolling.seal(TOPIC, b"rolled", now=NOW)
    assert new.opener(TOPIC).open(by_rolling, now=NOW) == b"rolled"
    assert refusal(old.opener(TOPIC), by_rolling) == "unknown_key"


def test_str_secret_is_its_utf8_bytes() -> None:
    sealed = Authenticator("pässwörd pässwörd").seal(TOPIC, b"x", now=NOW)
    assert Authenticator("pässwörd pässwörd".encode()).opener(TOPIC).open(sealed, now=NOW) == b"x"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"secret": b"short"}, "at least 16 bytes"),
        ({"secret": ""}, "at least 16 bytes"),
        ({"secret": []}, "non-empty list"),
        ({"secret": [SECRET, 42]}, "bytes or str"),
        ({"secret": None}, "bytes or str"),
        ({"secret": SECRET, "encrypt": "yes"}, "encrypt"),
        ({"secret": SECRET, "time_window": 0}, "time_window"),
        ({"secret": SECRET, "time_window": float("inf")}, "time_window"),
        ({"secret": SECRET, "replay_window": 0}, "replay_window"),
        ({"secret": SECRET, "replay_window": 1.5}, "replay_window"),
        ({"secret": SECRET, "max_senders": True}, "max_senders"),
    ],
)
def test_bad_options(options: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Authenticator(**options)  # type: ignore[arg-type]


# --- the rate-limited log --------------------------------------------------------------------


def test_refusal_log_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    logger = logging.getLogger("test.auth.refusals")
    log = RefusalLog(logger, interval=10.0, clock=lambda: now[0])
    opener = Authenticator(SECRET).opener(TOPIC)
    with caplog.at_level(logging.DEBUG, logger="test.auth.refusals"):
        for i in range(1000):
            now[0] = i * 0.01  # ten seconds of flood
            try:
                opener.open(b"garbage %d" % i, now=NOW)
            except MessageRefused as exc:
                log.record(exc, TOPIC)
        now[0] = 10.5
        try:
            opener.open(bytes(OVERHEAD), now=NOW)
        except MessageRefused as exc:
            log.record(exc, TOPIC)
    records = [r for r in caplog.records if r.name == "test.auth.refusals"]
    assert len(records) == 2
    assert all(r.levelno == logging.INFO for r in records)
    assert "dropped 1 message(s)" in records[0].getMessage()
    assert "dropped 1000 message(s)" in records[1].getMessage()
    assert "truncated 999" in records[1].getMessage()
    assert "unknown_version 1" in records[1].getMessage()


def test_refusal_reasons_are_the_stats_fields() -> None:
    fields = set(AuthStats.__dataclass_fields__)
    assert {reason.value for reason in Refusal} <= fields
