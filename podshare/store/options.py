"""`ReplicaOptions`: the timing and size options of the replica core (`Replica`).

Every time is in milliseconds; the `Store` builds them from its seconds-valued
arguments. Kept apart so the options can be read (and documented) without the core.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from podshare.exceptions import ConfigurationError
from podshare.store.packing import ENVELOPE_SLACK
from podshare.transport.base import DEFAULT_MAX_MESSAGE_SIZE

__all__ = ["ReplicaOptions"]


@dataclass(frozen=True, slots=True)
class ReplicaOptions:
    """Timing and size options of a `Replica`; every time is in milliseconds.

    Attributes:
        tombstone_ttl_ms: a delete is remembered at least this long (and until the
            horizon allows forgetting it; see `podshare.store.horizon`). 24 h.
        tombstone_hard_cap_ms: writers unheard of for this long are forgotten, and no
            tombstone outlives it. 7 days.
        compaction_interval_ms: how often `Replica.tick()` compacts tombstones.
        max_clock_skew_ms: the clock follows remote stamps at most this far ahead of
            the wall clock; senders further ahead are reported; entries stamped more than
            twice this far ahead are refused until time catches up.
        max_message_size: no outgoing message is larger; received ones above it are
            refused.
        hello_window_ms: how long a joining replica waits for a synced peer to answer
            its hello before weighing the evidence (then it asks again, backing off).
        sync_timeout_ms: an exchange without progress for this long fails.
        sync_window: bytes an entry stream may have unacknowledged once warmed up.
        sync_chunk: the largest part of an entry stream.

    Raises:
        ConfigurationError: an option is not a positive int.

    Example:
        >>> ReplicaOptions(hello_window_ms=500).hello_window_ms
        500
        >>> ReplicaOptions(sync_timeout_ms=0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        podshare.exceptions.ConfigurationError: sync_timeout_ms must be an int >= 1, got 0
    """

    tombstone_ttl_ms: int = 24 * 3600 * 1000
    tombstone_hard_cap_ms: int = 7 * 24 * 3600 * 1000
    compaction_interval_ms: int = 5 * 60 * 1000
    max_clock_skew_ms: int = 60_000
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    hello_window_ms: int = 300
    sync_timeout_ms: int = 2_000
    sync_window: int = 1024 * 1024
    sync_chunk: int = 64 * 1024

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value < 1:
                raise ConfigurationError(f"{f.name} must be an int >= 1, got {value!r}")
        if self.max_message_size < 2 * ENVELOPE_SLACK:
            raise ConfigurationError(
                f"max_message_size must be at least {2 * ENVELOPE_SLACK}, "
                f"got {self.max_message_size}"
            )
        if self.tombstone_hard_cap_ms < self.tombstone_ttl_ms:
            raise ConfigurationError("tombstone_hard_cap_ms must be at least tombstone_ttl_ms")
