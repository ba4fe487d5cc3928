"""callreply: call whichever pod owns a target (a websocket connection, say).

Only a small route ``target -> node`` is replicated; the target itself never moves.
See [`Endpoint`][podshare.callreply.Endpoint].
"""

from __future__ import annotations

from podshare.callreply.endpoint import Endpoint as Endpoint
from podshare.callreply.endpoint import EndpointStats as EndpointStats
from podshare.callreply.endpoint import ErrorHandler as ErrorHandler
from podshare.callreply.endpoint import Handler as Handler
from podshare.callreply.payload import decode_payload as decode_payload
from podshare.callreply.payload import encode_payload as encode_payload

__all__ = [
    "Endpoint",
    "EndpointStats",
    "ErrorHandler",
    "Handler",
    "decode_payload",
    "encode_payload",
]
