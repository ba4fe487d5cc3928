"""Room names to transport topics: any room name, one valid topic, no two rooms sharing it.

Room names come from clients (a y-websocket client connects to ``ws://host/<room>``), so
they can be of any length and hold any character. A transport topic must be short and
must not contain ``#`` (podshare's inbox separator). The mapping:

- a name of 1 to 128 characters from ``A-Z a-z 0-9 . _ : / @ + = -`` keeps its name:
  room ``notes/42`` travels on topic ``yjs/notes/42``;
- any other name (longer, empty, with spaces, ``#``, ``~`` or non-ASCII characters) is
  hashed: ``yjs/~`` and 32 base-32 characters of the SHA-256 of its UTF-8 bytes
  (160 bits), so ``yjs/~...`` never collides with a kept name, which cannot hold ``~``.

Each pod's inbox for the room is the topic plus ``#`` and the pod's node id.

Example:
    >>> room_topic("notes/42")
    'yjs/notes/42'
    >>> room_topic("x" * 500)
    'yjs/~YOGCX4YFLRIWVGFMLWL7GDT4GZHIE66A'
    >>> room_topic("café") == room_topic("café")
    True
"""

from __future__ import annotations

import base64
import hashlib
import re

from podshare.exceptions import ConfigurationError

__all__ = ["MAX_KEPT_NAME", "room_topic"]

#: The longest room name that is kept as it is in its topic.
MAX_KEPT_NAME = 128
_KEPT = re.compile(rf"[A-Za-z0-9._:/@+=-]{{1,{MAX_KEPT_NAME}}}")
_PREFIX = "yjs/"


def room_topic(room: str) -> str:
    """The transport topic of ``room`` (see the module docstring for the mapping).

    Raises:
        ConfigurationError: ``room`` is not a ``str``.
    """
    if not isinstance(room, str):
        raise ConfigurationError(f"a room name must be a str, not {type(room).__name__}")
    if _KEPT.fullmatch(room):
        return _PREFIX + room
    digest = hashlib.sha256(room.encode("utf-8", "surrogatepass")).digest()[:20]
    return _PREFIX + "~" + base64.b32encode(digest).decode("ascii")
