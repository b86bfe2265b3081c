"""EmbeddedQueue: the message queue role's twin, used through the role's interface (sessions
that receive in peek-lock and settle only what they received)."""

import pytest

from mlassets.roles.servicebus import MAX_DELIVERY_COUNT_EXCEEDED, MessageQueueResource
from mlassets.twins.servicebus import EmbeddedQueue


@pytest.fixture
def queue(tmp_path) -> EmbeddedQueue:
    return EmbeddedQueue(path=str(tmp_path / "q.db"), name="commands", max_delivery_count=2)


def test_a_sent_message_is_received_once_and_completed(queue):
    assert isinstance(queue, MessageQueueResource)
    mid = queue.send_json({"command": "train"}, message_id="m-1", subject="train")
    assert mid == "m-1"
    with queue.session() as session:
        (message,) = session.receive(max_messages=5)
        assert message.text() == '{"command": "train"}'
        assert message.content_type == "application/json" and message.delivery_count == 1
        assert session.receive() == []  # locked: invisible to every receiver
        session.complete(message)
    counts = queue.counts()
    assert (counts.active, counts.locked, counts.dead_letter, counts.exact) == (0, 0, 0, True)


def test_a_message_is_settled_only_by_the_session_that_received_it(queue):
    queue.send(b"x")
    with queue.session() as first:
        (message,) = first.receive()
        with queue.session() as second, pytest.raises(ValueError, match="link that received"):
            second.complete(message)
        first.abandon(message)
    assert [m.delivery_count for m in queue.peek()] == [1]


def test_after_its_last_delivery_an_abandoned_message_is_dead_lettered(queue):
    queue.send(b"x", message_id="m-2")
    for _ in range(2):
        with queue.session() as session:
            session.abandon(*session.receive())
    assert queue.peek() == []
    (dead,) = queue.peek_dead_letters()
    assert (dead.message_id, dead.dead_letter_reason) == ("m-2", MAX_DELIVERY_COUNT_EXCEEDED)
    with queue.session(dead_letter=True) as session:
        session.complete(*session.receive())
    assert queue.counts().dead_letter == 0
    assert "commands" in queue.display and queue.queue_name == "commands"
