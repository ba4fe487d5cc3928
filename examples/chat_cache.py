"""Chat cache: chat-server pods share recent conversations as Yjs documents.

Three chat-server pods sit behind a load balancer that sends each request to any pod.
Each conversation is a ``YDoc`` in a ``Store[YDoc]``; a turn appends a message with
``store.update(key, lambda d: d.append(...))``, which ships only the new message (tens
of bytes), not the conversation. So whichever pod gets the follow-up turn already has
the history, and two pods answering at the same moment both keep their messages.

The pods share a ``MemoryNetwork`` here; give each a ``RedisTransport`` or
``TcpTransport`` to run them as separate processes.

Run it with ``python examples/chat_cache.py`` (it needs the ``yjs`` extra: pycrdt).
"""

from __future__ import annotations

import itertools
from contextlib import AsyncExitStack

import anyio

from podshare import Store
from podshare.crdt import YDoc
from podshare.transport import MemoryNetwork, MemoryTransport

PODS = ("pod-1", "pod-2", "pod-3")


def reply_to(history: list[dict[str, str]]) -> str:
    """A stand-in for the model: it can only answer well if it sees the whole history."""
    last = history[-1]["text"]
    return f"(turn {len(history) + 1}, after {len(history)} messages) you said {last!r}"


async def handle_turn(pod: Store[YDoc], chat: str, text: str) -> str:
    """One request to one pod: read the cached history, answer, append both turns."""
    doc = pod.get(chat)
    history = doc.array("messages") if doc is not None else []
    history.append({"role": "user", "text": text})
    answer = reply_to(history)
    await pod.update(
        chat,
        lambda d: d.append(
            "messages", {"role": "user", "text": text}, {"role": "assistant", "text": answer}
        ),
    )
    return answer


def length(pod: Store[YDoc], chat: str) -> int:
    doc = pod.get(chat)
    return len(doc.array("messages")) if doc is not None else 0


async def synced(pods: list[Store[YDoc]], chat: str, messages: int) -> None:
    """Wait until every pod holds ``messages`` messages of ``chat`` (watching, not polling)."""
    with anyio.fail_after(5):
        for pod in pods:
            async with pod.watch(key=chat) as events:
                if length(pod, chat) >= messages:
                    continue
                async for _ in events:
                    if length(pod, chat) >= messages:
                        break


async def main() -> None:
    network = MemoryNetwork()
    async with AsyncExitStack() as stack:
        pods: list[Store[YDoc]] = []
        for name in PODS:
            transport = await stack.enter_async_context(MemoryTransport(network=network, name=name))
            pods.append(
                await stack.enter_async_context(
                    Store[YDoc]("chats", transport, node_id=name, hydrate_timeout=0.5)
                )
            )

        # The load balancer sends each turn of chat:42 to a different pod.
        balancer = itertools.cycle(pods)
        for text in ("Hi, I'm planning a trip.", "To Lisbon, in May.", "What should I pack?"):
            pod = next(balancer)
            answer = await handle_turn(pod, "chat:42", text)
            print(f"{pod.node_id} answered: {answer}")
            await synced(pods, "chat:42", length(pod, "chat:42"))

        # Two turns of one chat reach two pods at the same moment: both are kept.
        async with anyio.create_task_group() as tg:
            tg.start_soon(handle_turn, pods[0], "chat:42", "Also: shoes?")
            tg.start_soon(handle_turn, pods[1], "chat:42", "And an umbrella?")
        await synced(pods, "chat:42", 10)

        chat = pods[2]["chat:42"]
        print(f"pod-3 sees {len(chat.array('messages'))} messages; the last user turns:")
        for message in chat.array("messages"):
            if message["role"] == "user":
                print("   ", message["text"])
        delta = chat.append("messages", {"role": "user", "text": "one more"}).delta_from(chat)
        print(
            f"an edit travels as {len(delta.to_update())} bytes; the whole chat is "
            f"{len(chat.to_update())} bytes"
        )
        print("all pods agree:", all(pod["chat:42"] == chat for pod in pods))


if __name__ == "__main__":
    anyio.run(main)  # or anyio.run(main, backend="trio")
