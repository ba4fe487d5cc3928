"""podshare.testing: the public test kit for users' mergers, transports and clusters.

``check_merger`` / ``MergerLaws`` prove that a merge is a CRDT join (commutative,
associative, idempotent, convergent under any delivery order with duplicates).
``check_transport`` / ``TransportConformance`` check a transport against the contract of
[`Transport`][podshare.transport.Transport].
``check_persistence`` / ``PersistenceConformance`` check a persistence backend against
the contract of [`Persistence`][podshare.persistence.Persistence].
``SimNetwork`` runs a deterministic in-thread cluster of replica cores on a simulated
network that drops, duplicates, reorders and partitions, with a fake clock.

Example:
    >>> from hypothesis import strategies as st
    >>> from podshare.crdt import GSet
    >>> from podshare.testing import check_merger
    >>> check_merger(GSet, st.lists(st.text(max_size=3)).map(GSet), max_examples=10)
"""

from __future__ import annotations

from podshare.testing.conformance import TransportConformance as TransportConformance
from podshare.testing.conformance import TransportFactory as TransportFactory
from podshare.testing.conformance import check_transport as check_transport
from podshare.testing.merger_laws import MergerLaws as MergerLaws
from podshare.testing.merger_laws import check_merger as check_merger
from podshare.testing.persistence import BreakWrites as BreakWrites
from podshare.testing.persistence import PersistenceConformance as PersistenceConformance
from podshare.testing.persistence import PersistenceFactory as PersistenceFactory
from podshare.testing.persistence import check_persistence as check_persistence
from podshare.testing.simnet import SimNetwork as SimNetwork
from podshare.testing.simnet import SimNode as SimNode

__all__ = [
    "BreakWrites",
    "MergerLaws",
    "PersistenceConformance",
    "PersistenceFactory",
    "SimNetwork",
    "SimNode",
    "TransportConformance",
    "TransportFactory",
    "check_merger",
    "check_persistence",
    "check_transport",
]
