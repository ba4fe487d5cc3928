"""Peer to peer: three nodes share a map over a TCP mesh, with no broker.

Shows ``TcpTransport``: each node listens on a loopback port (``127.0.0.1:0`` picks a
free one) and dials the nodes it knows, authenticated by a shared secret. Writes go
straight to every connected peer. A node that joins later hydrates from the others, and
``members()`` tracks who is alive. In a real deployment each node is its own process (a
pod) listening on ``0.0.0.0:7000`` and dialing its peers' addresses (``DNSDiscoverer``
keeps that list in step with a Kubernetes headless Service).

Run it with ``python examples/p2p.py``.
"""

import secrets

import anyio

from podshare import EventKind, Store
from podshare.transport import TcpTransport

# Every node of a mesh must know the same secret; peers without it are refused.
SECRET = secrets.token_hex(16)


async def main() -> None:
    async with (
        TcpTransport(listen="127.0.0.1:0", secret=SECRET) as net_1,
        TcpTransport(listen="127.0.0.1:0", peers=[net_1.address], secret=SECRET) as net_2,
    ):
        # Not required (a store catches up by itself when a peer connects), but waiting
        # for the connection makes this demo's output the same on every run.
        with anyio.fail_after(5):
            await net_2.wait_connected(1)
        async with (
            Store[int]("quotas", net_1, node_id="node-1") as node_1,
            Store[int]("quotas", net_2, node_id="node-2") as node_2,
        ):
            print(f"node-1 listens on {net_1.address}, node-2 on {net_2.address}")

            async with node_2.watch(prefix="tenant:") as events:
                await node_1.set_many({"tenant:acme": 100, "tenant:globex": 250})
                with anyio.fail_after(5):
                    seen = 0
                    async for event in events:
                        print(f"node-2 saw  {event.key} = {event.value} (from {event.origin})")
                        seen += 1
                        if seen == 2:
                            break

            await join_and_leave(net_1.address, net_2.address, node_1)
            print("members seen by node-1:", sorted(node_1.members()))
            print("converged:", node_1.snapshot() == node_2.snapshot())


async def join_and_leave(address_1: str, address_2: str, node_1: Store[int]) -> None:
    """A third node joins, hydrates, writes, then leaves; node-1 sees each step."""
    # It dials both others: the mesh is full, messages are not relayed through peers.
    async with TcpTransport(peers=[address_1, address_2], secret=SECRET) as net_3:
        with anyio.fail_after(5):
            await net_3.wait_connected(2)
        async with node_1.watch(members=True) as membership:
            async with Store[int]("quotas", net_3, node_id="node-3") as node_3:
                # Hydrated before `async with` returned: it already has every key.
                print("node-3 joined and reads", dict(sorted(node_3.items())))
                async with node_1.watch(key="tenant:acme") as events:
                    await node_3.set("tenant:acme", 120)
                    with anyio.fail_after(5):
                        async for event in events:
                            print(f"node-1 saw  {event.key} = {event.value} (from node-3)")
                            break
                print("members seen by node-1:", sorted(node_1.members()))
            # Leaving the block closed node-3's store, which said goodbye to its peers.
            with anyio.fail_after(10):
                async for event in membership:
                    if event.kind is EventKind.NODE_DOWN and event.key == "node-3":
                        print("node-1 saw  node-3 leave")
                        break


if __name__ == "__main__":
    anyio.run(main)
