"""EmbeddedEventHub: the event source role's twin, used through the role's interface."""

import json
import subprocess
import sys

from mlassets.lib.partitions import partition_for_key
from mlassets.roles.eventhub import EventHubResource
from mlassets.settings import PROJECT_ROOT
from mlassets.twins.eventhub import EmbeddedEventHub


def test_published_events_are_read_back_by_partition_and_sequence_number(tmp_path):
    hub = EmbeddedEventHub(path=str(tmp_path / "hub.db"), partitions=3)
    assert isinstance(hub, EventHubResource)
    sent = hub.publish([b"a", b"b", b"c"], partition_keys=["k", "k", "k"], properties={"p": "1"})
    assert sent == 3
    pid = str(partition_for_key("k", 3))
    assert hub.partition_ids() == ["0", "1", "2"]
    props = hub.partition_properties(pid)
    assert (props.beginning_sequence_number, props.last_enqueued_sequence_number) == (0, 2)
    assert not props.is_empty
    table = hub.read_range(pid, 1, 2)
    assert table.column("sequence_number").to_pylist() == [1, 2]
    assert table.column("body").to_pylist() == [b"b", b"c"]
    assert [json.loads(p) for p in table.column("properties").to_pylist()] == [{"p": "1"}] * 2
    others = [p for p in hub.all_partition_properties() if p.partition_id != pid]
    assert all(p.is_empty for p in others)


def test_defining_the_twin_loads_no_data_library():
    # The code location builds this resource at load; the log (pyarrow, numpy) waits for a read.
    probe = (
        "import sys; from mlassets.twins.eventhub import EmbeddedEventHub; "
        "EmbeddedEventHub(path='/nonexistent/hub.db'); "
        "loaded = [m for m in ('pyarrow', 'numpy') if m in sys.modules]; assert not loaded, loaded"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
