"""Transports: how podshare's messages travel between processes.

``Transport`` is the protocol; each implementation lives in its own module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from podshare.transport.auth import Authenticated as Authenticated
from podshare.transport.auth import Authenticator as Authenticator
from podshare.transport.auth import AuthStats as AuthStats
from podshare.transport.base import ClusterReadiness as ClusterReadiness
from podshare.transport.base import EchoSkipping as EchoSkipping
from podshare.transport.base import GapListeners as GapListeners
from podshare.transport.base import GapReporting as GapReporting
from podshare.transport.base import SubscriberCounting as SubscriberCounting
from podshare.transport.base import Transport as Transport
from podshare.transport.discovery import DNSDiscoverer as DNSDiscoverer
from podshare.transport.discovery import DNSStats as DNSStats
from podshare.transport.memory import FaultPlan as FaultPlan
from podshare.transport.memory import MemoryNetwork as MemoryNetwork
from podshare.transport.memory import MemoryTransport as MemoryTransport
from podshare.transport.memory import MemoryTransportStats as MemoryTransportStats
from podshare.transport.tcp import PeerConnection as PeerConnection
from podshare.transport.tcp import TcpStats as TcpStats
from podshare.transport.tcp import TcpTransport as TcpTransport

__all__ = [
    "AuthStats",
    "Authenticated",
    "Authenticator",
    "ClusterReadiness",
    "DNSDiscoverer",
    "DNSStats",
    "EchoSkipping",
    "FaultPlan",
    "GapListeners",
    "GapReporting",
    "MemoryNetwork",
    "MemoryTransport",
    "MemoryTransportStats",
    "NatsRemote",
    "NatsStats",
    "NatsTransport",
    "PeerConnection",
    "RedisRemote",
    "RedisStats",
    "RedisTransport",
    "SubscriberCounting",
    "TcpStats",
    "TcpTransport",
    "Transport",
]

if TYPE_CHECKING:
    from podshare.transport.nats import NatsRemote as NatsRemote
    from podshare.transport.nats import NatsStats as NatsStats
    from podshare.transport.nats import NatsTransport as NatsTransport
    from podshare.transport.redis import RedisRemote as RedisRemote
    from podshare.transport.redis import RedisStats as RedisStats
    from podshare.transport.redis import RedisTransport as RedisTransport


def __getattr__(name: str) -> object:
    # The Redis transport needs the optional ``redis`` extra: import it on first use, so
    # ``import podshare.transport`` works without redis-py installed.
    # RedisStatistics is the deprecated name of RedisStats (it warns, from that module).
    if name in ("RedisTransport", "RedisStats", "RedisRemote", "RedisStatistics"):
        from podshare.transport import redis

        return getattr(redis, name)
    # Likewise the NATS transport and the ``nats`` extra (nats-py).
    if name in ("NatsTransport", "NatsStats", "NatsRemote"):
        from podshare.transport import nats

        return getattr(nats, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
