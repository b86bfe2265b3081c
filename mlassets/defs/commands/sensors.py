"""`servicebus_sensor`: commands and storage notifications from the queue become runs, each
exactly once.

Each tick receives up to MAX_MESSAGES_PER_TICK messages in peek-lock and, per message:

- malformed, unknown, or outside the drop zone: dead-lettered with a reason and a
  description (see mlassets.lib.messages); one whose parsing fails in a way nobody
  foresaw is dead-lettered too (UnprocessableMessage, with the error), so it cannot stop the
  tick and hold up the messages received with it;
- valid, and a run with its run key (the message id) already exists: completed;
- valid, no run yet: a RunRequest with run_key = message id, and the message is left
  locked, not settled;
- a retrain command while a train_model run is queued (not started): completed without a
  run, since that training reads the labels when it starts (`queued_training`); a second
  retrain command in one tick waits, locked, for the first one's run.

A RunRequest becomes a run only after the tick, so a message is never completed in the tick
that requests its run: it is completed in a later tick that finds the run. Until then its
lock runs out, it is delivered again, and the repeated RunRequest is dropped by Dagster
because its run key has a run already. A crash anywhere (before the request, between the
request and the run, before the completion) therefore loses nothing and starts nothing
twice: at-least-once delivery plus run-key deduplication.

The sensor never abandons a valid message: abandoning would make it visible at once and
spend a delivery on every tick while its run is pending, walking it towards the queue's
maximum delivery count. Holding the lock spends one delivery per lock duration instead
(1 minute by default), and the completion comes with the first delivery after the run
exists, normally the second. Only a run that cannot be created for max-delivery-count lock
periods in a row (10 minutes by default) lets the queue itself dead-letter the message
(MaxDeliveryCountExceeded), which is what poison-message protection is for.

An empty queue costs one receive (the twin: one indexed SQLite query; Azure: one short
receive on a fresh link) and no Dagster query.
"""

from collections import Counter
from collections.abc import Sequence

import dagster as dg

from mlassets.defs.ingestion.incoming import INCOMING_DROPS, import_incoming_run_config
from mlassets.lib.lazy import lazy
from mlassets.lib.messages import (
    BlobDrop,
    DropZone,
    Ignored,
    Rejected,
    Retrain,
    Score,
    parse_message,
)
from mlassets.roles.servicebus import (
    MessageLockLostError,
    MessageQueueResource,
    ReceivedMessage,
)
from mlassets.roles.storage import LakeStorage

# Loaded when a run or tick needs them, not when the code location loads.
incoming = lazy("mlassets.lib.incoming")

SENSOR_NAME = "servicebus_sensor"
RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"
MAX_MESSAGES_PER_TICK = 32
TRIGGER_TAGS = {"mlassets/trigger": "servicebus"}
RETRAIN_JOB, SCORE_JOB, IMPORT_JOB = "train_model", "score_events", "import_incoming"
#: Dead-letter reason for a message whose job this code location does not have.
NO_SUCH_JOB = "JobNotInCodeLocation"
#: Dead-letter reason for a drop the import job cannot read (not CSV or JSON lines).
UNSUPPORTED_DROP = "UnsupportedDrop"
#: Dead-letter reason for a message whose parsing failed unexpectedly: reading it again
#: would fail again, so it is set aside (with the error) instead of stopping every tick.
UNPROCESSABLE = "UnprocessableMessage"


def run_requests_for(
    message: ReceivedMessage, zone: DropZone, queue_name: str
) -> list[dg.RunRequest]:
    """The runs a message asks for ([] for an event that needs none); Rejected when it can
    never be processed. An import is a run for the drop's partition of incoming_events."""
    commands = parse_message(message.body, zone)
    key = message.message_id or f"sequence-number-{message.sequence_number}"
    base = {**TRIGGER_TAGS, "mlassets/queue": queue_name}
    requests: list[dg.RunRequest] = []
    for i, command in enumerate(commands):
        # One run per command; a message with several events gets one key per event.
        run_key = key if len(commands) == 1 else f"{key}:{i}"
        if isinstance(command, Retrain):
            requests.append(
                dg.RunRequest(
                    run_key=run_key,
                    job_name=RETRAIN_JOB,
                    tags={**base, "mlassets/retrain-reason": command.reason},
                )
            )
        elif isinstance(command, Score):
            requests.append(dg.RunRequest(run_key=run_key, job_name=SCORE_JOB, tags=base))
        elif isinstance(command, BlobDrop):
            try:  # what the job would refuse (an unknown file format) is refused here
                drop = incoming.Drop.parse(command.path)
            except incoming.DropError as exc:
                raise Rejected(UNSUPPORTED_DROP, str(exc)) from None
            requests.append(
                dg.RunRequest(
                    run_key=run_key,
                    job_name=IMPORT_JOB,
                    partition_key=drop.name,
                    run_config=import_incoming_run_config(drop.path),
                    tags={
                        **base,
                        "mlassets/drop-path": command.path,
                        "mlassets/event-id": command.event_id,
                    },
                )
            )
        else:
            assert isinstance(command, Ignored)
    return requests


def queued_training(instance: dg.DagsterInstance) -> str | None:
    """A train_model run that is queued and has not started, or None. It builds its dataset
    when it starts, so it already answers a retrain command received now: queueing a second
    one would train twice on the same labels. A training that has started is different
    (its dataset may predate the command): then the command's run queues behind it, and the
    training pool runs them one after the other, so at most one waits behind one running."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(
            job_name=RETRAIN_JOB,
            statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED],
        ),
        limit=1,
    )
    return runs[0].run_id if runs else None


def runs_exist(instance: dg.DagsterInstance, run_keys: Sequence[str], sensor_name: str) -> set[str]:
    """The run keys that have a run from this sensor (what Dagster dedupes RunRequests on).

    One query per key on the run-key tag alone, then the sensor name checked in Python: the
    sensor daemon does the same, as a join on two tags is slow in the run storage.
    """
    found: set[str] = set()
    for key in dict.fromkeys(run_keys):
        runs = instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: key}))
        if any(r.tags.get(SENSOR_NAME_TAG) == sensor_name for r in runs):
            found.add(key)
    return found


def build_servicebus_sensor(
    jobs: Sequence,
    name: str = SENSOR_NAME,
) -> dg.SensorDefinition:
    """The sensor, targeting the given jobs (job definitions or asset jobs); a message for
    a job not among them is dead-lettered."""
    available = {job.name for job in jobs}

    @dg.sensor(
        name=name,
        jobs=list(jobs),
        minimum_interval_seconds=15,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Turns queue messages (retrain and score commands, Event Grid BlobCreated events "
            "for incoming/) into runs keyed by message id; completes a message once its run "
            "exists and dead-letters what it cannot process."
        ),
    )
    def servicebus_sensor(
        context: dg.SensorEvaluationContext,
        message_queue: MessageQueueResource,
        lake: LakeStorage,
    ) -> dg.SensorResult | dg.SkipReason:
        queue = message_queue.queue_name
        with message_queue.session() as session:
            messages = session.receive(max_messages=MAX_MESSAGES_PER_TICK)
            if not messages:
                return dg.SkipReason(f"no messages on {queue!r}")
            zone = DropZone.for_lake(lake)
            outcome: Counter[str] = Counter()
            requests: list[dg.RunRequest] = []
            for message in messages:
                try:
                    wanted = run_requests_for(message, zone, queue)
                    missing = sorted({r.job_name for r in wanted} - available)
                    if missing:
                        raise Rejected(
                            NO_SUCH_JOB,
                            f"job {', '.join(missing)} is not in this code location "
                            f"(the sensor targets {', '.join(sorted(available))})",
                        )
                except Exception as exc:  # one message must not stop the tick
                    rejected = exc if isinstance(exc, Rejected) else _unprocessable(exc)
                    settled = _settle(
                        context, session.dead_letter, message, rejected.reason, rejected.description
                    )
                    outcome["dead-lettered" if settled else "lock lost"] += 1
                    context.log.warning(
                        f"dead-lettered message {message.message_id!r} (sequence number "
                        f"{message.sequence_number}, delivery {message.delivery_count}): "
                        f"{rejected.reason}: {rejected.description}"
                    )
                    continue
                existing = runs_exist(context.instance, [r.run_key for r in wanted], name)
                pending = [r for r in wanted if r.run_key not in existing]
                if any(r.job_name == RETRAIN_JOB for r in pending):
                    if any(r.job_name == RETRAIN_JOB for r in requests):
                        # This tick asks for a training already: no second one. The message
                        # stays locked; redelivered, it joins that run once it exists.
                        pending = [r for r in pending if r.job_name != RETRAIN_JOB]
                        outcome["held behind a training requested now"] += 1
                        if not pending:
                            continue
                    elif queued := queued_training(context.instance):
                        pending = [r for r in pending if r.job_name != RETRAIN_JOB]
                        outcome["joined a queued training"] += 1
                        context.log.info(
                            f"message {message.message_id!r}: train_model run {queued} is "
                            "queued and builds its dataset when it starts: no second training"
                        )
                if pending:
                    # Not settled: the run does not exist yet. The lock is kept until it
                    # expires, then the message comes back and is completed (see above).
                    requests.extend(pending)
                    outcome["requested"] += 1
                else:
                    settled = _settle(context, session.complete, message)
                    outcome["completed" if settled else "lock lost"] += 1
        summary = ", ".join(f"{n} {what}" for what, n in sorted(outcome.items()))
        context.log.info(f"{queue!r}: {len(messages)} received; {summary}")
        if requests:
            # A drop's partition exists before its run: the daemon adds these first.
            drops = sorted({r.partition_key for r in requests if r.job_name == IMPORT_JOB})
            return dg.SensorResult(
                run_requests=requests,
                dynamic_partitions_requests=[INCOMING_DROPS.build_add_request(drops)]
                if drops
                else [],
            )
        return dg.SkipReason(f"{queue!r}: {summary}; nothing new to run")

    return servicebus_sensor


def _unprocessable(exc: Exception) -> Rejected:
    error = f"{type(exc).__name__}: {exc}".encode("utf-8", "backslashreplace").decode()
    return Rejected(UNPROCESSABLE, error)


def _settle(context, action, message: ReceivedMessage, *args) -> bool:
    """A settlement whose lock is gone is not an error: the message comes back, and the next
    delivery settles it (the run key keeps it from starting anything twice)."""
    try:
        action(message, *args)
    except MessageLockLostError as exc:
        context.log.warning(f"message {message.message_id!r}: {exc}")
        return False
    return True


def _code_location_jobs() -> list:
    from mlassets.defs.inference.assets import score_events
    from mlassets.defs.ingestion.incoming import import_incoming
    from mlassets.defs.training.model import train_model

    return [train_model, score_events, import_incoming]


servicebus_sensor = build_servicebus_sensor(_code_location_jobs())
