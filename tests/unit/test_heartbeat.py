import orjson

from libobs.tool.heartbeat import Liveness, heartbeat_event, new_collector_id, write_liveness


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


def test_a_liveness_file_that_cannot_be_written_is_said_once_by_its_name(tmp_path):
    ev = heartbeat_event(collector_id="c", tool="t", attached=[], features=[], interval=1,
                         counts={}, dropped=0, output_dropped=0)
    d = tmp_path / "later"
    live = Liveness(d / "hb.json")
    assert live.write(ev) == f"cannot write heartbeat file {d}/hb.json: No such file or directory"
    assert live.write(ev) is None  # not again at every heartbeat
    d.mkdir()
    assert live.write(ev) is None and [x.name for x in d.iterdir()] == ["hb.json"]
    (d / "hb.json").unlink()
    d.chmod(0o500)
    (d / "hb.json").mkdir()  # replacing a directory fails even for root: said again
    assert live.write(ev) == f"cannot write heartbeat file {d}/hb.json: Is a directory"
    assert [x.name for x in d.iterdir()] == ["hb.json"]  # no temporary left behind
    assert Liveness(None).write(ev) is None


def test_deployment_pins_node_name_and_collector_id(monkeypatch):
    from libobs.events import env_problem, hostname
    monkeypatch.setenv("OBS_NODE_NAME", "node-7")
    monkeypatch.setenv("OBS_COLLECTOR_ID", "node-7/obs-exec")
    ev = heartbeat_event(collector_id=new_collector_id("obs-exec"), tool="obs-exec", attached=[],
                         features=[], interval=1, counts={}, dropped=0, output_dropped=0)
    hb = ev["event"]["CollectorHeartbeat"]
    assert ev["host"] == hb["node_name"] == hostname() == "node-7"
    assert hb["collector_id"] == "node-7/obs-exec"
    assert env_problem() is None


def test_unset_or_empty_falls_back_to_the_host(monkeypatch):
    import socket

    from libobs.events import hostname
    monkeypatch.delenv("OBS_NODE_NAME", raising=False)
    monkeypatch.setenv("OBS_COLLECTOR_ID", "")
    assert hostname() == socket.gethostname()
    a, b = new_collector_id("t"), new_collector_id("t")
    assert a != b and a.startswith(f"t-{socket.gethostname()}-")


def test_bad_values_are_refused():
    from libobs.events import env_problem
    assert env_problem({"OBS_NODE_NAME": "", "OBS_COLLECTOR_ID": ""}) is None  # unset
    for bad in ("two words", "x" * 254, "esc\x1b[2K", "tab\there"):
        assert "OBS_NODE_NAME" in (env_problem({"OBS_NODE_NAME": bad}) or "")
        assert "OBS_COLLECTOR_ID" in (env_problem({"OBS_COLLECTOR_ID": bad}) or "")
