"""The deploy files parse and say what they must (the collector pipeline, the DaemonSet's
privileges, liveness probes and one container per tool)."""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_collector_pipeline():
    cfg = yaml.safe_load((REPO / "deploy/otel/collector.yaml").read_text())
    pipe = cfg["service"]["pipelines"]["logs/obs"]
    assert pipe["receivers"] == ["filelog/obs"]
    assert pipe["processors"][0] == "memory_limiter" and "batch" in pipe["processors"]
    assert pipe["exporters"] == ["otlp"]
    assert cfg["exporters"]["otlp"]["retry_on_failure"]["enabled"] is True
    parser = cfg["receivers"]["filelog/obs"]["operators"][0]
    assert parser["type"] == "json_parser" and parser["timestamp"]["layout"] == "ns"


def test_collector_receives_obs_otel():
    """obs-otel's traces and metrics arrive on a loopback OTLP receiver and leave like the logs."""
    cfg = yaml.safe_load((REPO / "deploy/otel/collector.yaml").read_text())
    protocols = cfg["receivers"]["otlp/obs"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "127.0.0.1:4317"
    assert protocols["http"]["endpoint"] == "127.0.0.1:4318"
    unit = (REPO / "deploy/systemd/obs-otel.service").read_text()
    assert "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317" in unit
    for name in ("traces/obs", "metrics/obs"):
        pipe = cfg["service"]["pipelines"][name]
        assert pipe["receivers"] == ["otlp/obs"] and pipe["exporters"] == ["otlp"]
        assert pipe["processors"][0] == "memory_limiter"


def test_daemonset():
    ds = yaml.safe_load((REPO / "deploy/k8s/obs-daemonset.yaml").read_text())
    spec = ds["spec"]["template"]["spec"]
    assert ds["kind"] == "DaemonSet" and spec["hostPID"] is True
    names = [c["name"] for c in spec["containers"]]
    assert len(names) == len(set(names)) and "obs-exec" in names
    for c in spec["containers"]:
        assert c["securityContext"]["privileged"] is True
        probe = " ".join(c["livenessProbe"]["exec"]["command"])
        assert f"/run/obs/{c['name']}.heartbeat" in probe
        assert f"--heartbeat-file /run/obs/{c['name']}.heartbeat" in " ".join(c["command"])
        assert (REPO / "tools" / f"{c['name'].replace('-', '_')}.py").exists() or c["name"] in ("obs-net", "obs-llm")


def test_dockerfile_installs_bcc_from_debian():
    text = (REPO / "deploy/Dockerfile").read_text()
    assert "python3-bpfcc" in text and "--system-site-packages" in text
    assert "pip install bcc" not in text
