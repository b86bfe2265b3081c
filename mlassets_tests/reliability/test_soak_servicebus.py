"""A soak of the command queue: 1,000 Service Bus messages on the embedded queue, valid and
malformed, through the real `servicebus_sensor`, while deliveries are forced to repeat (a
competing receiver abandons messages or lets their locks run out, and the "daemon" loses a
share of the sensor's run requests before creating their runs).

Nothing is lost and nothing runs twice: every valid message ends with exactly one run, keyed
by its message id, and is completed; every ignored event is completed without a run; every
malformed message is dead-lettered with its reason; the queue ends empty.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter, defaultdict

import dagster as dg
import pytest

from mlassets.definitions import defs
from mlassets.defs.commands.sensors import servicebus_sensor
from mlassets.defs.resources import local_resources
from mlassets.lib.messages import DropZone, blob_created_event, event_content_type

pytestmark = pytest.mark.timeout(300)

LOCK = 0.5  # seconds: the embedded queue's lock duration here
MAX_DELIVERIES = 10  # the queue's default
TOTAL = 1_000

#: (body, dead-letter reason) of each malformed kind.
MALFORMED = [
    (b"retrain please", "MalformedMessage"),
    (b"\xff\xfe\x00", "MalformedMessage"),
    (b"", "MalformedMessage"),
    (b"null", "MalformedMessage"),
    (b"[]", "MalformedMessage"),
    (b"[1, 2]", "MalformedMessage"),
    (b'"retrain"', "MalformedMessage"),
    (b'{"reason": "no type"}', "MalformedMessage"),
    (b"[" * 40_000 + b"]" * 40_000, "MalformedMessage"),
    (b'{"type": "retrain", "reason": "\\udfff"}', "MalformedMessage"),
    (b'{"type": "deploy"}', "UnknownMessageType"),
    (b'{"type": "retrain", "reason": 42}', "InvalidMessage"),
    (b'{"type": "retrain", "reason": "   "}', "InvalidMessage"),
    (
        b'{"eventType": "Microsoft.Storage.BlobDeleted", "id": "e1", "data": {}}',
        "UnsupportedEventType",
    ),
]


@pytest.fixture
def resources(data_dir, monkeypatch):
    monkeypatch.setenv("MLASSETS_SERVICEBUS_LOCK_SECONDS", str(LOCK))
    monkeypatch.setenv("MLASSETS_SERVICEBUS_MAX_DELIVERY_COUNT", str(MAX_DELIVERIES))
    r = local_resources()
    return {"message_queue": r["message_queue"], "lake": r["lake"]}


def send_mix(queue, lake, rng: random.Random) -> tuple[dict, set, dict]:
    """TOTAL messages of kinds drawn at random: ({message id: job} of the valid ones, the
    ignored ones' ids, {message id: dead-letter reason} of the malformed ones)."""
    zone = DropZone.for_lake(lake)
    plans = []
    for i in range(TOTAL):
        kind = rng.choices(["valid", "ignored", "malformed"], weights=[80, 5, 15])[0]
        plans.append((kind, i))
    valid: dict[str, str] = {}
    ignored: set[str] = set()
    malformed: dict[str, str] = {}
    for kind, i in plans:
        if kind == "malformed":
            if i % 7 == 0:  # events that name what the import cannot or must not read
                outside = blob_created_event(zone, f"soak/{i}.json")
                outside["data"]["url"] = f"https://elsewhere.blob.core.windows.net/x/{i}.json"
                mid = queue.send_json(outside, message_id=outside["id"])
                malformed[mid] = "OutsideDropZone"
            elif i % 7 == 1:
                png = blob_created_event(zone, f"soak/{i}.png")
                malformed[queue.send_json(png, message_id=png["id"])] = "UnsupportedDrop"
            else:
                body, reason = MALFORMED[i % len(MALFORMED)]
                malformed[queue.send(body)] = reason
        elif kind == "ignored":  # ADLS CreateFile: the data comes in a later event
            event = blob_created_event(zone, f"soak/{i}.json", api="CreateFile")
            ignored.add(queue.send_json(event, message_id=event["id"]))
        elif i % 4 == 0:
            valid[queue.send_json({"type": "retrain", "reason": f"soak {i}"})] = "train_model"
        elif i % 4 == 1:
            valid[queue.send_json({"type": "score"})] = "score_events"
        else:
            schema = "eventgrid" if i % 4 == 2 else "cloudevents"
            event = blob_created_event(zone, f"soak/{i}.json", schema=schema)
            mid = queue.send_json(
                event, message_id=event["id"], content_type=event_content_type(schema)
            )
            valid[mid] = "import_incoming"
    return valid, ignored, malformed


def compete(queue, rng: random.Random) -> int:
    """Another receiver takes a few messages and gives them back: abandoned at once, or held
    until their locks run out. Returns how many deliveries it spent."""
    with queue.session() as session:
        taken = session.receive(max_messages=rng.randint(1, 6))
        for message in taken:
            if rng.random() < 0.5:
                session.abandon(message)
    return len(taken)


def tick(resources, instance: dg.DagsterInstance):
    """One evaluation as the daemon runs it, within the code location (whose jobs the run
    requests must target); the partitions the tick asks for are added, as the daemon does."""
    context = dg.build_sensor_context(
        instance=instance, instance_ref=instance.get_ref(), resources=resources, definitions=defs
    )
    data = servicebus_sensor.evaluate_tick(context)
    for request in data.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return data


def launch(instance: dg.DagsterInstance, request: dg.RunRequest) -> None:
    """What the daemon does with a RunRequest whose key has no run yet."""
    partition = {"dagster/partition": request.partition_key} if request.partition_key else {}
    instance.add_run(
        dg.DagsterRun(
            job_name=request.job_name,
            run_config=request.run_config,
            status=dg.DagsterRunStatus.NOT_STARTED,
            tags={
                **request.tags,
                **partition,
                "dagster/run_key": request.run_key,
                "dagster/sensor_name": servicebus_sensor.name,
            },
        )
    )


def test_a_thousand_messages_with_forced_redeliveries_lose_nothing_and_run_nothing_twice(
    resources, instance
):
    rng = random.Random(2026)
    queue = resources["message_queue"]
    valid, ignored, malformed = send_mix(queue, resources["lake"], rng)
    assert len(valid) + len(ignored) + len(malformed) == TOTAL
    assert queue.counts().active == TOTAL

    launched: set[str] = set()
    requests: Counter[str] = Counter()
    shapes: dict[str, set] = defaultdict(set)
    lost_requests = competing = ticks = 0
    deadline = time.monotonic() + 240
    while queue.counts().active and time.monotonic() < deadline:
        if ticks % 4 == 3:
            competing += compete(queue, rng)
        data = tick(resources, instance)
        ticks += 1
        for request in data.run_requests:
            requests[request.run_key] += 1
            shapes[request.run_key].add((request.job_name, json.dumps(request.run_config)))
            if request.run_key in launched:
                continue  # Dagster drops a request whose run key has a run already
            if rng.random() < 0.2:
                lost_requests += 1  # the daemon went down before creating the run
                continue
            launch(instance, request)
            launched.add(request.run_key)
        if not data.run_requests and "no messages" in (data.skip_message or ""):
            time.sleep(0.05)  # everything left is locked: wait for a lock to run out

    counts = queue.counts()
    assert (counts.active, counts.dead_letter) == (0, len(malformed)), "messages left over"
    # The soak did force redeliveries: repeated requests, lost requests, a competitor.
    assert lost_requests > 50 and competing > 10, (ticks, lost_requests, competing)
    assert sum(n - 1 for n in requests.values()) > 100

    # Every valid message: exactly one run, keyed by its message id, of the right job; the
    # requests repeated for a redelivered message were all the same request.
    # A retrain command that arrives while a train_model run is queued joins that run (it
    # reads the labels when it starts), so retrains have at most one run each, and every
    # retrain without its own run was settled by joining one that was queued then.
    runs = instance.get_runs()
    run_keys = Counter(r.tags["dagster/run_key"] for r in runs)
    assert set(run_keys.values()) == {1}, "a message ran twice"
    assert set(run_keys) <= set(valid), "a run for a message that was not valid"
    retrains = {mid for mid, job in valid.items() if job == "train_model"}
    others = set(valid) - retrains
    assert others <= set(run_keys), "a score or drop message without its run"
    assert retrains & set(run_keys), "no retrain command started a training"
    assert {r.tags["dagster/run_key"]: r.job_name for r in runs} == {
        mid: valid[mid] for mid in run_keys
    }
    assert set(requests) <= set(valid) and others <= set(requests)
    assert all(len(s) == 1 for s in shapes.values())

    # Every malformed message is dead-lettered with its reason and a description; nothing
    # valid or ignored is, and nothing ran out of deliveries.
    dead = {m.message_id: m for m in queue.peek_dead_letters(TOTAL)}
    assert {mid: m.dead_letter_reason for mid, m in dead.items()} == malformed
    assert all(m.dead_letter_error_description for m in dead.values())
