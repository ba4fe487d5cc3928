"""The topic -> NATS subject mapping and the KV key encoding: reversible and injective."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from podshare.persistence.nats import NatsKVPersistence, _decode
from podshare.transport._subjects import subject_to_topic, topic_to_subject

# Topics: any text, and the shapes podshare uses (family/name, an inbox after '#').
_alphabet = st.characters(codec="utf-8")  # no surrogates: every topic is UTF-8
topics = st.one_of(
    st.text(_alphabet, max_size=40),
    st.builds(
        lambda family, name, node: f"{family}/{name}" + (f"#{node}" if node is not None else ""),
        st.sampled_from(["ps", "pl", "cr"]),
        st.text(_alphabet, min_size=1, max_size=20).filter(lambda s: "#" not in s),
        st.none() | st.text(_alphabet, max_size=20),
    ),
)
prefixes = st.sampled_from(["", "podshare", "app.podshare", "x-1"])
_TOKEN = re.compile(r"[A-Za-z0-9_~-]+")
_KV_KEY = re.compile(r"[-/_=.A-Za-z0-9]+")


@given(prefixes, topics)
def test_subject_round_trips_and_is_a_literal_subject(prefix: str, topic: str) -> None:
    subject = topic_to_subject(prefix, topic)
    assert subject_to_topic(prefix, subject) == topic
    body = subject[len(prefix) + 1 :] if prefix else subject
    assert all(_TOKEN.fullmatch(token) for token in body.split("."))


@given(prefixes, topics, topics)
def test_different_topics_get_different_subjects(prefix: str, a: str, b: str) -> None:
    if a != b:
        assert topic_to_subject(prefix, a) != topic_to_subject(prefix, b)


@given(st.text(_alphabet, max_size=30))
def test_foreign_subjects_decode_to_none_or_round_trip(subject: str) -> None:
    topic = subject_to_topic("podshare", subject)
    if topic is not None:
        assert topic_to_subject("podshare", topic) == subject


@given(st.text(_alphabet, min_size=1, max_size=30), st.text(_alphabet, max_size=60))
def test_kv_keys_are_valid_and_reversible(store: str, key: str) -> None:
    kv_key = NatsKVPersistence.key_for(store, key)
    assert _KV_KEY.fullmatch(kv_key)
    prefix, kind, encoded = kv_key.split(".")
    assert (_decode(prefix), kind, _decode(encoded)) == (store, "r", key)
    assert NatsKVPersistence.meta_key_for(store) == f"{prefix}.m"
