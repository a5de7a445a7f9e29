import orjson

from libobs.tool.heartbeat import heartbeat_event, new_collector_id, write_liveness


def test_heartbeat_fields_follow_contract():
    ev = heartbeat_event(collector_id="c1", tool="obs-exec", attached=["tracepoint:a"],
                         features=["exec"], interval=60.0, counts={"ToolExec": 2}, dropped=1,
                         output_dropped=0, host="node-1")
    assert ev["identity"] == {"agent": None, "task": None, "session": None}
    assert ev["provider"] is None and ev["host"] == "node-1"
    hb = ev["event"]["CollectorHeartbeat"]
    assert set(hb) == {"collector_id", "tool", "version", "node_name", "attached_probes",
                       "enabled_features", "interval_secs", "counts", "dropped", "output_dropped"}
    assert hb["counts"] == {"ToolExec": 2} and hb["dropped"] == 1


def test_liveness_file_atomic(tmp_path):
    p = tmp_path / "hb.json"
    ev = heartbeat_event(collector_id=new_collector_id("t"), tool="t", attached=[], features=[],
                         interval=1, counts={}, dropped=0, output_dropped=0)
    write_liveness(p, ev)
    write_liveness(p, ev)
    assert orjson.loads(p.read_bytes())["event"]["CollectorHeartbeat"]["tool"] == "t"
    assert [x.name for x in tmp_path.iterdir()] == ["hb.json"]
