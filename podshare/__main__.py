"""``python -m podshare``: a demo, and an inspection CLI for live clusters.

Commands:

```text
python -m podshare demo                       # three replicas in memory, no server
python -m podshare --redis URL get STORE KEY
python -m podshare --tcp HOST:PORT --secret S keys STORE --prefix ws:
python -m podshare --redis URL set STORE KEY '{"json": true}'
python -m podshare --redis URL delete STORE KEY
python -m podshare --redis URL watch STORE [--prefix P] [--count N]
python -m podshare --redis URL stats STORE | members STORE
```

Against a cluster the CLI joins as one more replica: it connects, hydrates, acts, and
leaves cleanly. Values are read and written as JSON. ``--json`` prints machine-readable
output. Exit status: 0 success, 1 key not found, 2 usage or connection error, 3 the
store has no other replica (probably a wrong name; ``--allow-empty`` accepts it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TextIO

import anyio

from podshare.exceptions import PodshareError, TransportError

__all__ = ["main"]

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_UNKNOWN_STORE = 3


# --------------------------------------------------------------------------- demo


async def demo(out: TextIO) -> None:
    """Three replicas on one in-memory transport: a write, a merge, a delete."""
    from podshare import EventKind, Store
    from podshare.crdt import PNCounter
    from podshare.transport import MemoryTransport

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    async with AsyncExitStack() as stack:
        tr = await stack.enter_async_context(MemoryTransport())
        names = ("pod-a", "pod-b", "pod-c")
        flags = [
            await stack.enter_async_context(Store[bool]("flags", tr, node_id=n)) for n in names
        ]
        hits = [
            await stack.enter_async_context(Store[PNCounter]("hits", tr, node_id=n)) for n in names
        ]
        say("three replicas of 'flags' and 'hits' on the in-memory transport")

        # 1. A write on pod-a appears on pod-b and pod-c (we wait for their events).
        async with flags[1].watch(key="dark-mode") as ev_b, flags[2].watch(key="dark-mode") as ev_c:
            await flags[0].set("dark-mode", True)
            say("pod-a  set   dark-mode = True")
            with anyio.fail_after(5):
                for name, events in (("pod-b", ev_b), ("pod-c", ev_c)):
                    event = await anext(aiter(events))
                    say(
                        f"{name}  saw   {event.kind.value} {event.key} = {event.value!r}"
                        f" (from {event.origin})"
                    )

        # 2. Concurrent increments on every pod merge instead of overwriting.
        async with AsyncExitStack() as watches:
            counter_events = [
                await watches.enter_async_context(store.watch(key="page")) for store in hits
            ]
            for i, store in enumerate(hits):
                node, step = store.node_id, i + 1

                def bump(c: PNCounter, node: str = node, step: int = step) -> PNCounter:
                    return c.increment(node, step)

                await store.update("page", bump)
                say(f"{store.node_id}  add   page += {step}")
            for store, events_of_store in zip(hits, counter_events, strict=True):
                with anyio.fail_after(5):
                    async for counter_event in events_of_store:
                        if counter_event.value is not None and counter_event.value.value == 6:
                            break
                say(f"{store.node_id}  reads page = {store['page'].value}")

        # 3. A delete on pod-c removes the key everywhere.
        async with flags[0].watch(key="dark-mode") as events:
            await flags[2].delete("dark-mode")
            say("pod-c  delete dark-mode")
            with anyio.fail_after(5):
                async for event in events:
                    if event.kind is EventKind.DELETE:
                        break
        say(f"pod-a  reads dark-mode = {flags[0].get('dark-mode')!r}")
        say("converged: " + ", ".join(f"{s.node_id}={s.snapshot()}" for s in flags))


# --------------------------------------------------------------------------- cluster


@asynccontextmanager
async def open_transport(args: argparse.Namespace) -> AsyncIterator[Any]:
    """The transport named on the command line, entered."""
    if args.redis:
        from podshare.transport.redis import RedisTransport

        async with RedisTransport(args.redis) as transport:
            yield transport
    else:
        from podshare.transport.tcp import TcpTransport

        peers = [args.tcp, *args.peer]
        async with TcpTransport(listen=args.listen, peers=peers, secret=args.secret) as transport:
            # Dialing runs in the background: without a live peer the store would hydrate
            # from nobody and the command would act on an empty map.
            with anyio.move_on_after(args.hydrate_timeout):
                await transport.wait_connected(1)
            if not transport.connections:
                raise TransportError(
                    f"cannot connect to {', '.join(peers)} within {args.hydrate_timeout:g}s "
                    "(not listening, or a wrong --secret?)"
                )
            yield transport


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    to_wire = getattr(value, "to_wire", None)
    if callable(to_wire):
        return to_wire()
    if isinstance(value, frozenset | set):
        return sorted(value, key=repr)
    if isinstance(value, bytes):
        return value.hex()
    return value


def _dump(value: Any) -> str:
    return json.dumps(value, default=_jsonable, sort_keys=True)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare word is a string; say so in --help


async def run_command(args: argparse.Namespace, out: TextIO) -> int:
    """Join the cluster as a replica of ``args.store``, run one command, leave."""
    from podshare import EventKind, Store

    async with (
        open_transport(args) as transport,
        Store[Any](args.store, transport, hydrate_timeout=args.hydrate_timeout) as store,
    ):
        others = store.members() - {store.node_id}
        if not others and not args.allow_empty:
            print(
                f"podshare: no other replica of store {args.store!r} answered within "
                f"{args.hydrate_timeout:g}s (wrong store name? pass --allow-empty to "
                "proceed anyway)",
                file=sys.stderr,
            )
            return EXIT_UNKNOWN_STORE
        cmd = args.command
        if cmd == "get":
            if args.key not in store:
                if args.json:
                    print(_dump({"key": args.key, "found": False}), file=out)
                else:
                    print(f"podshare: no key {args.key!r}", file=sys.stderr)
                return EXIT_NOT_FOUND
            value = store[args.key]
            print(_dump({"key": args.key, "value": value}) if args.json else _dump(value), file=out)
        elif cmd == "set":
            await store.set(args.key, _parse_value(args.value))
            print(_dump({"key": args.key, "ok": True}) if args.json else "OK", file=out)
        elif cmd == "delete":
            existed = args.key in store
            await store.delete(args.key)
            if args.json:
                print(_dump({"key": args.key, "deleted": existed}), file=out)
            else:
                print("OK" if existed else "OK (it did not exist)", file=out)
        elif cmd == "keys":
            keys = sorted(k for k in store if k.startswith(args.prefix or ""))
            if args.json:
                print(_dump(keys), file=out)
            else:
                for key in keys:
                    print(key, file=out)
        elif cmd == "watch":
            seen = 0
            async with store.watch(prefix=args.prefix, key=args.key) as events:
                # On stderr in both modes: stdout stays pure JSON with --json, and
                # scripts can tell when events start to be captured.
                print("watching; Ctrl-C to stop", file=sys.stderr, flush=True)
                async for event in events:
                    record = {
                        "kind": event.kind.value,
                        "key": event.key,
                        "value": event.value if event.kind is EventKind.SET else None,
                        "origin": event.origin,
                    }
                    if args.json:
                        print(_dump(record), file=out, flush=True)
                    else:
                        shown = (
                            f" = {_dump(record['value'])}" if event.kind is EventKind.SET else ""
                        )
                        print(
                            f"{record['kind']:6} {event.key}{shown}  (from {event.origin})",
                            file=out,
                            flush=True,
                        )
                    seen += 1
                    if args.count and seen >= args.count:
                        break
        elif cmd == "stats":
            stats = dataclasses.asdict(store.stats())
            if args.json:
                print(_dump(stats), file=out)
            else:
                width = max(map(len, stats))
                for name, value in stats.items():
                    print(f"{name:<{width}}  {value}", file=out)
        elif cmd == "members":
            members = sorted(store.members())
            if args.json:
                print(_dump(members), file=out)
            else:
                for member in members:
                    suffix = "  (this CLI)" if member == store.node_id else ""
                    print(member + suffix, file=out)
        return EXIT_OK


# --------------------------------------------------------------------------- argv


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and for shell completion tools)."""
    parser = argparse.ArgumentParser(
        prog="podshare",
        description="podshare: the same dict in every process. Demo and inspection CLI.",
    )
    parser.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="async library to run on (default asyncio; Redis needs asyncio)",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--redis", metavar="URL", help="join through Redis at URL")
    target.add_argument("--tcp", metavar="HOST:PORT", help="join the TCP mesh through this peer")
    parser.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="more TCP peers (repeatable)",
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:0",
        help="TCP address this CLI listens on (default 127.0.0.1:0)",
    )
    parser.add_argument("--secret", help="the TCP mesh's shared secret")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--hydrate-timeout",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="how long to wait for peers to answer (default 3)",
    )
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help="act even if no other replica of the store answers",
    )

    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="three replicas on the in-memory transport (no server)")

    def with_store(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("store", help="the store's name")
        return p

    with_store("get", "print one value as JSON").add_argument("key")
    p_set = with_store("set", "set a value (JSON; a bare word is a string)")
    p_set.add_argument("key")
    p_set.add_argument("value")
    with_store("delete", "delete a key").add_argument("key")
    with_store("keys", "list keys").add_argument("--prefix")
    p_watch = with_store("watch", "stream changes as they happen")
    p_watch.add_argument("--prefix")
    p_watch.add_argument("--key")
    p_watch.add_argument("--count", type=int, default=0, help="stop after N events")
    with_store("stats", "print the replica's counters")
    with_store("members", "list live nodes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m podshare`` and the ``podshare`` script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "demo" and not (args.redis or args.tcp):
        parser.error(f"'{args.command}' needs --redis URL or --tcp HOST:PORT")
    if args.command == "watch" and args.prefix and args.key:
        parser.error("watch takes --prefix or --key, not both")
    try:
        if args.command == "demo":
            anyio.run(demo, sys.stdout, backend=args.backend)
            return EXIT_OK
        status: int = anyio.run(run_command, args, sys.stdout, backend=args.backend)
        return status
    except KeyboardInterrupt:
        return EXIT_OK
    except PodshareError as exc:
        where = args.redis or args.tcp
        print(f"podshare: {type(exc).__name__}: {exc} (cluster: {where})", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"podshare: cannot reach {args.redis or args.tcp}: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
