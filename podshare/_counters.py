"""One counters mechanism for every podshare component: a mutable record, frozen snapshots.

Each component (store, transport, endpoint, channel) declares its statistics once, as a
``@dataclass(slots=True)`` subclass of `StatsRecord` whose fields are counters
and gauges. The component keeps one instance and updates it in place (``+=`` on a slot
is as cheap as on a plain attribute, and mypy checks every field name). Its public
``stats()`` method returns ``record.snapshot()``: an instance of the same class that
cannot be changed (assigning raises `dataclasses.FrozenInstanceError`), so a
caller can keep it, compare it and hand it to a metrics exporter.

Naming, the same everywhere (a field means the same thing on every component):

- ``messages_sent`` / ``messages_received`` and ``bytes_sent`` / ``bytes_received``:
  what crossed this component's boundary;
- ``decode_errors``: input that could not be decoded and was skipped;
- ``gaps_reported``: times gap listeners were told messages may have been lost;
- ``reconnects``: connections re-established after a loss;
- ``*_dropped``: items discarded by a bound (a full buffer, a cap), never silently.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(slots=True)
    ... class PingStats(StatsRecord):
    ...     messages_sent: int = 0
    >>> record = PingStats()
    >>> record.messages_sent += 2
    >>> snap = record.snapshot()
    >>> snap, snap == PingStats(2), isinstance(snap, PingStats)
    (PingStats(messages_sent=2), True, True)
    >>> snap.messages_sent = 0  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dataclasses.FrozenInstanceError: cannot assign to field 'messages_sent'
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NoReturn, Self

__all__ = ["StatsRecord"]


class StatsRecord:
    """Base class of every statistics record (see the module docstring).

    Subclasses are ``@dataclass(slots=True)`` classes. Snapshots are instances of a
    frozen twin of the subclass (same name, same fields, a subclass of it), made once
    per class; they compare equal to records with the same values.
    """

    __slots__ = ()
    _frozen_twin: ClassVar[dict[type[Any], type[Any]]] = {}

    def snapshot(self) -> Self:
        """A frozen copy of this record's current values."""
        cls = type(self)
        twin = StatsRecord._frozen_twin.get(cls)
        if twin is None:
            twin = _make_twin(cls)
        snap: Self = object.__new__(twin)
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            object.__setattr__(snap, f.name, getattr(self, f.name))
        return snap


def _fields(obj: Any) -> tuple[Any, ...]:
    return tuple(getattr(obj, f.name) for f in dataclasses.fields(obj))


def _refuse(_self: Any, name: str, _value: object = None) -> NoReturn:
    raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


def _make_twin(cls: type[Any]) -> type[Any]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__qualname__} must be a dataclass to take snapshots")
    twin = type(
        cls.__name__,
        (cls,),
        {
            "__slots__": (),
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
            "__setattr__": _refuse,
            "__delattr__": _refuse,
            # Equal to a record or snapshot of the same class with the same values.
            "__eq__": lambda self, other: (
                _fields(self) == _fields(other) if isinstance(other, cls) else NotImplemented
            ),
            "__hash__": lambda self: hash(_fields(self)),
            # dataclasses.replace() builds a new instance through __init__: keep it working.
            "__init__": _frozen_init(cls),
            "__reduce__": lambda self: (cls, _fields(self)),
        },
    )
    StatsRecord._frozen_twin[cls] = twin
    return twin


def _frozen_init(cls: type[Any]) -> Any:
    base_init = cls.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        record = object.__new__(cls)
        base_init(record, *args, **kwargs)
        for f in dataclasses.fields(cls):
            object.__setattr__(self, f.name, getattr(record, f.name))

    return __init__
