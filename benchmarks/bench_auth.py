"""Message authentication: the cost of seal + open, and of the wrapper on set→event latency.

Run: ``python benchmarks/bench_auth.py [--backend asyncio|trio] [--quick]``.

Prints one table with podshare's figure beside its peer's, measured in the same run:

- seal + open of one message (HMAC-SHA256, and AES-256-GCM when ``cryptography`` is
  installed), for 100 B and 10 KB payloads, vs the bare primitive computed twice (the
  MAC for sealing and for checking; encrypt + decrypt), so the ratio is the framing,
  key lookup and replay window on top of the cryptography;
- set → watch event on another replica over ``MemoryTransport``, p50, through
  ``Authenticated`` vs the plain transport.
"""

from __future__ import annotations

import argparse
import hmac
import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio

from podshare import Store
from podshare.transport import Authenticated, Authenticator, MemoryNetwork, MemoryTransport
from podshare.transport.base import Transport

SECRET = b"a benchmark secret, long enough"
QUIET = {"anti_entropy_interval": 3600.0, "hydrate_timeout": 0.0}


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def best_of(fn: Callable[[], None], number: int, repeat: int = 5) -> float:
    """Microseconds per call of ``fn``, best of ``repeat`` runs of ``number`` calls."""
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best / number * 1e6


def bench_seal_open(size: int, encrypt: bool, number: int) -> tuple[float, float]:
    """(seal + open, bare primitive twice) in microseconds per message."""
    sender, receiver = Authenticator(SECRET, encrypt=encrypt), Authenticator(SECRET)
    opener = receiver.opener("ps/bench")
    payload = os.urandom(size)
    now = time.time()

    def podshare() -> None:
        opener.open(sender.seal("ps/bench", payload, now=now), now=now)

    key = os.urandom(32)
    if encrypt:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        aead, nonce, aad = AESGCM(key), os.urandom(12), os.urandom(38)

        def bare() -> None:
            aead.decrypt(nonce, aead.encrypt(nonce, payload, aad), aad)

    else:
        body = os.urandom(38) + payload

        def bare() -> None:
            tag = hmac.digest(key, body, "sha256")[:16]
            hmac.compare_digest(hmac.digest(key, body, "sha256")[:16], tag)

    return best_of(podshare, number), best_of(bare, number)


async def bench_latency(wrap: bool, rounds: int) -> list[float]:
    """Seconds from a write starting to its event on another replica."""
    network = MemoryNetwork()
    samples: list[float] = []
    async with AsyncExitStack() as stack:
        transports: list[Transport] = []
        for _ in range(2):
            inner = MemoryTransport(network=network, buffer_size=rounds + 64)
            tr: Any = Authenticated(inner, secret=SECRET) if wrap else inner
            transports.append(await stack.enter_async_context(tr))
        a = await stack.enter_async_context(Store[int]("lat", transports[0], node_id="w", **QUIET))
        b = await stack.enter_async_context(Store[int]("lat", transports[1], node_id="r", **QUIET))
        events = await stack.enter_async_context(b.watch(key="lat", buffer=rounds + 1))
        for i in range(rounds):
            t0 = time.perf_counter()
            await a.set("lat", i)
            await anext(events)
            samples.append(time.perf_counter() - t0)
    return samples


async def main(quick: bool) -> None:
    number = 2_000 if quick else 20_000
    rows: list[tuple[str, float, float, str]] = []
    try:
        import cryptography  # noqa: F401
    except ImportError:
        suites = [False]
        print("  (cryptography is not installed: no AES-GCM rows)", file=sys.stderr)
    else:
        suites = [False, True]
    for encrypt in suites:
        name, peer = ("AES-GCM", "encrypt+decrypt") if encrypt else ("HMAC", "2x HMAC-SHA256")
        for size, label in ((100, "100 B"), (10_000, "10 KB")):
            mine, bare = bench_seal_open(size, encrypt, number)
            rows.append((f"seal+open {name} {label} (us)", mine, bare, peer))

    rounds = 300 if quick else 3000
    # Interleaved runs, best p50 of three each: other processes share the machine.
    plain = wrapped = math.inf
    for _ in range(3):
        plain = min(plain, pct(await bench_latency(False, rounds), 0.5))
        wrapped = min(wrapped, pct(await bench_latency(True, rounds), 0.5))
    rows.append(("set->event p50 (us)", wrapped * 1e6, plain * 1e6, "no authentication"))

    print(f"{'what':<32}{'podshare':>10}{'peer':>10}{'ratio':>8}  peer is")
    for what, mine, peer, peer_name in rows:
        print(f"{what:<32}{mine:>10.2f}{peer:>10.2f}{mine / peer:>8.2f}  {peer_name}")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse(sys.argv[1:])
    runner: Callable[..., Any] = anyio.run
    runner(main, args.quick, backend=args.backend)
