"""YDoc benchmark: bytes per edit and apply time vs document size, beside shipping it whole.

Run: ``python benchmarks/bench_ydoc.py [--quick]``.

For chats of 100, 1,000 and 10,000 messages, one more message is appended (``YDoc.append``)
and measured three ways, in one run:

- on the wire: the delta a store ships (msgpack of ``delta.to_wire()``, target ≤ 200 bytes
  at 1,000 messages) beside the whole document (msgpack of ``to_wire()``), as a ratio;
- edit: the sender's ``append`` (a pycrdt transaction on the cached working Doc, plus the
  canonical re-encoding that replica digests need);
- apply: the receiver's ``merge`` of that delta into its copy, beside merging the whole
  new document (what shipping it whole costs), and beside pycrdt's bare
  ``Doc.apply_update`` of the delta (the floor: no canonical form, no value semantics).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import msgpack

from podshare.crdt import YDoc


def message(i: int) -> dict[str, str]:
    return {"role": "user" if i % 2 else "assistant", "text": f"message {i}: lorem ipsum dolor"}


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` calls (each on fresh inputs, via ``fn``)."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def row(n: int, repeat: int) -> tuple[int, int, int, float, float, float, float]:
    chat = YDoc().extend("messages", [message(i) for i in range(n)])
    whole_bytes = len(msgpack.packb(chat.to_wire()))

    # Sender: successive appends, each from the previous value (the store's pattern).
    edits: list[YDoc] = []
    state = chat

    def edit() -> None:
        nonlocal state
        state = state.append("messages", message(n + len(edits)))
        edits.append(state)

    t_edit = timed(edit, repeat)
    deltas = [new.delta_from(old) for old, new in zip([chat, *edits], edits, strict=False)]
    delta_bytes = max(len(msgpack.packb(d.to_wire())) for d in deltas)

    # Receiver: a replica that decoded the chat from the wire, merging each delta.
    receiver = YDoc.from_wire(chat.to_wire())
    it = iter(deltas)

    def apply_delta() -> None:
        nonlocal receiver
        receiver = receiver.merge(next(it))

    t_delta = timed(apply_delta, repeat)
    assert receiver == edits[-1]

    # Shipping it whole: the receiver decodes and merges the entire new document.
    wires = [msgpack.packb(e.to_wire()) for e in edits]
    whole_receiver = YDoc.from_wire(chat.to_wire())
    wit = iter(wires)

    def apply_whole() -> None:
        nonlocal whole_receiver
        whole_receiver = whole_receiver.merge(YDoc.from_wire(msgpack.unpackb(next(wit))))

    t_whole = timed(apply_whole, repeat)

    # The floor: pycrdt applying the raw Yjs update to a live Doc.
    live = chat.to_doc()
    raw = iter([d.to_update() for d in deltas])
    t_raw = timed(lambda: live.apply_update(next(raw)), repeat)
    return n, delta_bytes, whole_bytes, t_edit, t_delta, t_whole, t_raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    repeat = 5 if args.quick else 25
    print(f"YDoc: one appended message vs chat size (median of {repeat})")
    header = (
        f"{'messages':>8} | {'delta B':>7} | {'whole B':>9} | {'whole/delta':>11} | "
        f"{'edit ms':>7} | {'apply delta ms':>14} | {'apply whole ms':>14} | "
        f"{'whole/delta':>11} | {'pycrdt raw ms':>13}"
    )
    print(header)
    print("-" * len(header))
    for n in (100, 1_000, 10_000):
        n, delta_b, whole_b, t_edit, t_delta, t_whole, t_raw = row(n, repeat)
        print(
            f"{n:>8} | {delta_b:>7} | {whole_b:>9} | {whole_b / delta_b:>10.0f}x | "
            f"{t_edit * 1e3:>7.2f} | {t_delta * 1e3:>14.2f} | {t_whole * 1e3:>14.2f} | "
            f"{t_whole / t_delta:>10.1f}x | {t_raw * 1e3:>13.3f}"
        )
    print("target: delta ≤ 200 bytes at 1,000 messages (DESIGN §5)")


if __name__ == "__main__":
    main()
