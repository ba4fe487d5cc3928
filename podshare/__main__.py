"""``python -m podshare``: a demo, and an inspection CLI for live clusters.

Commands (global options such as ``--redis``, ``--tcp``, ``--nats``, ``--json`` and
``--secret-file`` may come before or after the command):

```text
podshare demo                                 # three replicas in memory, no server
podshare --version
podshare --redis URL get STORE KEY
podshare --tcp HOST:PORT keys STORE --prefix ws:    # secret: $PODSHARE_SECRET
podshare --redis URL set STORE KEY '{"json": true}' # strict JSON; --raw for a string
podshare --redis URL delete STORE KEY
podshare --redis URL watch STORE [--prefix P | --key K] [--count N]
podshare --nats URL stats STORE | members STORE
```

Against a cluster the CLI joins as one more replica (node id ``cli-{host}-{pid}``, no
persistence): it connects, hydrates, acts, and leaves cleanly. Values are read and
written as JSON. ``--json`` prints machine-readable output. Exit status: 0 success, 1
key not found (``get``, ``delete``), 2 usage or connection error, 3 the store has no
other replica (probably a wrong name; ``--allow-empty`` accepts it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

import anyio

from podshare._version import __version__
from podshare.exceptions import PodshareError, TransportError

__all__ = ["main"]

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_UNKNOWN_STORE = 3

#: The environment variable the CLI reads the cluster's shared secret from.
ENV_SECRET = "PODSHARE_SECRET"  # noqa: S105 - the variable's name, not a secret


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


def cli_node_id() -> str:
    """The CLI's own node id, ``cli-{host}-{pid}``.

    Never ``$PODSHARE_NODE_ID``: run inside a pod, the CLI would otherwise claim the
    pod's own id and be refused as a duplicate of it.
    """
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "node"
    return f"cli-{host}-{os.getpid()}"


@asynccontextmanager
async def open_transport(args: argparse.Namespace) -> AsyncIterator[Any]:
    """The transport named on the command line, entered."""
    if args.redis:
        from podshare.transport.redis import RedisTransport

        async with RedisTransport(args.redis, secret=args.secret) as transport:
            yield transport
    elif args.nats:
        from podshare.transport.nats import NatsTransport

        async with NatsTransport(args.nats, secret=args.secret) as transport:
            yield transport
    else:
        from podshare.transport.tcp import TcpTransport

        peers = [args.tcp, *args.peer]
        errors: list[BaseException] = []
        async with TcpTransport(
            listen=args.listen, peers=peers, secret=args.secret, on_error=errors.append
        ) as transport:
            # Dialing runs in the background: without a live peer the store would hydrate
            # from nobody and the command would act on an empty map.
            with anyio.move_on_after(args.hydrate_timeout):
                await transport.wait_connected(1)
            if not transport.connections:
                cause = f"; last error: {errors[-1]}" if errors else ""
                raise TransportError(
                    f"cannot connect to {', '.join(peers)} within {args.hydrate_timeout:g}s "
                    f"(not listening, or a wrong secret?){cause}"
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


def _missing(args: argparse.Namespace) -> str:
    # One wording for get and delete, in text and --json modes alike (on stderr).
    return f"podshare: no key {args.key!r} in store {args.store!r}"


async def run_command(args: argparse.Namespace, out: TextIO) -> int:
    """Join the cluster as a replica of ``args.store``, run one command, leave."""
    from podshare import EventKind, Store

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    async with (
        open_transport(args) as transport,
        Store[Any](
            args.store,
            transport,
            node_id=args.node_id,
            hydrate_timeout=args.hydrate_timeout,
            # A short-lived inspector is never the replica that writes the store's
            # persisted state (nor the one that loads it for the fleet).
            persistence=False,
        ) as store,
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
                    say(_dump({"key": args.key, "found": False}))
                print(_missing(args), file=sys.stderr)
                return EXIT_NOT_FOUND
            value = store[args.key]
            say(
                _dump({"key": args.key, "found": True, "value": value})
                if args.json
                else _dump(value)
            )
        elif cmd == "set":
            await store.set(args.key, args.parsed_value)
            say(_dump({"key": args.key, "ok": True}) if args.json else "OK")
        elif cmd == "delete":
            if args.key not in store:
                # Nothing to delete in what this replica hydrated: no tombstone is written.
                if args.json:
                    say(_dump({"key": args.key, "found": False, "deleted": False}))
                print(_missing(args), file=sys.stderr)
                return EXIT_NOT_FOUND
            await store.delete(args.key)
            if args.json:
                say(_dump({"key": args.key, "found": True, "deleted": True}))
            else:
                say(f"deleted {args.key}")
        elif cmd == "keys":
            keys = sorted(k for k in store if k.startswith(args.prefix or ""))
            if args.json:
                say(_dump(keys))
            else:
                for key in keys:
                    say(key)
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
                        say(_dump(record))
                    else:
                        shown = (
                            f" = {_dump(record['value'])}" if event.kind is EventKind.SET else ""
                        )
                        say(f"{record['kind']:6} {event.key}{shown}  (from {event.origin})")
                    seen += 1
                    if args.count and seen >= args.count:
                        break
        elif cmd == "stats":
            # The counters of the CLI's own replica: stats are local to each process and
            # never cross the wire, so no command can fetch another member's.
            stats = dataclasses.asdict(store.stats())
            if args.json:
                say(_dump({"node_id": store.node_id, "store": store.name, "stats": stats}))
            else:
                say(
                    f"stats of {store.node_id}, this CLI's own short-lived replica of "
                    f"{store.name!r} (not a pod's)"
                )
                width = max(map(len, stats))
                for name, value in stats.items():
                    say(f"{name:<{width}}  {value}")
        elif cmd == "members":
            members = sorted(store.members())
            if args.json:
                say(_dump(members))
            else:
                for member in members:
                    suffix = "  (this CLI)" if member == store.node_id else ""
                    say(member + suffix)
        return EXIT_OK


# --------------------------------------------------------------------------- argv


def _add_global_options(parser: argparse.ArgumentParser, *, late: bool) -> None:
    """The options every command takes, before it (``late=False``) or after it.

    After the command they are parsed into ``late_<dest>`` with no default, so that
    ``_merge_late`` can tell what was given there from what was not.
    """

    def add(*flags: str, dest: str, **kwargs: Any) -> None:
        if late:
            kwargs["default"] = argparse.SUPPRESS
            dest = f"late_{dest}"
        parser.add_argument(*flags, dest=dest, **kwargs)

    add(
        "--backend",
        dest="backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="async library to run on (default asyncio; Redis and NATS need asyncio)",
    )
    add("--redis", dest="redis", metavar="URL", help="join through Redis at URL")
    add("--nats", dest="nats", metavar="URL", help="join through the NATS server at URL")
    add("--tcp", dest="tcp", metavar="HOST:PORT", help="join the TCP mesh through this peer")
    add(
        "--peer",
        dest="peer",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="more TCP peers (repeatable)",
    )
    add(
        "--listen",
        dest="listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="TCP address this CLI listens on (default 127.0.0.1:0)",
    )
    add(
        "--secret-file",
        dest="secret_file",
        metavar="PATH",
        help=f"read the cluster's shared secret from PATH (default: ${ENV_SECRET})",
    )
    add(
        "--secret",
        dest="secret",
        help=f"the shared secret itself (visible in `ps`: prefer ${ENV_SECRET} or --secret-file)",
    )
    add("--json", dest="json", action="store_true", default=False, help="machine-readable output")
    add(
        "--hydrate-timeout",
        dest="hydrate_timeout",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="how long to wait for peers to answer (default 3)",
    )
    add(
        "--allow-empty",
        dest="allow_empty",
        action="store_true",
        default=False,
        help="act even if no other replica of the store answers",
    )
    add(
        "--node-id",
        dest="node_id",
        metavar="ID",
        help="the CLI replica's node id (default cli-{host}-{pid})",
    )


_GLOBAL_DESTS = (
    "backend",
    "redis",
    "nats",
    "tcp",
    "peer",
    "listen",
    "secret_file",
    "secret",
    "json",
    "hydrate_timeout",
    "allow_empty",
    "node_id",
)


def _merge_late(args: argparse.Namespace) -> None:
    """Fold the global options given after the command into the ones given before it."""
    for dest in _GLOBAL_DESTS:
        late = f"late_{dest}"
        if not hasattr(args, late):
            continue
        value = getattr(args, late)
        delattr(args, late)
        if dest == "peer":
            args.peer = [*args.peer, *value]
        else:
            setattr(args, dest, value)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and for shell completion tools)."""
    parser = argparse.ArgumentParser(
        prog="podshare",
        description="podshare: the same dict in every process. Demo and inspection CLI.",
        epilog=(
            "Global options may come before or after the command. The shared secret "
            f"(TCP mesh, or secret= on Redis/NATS) comes from ${ENV_SECRET}, "
            "--secret-file or --secret. Exit status: 0 done, 1 no such key, 2 usage or "
            "connection error, 3 no other replica of the store answered."
        ),
    )
    parser.add_argument("--version", action="version", version=f"podshare {__version__}")
    _add_global_options(parser, late=False)

    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("demo", help="three replicas on the in-memory transport (no server)")

    def with_store(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("store", help="the store's name")
        _add_global_options(p, late=True)
        return p

    with_store("get", "print one value as JSON").add_argument("key")
    p_set = with_store("set", "set a value, given as JSON (--raw: as a string)")
    p_set.add_argument("key")
    p_set.add_argument("value", help="JSON text: 1000, true, '\"dark\"', '{\"a\": 1}'")
    p_set.add_argument(
        "--raw", action="store_true", help="store VALUE as a string, without parsing it"
    )
    with_store("delete", "delete a key").add_argument("key")
    with_store("keys", "list keys").add_argument("--prefix")
    p_watch = with_store("watch", "stream changes as they happen")
    p_watch.add_argument("--prefix")
    p_watch.add_argument("--key")
    p_watch.add_argument("--count", type=int, default=0, help="stop after N events")
    with_store("stats", "print the counters of the CLI's own replica")
    with_store("members", "list live nodes")
    return parser


def _read_secret(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str | None:
    """The shared secret: ``--secret``, else ``--secret-file``, else ``$PODSHARE_SECRET``."""
    if args.secret is not None and args.secret_file is not None:
        parser.error("pass --secret or --secret-file, not both")
    if args.secret is not None:
        secret: str = args.secret
        source = "--secret"
    elif args.secret_file is not None:
        try:
            secret = Path(args.secret_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            parser.error(f"cannot read --secret-file {args.secret_file}: {exc.strerror}")
        source = f"--secret-file {args.secret_file}"
    elif os.environ.get(ENV_SECRET) is not None:
        secret = os.environ[ENV_SECRET]
        source = f"${ENV_SECRET}"
    else:
        return None
    if not secret:
        parser.error(f"the secret from {source} is empty")
    return secret


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check a command line (``sys.argv[1:]`` by default); exit 2 on misuse."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _merge_late(args)
    if args.command == "demo":
        return args
    given = [f"--{name}" for name in ("redis", "nats", "tcp") if getattr(args, name)]
    if not given:
        parser.error(f"'{args.command}' needs --redis URL, --nats URL or --tcp HOST:PORT")
    if len(given) > 1:
        parser.error(f"pass one of --redis, --nats and --tcp, not {' and '.join(given)}")
    if args.peer and not args.tcp:
        parser.error("--peer adds TCP peers: it needs --tcp")
    if args.command == "watch" and args.prefix and args.key:
        parser.error("watch takes --prefix or --key, not both")
    if args.command == "set":
        if args.raw:
            args.parsed_value = args.value
        else:
            try:
                args.parsed_value = json.loads(args.value)
            except json.JSONDecodeError as exc:
                # Not parser.error(): the usage text would bury the one line that matters.
                print(
                    f"podshare: the value {args.value!r} is not valid JSON ({exc.msg} at "
                    f"character {exc.pos}); nothing was stored. Quote a string as JSON "
                    "('\"text\"') or pass --raw to store the argument as it is",
                    file=sys.stderr,
                )
                raise SystemExit(EXIT_USAGE) from None
    args.secret = _read_secret(args, parser)
    if args.node_id is None:
        args.node_id = cli_node_id()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m podshare`` and the ``podshare`` script."""
    args = parse_args(argv)
    where = args.redis or args.nats or args.tcp
    try:
        if args.command == "demo":
            anyio.run(demo, sys.stdout, backend=args.backend)
            return EXIT_OK
        status: int = anyio.run(run_command, args, sys.stdout, backend=args.backend)
        return status
    except KeyboardInterrupt:
        return EXIT_OK
    except PodshareError as exc:
        print(f"podshare: {type(exc).__name__}: {exc} (cluster: {where})", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"podshare: cannot reach {where}: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
