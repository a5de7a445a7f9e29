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
    docs = list(yaml.safe_load_all((REPO / "deploy/k8s/obs-daemonset.yaml").read_text()))
    [ns] = [d for d in docs if d["kind"] == "Namespace"]
    [ds] = [d for d in docs if d["kind"] == "DaemonSet"]
    assert ds["metadata"]["namespace"] == ns["metadata"]["name"]  # created, not assumed
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostPID"] is True
    names = [c["name"] for c in spec["containers"]]
    assert len(names) == len(set(names))
    assert set(names) == {"obs-exec", "obs-net", "obs-llm", "obs-ssl"}
    for c in spec["containers"]:
        assert c["securityContext"]["privileged"] is True
        probe = " ".join(c["livenessProbe"]["exec"]["command"])
        assert f"/run/obs/{c['name']}.heartbeat" in probe
        assert f"exec {c['name']} " in c["command"][-1]
        assert f"--heartbeat-file /run/obs/{c['name']}.heartbeat" in " ".join(c["command"])
        assert (REPO / "tools" / f"{c['name'].replace('-', '_')}.py").exists()
        env = {e["name"]: e for e in c["env"]}
        # The node, not the pod's hostname; a stable collector id; defined before it is used.
        assert env["OBS_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
        assert env["OBS_COLLECTOR_ID"]["value"] == f"$(OBS_NODE_NAME)/{c['name']}"
        assert [e["name"] for e in c["env"]].index("OBS_NODE_NAME") < \
            [e["name"] for e in c["env"]].index("OBS_COLLECTOR_ID")
        assert {"mountPath": "/sys/fs/cgroup", "name": "cgroup", "readOnly": True} in \
            c["volumeMounts"]  # cgroup id → pod, from the host's tree


def test_dockerfile_installs_bcc_from_debian():
    text = (REPO / "deploy/Dockerfile").read_text()
    assert "python3-bpfcc" in text and "--system-site-packages" in text
    assert "pip install bcc" not in text


UNITS = sorted((REPO / "deploy/systemd").glob("*.service"))


def unit_settings(path: Path) -> list[tuple[str, str]]:
    """(key, value) of each setting, continuation lines joined."""
    text = path.read_text().replace("\\\n", " ")
    return [tuple(s.strip() for s in line.split("=", 1))  # type: ignore[misc]
            for line in text.splitlines() if "=" in line and not line.startswith(("#", ";"))]


def test_units_start_on_a_host_without_var_log_obs():
    """systemd opens StandardOutput=append:/file: before it makes LogsDirectory= (#27591), and a
    ReadWritePaths= entry that does not exist fails the start: neither may name a directory the
    unit itself has to create."""
    for unit in UNITS:
        settings = unit_settings(unit)
        for key, value in settings:
            if key == "StandardOutput":
                assert not value.startswith(("append:", "file:", "truncate:")), unit.name
            if key == "ReadWritePaths":
                for path in value.split():
                    assert not path.lstrip("-").startswith(("/var/log/obs", "/run/obs")), unit.name
        text = unit.read_text()
        if "/var/log/obs" in text and "mkdir -p /var/log/obs" not in text:
            assert ("LogsDirectory", "obs") in settings, unit.name


def test_ordering_names_units_that_exist():
    shipped = {u.name for u in UNITS}
    for unit in UNITS:
        for key, value in unit_settings(unit):
            if key in ("After", "Before", "Requires", "Wants"):
                for name in value.split():
                    if name.startswith("obs-"):
                        assert name in shipped, f"{unit.name}: {key}={name} is no unit"


def test_security_policy_is_linked_and_covers_what_it_must():
    text = (REPO / "SECURITY.md").read_text()
    for heading in ("## Reporting a vulnerability", "## What obs trusts", "## What obs never does",
                    "## What obs captures, and what it redacts"):
        assert heading in text
    assert "(SECURITY.md)" in (REPO / "README.md").read_text()
    # Every tool is accounted for in the capture table.
    for tool in sorted(p.stem.replace("_", "-") for p in (REPO / "tools").glob("obs_*.py")):
        assert f"| {tool}" in text or f", {tool}" in text, tool
