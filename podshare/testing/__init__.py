"""podshare.testing: the public test kit for users' mergers, transports and clusters.

``check_merger`` / ``MergerLaws`` prove that a merge is a CRDT join (commutative,
associative, idempotent, convergent under any delivery order with duplicates).
``check_transport`` / ``TransportConformance`` check a transport against the contract of
:class:`~podshare.transport.Transport`.
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
from podshare.testing.simnet import SimNetwork as SimNetwork
from podshare.testing.simnet import SimNode as SimNode

__all__ = [
    "MergerLaws",
    "SimNetwork",
    "SimNode",
    "TransportConformance",
    "TransportFactory",
    "check_merger",
    "check_transport",
]
