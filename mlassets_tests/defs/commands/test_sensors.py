"""`servicebus_sensor` on the embedded queue: each message kind becomes the right run, keyed
by message id; a message is completed only once its run exists; redeliveries start nothing
twice; what cannot be processed is dead-lettered with a reason. Also `mlassets send` and
`mlassets queue`, and the drop zone's URLs on Azure-shaped lakes."""

import json
import time

import dagster as dg
import pytest
from click.testing import CliRunner

import mlassets.defs.commands.sensors as sensor_module
from mlassets.cli import main
from mlassets.defs.commands.sensors import (
    build_servicebus_sensor,
    import_incoming_run_config,
    servicebus_sensor,
)
from mlassets.defs.inference.assets import score_events
from mlassets.defs.resources import local_resources
from mlassets.defs.training.model import train_model
from mlassets.lib.incoming import Drop
from mlassets.lib.messages import (
    DropZone,
    Rejected,
    blob_created_event,
    event_content_type,
)
from mlassets.roles.servicebus import MessageQueueResource
from mlassets.roles.storage import LakeStorage
from mlassets.twins.servicebus import EmbeddedQueue

pytestmark = pytest.mark.timeout(60)

LOCK = 0.4  # seconds: the embedded queue's lock duration in these tests


@pytest.fixture
def resources(data_dir, monkeypatch):
    monkeypatch.setenv("MLASSETS_SERVICEBUS_LOCK_SECONDS", str(LOCK))
    monkeypatch.setenv("MLASSETS_SERVICEBUS_MAX_DELIVERY_COUNT", "3")
    r = local_resources()
    return {"message_queue": r["message_queue"], "lake": r["lake"]}


@pytest.fixture
def queue(resources) -> EmbeddedQueue:
    return resources["message_queue"]


def tick(resources, instance, sensor=servicebus_sensor):
    """One evaluation, as the daemon runs it (targets and partitions are checked)."""
    from mlassets.definitions import defs

    context = dg.build_sensor_context(
        instance=instance, instance_ref=instance.get_ref(), resources=resources, definitions=defs
    )
    return sensor.evaluate_tick(context)


def launch(instance, requests, sensor_name="servicebus_sensor"):
    """What the daemon does with a tick's RunRequests: a run per new run key, tagged."""
    for r in requests:
        instance.add_run(
            dg.DagsterRun(
                job_name=r.job_name,
                run_config=r.run_config,
                status=dg.DagsterRunStatus.NOT_STARTED,
                tags={**r.tags, "dagster/run_key": r.run_key, "dagster/sensor_name": sensor_name},
            )
        )


def runs_with_key(instance, key):
    return instance.get_runs(filters=dg.RunsFilter(tags={"dagster/run_key": key}))


def expire_locks():
    time.sleep(LOCK + 0.15)


def drop(lake: LakeStorage, relative: str, data: bytes = b'{"sample_id": "s1"}\n') -> None:
    lake.fs.makedirs(lake.path(relative.rsplit("/", 1)[0]), exist_ok=True)
    with lake.fs.open(lake.path(relative), "wb") as f:
        f.write(data)


def send_blob_event(queue, lake, relative, schema="eventgrid", **kwargs) -> str:
    event = blob_created_event(DropZone.for_lake(lake), relative, schema=schema, **kwargs)
    return queue.send_json(event, message_id=event["id"], content_type=event_content_type(schema))


# -- each kind of message -> the right run -----------------------------------------------------


def test_an_empty_queue_is_a_cheap_skip(resources, instance, monkeypatch):
    def no_run_queries(*_a, **_k):
        raise AssertionError("an empty tick must not query runs")

    monkeypatch.setattr(sensor_module, "runs_exist", no_run_queries)
    started = time.perf_counter()
    data = tick(resources, instance)
    assert not data.run_requests
    assert "no messages on 'mlassets-commands'" in data.skip_message
    assert time.perf_counter() - started < 2


def test_retrain_command_requests_train_model_with_its_reason(resources, queue, instance):
    mid = queue.send_json({"type": "retrain", "reason": "new scanner firmware"})
    (request,) = tick(resources, instance).run_requests
    assert request.job_name == "train_model"
    assert request.run_key == mid
    assert request.tags["mlassets/retrain-reason"] == "new scanner firmware"
    assert request.tags["mlassets/trigger"] == "servicebus"
    assert request.tags["mlassets/queue"] == "mlassets-commands"
    # Not settled in the tick that asked for the run: still there, locked.
    counts = queue.counts()
    assert (counts.active, counts.locked, counts.dead_letter) == (1, 1, 0)


def test_a_retrain_command_while_a_training_is_queued_joins_it(resources, queue, instance):
    queue.send_json({"type": "retrain", "reason": "first"})
    launch(instance, tick(resources, instance).run_requests)  # queued, not started
    expire_locks()
    queue.send_json({"type": "retrain", "reason": "second"})
    data = tick(resources, instance)
    assert not data.run_requests  # no second training behind a queued one
    assert "joined a queued training" in data.skip_message
    assert len(instance.get_runs(filters=dg.RunsFilter(job_name="train_model"))) == 1
    assert queue.counts().active == 0  # both completed: the queued run answers both


def test_two_retrain_commands_in_one_tick_ask_for_one_training(resources, queue, instance):
    queue.send_json({"type": "retrain", "reason": "a"})
    queue.send_json({"type": "retrain", "reason": "b"})
    (request,) = tick(resources, instance).run_requests
    assert request.tags["mlassets/retrain-reason"] == "a"
    launch(instance, [request])
    expire_locks()
    assert not tick(resources, instance).run_requests  # b joins a's queued run
    assert queue.counts().active == 0


def test_score_command_requests_score_events(resources, queue, instance):
    mid = queue.send_json({"type": "score"})
    (request,) = tick(resources, instance).run_requests
    assert (request.job_name, request.run_key) == ("score_events", mid)
    assert request.tags["mlassets/trigger"] == "servicebus"
    assert "mlassets/retrain-reason" not in request.tags


@pytest.mark.parametrize("schema", ["eventgrid", "cloudevents"])
def test_blob_created_in_the_drop_zone_requests_import_incoming(resources, queue, instance, schema):
    mid = send_blob_event(queue, resources["lake"], "2026/05/scanner-7.json", schema=schema)
    data = tick(resources, instance)
    (request,) = data.run_requests
    assert request.job_name == "import_incoming"
    assert request.run_key == mid
    assert request.run_config == import_incoming_run_config("incoming/2026/05/scanner-7.json")
    assert request.tags["mlassets/drop-path"] == "incoming/2026/05/scanner-7.json"
    assert request.tags["mlassets/event-id"] == mid
    # The run is for the drop's partition, which the tick adds, with a config the job accepts.
    drop = Drop.parse("incoming/2026/05/scanner-7.json")
    assert request.partition_key == drop.name
    (added,) = data.dynamic_partitions_requests
    assert (added.partitions_def_name, list(added.partition_keys)) == (
        "incoming_drops",
        [drop.name],
    )
    from mlassets.definitions import defs

    assert dg.validate_run_config(defs.resolve_job_def("import_incoming"), request.run_config)


def test_a_message_with_an_array_of_events_gets_one_run_per_event(resources, queue, instance):
    zone = DropZone.for_lake(resources["lake"])
    events = [
        blob_created_event(zone, "a.csv"),
        blob_created_event(zone, "b.json", schema="eventgrid", api="PutBlockList"),
        blob_created_event(zone, "c.json", api="CreateFile"),  # ADLS: data comes later
    ]
    mid = queue.send_json(events)
    requests = tick(resources, instance).run_requests
    assert [(r.run_key, r.tags["mlassets/drop-path"]) for r in requests] == [
        (f"{mid}:0", "incoming/a.csv"),
        (f"{mid}:1", "incoming/b.json"),
    ]


def test_an_ignored_event_is_completed_without_a_run(resources, queue, instance):
    send_blob_event(queue, resources["lake"], "c.json", api="CreateFile")
    data = tick(resources, instance)
    assert not data.run_requests
    assert "1 completed" in data.skip_message
    assert queue.counts().active == 0


# -- settle only after the run exists; redelivery starts nothing twice --------------------------


def test_a_message_is_completed_only_once_a_run_with_its_key_exists(resources, queue, instance):
    mid = queue.send_json({"type": "retrain", "reason": "drift"})
    (first,) = tick(resources, instance).run_requests

    # Within the lock: nothing to receive, the message waits, locked.
    assert not tick(resources, instance).run_requests
    assert queue.counts().active == 1

    # The lock ran out before any run existed (the daemon died after the tick, say): the
    # message comes back and is requested again, with the same key. Still not settled.
    expire_locks()
    (again,) = tick(resources, instance).run_requests
    assert again.run_key == first.run_key == mid
    assert queue.counts().active == 1

    launch(instance, [again])
    expire_locks()
    data = tick(resources, instance)
    assert not data.run_requests
    assert "1 completed" in data.skip_message
    counts = queue.counts()
    assert (counts.active, counts.dead_letter) == (0, 0)
    assert len(runs_with_key(instance, mid)) == 1


def test_redelivery_after_an_expired_lock_starts_no_second_run(resources, queue, instance):
    mid = queue.send_json({"type": "score"})
    launch(instance, tick(resources, instance).run_requests)
    expire_locks()
    redelivered = tick(resources, instance)
    assert not redelivered.run_requests  # the run exists: no second request
    assert len(runs_with_key(instance, mid)) == 1
    assert queue.counts().active == 0


def test_a_run_from_another_sensor_with_the_same_key_does_not_count(resources, queue, instance):
    mid = queue.send_json({"type": "score"})
    launch(instance, tick(resources, instance).run_requests, sensor_name="some_other_sensor")
    expire_locks()
    (request,) = tick(resources, instance).run_requests  # Dagster would run it: so do we
    assert request.run_key == mid
    assert queue.counts().active == 1


def test_ticks_within_a_lock_period_spend_no_deliveries(resources, queue, instance):
    """The sensor never abandons a message whose run is pending: abandoning would spend a
    delivery per tick and walk it to the max delivery count before its run existed."""
    queue.send_json({"type": "retrain"})
    tick(resources, instance)
    for _ in range(5):
        tick(resources, instance)
    (peeked,) = queue.peek()
    assert peeked.delivery_count == 1


def test_a_pending_run_does_not_dead_letter_its_message_before_max_deliveries(
    resources, queue, instance
):
    # max delivery count is 3: requested at deliveries 1 and 2, run created, completed at 3.
    mid = queue.send_json({"type": "retrain"})
    tick(resources, instance)
    expire_locks()
    (request,) = tick(resources, instance).run_requests
    launch(instance, [request])
    expire_locks()
    tick(resources, instance)
    counts = queue.counts()
    assert (counts.active, counts.dead_letter) == (0, 0)
    assert len(runs_with_key(instance, mid)) == 1


def test_a_lost_lock_at_completion_is_harmless(resources, queue, instance, monkeypatch):
    mid = queue.send_json({"type": "score"})
    launch(instance, tick(resources, instance).run_requests)
    expire_locks()
    real = sensor_module.runs_exist

    def slow(*args):
        time.sleep(LOCK + 0.15)  # the lock expires while the tick looks for the run
        return real(*args)

    monkeypatch.setattr(sensor_module, "runs_exist", slow)
    data = tick(resources, instance)
    assert not data.run_requests
    assert "1 lock lost" in data.skip_message
    assert queue.counts().active == 1  # completion failed; the message will come back
    monkeypatch.setattr(sensor_module, "runs_exist", real)
    tick(resources, instance)
    assert queue.counts().active == 0
    assert len(runs_with_key(instance, mid)) == 1


# -- dead letters ------------------------------------------------------------------------------


def dead_letters(queue):
    return {
        m.message_id: (m.dead_letter_reason, m.dead_letter_error_description)
        for m in queue.peek_dead_letters()
    }


@pytest.mark.parametrize(
    ("body", "reason", "says"),
    [
        (b"retrain please", "MalformedMessage", "not UTF-8 JSON"),
        (b"\xff\xfe\x00", "MalformedMessage", "not UTF-8 JSON"),
        (b'{"reason": "no type"}', "MalformedMessage", "no 'type'"),
        (b"[1, 2]", "MalformedMessage", "Event Grid or CloudEvents events only"),
        (b'"retrain"', "MalformedMessage", "not an object"),
        (b'{"type": "deploy"}', "UnknownMessageType", "'deploy'"),
        (b'{"type": "retrain", "reason": 42}', "InvalidMessage", "non-empty string"),
        (
            b'{"eventType": "Microsoft.Storage.BlobDeleted", "id": "e1", "data": {}}',
            "UnsupportedEventType",
            "BlobDeleted",
        ),
        (b"[" * 50_000 + b"]" * 50_000, "MalformedMessage", "nested too deeply"),
        (b'{"type": "retrain", "reason": "\\ud800"}', "MalformedMessage", "lone surrogate"),
    ],
)
def test_what_cannot_be_processed_is_dead_lettered_with_its_reason(
    resources, queue, instance, body, reason, says
):
    mid = queue.send(body)
    data = tick(resources, instance)
    assert not data.run_requests
    assert "1 dead-lettered" in data.skip_message
    (got_reason, description) = dead_letters(queue)[mid]
    assert got_reason == reason and says in description
    assert queue.counts().active == 0


def test_a_message_whose_parsing_fails_unexpectedly_is_dead_lettered_with_the_error(
    resources, queue, instance, monkeypatch
):
    real = sensor_module.parse_message

    def fragile(body, zone):
        if b"boom" in body:
            raise KeyError("a case nobody foresaw")
        return real(body, zone)

    monkeypatch.setattr(sensor_module, "parse_message", fragile)
    bad = queue.send_json({"type": "score", "note": "boom"})
    good = queue.send_json({"type": "score"})
    data = tick(resources, instance)
    assert [r.run_key for r in data.run_requests] == [good]
    reason, description = dead_letters(queue)[bad]
    assert reason == "UnprocessableMessage"
    assert description == "KeyError: 'a case nobody foresaw'"


def test_one_bad_message_does_not_hold_up_the_good_ones(resources, queue, instance):
    queue.send(b"garbage")
    good = queue.send_json({"type": "score"})
    data = tick(resources, instance)
    assert [r.run_key for r in data.run_requests] == [good]
    assert queue.counts().dead_letter == 1


@pytest.mark.parametrize(
    "url_of",
    [
        lambda root: f"file://{root}/curated/labels/part-0.parquet",  # outside incoming/
        lambda root: f"file://{root}/incoming/../curated/x.json",  # escapes incoming/
        lambda root: f"file://{root}/incoming/",  # the folder itself
        lambda root: "file:///elsewhere/incoming/x.json",  # another lake
        lambda root: "https://acct.blob.core.windows.net/lake/incoming/x.json",  # not ours
    ],
)
def test_a_blob_outside_the_drop_zone_is_rejected(resources, queue, instance, url_of):
    lake = resources["lake"]
    event = blob_created_event(DropZone.for_lake(lake), "x.json")
    event["data"]["url"] = url_of(lake.path())
    mid = queue.send_json(event)
    data = tick(resources, instance)
    assert not data.run_requests
    reason, description = dead_letters(queue)[mid]
    assert reason == "OutsideDropZone" and "drop zone" in description


def test_a_blob_event_without_the_import_job_is_dead_lettered_not_lost(resources, queue, instance):
    # A code location without `import_incoming`.
    sensor = build_servicebus_sensor([train_model, score_events])
    mid = send_blob_event(queue, resources["lake"], "a.json")
    data = tick(resources, instance, sensor=sensor)
    assert not data.run_requests
    reason, description = dead_letters(queue)[mid]
    assert reason == "JobNotInCodeLocation" and "import_incoming" in description


def test_a_drop_the_import_cannot_read_is_dead_lettered(resources, queue, instance):
    mid = send_blob_event(queue, resources["lake"], "scans/photo.png")
    data = tick(resources, instance)
    assert not data.run_requests
    reason, description = dead_letters(queue)[mid]
    assert reason == "UnsupportedDrop" and "unknown format '.png'" in description


def test_the_queue_itself_dead_letters_a_message_whose_run_never_appears(
    resources, queue, instance
):
    """Poison protection stays in place: a run that cannot be created (here: never launched)
    for max-delivery-count lock periods gets its message dead-lettered by the queue."""
    mid = queue.send_json({"type": "score"})
    for _ in range(3):
        assert tick(resources, instance).run_requests
        expire_locks()
    assert not tick(resources, instance).run_requests
    assert dead_letters(queue)[mid][0] == "MaxDeliveryCountExceeded"


# -- the drop zone on Azure-shaped lakes --------------------------------------------------------


def test_drop_zone_urls_on_an_adls_lake_with_a_prefix():
    zone = DropZone.for_lake(LakeStorage(url="abfs://lake@acct.dfs.core.windows.net/ml/prod"))
    url = zone.url("incoming/2026/a b.json")
    assert url == "https://acct.blob.core.windows.net/lake/ml/prod/incoming/2026/a%20b.json"
    assert zone.relative(url) == "incoming/2026/a b.json"
    # ADLS Gen2 accounts report dfs URLs.
    dfs = "https://acct.dfs.core.windows.net/lake/ml/prod/incoming/x.csv"
    assert zone.relative(dfs) == "incoming/x.csv"
    for outside in [
        "https://other.blob.core.windows.net/lake/ml/prod/incoming/x.csv",  # other account
        "https://acct.blob.core.windows.net/raw/ml/prod/incoming/x.csv",  # other container
        "https://acct.blob.core.windows.net/lake/ml/dev/incoming/x.csv",  # other prefix
        "https://acct.blob.core.windows.net/lake/incoming/x.csv",  # no prefix
        "https://acct.blob.core.windows.net/lake/ml/prod/landed/x.csv",  # other folder
        "ftp://acct.blob.core.windows.net/lake/ml/prod/incoming/x.csv",
    ]:
        with pytest.raises(Rejected, match="OutsideDropZone"):
            zone.relative(outside)


def test_drop_zone_urls_on_azurite_are_path_style():
    conn = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
    )
    zone = DropZone.for_lake(LakeStorage(url="abfs://lake", connection_string=conn))
    url = zone.url("x.json")
    assert url == "http://127.0.0.1:10000/devstoreaccount1/lake/incoming/x.json"
    assert zone.relative(url) == "incoming/x.json"
    with pytest.raises(Rejected):
        zone.relative("http://127.0.0.1:10000/devstoreaccount1/other/incoming/x.json")


# -- the CLI -----------------------------------------------------------------------------------


def test_mlassets_send_each_kind_and_the_sensor_understands_it(resources, queue, instance):
    runner = CliRunner()
    lake = resources["lake"]
    drop(lake, "incoming/2026/drop.json")
    for args in (
        ["send", "retrain", "--reason", "operator asked"],
        ["send", "score"],
        ["send", "blob-created", "2026/drop.json"],
        ["send", "blob-created", "incoming/2026/drop.json", "--schema", "cloudevents"],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
        assert "sent" in result.output and "mlassets-commands" in result.output
    requests = tick(resources, instance).run_requests
    assert [r.job_name for r in requests] == [
        "train_model",
        "score_events",
        "import_incoming",
        "import_incoming",
    ]
    assert requests[0].tags["mlassets/retrain-reason"] == "operator asked"
    assert {r.tags.get("mlassets/drop-path") for r in requests[2:]} == {"incoming/2026/drop.json"}
    (_, _, eventgrid, cloudevents) = queue.peek()
    assert json.loads(eventgrid.body)["eventType"] == "Microsoft.Storage.BlobCreated"
    assert json.loads(eventgrid.body)["data"]["contentLength"] == 20
    assert json.loads(cloudevents.body)["specversion"] == "1.0"
    assert cloudevents.content_type.startswith("application/cloudevents+json")


def run_like_the_daemon(data, instance) -> list[dg.ExecuteInProcessResult]:
    """What the daemon does with a tick: add the partitions it asks for, then run each request."""
    from mlassets.definitions import build_definitions

    defs = build_definitions()  # resources for this test's data dir
    for added in data.dynamic_partitions_requests:
        instance.add_dynamic_partitions(added.partitions_def_name, list(added.partition_keys))
    return [
        defs.resolve_job_def(r.job_name).execute_in_process(
            run_config=r.run_config,
            partition_key=r.partition_key,
            tags=r.tags,
            instance=instance,
            raise_on_error=False,
        )
        for r in data.run_requests
    ]


PIXELS = json.dumps([0, 3, 9, 16] * 16)
BODY = {"source": "s", "captured_at": "2026-01-05T10:00:00Z"}


def test_a_drop_sent_with_blob_created_is_imported_and_checked_on_what_it_landed(
    resources, instance
):
    drop(
        resources["lake"],
        "incoming/2026/ok.csv",
        (
            "sample_id,pixels,source,captured_at\n"
            + "".join(f'ok{i},"{PIXELS}",s,2026-01-05T10:00:00Z\n' for i in range(12))
        ).encode(),
    )
    assert CliRunner().invoke(main, ["send", "blob-created", "2026/ok.csv"]).exit_code == 0
    (result,) = run_like_the_daemon(tick(resources, instance), instance)
    assert result.success
    (landed,) = result.get_asset_materialization_events()
    assert landed.asset_key.to_user_string() == "incoming_events"
    assert landed.partition == Drop.parse("incoming/2026/ok.csv").name
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["schema_and_ranges"].passed and checks["schema_and_ranges"].blocking
    assert checks["schema_and_ranges"].metadata["files_checked"].value == 1


def test_a_drop_whose_landed_rows_have_the_wrong_shape_fails_the_blocking_check(
    resources, instance, monkeypatch
):
    import dataclasses

    import pyarrow as pa

    from mlassets.lib import incoming
    from mlassets.lib.events import LANDED_SCHEMA

    real = incoming.conform

    def wrong_shape(*args):  # a landing defect lets 8-pixel rows through
        decoded = real(*args)
        field = LANDED_SCHEMA.field("pixels")
        short = pa.array([p[:8] for p in decoded.landed["pixels"].to_pylist()], field.type)
        return dataclasses.replace(decoded, landed=decoded.landed.set_column(1, field, short))

    monkeypatch.setattr(incoming, "conform", wrong_shape)
    drop(
        resources["lake"],
        "incoming/2026/short.jsonl",
        b"".join(
            json.dumps({"sample_id": f"s{i}", "pixels": json.loads(PIXELS), **BODY}).encode()
            + b"\n"
            for i in range(6)
        ),
    )
    assert CliRunner().invoke(main, ["send", "blob-created", "2026/short.jsonl"]).exit_code == 0
    (result,) = run_like_the_daemon(tick(resources, instance), instance)
    assert not result.success  # a blocking check that fails fails the import
    (schema,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "schema_and_ranges"
    ]
    assert not schema.passed
    assert "6 rows without 64 pixels" in schema.metadata["problems"].value


def test_mlassets_send_blob_created_refuses_a_missing_blob_or_a_path_outside(resources):
    runner = CliRunner()
    missing = runner.invoke(main, ["send", "blob-created", "nope.json"])
    assert missing.exit_code == 2 and "drop the file first" in missing.output
    outside = runner.invoke(main, ["send", "blob-created", "../curated/x"])
    assert outside.exit_code == 2 and "not a file path inside incoming/" in outside.output
    forced = runner.invoke(main, ["send", "blob-created", "later.json", "--missing-ok"])
    assert forced.exit_code == 0, forced.output


def test_mlassets_queue_shows_counts_and_dead_letter_reasons(resources, queue, instance):
    queue.send(b"garbage", message_id="bad-1")
    queue.send_json({"type": "score"})
    tick(resources, instance)
    result = CliRunner().invoke(main, ["queue"])
    assert result.exit_code == 0, result.output
    assert "active 1 (locked 1), dead-lettered 1" in result.output
    assert "bad-1" in result.output and "MalformedMessage" in result.output


def test_the_queue_role_is_wired_in_both_deployments(data_dir, monkeypatch):
    from mlassets import settings
    from mlassets.defs.resources import build_resources
    from mlassets.roles.servicebus import AzureServiceBusQueue

    local = build_resources("local")["message_queue"]
    assert isinstance(local, EmbeddedQueue) and isinstance(local, MessageQueueResource)
    assert local.path == str(data_dir / "servicebus" / "mlassets-commands.db")

    monkeypatch.setenv("MLASSETS_DEPLOYMENT", "azure")
    ours = ("MLASSETS_SERVICEBUS_CONNECTION_STRING", "MLASSETS_SERVICEBUS_NAMESPACE")
    assert ours in settings.AZURE_REQUIRED
    for need in settings.AZURE_REQUIRED:
        if need != ours:
            name = need[0] if isinstance(need, tuple) else need
            monkeypatch.setenv(name, f"placeholder-{name.lower()}")
    monkeypatch.setenv("MLASSETS_LAKE_URL", "abfs://lake@acct.dfs.core.windows.net/x")
    monkeypatch.setenv("MLASSETS_LABELS_DB_URL", "mssql+pyodbc://@srv.database.windows.net/labels")
    with pytest.raises(
        settings.MissingSettingError,
        match="MLASSETS_SERVICEBUS_CONNECTION_STRING or MLASSETS_SERVICEBUS_NAMESPACE",
    ):
        build_resources("azure")
    secret = (
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=TOPSECRET"
    )
    monkeypatch.setenv("MLASSETS_SERVICEBUS_CONNECTION_STRING", secret)
    monkeypatch.setenv("MLASSETS_SERVICEBUS_QUEUE", "commands-prod")
    azure = build_resources("azure")["message_queue"]
    assert isinstance(azure, AzureServiceBusQueue)
    assert "TOPSECRET" not in repr(azure) and "TOPSECRET" not in azure.display
    assert "TOPSECRET" not in repr(azure._get_non_default_public_field_values())
    resolved = azure.process_config_and_initialize()
    assert resolved.connection_string == secret and resolved.queue == "commands-prod"
