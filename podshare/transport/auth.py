"""Message authentication for transports without their own: a MAC per message, replay-proof.

Redis pub/sub authenticates *connections*, not messages: anyone allowed to ``PUBLISH`` on
a store's channel can forge any podshare message. This module closes that hole for any
broadcast transport, in two layers:

- [`Authenticator`][podshare.transport.auth.Authenticator] and
  [`Opener`][podshare.transport.auth.Opener], a sans-I/O core (no anyio, no clock reads of its own:
  time is passed in). ``Authenticator.seal(topic, payload, now=...)`` returns the message to
  publish; ``Authenticator.opener(topic)`` makes one receiver's
  [`Opener`][podshare.transport.auth.Opener], whose ``open(message, now=...)`` returns the payload
  or raises [`MessageRefused`][podshare.exceptions.MessageRefused] (and counts why).
- [`Authenticated`][podshare.transport.auth.Authenticated], a transport wrapper that seals every
  published message and opens every received one, dropping (and counting) those that fail. It works
  around any [`Transport`][podshare.transport.base.Transport]; ``RedisTransport(secret=...)`` uses
  the same core inside the transport.

Example:
    >>> import anyio
    >>> from podshare.transport import MemoryNetwork, MemoryTransport
    >>> async def main() -> None:
    ...     net = MemoryNetwork()
    ...     secret = "correct horse battery staple"
    ...     async with (
    ...         Authenticated(MemoryTransport(network=net), secret=secret) as a,
    ...         Authenticated(MemoryTransport(network=net), secret=secret) as b,
    ...         MemoryTransport(network=net) as intruder,
    ...         b.subscribe("t") as inbox,
    ...     ):
    ...         await intruder.publish("t", b"forged")  # no MAC: dropped, counted
    ...         await a.publish("t", b"hello")
    ...         print(await anext(aiter(inbox)), b.stats().refused)
    >>> anyio.run(main)
    b'hello' 1

Wire format (version 1), all integers big-endian:

```text
offset  size  field
     0     1  version       1
     1     1  suite         1: HMAC-SHA256 tag; 2: AES-256-GCM (payload encrypted)
     2     4  key id        which secret sealed it (a fingerprint, see below)
     6    16  sender        random per Authenticator (per process, per transport)
    22     8  sequence      counts the sender's messages from 1, across topics
    30     8  time          the sender's wall clock, ms since the Unix epoch
    38     n  payload       (ciphertext in suite 2)
  38+n    16  tag           HMAC-SHA256(topic key, bytes 0..38+n) truncated to 128 bits,
                            or the GCM tag (the 38 header bytes are its associated data)
```

**Keys.** From each secret ``S``: ``prk = HMAC-SHA256("podshare/auth/v1", S)`` (an HKDF
extract with a fixed, versioned salt), then HKDF-expand steps
``HMAC-SHA256(prk, purpose || 0x00 || context || 0x01)`` with distinct purposes: the key id
is the first 4 bytes for purpose ``"key-id"``; the *topic key* uses purpose ``"topic"`` and
the topic (for Redis, the full channel name) as context, so a message sealed for one
channel does not verify on any other; AES-GCM uses a per-sender subkey (purpose
``"aead-sender"``, context the sender id, under the topic key), so the 96-bit nonce can be
the sender's sequence number and never repeats under one key. Tags are compared with
`hmac.compare_digest`.

**What is checked, in order** (each failure is one counter in
[`AuthStats`][podshare.transport.auth.AuthStats]): the length covers header and tag (``truncated``);
version and suite are known (``unknown_version``); the key id is one of ours (``unknown_key``: a
wrong secret); the tag verifies (``bad_tag``: forged or tampered); the time is within
``time_window`` of the receiver's clock (``too_old``, ``too_new``); the (sender, sequence) pair was
not accepted before (``replayed``). Nothing but the fixed 38-byte header is parsed before the tag
has verified, and nothing is stored for a message that failed.

**Replay protection.** Each [`Opener`][podshare.transport.auth.Opener] (one per subscription) keeps,
per sender, the highest sequence number accepted and a bitmap of the ``replay_window`` numbers below
it, as IPsec's anti-replay window does (RFC 4303 §3.4.3): a number seen before, or older than the
window, is refused. Senders are kept in least-recently-heard order, at most ``max_senders`` of them;
a sender silent for longer than ``time_window`` is forgotten (whatever it sent is now refused as
``too_old``), and when the table is full the least-recently-heard sender is evicted early; its
newest time becomes a watermark, and a message from a sender the table does not hold is refused
unless it is newer. Only messages whose tag verified create entries, so nothing an outsider sends
allocates memory. A sender's own messages, echoed back by a broadcast transport, are fresh to its
own subscriptions and are delivered once, like anyone else's; a captured copy replayed later carries
a (sender, sequence) pair the subscription has seen, and is refused.

The residual replay exposure is a subscription opened *after* the original was
delivered (a new process, or a store opened later): within ``time_window`` it has no
record of the capture, so a replayed message reaches it once. podshare's messages are
CRDT joins, so a replayed write or sync answer changes nothing; a replayed heartbeat of
a node that left can make it look alive until ``down_after`` passes. Keep
``time_window`` as short as your clocks allow (the default, 60 s, matches a store's
``max_clock_skew``); clocks further apart than it cannot talk at all.

**Key rotation.** ``secret`` may be a list: the first seals, every one opens. To roll a
fleet's secret, deploy ``[old, new]`` everywhere, then ``[new, old]``, then ``[new]``;
no message is refused at any step.

**Encryption.** ``encrypt=True`` seals with AES-256-GCM (from the well-kept
[cryptography](https://cryptography.io) package, the ``encryption`` extra) instead of
HMAC-SHA256: the payload is confidential as well as authenticated, for the price of one
dependency (with AES-NI it is even cheaper than the MAC: ``benchmarks/bench_auth.py``
measured seal + open of 100 B at 3.8 µs vs 4.9 µs). It is opt-in because the usual threat is a party
that can *publish* (an application sharing the Redis, a misconfigured ACL), which the MAC
already defeats, and because TLS (``rediss://``) already hides the traffic on the wire;
turn it on when other parties can *subscribe* to the channels (a shared Redis without
per-channel ACLs) and the values are sensitive. Every receiver opens both suites (when
``cryptography`` is installed), so a fleet can switch one pod at a time. Topics, message
sizes and timing stay visible either way.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import logging
import math
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeAlias

from podshare.exceptions import ClosedError, ConfigurationError, MessageRefused, MessageTooLarge
from podshare.transport.base import Transport, max_message_size

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "FORWARDED",
    "HEADER_SIZE",
    "OVERHEAD",
    "TAG_SIZE",
    "AuthStats",
    "Authenticated",
    "Authenticator",
    "Opener",
    "Refusal",
    "RefusalLog",
    "Secret",
]

_log = logging.getLogger("podshare.transport.auth")

#: A shared secret: ``bytes``, or a ``str`` (used as UTF-8).
Secret: TypeAlias = bytes | str

#: The format version in every message's first byte.
VERSION = 1
_SUITE_MAC = 1  # HMAC-SHA256, truncated to 128 bits
_SUITE_AEAD = 2  # AES-256-GCM
_HEADER = struct.Struct(">BB4s16sQQ")  # version, suite, key id, sender, sequence, time ms
HEADER_SIZE = _HEADER.size
"""Bytes of the fixed header every message starts with."""
TAG_SIZE = 16
"""Bytes of the tag every message ends with (128 bits)."""
OVERHEAD = HEADER_SIZE + TAG_SIZE
"""Bytes a sealed message has beyond its payload."""
_SENDER_SIZE = 16
_MAX_SEQ = 2**64 - 1
_MAX_TIME_MS = 2**64 - 1
_KEY_ID_SIZE = 4
_MIN_SECRET = 16
_SALT = b"podshare/auth/v1"
_TOPIC_KEY_CACHE = 1024  # sealing keys kept per Authenticator (topics published to)


class Refusal(enum.StrEnum):
    """Why [`Opener.open`][podshare.transport.auth.Opener.open] refused a message (the ``reason`` of
    [`MessageRefused`][podshare.exceptions.MessageRefused], and a counter of
    [`AuthStats`][podshare.transport.auth.AuthStats])."""

    TRUNCATED = "truncated"
    UNKNOWN_VERSION = "unknown_version"
    UNKNOWN_KEY = "unknown_key"
    BAD_TAG = "bad_tag"
    TOO_OLD = "too_old"
    TOO_NEW = "too_new"
    REPLAYED = "replayed"


@dataclass(frozen=True, slots=True)
class AuthStats:
    """Counters of an [`Authenticator`][podshare.transport.auth.Authenticator] (and of the transport
    that uses it).

    Attributes:
        sealed: messages sealed (published).
        opened: messages that passed every check and were delivered.
        refused: messages dropped, the sum of the reasons below.
        truncated: shorter than a header and a tag.
        unknown_version: an unknown format version or suite (or AES-GCM without the
            ``cryptography`` package).
        unknown_key: sealed with a secret this side does not hold.
        bad_tag: the tag did not verify: forged, tampered, or sealed for another topic.
        too_old: the sender's time is more than ``time_window`` behind the receiver's.
        too_new: the sender's time is more than ``time_window`` ahead of the receiver's.
        replayed: a (sender, sequence) pair accepted before, or too old to tell.
        senders_evicted: senders dropped early from a full replay table.
    """

    sealed: int = 0
    opened: int = 0
    refused: int = 0
    truncated: int = 0
    unknown_version: int = 0
    unknown_key: int = 0
    bad_tag: int = 0
    too_old: int = 0
    too_new: int = 0
    replayed: int = 0
    senders_evicted: int = 0


@dataclass(slots=True)
class _Counters:
    sealed: int = 0
    opened: int = 0
    refused: int = 0
    truncated: int = 0
    unknown_version: int = 0
    unknown_key: int = 0
    bad_tag: int = 0
    too_old: int = 0
    too_new: int = 0
    replayed: int = 0
    senders_evicted: int = 0

    def snapshot(self) -> AuthStats:
        return AuthStats(**dataclasses.asdict(self))


# --- keys ---------------------------------------------------------------------------


def _expand(prk: bytes, purpose: bytes, context: bytes) -> bytes:
    # One HKDF-expand block (RFC 5869) with info = purpose || 0x00 || context; purposes
    # never contain 0x00, so distinct (purpose, context) pairs never share an input.
    return hmac.digest(prk, purpose + b"\x00" + context + b"\x01", "sha256")


class _Secret:
    """One secret, reduced to its pseudo-random key and its public fingerprint."""

    __slots__ = ("key_id", "prk")

    def __init__(self, secret: bytes) -> None:
        self.prk = hmac.digest(_SALT, secret, "sha256")
        self.key_id = _expand(self.prk, b"key-id", b"")[:_KEY_ID_SIZE]

    def topic_key(self, topic: str) -> bytes:
        return _expand(self.prk, b"topic", topic.encode("utf-8", "surrogatepass"))


def _sender_key(topic_key: bytes, sender: bytes) -> bytes:
    return _expand(topic_key, b"aead-sender", sender)


def _nonce(seq: int) -> bytes:
    return seq.to_bytes(12, "big")


class _Crypto:
    """``cryptography``'s AES-GCM, imported on first use (None when not installed)."""

    loaded = False
    aesgcm: type[AESGCM] | None = None
    invalid_tag: type[Exception] = Exception


def _aesgcm() -> type[AESGCM] | None:
    """``cryptography``'s AESGCM class, or None when the package is not installed."""
    if not _Crypto.loaded:
        _Crypto.loaded = True
        try:
            from cryptography.exceptions import InvalidTag
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:
            pass
        else:
            _Crypto.aesgcm, _Crypto.invalid_tag = AESGCM, InvalidTag
    return _Crypto.aesgcm


def _secrets(secret: Secret | Sequence[Secret]) -> list[_Secret]:
    candidates = [secret] if isinstance(secret, bytes | bytearray | str) else secret
    if not isinstance(candidates, Sequence) or not candidates:
        raise ConfigurationError(
            "secret must be bytes or str, or a non-empty list of them (the first seals)"
        )
    result: list[_Secret] = []
    seen: set[bytes] = set()
    for candidate in candidates:
        if isinstance(candidate, str):
            raw = candidate.encode()
        elif isinstance(candidate, bytes | bytearray):
            raw = bytes(candidate)
        else:
            raise ConfigurationError(f"secret must be bytes or str, not {type(candidate).__name__}")
        if len(raw) < _MIN_SECRET:
            raise ConfigurationError(
                f"secret must be at least {_MIN_SECRET} bytes (use secrets.token_urlsafe(32)); "
                f"got {len(raw)}"
            )
        if raw not in seen:
            seen.add(raw)
            result.append(_Secret(raw))
    return result


def _check_positive(name: str, value: object, *, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if (
        isinstance(value, bool)
        or not isinstance(value, kind)
        or not value > 0
        or not math.isfinite(value)
    ):
        what = "a positive int" if integer else "a positive number of seconds"
        raise ConfigurationError(f"{name} must be {what}, not {value!r}")


# --- the sans-I/O core ------------------------------------------------------------------


class Authenticator:
    """Seals messages under a shared secret and makes openers to check them.

    Sans-I/O: it reads no clock and does no I/O; every call gets the wall-clock time
    (``time.time()`` seconds) as ``now``. One instance stands for one sender: it holds a
    random sender id and the sequence counter, so use one per transport (or process),
    never one per message.

    Args:
        secret: the shared secret (``bytes`` or ``str``, at least 16 bytes), or a list of
            them for key rotation: the first seals, every one opens.
        encrypt: seal with AES-256-GCM (payload encrypted and authenticated) instead of
            HMAC-SHA256; needs the ``encryption`` extra (``cryptography``).
        time_window: seconds a message's time may differ from the receiver's clock.
        replay_window: sequence numbers below a sender's newest that are still accepted
            (once each) when they arrive late.
        max_senders: senders each [`Opener`][podshare.transport.auth.Opener] remembers; the least
            recently heard is evicted beyond it. Keep it above the number of processes that
            publish on one topic: an evicted sender's next message is accepted only if its
            time is newer than everything evicted so far.

    Raises:
        ConfigurationError: a bad option, or ``encrypt=True`` without ``cryptography``.

    Example:
        >>> auth = Authenticator(b"a secret of sixteen bytes or more")
        >>> opener = auth.opener("ps/config")
        >>> sealed = auth.seal("ps/config", b"payload", now=1000.0)
        >>> opener.open(sealed, now=1000.5)
        b'payload'
        >>> opener.open(sealed, now=1000.6)
        Traceback (most recent call last):
        ...
        podshare.exceptions.MessageRefused: replayed: sequence 1 of this sender was seen
        >>> auth.stats().refused, auth.stats().replayed
        (1, 1)
    """

    __slots__ = (
        "_cipher",
        "_counters",
        "_keys",
        "_max_senders",
        "_replay_window",
        "_seal_cache",
        "_sender",
        "_seq",
        "_suite",
        "_window_ms",
    )

    def __init__(
        self,
        secret: Secret | Sequence[Secret],
        *,
        encrypt: bool = False,
        time_window: float = 60.0,
        replay_window: int = 1024,
        max_senders: int = 1024,
    ) -> None:
        self._keys = _secrets(secret)
        if not isinstance(encrypt, bool):
            raise ConfigurationError(f"encrypt must be a bool, not {encrypt!r}")
        cipher = _aesgcm() if encrypt else None
        if encrypt and cipher is None:
            raise ConfigurationError(
                "encrypt=True needs the cryptography package: pip install 'podshare[encryption]'"
            )
        _check_positive("time_window", time_window)
        _check_positive("replay_window", replay_window, integer=True)
        _check_positive("max_senders", max_senders, integer=True)
        self._cipher = cipher
        self._suite = _SUITE_AEAD if encrypt else _SUITE_MAC
        self._window_ms = math.ceil(time_window * 1000)
        self._replay_window = replay_window
        self._max_senders = max_senders
        self._sender = secrets.token_bytes(_SENDER_SIZE)
        self._seq = 0
        # topic -> the keyed HMAC to copy, or the AES-GCM object keyed for this sender
        self._seal_cache: dict[str, hmac.HMAC | AESGCM] = {}
        self._counters = _Counters()

    @property
    def overhead(self) -> int:
        """Bytes a sealed message has beyond its payload
        ([`OVERHEAD`][podshare.transport.auth.OVERHEAD])."""
        return OVERHEAD

    @property
    def encrypts(self) -> bool:
        """Whether [`seal`][podshare.transport.auth.Authenticator.seal] encrypts the payload
        (AES-256-GCM)."""
        return self._suite == _SUITE_AEAD

    def seal(self, topic: str, payload: bytes, *, now: float) -> bytes:
        """The message to publish on ``topic``: header, ``payload`` and tag.

        Args:
            topic: the topic (or channel) the message is published on; it is bound into
                the key, so the message verifies nowhere else.
            payload: the bytes to protect.
            now: the sender's wall-clock time, in seconds since the Unix epoch.
        """
        seq = self._seq + 1
        if seq > _MAX_SEQ:  # after 2**64 messages: continue as a new sender
            self._sender = secrets.token_bytes(_SENDER_SIZE)
            self._seal_cache.clear()
            seq = 1
        self._seq = seq
        time_ms = min(max(int(now * 1000), 0), _MAX_TIME_MS)
        signer = self._keys[0]
        header = _HEADER.pack(VERSION, self._suite, signer.key_id, self._sender, seq, time_ms)
        key = self._seal_cache.get(topic)
        if key is None:
            key = self._sealing_key(topic)
        self._counters.sealed += 1
        if isinstance(key, hmac.HMAC):
            body = header + payload
            mac = key.copy()  # the key already absorbed: cheaper than hmac.digest()
            mac.update(body)
            return body + mac.digest()[:TAG_SIZE]
        return header + key.encrypt(_nonce(seq), payload, header)

    def _sealing_key(self, topic: str) -> hmac.HMAC | AESGCM:
        topic_key = self._keys[0].topic_key(topic)
        key: hmac.HMAC | AESGCM
        if self._cipher is not None:
            key = self._cipher(_sender_key(topic_key, self._sender))
        else:
            key = hmac.new(topic_key, digestmod=hashlib.sha256)
        cache = self._seal_cache
        if len(cache) >= _TOPIC_KEY_CACHE:
            del cache[next(iter(cache))]
        cache[topic] = key
        return key

    def opener(self, topic: str) -> Opener:
        """A new [`Opener`][podshare.transport.auth.Opener] for messages received on ``topic`` (one
        per subscription: it remembers which messages it has accepted)."""
        return Opener(self, topic)

    def stats(self) -> AuthStats:
        """A snapshot of the counters (sealing, and every opener made by this instance)."""
        return self._counters.snapshot()


class _Sender:
    """What an [`Opener`][podshare.transport.auth.Opener] remembers of one sender."""

    __slots__ = ("bits", "cipher", "floor", "key_id", "latest", "top")

    def __init__(self, top: int, latest: int, floor: int) -> None:
        self.top = top  # highest sequence accepted
        self.bits = 1  # bit i: sequence top - i was accepted
        self.latest = latest  # newest time accepted, ms
        self.floor = floor  # times at or below it are refused (the eviction watermark)
        self.key_id = b""
        self.cipher: AESGCM | None = None  # AES-GCM keyed for this sender, once seen


class Opener:
    """Checks the messages one subscription receives: tag, time window and replays.

    Made by [`Authenticator.opener`][podshare.transport.auth.Authenticator.opener]; counts into that
    authenticator's [`AuthStats`][podshare.transport.auth.AuthStats]. Memory is bounded by
    ``max_senders`` entries of a few hundred bytes, created only for messages whose tag verified.
    """

    __slots__ = (
        "_cipher",
        "_counters",
        "_keys",
        "_mask",
        "_max_senders",
        "_senders",
        "_topic_keys",
        "_watermark",
        "_width",
        "_window_ms",
    )

    def __init__(self, authenticator: Authenticator, topic: str) -> None:
        self._counters = authenticator._counters
        self._window_ms = authenticator._window_ms
        self._width = authenticator._replay_window
        self._mask = (1 << self._width) - 1
        self._max_senders = authenticator._max_senders
        # key id -> (topic key, the keyed HMAC to copy for each message)
        self._topic_keys: dict[bytes, tuple[bytes, hmac.HMAC]] = {}
        for key in authenticator._keys:
            topic_key = key.topic_key(topic)
            self._topic_keys[key.key_id] = topic_key, hmac.new(topic_key, digestmod=hashlib.sha256)
        self._cipher = _aesgcm()
        self._senders: OrderedDict[bytes, _Sender] = OrderedDict()
        self._watermark = -1

    def __len__(self) -> int:
        """How many senders this opener currently remembers."""
        return len(self._senders)

    def open(self, message: bytes, *, now: float) -> bytes:
        """The payload of ``message``, once it passed every check (and is now remembered).

        Args:
            message: the bytes received.
            now: the receiver's wall-clock time, in seconds since the Unix epoch.

        Raises:
            MessageRefused: with ``reason`` a [`Refusal`][podshare.transport.auth.Refusal] value;
                the message is dropped, counted, and leaves nothing behind.
        """
        if type(message) is not bytes:
            message = bytes(message)
        if len(message) < OVERHEAD:
            raise self._refuse(Refusal.TRUNCATED, f"{len(message)} bytes, under {OVERHEAD}")
        version, suite, key_id, sender, seq, time_ms = _HEADER.unpack_from(message)
        if version != VERSION or suite not in (_SUITE_MAC, _SUITE_AEAD):
            raise self._refuse(Refusal.UNKNOWN_VERSION, f"version {version}, suite {suite}")
        keys = self._topic_keys.get(key_id)
        if keys is None:
            raise self._refuse(Refusal.UNKNOWN_KEY, "sealed with a secret this side lacks")
        entry = self._senders.get(sender)
        payload: bytes | None = None
        cipher: AESGCM | None = None
        if suite == _SUITE_MAC:
            mac = keys[1].copy()
            mac.update(memoryview(message)[:-TAG_SIZE])
            if not hmac.compare_digest(mac.digest()[:TAG_SIZE], message[-TAG_SIZE:]):
                raise self._refuse(Refusal.BAD_TAG, "the HMAC does not verify")
        else:
            cipher = self._sender_cipher(entry, key_id, keys[0], sender)
            if cipher is None:
                raise self._refuse(
                    Refusal.UNKNOWN_VERSION, "AES-GCM needs the cryptography package"
                )
            try:
                payload = cipher.decrypt(
                    _nonce(seq), memoryview(message)[HEADER_SIZE:], message[:HEADER_SIZE]
                )
            except _Crypto.invalid_tag:
                raise self._refuse(Refusal.BAD_TAG, "the AES-GCM tag does not verify") from None
        now_ms = int(now * 1000)
        if time_ms < now_ms - self._window_ms:
            raise self._refuse(
                Refusal.TOO_OLD, f"sent {(now_ms - time_ms) / 1000:.3f} s ago, past the window"
            )
        if time_ms > now_ms + self._window_ms:
            raise self._refuse(
                Refusal.TOO_NEW, f"sent {(time_ms - now_ms) / 1000:.3f} s ahead, past the window"
            )
        if entry is None:
            if time_ms <= self._watermark:
                raise self._refuse(Refusal.REPLAYED, "an unknown sender, older than the evictions")
            entry = self._admit(sender, seq, time_ms, now_ms)
            if cipher is not None:
                entry.key_id, entry.cipher = key_id, cipher
        else:
            self._accept(entry, seq, time_ms)
            self._senders.move_to_end(sender)
        self._counters.opened += 1
        if payload is None:
            return message[HEADER_SIZE:-TAG_SIZE]
        return payload

    def _sender_cipher(
        self, entry: _Sender | None, key_id: bytes, topic_key: bytes, sender: bytes
    ) -> AESGCM | None:
        if entry is not None and entry.key_id == key_id and entry.cipher is not None:
            return entry.cipher
        if self._cipher is None:
            return None
        cipher: AESGCM = self._cipher(_sender_key(topic_key, sender))
        if entry is not None:
            # Cached only for a sender already known; a forger claiming its id merely
            # fails the tag under the right key.
            entry.key_id, entry.cipher = key_id, cipher
        return cipher

    def _accept(self, entry: _Sender, seq: int, time_ms: int) -> None:
        if time_ms <= entry.floor:
            raise self._refuse(Refusal.REPLAYED, "older than this sender's eviction")
        if seq > entry.top:
            shift = seq - entry.top
            entry.bits = ((entry.bits << shift) | 1) & self._mask if shift < self._width else 1
            entry.top = seq
        else:
            offset = entry.top - seq
            if offset >= self._width:
                raise self._refuse(Refusal.REPLAYED, f"sequence {seq} is below the window")
            if entry.bits >> offset & 1:
                raise self._refuse(Refusal.REPLAYED, f"sequence {seq} of this sender was seen")
            entry.bits |= 1 << offset
        if time_ms > entry.latest:
            entry.latest = time_ms

    def _admit(self, sender: bytes, seq: int, time_ms: int, now_ms: int) -> _Sender:
        senders = self._senders
        # Forget senders silent past the window: their messages are too old by now.
        cutoff = now_ms - self._window_ms
        while senders and next(iter(senders.values())).latest < cutoff:
            senders.popitem(last=False)
        if len(senders) >= self._max_senders:
            _, evicted = senders.popitem(last=False)
            self._watermark = max(self._watermark, evicted.latest)
            self._counters.senders_evicted += 1
        entry = senders[sender] = _Sender(seq, time_ms, self._watermark)
        return entry

    def _refuse(self, reason: Refusal, detail: str) -> MessageRefused:
        counters = self._counters
        counters.refused += 1
        setattr(counters, reason.value, getattr(counters, reason.value) + 1)
        return MessageRefused(reason, detail)


# --- logging ------------------------------------------------------------------------------


class RefusalLog:
    """Logs refused messages at most once per ``interval`` seconds, summarising the rest.

    A flood of forgeries must not flood the log: the first refusal is logged at once
    (INFO), later ones are tallied and reported with the next line an interval later.
    Every refusal is counted in [`AuthStats`][podshare.transport.auth.AuthStats] whatever is logged.

    Args:
        logger: where the lines go.
        interval: seconds between two lines.
        clock: a monotonic clock (seconds).
    """

    __slots__ = ("_clock", "_interval", "_last", "_logger", "_pending")

    def __init__(
        self,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        *,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last = -math.inf
        self._pending: dict[str, int] = {}

    def record(self, error: MessageRefused, topic: str) -> None:
        """Count ``error`` (refused on ``topic``); log a summary when an interval passed."""
        pending = self._pending
        pending[error.reason] = pending.get(error.reason, 0) + 1
        now = self._clock()
        if now - self._last < self._interval:
            return
        self._last = now
        total = sum(pending.values())
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(pending.items()))
        pending.clear()
        self._logger.info(
            "dropped %d message(s) that failed authentication on %r (%s; last: %s); "
            "logged at most every %g s, every one is counted in stats()",
            total,
            topic,
            reasons,
            error,
            self._interval,
        )


# --- the transport wrapper ---------------------------------------------------------------

FORWARDED: tuple[str, ...] = ("add_gap_listener",)
"""Optional capabilities (methods) of the inner transport that
[`Authenticated`][podshare.transport.auth.Authenticated] exposes as they are, when (and only
when) the inner transport has them. A capability that must see the authenticated payloads, or a
plain attribute, needs its own code in the wrapper instead.
"""


class Authenticated:
    """A transport wrapper: every message is sealed on publish and checked on receipt.

    Messages that fail (no or wrong secret, tampered, replayed, outside the time window, truncated,
    unknown version) are dropped before delivery and counted in
    [`stats`][podshare.transport.auth.Authenticated.stats]; a rate-limited INFO line reports them.
    Every process of the fleet wraps its transport with the same secret.

    The wrapper implements [`Transport`][podshare.transport.base.Transport]. Its
    ``max_message_size`` is the inner transport's less
    [`OVERHEAD`][podshare.transport.auth.OVERHEAD]. Optional capabilities of the inner transport
    listed in [`FORWARDED`][podshare.transport.auth.FORWARDED] (gap reporting, ``add_gap_listener``)
    are forwarded as they are, and absent when the inner transport lacks them. Entering the wrapper
    enters the inner transport; leaving it or
    [`aclose`][podshare.transport.auth.Authenticated.aclose] closes it. A wrapper around a transport
    that is already open may also be used without entering it.

    Args:
        inner: the transport to carry the sealed messages.
        secret: the shared secret (``bytes`` or ``str``, at least 16 bytes), or a list
            for key rotation (the first seals, every one opens).
        encrypt: seal with AES-256-GCM, so the payload is also confidential (needs the
            ``encryption`` extra); receivers open either kind.
        time_window: seconds a message's time may differ from this process's clock.
        replay_window: how far out of order (in one sender's messages) a message may
            arrive and still be accepted once.
        max_senders: senders each subscription remembers for replay protection (keep it
            above the number of processes publishing on one topic).
        clock: the wall clock (seconds since the Unix epoch); for tests.

    Raises:
        ConfigurationError: a bad option.

    Example:
        >>> import anyio
        >>> from podshare import Store
        >>> from podshare.transport import MemoryNetwork, MemoryTransport
        >>> async def main() -> None:
        ...     net, secret = MemoryNetwork(), b"sixteen bytes or more, please"
        ...     async with (
        ...         Authenticated(MemoryTransport(network=net), secret=secret) as t1,
        ...         Authenticated(MemoryTransport(network=net), secret=secret) as t2,
        ...         Store[int]("counts", t1, hydrate_timeout=0) as s1,
        ...         Store[int]("counts", t2, hydrate_timeout=0) as s2,
        ...         s2.watch(key="a") as events,
        ...     ):
        ...         await s1.set("a", 1)
        ...         print((await anext(aiter(events))).value)
        >>> anyio.run(main)
        1
    """

    def __init__(
        self,
        inner: Transport,
        *,
        secret: Secret | Sequence[Secret],
        encrypt: bool = False,
        time_window: float = 60.0,
        replay_window: int = 1024,
        max_senders: int = 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(inner, Transport):
            raise ConfigurationError(
                f"inner must implement publish(), subscribe() and aclose(), not {inner!r}"
            )
        if not callable(clock):
            raise ConfigurationError(f"clock must be callable, not {clock!r}")
        self._inner = inner
        self._auth = Authenticator(
            secret,
            encrypt=encrypt,
            time_window=time_window,
            replay_window=replay_window,
            max_senders=max_senders,
        )
        self._clock = clock
        self._refusals = RefusalLog(_log)
        self._closed = False
        # Instance attributes, so isinstance() against the runtime-checkable capability
        # protocols (which look attributes up statically) sees exactly the inner ones.
        for name in FORWARDED:
            attribute = getattr(inner, name, None)
            if callable(attribute):
                setattr(self, name, attribute)

    @property
    def inner(self) -> Transport:
        """The wrapped transport."""
        return self._inner

    @property
    def max_message_size(self) -> int:
        """The largest payload ``publish`` accepts: the inner transport's limit less
        [`OVERHEAD`][podshare.transport.auth.OVERHEAD]."""
        return max_message_size(self._inner) - OVERHEAD

    def stats(self) -> AuthStats:
        """A snapshot of the counters: messages sealed, opened, and refused by reason."""
        return self._auth.stats()

    def __repr__(self) -> str:
        return f"Authenticated({self._inner!r})"

    # --- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._closed:
            raise ClosedError("this Authenticated transport is closed")
        enter = getattr(self._inner, "__aenter__", None)
        if enter is not None:
            await enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        leave = getattr(self._inner, "__aexit__", None)
        if leave is not None:
            await leave(exc_type, exc, tb)
        else:
            await self._inner.aclose()

    async def aclose(self) -> None:
        """Close the inner transport; later ``publish``/``subscribe`` raise
        [`ClosedError`][podshare.exceptions.ClosedError]. Idempotent."""
        self._closed = True
        await self._inner.aclose()

    # --- the Transport protocol ------------------------------------------------------

    async def publish(self, topic: str, message: bytes) -> None:
        """Seal ``message`` and publish it on ``topic`` through the inner transport.

        Raises:
            MessageTooLarge: ``message`` is above ``max_message_size`` (nothing is sent).
            ClosedError: the wrapper is closed.
            TransportError: as the inner transport raises it.
        """
        if self._closed:
            raise ClosedError("this Authenticated transport is closed")
        if not isinstance(message, bytes | bytearray | memoryview):
            raise TypeError(f"message must be bytes, not {type(message).__name__}")
        limit = self.max_message_size
        if len(message) > limit:
            raise MessageTooLarge(
                f"message of {len(message)} bytes exceeds max_message_size ({limit}: the "
                f"inner transport's less {OVERHEAD} bytes of authentication)"
            )
        sealed = self._auth.seal(topic, bytes(message), now=self._clock())
        await self._inner.publish(topic, sealed)

    def subscribe(self, topic: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Subscribe to ``topic``; the iterator yields only messages that passed the checks.

        Raises:
            ClosedError: on entering, when the wrapper is closed.
        """
        return self._subscription(topic)

    @asynccontextmanager
    async def _subscription(self, topic: str) -> AsyncIterator[AsyncIterator[bytes]]:
        if self._closed:
            raise ClosedError("this Authenticated transport is closed")
        opener = self._auth.opener(topic)
        async with self._inner.subscribe(topic) as messages:
            yield _Opened(messages, opener, topic, self._clock, self._refusals)


class _Opened:
    """A subscription's iterator: the inner messages that pass the opener, as payloads."""

    __slots__ = ("_clock", "_messages", "_opener", "_refusals", "_topic")

    def __init__(
        self,
        messages: AsyncIterator[bytes],
        opener: Opener,
        topic: str,
        clock: Callable[[], float],
        refusals: RefusalLog,
    ) -> None:
        self._messages = messages
        self._opener = opener
        self._topic = topic
        self._clock = clock
        self._refusals = refusals

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        while True:
            message = await anext(self._messages)
            try:
                return self._opener.open(message, now=self._clock())
            except MessageRefused as exc:
                self._refusals.record(exc, self._topic)
