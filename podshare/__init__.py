"""podshare: the same ``dict[str, T]`` in every process of a fleet.

Reads are local (about one dict lookup); writes are broadcast over a pluggable
transport and every replica converges, because every value is a CRDT.

Example:
    >>> import anyio
    >>> from podshare import Store
    >>> from podshare.transport import MemoryTransport
    >>> async def main() -> None:
    ...     async with MemoryTransport() as tr, Store[int]("counts", tr) as store:
    ...         await store.set("a", 1)
    ...         print(store.get("a"))
    >>> anyio.run(main)
    1
"""

from __future__ import annotations

from podshare._version import __version__ as __version__
from podshare.exceptions import (
    AuthenticationError as AuthenticationError,
)
from podshare.exceptions import (
    CallError as CallError,
)
from podshare.exceptions import (
    CallTimeout as CallTimeout,
)
from podshare.exceptions import (
    ClosedError as ClosedError,
)
from podshare.exceptions import (
    ConfigurationError as ConfigurationError,
)
from podshare.exceptions import (
    DecodeError as DecodeError,
)
from podshare.exceptions import (
    EndpointBusy as EndpointBusy,
)
from podshare.exceptions import (
    FrameTooLarge as FrameTooLarge,
)
from podshare.exceptions import (
    InvalidValue as InvalidValue,
)
from podshare.exceptions import (
    MessageRefused as MessageRefused,
)
from podshare.exceptions import (
    MessageTooLarge as MessageTooLarge,
)
from podshare.exceptions import (
    NoRoute as NoRoute,
)
from podshare.exceptions import (
    OwnerUnavailable as OwnerUnavailable,
)
from podshare.exceptions import (
    PodshareError as PodshareError,
)
from podshare.exceptions import (
    ProtocolError as ProtocolError,
)
from podshare.exceptions import (
    RemoteError as RemoteError,
)
from podshare.exceptions import (
    TransportError as TransportError,
)
from podshare.store.codec import Codec as Codec
from podshare.store.codec import JsonCodec as JsonCodec
from podshare.store.codec import MsgpackCodec as MsgpackCodec
from podshare.store.events import Event as Event
from podshare.store.events import EventKind as EventKind
from podshare.store.events import Stats as Stats
from podshare.store.store import Store as Store

__all__ = [
    "AuthenticationError",
    "CallError",
    "CallTimeout",
    "ClosedError",
    "Codec",
    "ConfigurationError",
    "DecodeError",
    "EndpointBusy",
    "Event",
    "EventKind",
    "FrameTooLarge",
    "InvalidValue",
    "JsonCodec",
    "MessageRefused",
    "MessageTooLarge",
    "MsgpackCodec",
    "NoRoute",
    "OwnerUnavailable",
    "PodshareError",
    "ProtocolError",
    "RemoteError",
    "Stats",
    "Store",
    "TransportError",
    "__version__",
]
