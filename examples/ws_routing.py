"""Websocket routing: push to a user from any pod; the call goes to the pod holding the socket.

Shows ``podshare.callreply``. Two pods each run a real websocket server (the
``websockets`` library). When a client connects to pod A, pod A registers the target
``user:<name>`` with a ``push`` handler that writes to that socket; only the small route
``user:<name> -> pod-a`` is replicated. Pod B then calls ``push`` on the target: the call
is forwarded to pod A, which sends the message down the socket and replies. When the
client disconnects, pod A unregisters and pushes fail with ``NoRoute`` everywhere.

The pods talk over a ``MemoryNetwork`` here; in production give each pod a
``RedisTransport`` or ``TcpTransport``. ``websockets`` is asyncio-only, so this example
runs on asyncio. Run it with ``python examples/ws_routing.py``; it needs
``pip install "podshare[examples]"`` (websockets).
"""

from urllib.parse import parse_qs, urlparse

import anyio

try:
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import ServerConnection, serve
except ImportError as exc:
    raise SystemExit(f"{exc}: this example needs: pip install 'podshare[examples]'") from exc

from podshare.callreply import Endpoint
from podshare.exceptions import NoRoute
from podshare.transport import MemoryNetwork, MemoryTransport


class Pod:
    """One chat-server pod: a websocket server plus a callreply endpoint."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.left: dict[str, anyio.Event] = {}  # user -> set once their socket is gone

    async def handle_socket(self, ws: ServerConnection) -> None:
        """Serve one websocket: ``ws://pod/?user=NAME``."""
        assert ws.request is not None
        user = parse_qs(urlparse(ws.request.path).query).get("user", ["anonymous"])[0]
        target = f"user:{user}"

        async def push(payload: bytes) -> bytes:
            await ws.send(payload.decode())
            return b"delivered"

        self.left[user] = anyio.Event()
        await self.endpoint.register(target, "push", push)
        print(f"{self.endpoint.node_id}: {user} connected; route {target} -> here")
        try:
            await ws.send(f"welcome {user}, you are on {self.endpoint.node_id}")
            await ws.wait_closed()
        finally:
            # Only the route goes; a newer claim by another pod (the user reconnected
            # elsewhere) is never erased by this.
            await self.endpoint.unregister(target)
            print(f"{self.endpoint.node_id}: {user} disconnected; route removed")
            self.left[user].set()

    async def push(self, user: str, text: str) -> str:
        """Push ``text`` to ``user`` wherever they are connected."""
        # Right after a user connects, the route may still be on its way to this pod:
        # retry NoRoute briefly. (Calls are at most once; a retry is safe here because
        # NoRoute means no handler ran.)
        with anyio.fail_after(5):
            while True:
                try:
                    reply = await self.endpoint.call(f"user:{user}", "push", text.encode())
                    return reply.decode()
                except NoRoute:
                    await anyio.sleep(0.01)


async def main() -> None:
    network = MemoryNetwork()
    async with (
        MemoryTransport(network=network, name="pod-a") as transport_a,
        MemoryTransport(network=network, name="pod-b") as transport_b,
        Endpoint(transport_a, node_id="pod-a") as endpoint_a,
        Endpoint(transport_b, node_id="pod-b") as endpoint_b,
    ):
        pod_a, pod_b = Pod(endpoint_a), Pod(endpoint_b)
        async with (
            serve(pod_a.handle_socket, "127.0.0.1", 0) as server_a,
            serve(pod_b.handle_socket, "127.0.0.1", 0) as server_b,
        ):
            port_a = server_a.sockets[0].getsockname()[1]
            port_b = server_b.sockets[0].getsockname()[1]
            print(f"pod-a serves ws://127.0.0.1:{port_a}/, pod-b serves ws://127.0.0.1:{port_b}/")

            with anyio.fail_after(10):
                # The load balancer happened to send alice to pod A.
                async with connect(f"ws://127.0.0.1:{port_a}/?user=alice") as client:
                    print("alice got:", await client.recv())  # registered by now

                    # Something on pod B (a REST call, a job) wants to notify alice.
                    status = await pod_b.push("alice", "you have a new message")
                    print("alice got:", await client.recv())
                    print(
                        f"pod-b: push to alice {status} (owner: {endpoint_b.owner('user:alice')})"
                    )

                await pod_a.left["alice"].wait()
                try:
                    await endpoint_b.call("user:alice", "push", b"anyone there?")
                except NoRoute:
                    print("pod-b: alice is offline (NoRoute)")


if __name__ == "__main__":
    anyio.run(main, backend="asyncio")  # websockets runs on asyncio
