"""The sans-I/O core of a room bridge: one pycrdt Doc, messages in, messages out.

`RoomCore` knows the bridge protocol (`podshare.yjs._wire`) and nothing of transports,
tasks or clocks: the shell (`podshare.yjs.RoomBridge`) feeds it the document's
transactions (`RoomCore.on_transaction`), received messages (`RoomCore.receive`, with
the time) and its decisions (`RoomCore.hello`, `RoomCore.resync`, `RoomCore.expect`),
then drains `RoomCore.data_to_send` and `RoomCore.errors_received` right after.

The rules it follows:

- **No echoes.** A transaction the core made itself (applying a peer's update) is never
  sent; only local edits are, once each, as ``UPDATE`` on the room's topic.
- **Only what the other lacks.** A ``SYNC1`` carries a state vector and a digest of the
  delete set; the answer (``SYNC2``, to the asker's inbox) is the Yjs diff against that
  state vector, sent only when the asker lacks something (or asked with ``HELLO``), and
  the answerer asks back (``SYNC1`` with ``REPLY``) only when it lacks something itself.
  Two pods that agree exchange two small messages per resync, whatever the content.
- **Large messages** are fragmented below the transport's limit and joined within a
  memory budget (`podshare.yjs._wire.Reassembler`).
- **Synced** once every expected peer answered this pod's ``HELLO`` (see
  `RoomCore.expect`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from typing import Any

import pycrdt

from podshare.crdt import _yupdate
from podshare.exceptions import DecodeError, PodshareError
from podshare.yjs import _wire
from podshare.yjs._protocol import check_state_vector, check_update

__all__ = ["RoomCore", "RoomCounters"]

_EMPTY_UPDATE = b"\x00\x00"


def _is_panic(exc: BaseException) -> bool:
    # pyo3's PanicException derives from BaseException; see podshare.crdt.ydoc.
    return not isinstance(exc, Exception) and type(exc).__name__ == "PanicException"


@dataclass(slots=True)
class RoomCounters:
    """What a room's core did (mutable; `RoomCore.counters` copies are frozen)."""

    updates_sent: int = 0
    """Local edits sent (each once; merged edits count once)."""
    updates_applied: int = 0
    """Updates from peers applied to the document (``UPDATE`` and ``SYNC2``)."""
    sync_requests_sent: int = 0
    """``SYNC1`` messages sent (hellos, resyncs and replies)."""
    sync_answers_sent: int = 0
    """``SYNC2`` messages sent (what an asker lacked)."""
    sync_requests_unanswered: int = 0
    """``SYNC1`` received from a peer that lacked nothing (answered with nothing)."""
    messages_received: int = 0
    """Messages from peers (fragments each count)."""
    bytes_received: int = 0
    """Bytes of those messages."""
    fragments_sent: int = 0
    """Messages sent as fragments (a message of N fragments counts N)."""
    decode_errors: int = 0
    """Messages dropped as malformed (reported to ``on_error``)."""

    def copy(self) -> RoomCounters:
        """A snapshot."""
        return RoomCounters(**{f.name: getattr(self, f.name) for f in fields(self)})


class RoomCore:
    """The protocol state of one pod in one room (no I/O; see the module docstring).

    Args:
        doc: the live document; the core applies peers' updates to it.
        node_id: this pod's id in the room (no ``#``).
        topic: the room's broadcast topic ([`room_topic`][podshare.yjs.room_topic]).
        max_message_size: the transport's message limit; larger bodies are fragmented.
        max_update_size: the largest update accepted from a peer (and joined from
            fragments).
        max_buffered: bytes of fragments held at most while messages are joined.
        fragment_timeout: seconds after which an incomplete message is dropped.
    """

    def __init__(
        self,
        doc: pycrdt.Doc[Any],
        node_id: str,
        topic: str,
        *,
        max_message_size: int,
        max_update_size: int,
        max_buffered: int,
        fragment_timeout: float = 30.0,
    ) -> None:
        self.doc = doc
        self.node_id = node_id
        self.topic = topic
        #: This pod's inbox topic.
        self.inbox = f"{topic}#{node_id}"
        self._head = _wire.header(node_id)
        self._limit = max_message_size
        self._max_update = max_update_size
        self._joiner = _wire.Reassembler(
            max_message=max_update_size + 64,  # an update plus a SYNC1 header at most
            max_buffered=max_buffered,
            timeout=fragment_timeout,
        )
        self._next_id = 0
        self._outgoing: list[tuple[str, bytes]] = []
        self._local: list[bytes] = []
        self._local_size = 0
        self._errors: list[PodshareError] = []
        self._digest: bytes | None = None
        self._hello_sent = False
        self._expect_peers: frozenset[str] | None = None
        self._expect_count = 1
        self._counters = RoomCounters()
        #: True while the core applies a peer's update (its transaction is not sent).
        self.applying = False
        #: The document changed since the shell last cleared this (persistence).
        self.changed = False
        #: True once every expected peer answered the hello (see `expect`).
        self.synced = False
        #: Peers that answered since the last hello.
        self.answered: set[str] = set()

    # -- inputs ------------------------------------------------------------------------

    def on_transaction(self, update: bytes) -> None:
        """A transaction committed on the document (call from its observer)."""
        self._digest = None
        self.changed = True
        if self.applying or update == _EMPTY_UPDATE:
            return
        self._local.append(update)
        self._local_size += len(update)

    def hello(self) -> None:
        """Ask the room for its state: every peer answers (see `expect`)."""
        self._hello_sent = True
        self.answered = set()
        self._sync1(self.topic, _wire.HELLO)
        self._check_synced()

    def resync(self) -> None:
        """Compare states with the room: peers answer only with what this pod lacks and
        ask for what they lack (anti-entropy; after gaps and publish failures)."""
        self._sync1(self.topic, 0)

    def expect(self, *, peers: frozenset[str] | None = None, count: int = 1) -> None:
        """Say whose answers make this pod synced: every peer of ``peers`` (when known,
        from a presence registry), else ``count`` peers (from the transport's count of
        subscribers; 0: nobody else is in the room)."""
        self._expect_peers = peers - {self.node_id} if peers is not None else None
        self._expect_count = count
        self._check_synced()

    def load(self, update: bytes) -> None:
        """Apply a saved state (from a persistence) without sending it.

        Peers get what it adds through the hello's state vectors.

        Raises:
            DecodeError: ``update`` is not a valid Yjs v1 update.
        """
        self._apply(update)

    def receive(self, data: bytes, now: float) -> None:
        """Take one message from the transport (errors are queued, not raised).

        Raises only what the document's other observers raised while it applied an
        update (an ``ExceptionGroup`` from pycrdt): the update is applied by then.
        """
        self._counters.messages_received += 1
        self._counters.bytes_received += len(data)
        try:
            message = _wire.decode(data)
            if message.sender == self.node_id:
                return  # transports deliver our own broadcasts back to us
            if "#" in message.sender:
                raise DecodeError("a Yjs bridge sender id with '#'")
            if message.kind == _wire.FRAGMENT:
                whole = self._joiner.add(message.sender, message.body, now)
                if whole is None:
                    return
                kind, body = whole
            else:
                self._joiner.expire(now)
                kind, body = message.kind, message.body
            self._dispatch(message.sender, kind, body)
        except DecodeError as exc:
            self._counters.decode_errors += 1
            self._errors.append(exc)

    # -- outputs -----------------------------------------------------------------------

    def data_to_send(self) -> list[tuple[str, bytes]]:
        """``(topic, message)`` pairs to publish, in order; the core forgets them."""
        self._flush_local()
        out, self._outgoing = self._outgoing, []
        return out

    def errors_received(self) -> list[PodshareError]:
        """Malformed messages met since the last call (each also counted)."""
        out, self._errors = self._errors, []
        return out

    def counters(self) -> RoomCounters:
        """A snapshot of the counters."""
        return self._counters.copy()

    @property
    def fragments_dropped(self) -> int:
        """Incomplete fragmented messages given up (budget, timeout or inconsistency)."""
        return self._joiner.dropped

    @property
    def pending_local(self) -> int:
        """Bytes of local edits waiting for `data_to_send`."""
        return self._local_size

    # -- internals ---------------------------------------------------------------------

    def _check_synced(self) -> None:
        if self.synced or not self._hello_sent:
            return
        if self._expect_peers is not None:
            self.synced = self._expect_peers <= self.answered
        else:
            self.synced = len(self.answered) >= self._expect_count

    def _send(self, topic: str, kind: int, body: bytes) -> None:
        parts = _wire.encode(self._head, kind, body, limit=self._limit, message_id=self._next_id)
        if len(parts) > 1:
            self._next_id += 1
            self._counters.fragments_sent += len(parts)
        self._outgoing.extend((topic, part) for part in parts)

    def _delete_set_digest(self) -> bytes:
        if self._digest is None:
            state = self.doc.get_state()
            _, ds = _yupdate.parse_update(self.doc.get_update(state))
            canonical = _yupdate.delete_set_update(ds)
            self._digest = hashlib.blake2b(canonical, digest_size=_wire.DIGEST_SIZE).digest()
        return self._digest

    def _sync1(self, topic: str, flags: int) -> None:
        body = _wire.encode_sync1(flags, self._delete_set_digest(), self.doc.get_state())
        self._send(topic, _wire.SYNC1, body)
        self._counters.sync_requests_sent += 1

    def _flush_local(self) -> None:
        if not self._local:
            return
        updates, self._local = self._local, []
        size, self._local_size = self._local_size, 0
        if len(updates) > 1 and size <= self._limit:
            # Edits made meanwhile travel as one update (Yjs merges them losslessly).
            updates = [pycrdt.merge_updates(*updates)]
        for update in updates:
            self._send(self.topic, _wire.UPDATE, update)
            self._counters.updates_sent += 1

    def _dispatch(self, sender: str, kind: int, body: bytes) -> None:
        if kind == _wire.SYNC1:
            self._on_sync1(sender, _wire.decode_sync1(body))
        elif kind == _wire.SYNC2:
            self._apply(body)
            self.answered.add(sender)
            self._check_synced()
        else:
            self._apply(body)

    def _on_sync1(self, sender: str, request: _wire.Sync1) -> None:
        theirs = check_state_vector(request.state_vector)
        mine = _yupdate.parse_state_vector(self.doc.get_state())
        they_lack = any(clock > theirs.get(client, 0) for client, clock in mine.items())
        i_lack = any(clock > mine.get(client, 0) for client, clock in theirs.items())
        # Without a digest (a pycrdt Provider peer) the delete sets are not known to agree.
        deletes_differ = request.digest != self._delete_set_digest()
        inbox = f"{self.topic}#{sender}"
        if request.flags & _wire.HELLO or they_lack or deletes_differ:
            self._send(inbox, _wire.SYNC2, self.doc.get_update(request.state_vector))
            self._counters.sync_answers_sent += 1
        else:
            self._counters.sync_requests_unanswered += 1
        if not request.flags & _wire.REPLY and (i_lack or deletes_differ):
            self._sync1(inbox, _wire.REPLY)

    def _apply(self, update: bytes) -> None:
        if len(update) > self._max_update:
            raise DecodeError(f"an update of {len(update)} bytes (the limit is {self._max_update})")
        if update == _EMPTY_UPDATE:
            return
        check_update(update)
        self.applying = True
        try:
            self.doc.apply_update(update)
        except Exception as exc:
            if isinstance(exc, ExceptionGroup) and exc.message == "Observer callback error":
                self._counters.updates_applied += 1
                raise  # applied; another observer of the document failed
            raise DecodeError(f"a Yjs update pycrdt refuses: {exc}") from exc
        except BaseException as exc:
            if not _is_panic(exc):
                raise
            raise DecodeError(f"a Yjs update pycrdt refuses: {exc}") from exc
        finally:
            self.applying = False
        self._counters.updates_applied += 1
