"""How podshare topics become NATS subjects, and back: a reversible, injective mapping.

podshare topics are any strings: ``"ps/orders"`` (a store's broadcast topic),
``"ps/orders#pod-3"`` (one node's inbox), ``"pl/live"``, ``"cr/ns#node"``; store names and
node ids may hold dots, spaces, ``*`` or ``>``, which NATS gives meaning to. A subject is
``{prefix}.{token}.{token}...`` where:

- the topic is split at its first ``#``: the part before it, split on ``/``, gives one
  token per segment; the part after it (if any) gives one last token;
- a segment that is *plain* (``[A-Za-z0-9][A-Za-z0-9_-]*``) is its own token; any other
  segment (empty, or with other characters) is ``~`` followed by its UTF-8 bytes in
  unpadded base64url;
- the part after ``#`` is ``_`` followed by the same encoding of it (plain, or ``~`` and
  base64url).

Tokens only ever use ``[A-Za-z0-9_~-]``, which every NATS server, JetStream stream and
account import accepts; a plain token starts with a letter or digit, an encoded one with
``~``, the inbox one with ``_``, so every subject decodes to exactly one topic.

Example:
    >>> topic_to_subject("podshare", "ps/orders")
    'podshare.ps.orders'
    >>> topic_to_subject("podshare", "ps/orders#pod-3")
    'podshare.ps.orders._pod-3'
    >>> topic_to_subject("app", "ps/a.b c#host/1")
    'app.ps.~YS5iIGM._~aG9zdC8x'
    >>> subject_to_topic("app", "app.ps.~YS5iIGM._~aG9zdC8x")
    'ps/a.b c#host/1'
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final

from podshare.exceptions import ConfigurationError

__all__ = ["check_prefix", "subject_to_topic", "topic_to_subject"]

_PLAIN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_B64: Final = re.compile(r"[A-Za-z0-9_-]*")
# A prefix token: anything NATS accepts in a literal subject token.
_PREFIX_TOKEN: Final = re.compile(r"[^\s.*>]+")


def check_prefix(prefix: object) -> str:
    """Return ``prefix`` if it is a valid subject prefix (``""``, or literal tokens)."""
    if not isinstance(prefix, str):
        raise ConfigurationError(f"subject_prefix must be a str, not {type(prefix).__name__}")
    if prefix and not all(_PREFIX_TOKEN.fullmatch(token) for token in prefix.split(".")):
        raise ConfigurationError(
            f"subject_prefix must be '' or dot-separated NATS tokens without whitespace, "
            f"'*' or '>', not {prefix!r}"
        )
    return prefix


def _encode(part: str) -> str:
    if _PLAIN.fullmatch(part):
        return part
    raw = part.encode("utf-8", "surrogatepass")
    return "~" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode(token: str) -> str | None:
    if not token.startswith("~"):
        return token if _PLAIN.fullmatch(token) else None
    body = token[1:]
    if not _B64.fullmatch(body) or len(body) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        text = raw.decode("utf-8", "surrogatepass")
    except (binascii.Error, UnicodeDecodeError):
        return None
    # Only the canonical encoding decodes: a plain part is never base64-encoded.
    return text if _encode(text) == token else None


def topic_to_subject(prefix: str, topic: str) -> str:
    """The NATS subject that carries ``topic`` under ``prefix`` (see the module docs)."""
    base, sep, rest = topic.partition("#")
    tokens = [_encode(segment) for segment in base.split("/")]
    if sep:
        tokens.append("_" + _encode(rest))
    body = ".".join(tokens)
    return f"{prefix}.{body}" if prefix else body


def subject_to_topic(prefix: str, subject: str) -> str | None:
    """The topic a subject made by `topic_to_subject` carries, or ``None`` if it is
    not one (another prefix, a foreign token)."""
    if prefix:
        if not subject.startswith(prefix + "."):
            return None
        subject = subject[len(prefix) + 1 :]
    tokens = subject.split(".")
    rest: str | None = None
    if tokens and tokens[-1].startswith("_"):
        rest = _decode(tokens.pop()[1:])
        if rest is None:
            return None
    segments = [_decode(token) for token in tokens]
    if not segments or any(segment is None for segment in segments):
        return None
    base = "/".join(segment for segment in segments if segment is not None)
    return base if rest is None else f"{base}#{rest}"
