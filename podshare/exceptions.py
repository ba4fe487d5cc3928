"""Every exception podshare raises, under one root.

Catch [`PodshareError`][podshare.PodshareError] to catch them all. The tree:

```text
PodshareError
├── ConfigurationError        a bad option, named in the message (also ValueError)
├── ClosedError               the store, transport or endpoint is closed
├── InvalidValue              a value that cannot be stored or encoded (also ValueError)
├── NotSynced                 require_sync: no synced peer handed its state over in time
├── StoreNotEmpty             seed() on a store that already holds entries
├── DuplicateNodeId           another live process uses this node id (reported, not raised)
├── PersistenceError          a persistence backend failed, or holds state that is not ours
├── TransportError            the wire failed: not connected, publish refused, ...
│   └── MessageTooLarge       refused before it reached the wire
├── ProtocolError             bytes from the network that podshare will not accept
│   ├── DecodeError           garbage, truncated, wrong types, unknown version or kind
│   ├── FrameTooLarge         a frame or message over the size cap
│   └── AuthenticationError   a TCP peer failed the handshake or a frame's MAC
│       └── MessageRefused    a message failed its MAC, time window or replay check
└── CallError                 callreply failures
    ├── NoRoute               no owner is known for the target
    ├── OwnerUnavailable      the owner is known but down
    ├── CallTimeout           no reply in time (also TimeoutError)
    ├── RemoteError           the remote handler raised
    └── EndpointBusy          the owner is at its concurrency limit
```

Third-party exceptions (redis-py, ssl, OS errors) are mapped at the boundary, so code
using podshare never has to catch ``redis.ConnectionError``.

Example:
    >>> from podshare.exceptions import DecodeError, ProtocolError, PodshareError
    >>> issubclass(DecodeError, ProtocolError) and issubclass(ProtocolError, PodshareError)
    True
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "CallError",
    "CallTimeout",
    "ClosedError",
    "ConfigurationError",
    "DecodeError",
    "DuplicateNodeId",
    "EndpointBusy",
    "FrameTooLarge",
    "InvalidValue",
    "MessageRefused",
    "MessageTooLarge",
    "NoRoute",
    "NotSynced",
    "OwnerUnavailable",
    "PersistenceError",
    "PodshareError",
    "ProtocolError",
    "RemoteError",
    "StoreNotEmpty",
    "TransportError",
]


class PodshareError(Exception):
    """The root of every exception podshare raises."""


class ConfigurationError(PodshareError, ValueError):
    """An option has a bad value; the message names the option and what it accepts."""


class ClosedError(PodshareError):
    """The store, transport or endpoint was used after it was closed (or before opening)."""


class InvalidValue(PodshareError, ValueError):
    """A value cannot be stored: it does not match the store's type or cannot be encoded."""


class NotSynced(PodshareError, TimeoutError):
    """``require_sync=True``: the store found peers but none handed its state over within
    ``hydrate_timeout``."""


class StoreNotEmpty(PodshareError):
    """``Store.seed`` was called on a store that already holds entries."""


class DuplicateNodeId(PodshareError):
    """Another live process uses this process's node id.

    Reported to ``on_error`` (and logged at ERROR) when detected; replicas keep
    converging, but presence, routes and identity are ambiguous until every process has
    its own id (``PODSHARE_NODE_ID`` or ``node_id=``).
    """


class PersistenceError(PodshareError):
    """A persistence backend could not load or write (unreachable, refused, busy, full),
    or its place holds state that podshare did not write (a foreign SQLite file, a newer
    schema). The message names the backend, the place and the cause; a failed write
    changed nothing."""


class TransportError(PodshareError):
    """The transport could not do what was asked (not connected, publish failed, ...)."""


class MessageTooLarge(TransportError):
    """A message was refused before it reached the wire because it exceeds the size cap."""


class ProtocolError(PodshareError):
    """Bytes received from the network that podshare will not accept."""


class DecodeError(ProtocolError, ValueError):
    """Malformed input: garbage, truncated, wrong types, unknown version or kind."""


class FrameTooLarge(ProtocolError):
    """A frame or message declares a size above the configured cap."""


class AuthenticationError(ProtocolError):
    """A peer failed the handshake (wrong or missing secret) or sent a frame with a bad MAC."""


class MessageRefused(AuthenticationError):
    """A message failed authentication (see [`podshare.transport.auth`][podshare.transport.auth]).

    Raised by [`Opener.open`][podshare.transport.auth.Opener.open]; transports count it and drop
    the message, so applications normally see it only in statistics.

    Attributes:
        reason: why, one of ``"truncated"``, ``"unknown_version"``, ``"unknown_key"``,
            ``"bad_tag"``, ``"too_old"``, ``"too_new"``, ``"replayed"``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class CallError(PodshareError):
    """The root of callreply's errors."""


class NoRoute(CallError):
    """No owner is known for the call's target."""


class OwnerUnavailable(CallError):
    """The target's owner is known but is down (no heartbeat within ``down_after``)."""


class CallTimeout(CallError, TimeoutError):
    """No reply arrived within the call's timeout."""


class EndpointBusy(CallError):
    """The owner refused the call because it is at its ``max_concurrency`` limit."""


class RemoteError(CallError):
    """The remote handler raised; carries the remote exception's type name and message.

    Attributes:
        type_name: the qualified name of the exception type raised by the handler.
        message: ``str()`` of that exception.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
