"""The embedded Service Bus queue: peek-lock, lock expiry, delivery counts, the dead-letter
queue, durability across a process restart, and receivers in several processes."""

import json
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime

import pytest

from mlassets.roles.servicebus import MAX_DELIVERY_COUNT_EXCEEDED, MessageLockLostError
from mlassets.settings import PROJECT_ROOT
from mlassets.twins.queue import MessageQueue

pytestmark = pytest.mark.timeout(60)

LOCK = 0.3  # seconds; short, so expiry can be waited for


@pytest.fixture
def path(tmp_path):
    return tmp_path / "servicebus" / "q.db"


@pytest.fixture
def queue(path):
    q = MessageQueue(path, lock_duration_seconds=LOCK, max_delivery_count=3)
    yield q
    q.close()


def expire_locks():
    time.sleep(LOCK + 0.1)


def test_a_sent_message_keeps_its_properties_and_gets_a_sequence_number(queue):
    before = datetime.now(UTC)
    first = queue.send(
        b'{"type": "score"}',
        message_id="m-1",
        content_type="application/json",
        subject="score",
        application_properties={"origin": "test", "n": 3},
    )
    second = queue.send("text body")
    assert (first.sequence_number, second.sequence_number) == (1, 2)
    assert second.message_id and second.message_id != first.message_id
    (got,) = queue.receive()
    assert got.message_id == "m-1" and got.body == b'{"type": "score"}'
    assert got.content_type == "application/json" and got.subject == "score"
    assert got.application_properties == {"origin": "test", "n": 3}
    assert got.enqueued_time >= before.replace(microsecond=0)
    assert got.delivery_count == 1
    assert got.lock_token and got.locked_until > datetime.now(UTC)


def test_a_locked_message_is_invisible_to_other_receivers_until_its_lock_expires(path):
    # Two handles on one file, as two processes would have.
    a = MessageQueue(path, lock_duration_seconds=LOCK)
    b = MessageQueue(path, lock_duration_seconds=LOCK)
    a.send(b"x", message_id="m")
    (held,) = a.receive()
    assert b.receive() == []
    assert b.peek()[0].message_id == "m"  # peeking sees it, without taking the lock
    expire_locks()
    (again,) = b.receive()
    assert again.message_id == "m" and again.delivery_count == 2
    assert again.lock_token != held.lock_token
    # The first receiver's lock is gone: its settlement must not touch the new delivery.
    with pytest.raises(MessageLockLostError):
        a.complete(held.lock_token)
    b.complete(again.lock_token)
    assert a.counts().active == 0


def test_complete_removes_and_abandon_gives_back_at_once_with_one_more_delivery(queue):
    queue.send(b"1", message_id="one")
    queue.send(b"2", message_id="two")
    one, two = queue.receive(max_messages=10)
    queue.complete(one.lock_token)
    queue.abandon(two.lock_token)
    (again,) = queue.receive(max_messages=10)
    assert again.message_id == "two" and again.delivery_count == 2
    with pytest.raises(MessageLockLostError):
        queue.complete(one.lock_token)  # settled already
    assert queue.counts().active == 1 and queue.counts().locked == 1


def test_max_delivery_count_dead_letters_after_abandons(queue):
    queue.send(b"poison", message_id="p")
    for expected in (1, 2, 3):
        (m,) = queue.receive()
        assert m.delivery_count == expected
        queue.abandon(m.lock_token)
    assert queue.receive() == []
    (dead,) = queue.peek(sub_queue="deadletter")
    assert dead.message_id == "p" and dead.body == b"poison"
    assert dead.dead_letter_reason == MAX_DELIVERY_COUNT_EXCEEDED
    assert dead.dead_letter_error_description == (
        "Message could not be consumed after 3 delivery attempts."
    )
    assert queue.counts().dead_letter == 1 and queue.counts().active == 0


def test_max_delivery_count_dead_letters_after_expired_locks(queue):
    queue.send(b"slow", message_id="s")
    for _ in range(3):
        assert len(queue.receive()) == 1
        expire_locks()
    assert queue.receive() == []
    (dead,) = queue.peek(sub_queue="deadletter")
    assert dead.dead_letter_reason == MAX_DELIVERY_COUNT_EXCEEDED and dead.delivery_count == 3


def test_counts_and_peek_see_an_expired_last_delivery_as_dead_lettered(queue):
    queue.send(b"x")
    for _ in range(3):
        queue.receive()
        expire_locks()
    # No receiver ran since the last lock expired; a browser still sees the truth.
    assert queue.counts().dead_letter == 1
    assert queue.peek() == []


def test_dead_letter_with_reason_then_read_the_dead_letter_queue(queue):
    queue.send(b"not json", message_id="bad")
    (m,) = queue.receive()
    queue.dead_letter(m.lock_token, "MalformedMessage", "the body is not UTF-8 JSON")
    assert queue.receive() == []
    (peeked,) = queue.peek(sub_queue="deadletter")
    assert (peeked.dead_letter_reason, peeked.dead_letter_error_description) == (
        "MalformedMessage",
        "the body is not UTF-8 JSON",
    )
    # The dead-letter queue is a queue: peek-lock receive, abandon, complete.
    (d,) = queue.receive(sub_queue="deadletter")
    assert d.message_id == "bad" and d.dead_letter_reason == "MalformedMessage"
    with pytest.raises(ValueError, match="dead-lettered again"):
        queue.dead_letter(d.lock_token, "again", "")
    queue.abandon(d.lock_token)  # no max delivery count in the dead-letter queue
    (d,) = queue.receive(sub_queue="deadletter")
    queue.complete(d.lock_token)
    assert queue.counts().dead_letter == 0


def test_peek_does_not_lock_and_pages_by_sequence_number(queue):
    for i in range(5):
        queue.send(str(i))
    assert [m.body for m in queue.peek(2)] == [b"0", b"1"]
    assert [m.body for m in queue.peek(10, from_sequence_number=4)] == [b"3", b"4"]
    assert all(m.lock_token is None and m.delivery_count == 0 for m in queue.peek())
    assert len(queue.receive(max_messages=10)) == 5


def test_renew_lock_keeps_the_message_past_its_first_expiry(queue):
    queue.send(b"x")
    (m,) = queue.receive()
    time.sleep(LOCK * 0.6)
    new_until = queue.renew_lock(m.lock_token)
    assert new_until > m.locked_until
    time.sleep(LOCK * 0.6)  # past the first expiry, within the renewed one
    assert queue.receive() == []
    queue.complete(m.lock_token)


def _script(path, body: str) -> str:
    """A Python program that opens the queue at `path` as `q`, then runs `body`."""
    return (
        f"import sys; sys.path.insert(0, {str(PROJECT_ROOT)!r})\n"
        "from mlassets.twins.queue import MessageQueue\n"
        f"q = MessageQueue({str(path)!r}, lock_duration_seconds={LOCK * 2})\n"
        + textwrap.dedent(body)
    )


def test_receive_waits_for_a_message_sent_meanwhile_by_another_process(path):
    q = MessageQueue(path)
    started = time.monotonic()
    assert q.receive(max_wait_seconds=0.2) == []
    assert time.monotonic() - started >= 0.2
    script = _script(path, "import time; time.sleep(0.3); q.send(b'late')")
    sender = subprocess.Popen([sys.executable, "-c", script])
    try:
        got = q.receive(max_wait_seconds=20)
    finally:
        sender.wait(timeout=30)
    assert [m.body for m in got] == [b"late"]


def test_messages_survive_a_crashed_process_and_a_held_lock_comes_back(path):
    script = _script(
        path,
        """
        import os
        for i in range(3):
            q.send(f"m{i}".encode(), message_id=f"id-{i}")
        (m,) = q.receive()
        print(m.message_id, flush=True)
        os._exit(9)  # a crash: no settlement, no close, no clean shutdown
    """,
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 9, done.stderr
    assert done.stdout.strip() == "id-0"

    q = MessageQueue(path, lock_duration_seconds=LOCK * 2)
    assert [m.message_id for m in q.peek()] == ["id-0", "id-1", "id-2"]
    # id-0 is still locked by the crashed receiver; the others are free.
    free = q.receive(max_messages=10)
    assert [m.message_id for m in free] == ["id-1", "id-2"]
    for m in free:
        q.complete(m.lock_token)
    time.sleep(LOCK * 2 + 0.1)
    (back,) = q.receive(max_messages=10)
    assert back.message_id == "id-0" and back.body == b"m0" and back.delivery_count == 2


_CONSUMER = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, {root!r})
    from mlassets.twins.queue import MessageQueue
    q = MessageQueue({path!r}, lock_duration_seconds=30)
    got, idle = [], 0
    while idle < 3:
        batch = q.receive(max_messages=3, max_wait_seconds=0.2)
        if not batch:
            idle += 1
            continue
        idle = 0
        for m in batch:
            got.append(m.message_id)
            q.complete(m.lock_token)
    print(json.dumps(got))
""")


def test_receivers_in_several_processes_never_get_the_same_message(path):
    q = MessageQueue(path, lock_duration_seconds=30)
    ids = [f"m{i:03d}" for i in range(150)]
    for mid in ids:
        q.send(b"{}", message_id=mid)
    script = _CONSUMER.format(root=str(PROJECT_ROOT), path=str(path))
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    received = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        received.append(json.loads(out))
    everything = [mid for got in received for mid in got]
    assert sorted(everything) == ids  # each message exactly once, none lost
    assert q.counts().active == 0
