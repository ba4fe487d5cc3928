"""The merger test kit: prove with Hypothesis that a merge is a CRDT join.

A merge function makes replicas converge only if it is commutative, associative and
idempotent; then any replicas that receive the same updates, in any order and with any
duplicates, end in the same state. [`check_merger()`][podshare.testing.check_merger] checks all four
properties over values drawn from a strategy you supply, and fails with a shrunk, minimal
counterexample; [`MergerLaws`][podshare.testing.MergerLaws] runs the same checks as pytest test
methods.
"""

from __future__ import annotations

import pprint
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from podshare.crdt.merger import Merger, as_merger

if TYPE_CHECKING:
    from hypothesis import settings
    from hypothesis import strategies as st

# Hypothesis (a test dependency, not a runtime one) is imported only when a check runs,
# so `import podshare.testing` works without it for the transport and network kits.

__all__ = ["LAWS", "MergerLaws", "check_merger"]

#: The laws, in the order `check_merger()` checks them.
LAWS = ("commutativity", "associativity", "idempotence", "convergence")


def _show(value: Any) -> str:
    text = pprint.pformat(value, width=88)
    return text if len(text) <= 2000 else text[:2000] + " ..."


def _fail(law: str, claim: str, values: dict[str, Any]) -> NoReturn:
    lines = [f"merger law violated: {law}: {claim}"]
    lines += [f"  {name} = {_show(value)}" for name, value in values.items()]
    raise AssertionError("\n".join(lines))


def _wire_of(value: Any) -> Any:
    to_wire = getattr(value, "to_wire", None)
    return to_wire() if callable(to_wire) else None


def _check_same(law: str, left: tuple[str, Any], right: tuple[str, Any], **values: Any) -> None:
    """Fail unless the two labelled results are equal, with equal wire forms."""
    (left_label, left_value), (right_label, right_value) = left, right
    results = {left_label: left_value, right_label: right_value}
    if left_value != right_value:
        _fail(law, f"{left_label} != {right_label}", values | results)
    # Equal states must encode equally: replica digests hash the wire form.
    if _wire_of(left_value) != _wire_of(right_value):
        wires = {f"{k}.to_wire()": _wire_of(v) for k, v in results.items()}
        _fail(law, f"{left_label} == {right_label} but their to_wire() differ", values | wires)


def _empty_of(merger: Merger[Any]) -> Callable[[], Any] | None:
    empty = getattr(merger, "empty", None)
    if not callable(empty):
        return None
    try:
        empty()
    except TypeError:
        # A type without a zero-argument constructor (LWW, say) has no empty value.
        return None
    return empty  # type: ignore[no-any-return]


def _settings(max_examples: int | None) -> settings:
    from hypothesis import settings

    # deadline=None: merges of big generated values may be slow, and a flaky deadline
    # failure is not a counterexample.
    # report_multiple_bugs=False: one AssertionError (the simplest failure), never an
    # ExceptionGroup, so callers can use pytest.raises(AssertionError).
    if max_examples is None:
        return settings(deadline=None, report_multiple_bugs=False)
    return settings(deadline=None, report_multiple_bugs=False, max_examples=max_examples)


def _law_test(
    law: str,
    m: Merger[Any],
    values: st.SearchStrategy[Any],
    replicas: int,
    max_examples: int | None,
) -> Callable[[], None]:
    """Return a zero-argument Hypothesis test of one law."""
    from hypothesis import given

    merge = m.merge
    if law == "commutativity":

        @given(values, values)
        def commutative(a: Any, b: Any) -> None:
            _check_same(law, ("merge(a, b)", merge(a, b)), ("merge(b, a)", merge(b, a)), a=a, b=b)

        test = commutative
    elif law == "associativity":

        @given(values, values, values)
        def associative(a: Any, b: Any, c: Any) -> None:
            _check_same(
                law,
                ("merge(merge(a, b), c)", merge(merge(a, b), c)),
                ("merge(a, merge(b, c))", merge(a, merge(b, c))),
                a=a,
                b=b,
                c=c,
            )

        test = associative
    elif law == "idempotence":

        @given(values, values)
        def idempotent(a: Any, b: Any) -> None:
            _check_same(law, ("merge(a, a)", merge(a, a)), ("a", a), a=a)
            ab = merge(a, b)
            _check_same(law, ("merge(merge(a, b), b)", merge(ab, b)), ("merge(a, b)", ab), a=a, b=b)

        test = idempotent
    elif law == "convergence":
        empty = _empty_of(m)
        test = _convergence_test(merge, empty, values, replicas)
    else:
        raise ValueError(f"unknown law {law!r}; the laws are {', '.join(LAWS)}")
    return _settings(max_examples)(test)


def _convergence_test(
    merge: Callable[[Any, Any], Any],
    empty: Callable[[], Any] | None,
    values: st.SearchStrategy[Any],
    replicas: int,
) -> Callable[[], None]:
    from hypothesis import given
    from hypothesis import strategies as st

    @given(st.lists(values, min_size=1, max_size=6), st.data())
    def convergence(updates: list[Any], data: st.DataObject) -> None:
        def fold(order: list[int]) -> Any:
            state = empty() if empty is not None else updates[order[0]]
            for i in order:
                state = merge(state, updates[i])
            return state

        n = len(updates)
        expected = fold(list(range(n)))
        for replica in range(replicas):
            # Every update at least once, some more than once, in any order.
            dups = data.draw(st.lists(st.integers(0, n - 1), max_size=n), label="duplicates")
            order = data.draw(st.permutations(list(range(n)) + dups), label="delivery order")
            got = fold(order)
            if got != expected or _wire_of(got) != _wire_of(expected):
                _fail(
                    "convergence",
                    f"replica {replica} received the updates in another order (with "
                    "duplicates) and ended in a different state",
                    {
                        "updates": updates,
                        "delivery order": order,
                        "replica's state": got,
                        "state in update order": expected,
                    },
                )

    return convergence


def _require_hypothesis() -> None:
    """Raise an ImportError that says how to install Hypothesis, if it is missing."""
    try:
        import hypothesis  # noqa: F401 - only whether it imports
    except ModuleNotFoundError as exc:
        if exc.name != "hypothesis":
            raise
        raise ImportError(
            "podshare.testing's merger checks need Hypothesis: pip install 'podshare[testing]'"
        ) from exc


def _check_law(
    law: str,
    merger_or_type: Any,
    values: st.SearchStrategy[Any],
    replicas: int,
    max_examples: int | None,
) -> None:
    _require_hypothesis()
    if type(replicas) is not int or replicas < 1:
        raise ValueError(f"replicas must be an int >= 1, got {replicas!r}")
    _law_test(law, as_merger(merger_or_type), values, replicas, max_examples)()


def check_merger(
    merger_or_type: Any,
    values: st.SearchStrategy[Any],
    *,
    replicas: int = 3,
    max_examples: int | None = None,
) -> None:
    """Check that a merge is commutative, associative, idempotent and convergent.

    Convergence: ``replicas`` replicas each receive the same generated updates in their
    own order, with random duplicates, and fold them with ``merge`` (starting from the
    merger's ``empty()`` value if it has one); every replica must end in the same state,
    the state of folding the updates in their original order. Where values have
    ``to_wire()``, equal results must also have equal wire forms.

    Args:
        merger_or_type: a [`Merger`][podshare.crdt.Merger] instance (``merge(a, b)``), a
            value type with a ``merge(self, other)`` method, or a plain function
            ``(a, b) -> value`` (what ``Store(merger=fn)`` accepts).
        values: a Hypothesis strategy of values (states) to merge. Draw them as your
            replicas would make them (by applying operations), not arbitrary structures
            your type never produces.
        replicas: how many replicas the convergence check simulates.
        max_examples: examples per law; None uses the active Hypothesis profile.

    Raises:
        AssertionError: a law fails; the message names the law and shows the minimal
            values Hypothesis found.
        TypeError: ``merger_or_type`` is not a merger.
        ImportError: Hypothesis is not installed (``pip install 'podshare[testing]'``).

    Example:
        >>> from hypothesis import strategies as st
        >>> from podshare.crdt import GSet
        >>> check_merger(GSet, st.lists(st.integers(0, 9)).map(GSet), max_examples=20)

        >>> class KeepLeft:
        ...     def merge(self, a: int, b: int) -> int:
        ...         return a
        >>> check_merger(KeepLeft(), st.integers())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        AssertionError: merger law violated: commutativity: merge(a, b) != merge(b, a)
        ...
    """
    for law in LAWS:
        _check_law(law, merger_or_type, values, replicas, max_examples)


class MergerLaws:
    """The laws of [`check_merger()`][podshare.testing.check_merger] as a pytest mixin: one test
    method per law.

    Subclass it in a class whose name starts with ``Test``, set ``merger`` (a merger
    instance, a type with a ``merge`` method, or a plain function wrapped in
    ``staticmethod`` so it does not bind) and ``values`` (a strategy of states),
    and pytest collects ``test_commutative``, ``test_associative``, ``test_idempotent``
    and ``test_convergence``. ``replicas`` and ``max_examples`` may be overridden too.

    Example:
        >>> from hypothesis import strategies as st
        >>> from podshare.crdt import PNCounter
        >>> class TestCounter(MergerLaws):
        ...     merger = PNCounter
        ...     values = st.builds(PNCounter().increment, st.sampled_from("abc"))
        ...     max_examples = 10
        >>> TestCounter().test_convergence()
    """

    merger: Any = None
    values: st.SearchStrategy[Any] | None = None
    replicas: int = 3
    max_examples: int | None = None

    def _run(self, law: str) -> None:
        if self.merger is None or self.values is None:
            raise TypeError(f"{type(self).__name__} must set both `merger` and `values`")
        _check_law(law, self.merger, self.values, self.replicas, self.max_examples)

    def test_commutative(self) -> None:
        """merge(a, b) == merge(b, a)."""
        self._run("commutativity")

    def test_associative(self) -> None:
        """merge(merge(a, b), c) == merge(a, merge(b, c))."""
        self._run("associativity")

    def test_idempotent(self) -> None:
        """merge(a, a) == a, and merging the same state again changes nothing."""
        self._run("idempotence")

    def test_convergence(self) -> None:
        """Replicas that get the same updates in any order, with duplicates, agree."""
        self._run("convergence")
