"""deploy/: configs parse, name files that exist, agree with each other and with texwatchd's flags.

Docker, Grafana and Kubernetes cannot run here, so their files are checked statically; the
Prometheus config and rules are checked by promtool itself.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from dashboards import build
from dashboards.alerts import DATASOURCE_UID
from dashboards.metrics import SCRAPE_JOB
from dashboards.operator import POD_LABELS, POD_PORT
from texwatch.daemon import build_parser as texwatchd_parser
from texwatch.metric_names import DEFAULT_PORT

ROOT = build.REPO_ROOT
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
RULE_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.yml"))
PROVISIONING = DEPLOY / "grafana" / "provisioning"
PROMTOOL = shutil.which("promtool")

# texwatchd's real command line: flag -> whether it takes a value.
_PARSER = texwatchd_parser()
TEXWATCHD_FLAGS = {
    option: action.nargs != 0
    for action in _PARSER._actions
    for option in action.option_strings
    if option.startswith("--")
}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None, "promtool is not installed (Debian package 'prometheus')"
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
    )


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _texwatchd_flags(args: list[str]) -> dict[str, str | None]:
    """Parse texwatchd arguments against its documented flags; fail on anything else."""
    flags: dict[str, str | None] = {}
    i = 0
    while i < len(args):
        flag = args[i]
        assert flag in TEXWATCHD_FLAGS, f"texwatchd has no flag {flag!r} (in {args})"
        if TEXWATCHD_FLAGS[flag]:
            assert i + 1 < len(args) and not args[i + 1].startswith("--"), f"{flag} needs a value"
            flags[flag] = args[i + 1]
            i += 2
        else:
            flags[flag] = None
            i += 1
    _PARSER.parse_args(args)  # types and choices, exactly as texwatchd checks them
    assert ("--root" in flags) != ("--store" in flags), "texwatchd needs --root or --store"
    if "--port" in flags:
        assert 0 < int(str(flags["--port"])) < 65536
    if "--device" in flags:
        assert flags["--device"] in {"cpu", "cuda"}
    return flags


def _inside(path: str, directory: str) -> bool:
    return PurePosixPath(directory) in (PurePosixPath(path), *PurePosixPath(path).parents)


def _env_default(value: str) -> str:
    """Resolve compose's ``${VAR:-default}`` to its default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def _mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of a compose service's short-syntax volumes."""
    mounts = []
    for entry in service.get("volumes", []):
        parts = _env_default(entry).split(":")
        assert len(parts) in (2, 3), f"unexpected volume syntax {entry!r}"
        mounts.append((parts[0], parts[1], len(parts) == 3 and parts[2] == "ro"))
    return mounts


def _mount_for(service: dict[str, Any], path: str) -> tuple[str, str, bool]:
    matches = [m for m in _mounts(service) if _inside(path, m[1])]
    assert matches, f"{path} is not on any volume of the service"
    return max(matches, key=lambda m: len(m[1]))


# --- every file parses -----------------------------------------------------------------------


def test_every_yaml_file_parses() -> None:
    files = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])
    assert len(files) >= 9
    for path in files:
        docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        assert docs and all(doc is not None for doc in docs), path


# --- Prometheus: promtool ---------------------------------------------------------------------


def test_promtool_checks_config_and_rules() -> None:
    config = _promtool("check", "config", str(PROMETHEUS_YML))
    assert config.returncode == 0, config.stdout + config.stderr
    rule_files = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
    assert [p.relative_to(ROOT).as_posix() for p in rule_files] == [build.RULES_FILE]
    rules = _promtool("check", "rules", *map(str, rule_files))
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_promtool_unit_tests_pass() -> None:
    assert RULE_TESTS
    proc = _promtool("test", "rules", *map(str, RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_unit_tests_cover_firing_and_quiet_for_every_alert() -> None:
    alerts = {r["alert"] for g in _load(ROOT / build.RULES_FILE)["groups"] for r in g["rules"]}
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        spec = _load(path)
        for rule_file in spec["rule_files"]:
            assert (path.parent / rule_file).is_file(), f"{path} names missing {rule_file}"
        for case in spec["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing == alerts, f"no firing case for {sorted(alerts - firing)}"
    assert quiet == alerts, f"no quiet case for {sorted(alerts - quiet)}"


def test_unit_tests_cover_both_harmonic_locks_and_a_nan_tile_scale() -> None:
    harmonics: set[str] = set()
    nan_series = []
    for path in RULE_TESTS:
        for case in _load(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                if check["alertname"] == "TexwatchHarmonicLock":
                    harmonics |= {a["exp_labels"]["harmonic"] for a in check["exp_alerts"]}
            nan_series += [
                s["series"]
                for s in case.get("input_series", [])
                if s["series"].startswith("texwatch_tile_scale{") and "NaN" in s["values"]
            ]
    assert harmonics == {"half", "2f"}
    assert nan_series, "no quiet case for a NaN tile_scale"


def test_prometheus_config_scrapes_texwatchd_with_the_rules() -> None:
    config = _load(PROMETHEUS_YML)
    (job,) = config["scrape_configs"]
    assert job["job_name"] == SCRAPE_JOB
    for pattern in config["rule_files"]:
        assert sorted(PROMETHEUS_YML.parent.glob(pattern)), f"rule_files {pattern} matches nothing"


def test_the_federation_example_is_valid_prometheus_and_pulls_texwatch_series() -> None:
    path = DEPLOY / "prometheus" / "federation.yml"
    (job,) = _load(path)["scrape_configs"]
    assert job["metrics_path"] == "/federate" and job["honor_labels"] is True
    assert job["params"]["match[]"] == [f'{{job="{SCRAPE_JOB}"}}']
    proc = _promtool("check", "config", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_kubernetes_scrape_config_is_valid_prometheus(tmp_path: Path) -> None:
    (job,) = _load(DEPLOY / "kubernetes" / "prometheus-scrape.yml")
    assert job["job_name"] == SCRAPE_JOB
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    # Debian's promtool is built without Kubernetes discovery: check the relabeling with a
    # static target instead (promtool validates regexes, actions and target labels).
    static = {k: v for k, v in job.items() if k != "kubernetes_sd_configs"}
    static["static_configs"] = [{"targets": [f"pod:{DEFAULT_PORT}"]}]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"scrape_configs": [static]}), encoding="utf-8")
    proc = _promtool("check", "config", str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    annotations = {
        label.removeprefix("__meta_kubernetes_pod_annotation_")
        for relabel in job["relabel_configs"]
        for label in relabel["source_labels"]
        if label.startswith("__meta_kubernetes_pod_annotation_")
    }
    assert annotations == {"texwatch_io_scrape", "texwatch_io_port"}


# --- docker compose ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = _load(COMPOSE)
    assert set(data["services"]) == {"texwatchd", "prometheus", "grafana"}
    return data


def test_compose_mounts_exist_and_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for source, target, _ in _mounts(service):
            assert target.startswith("/"), f"{name}: {target}"
            if source.startswith((".", "/")):
                if name == "texwatchd" and target == _texwatchd_root(compose):
                    continue  # the user's runs folder (TEXWATCH_RUNS), not part of the repo
                assert (COMPOSE.parent / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"


def _texwatchd_root(compose: dict[str, Any]) -> str:
    flags = _texwatchd_flags(compose["services"]["texwatchd"]["command"])
    return str(flags.get("--root") or flags.get("--store"))


def test_compose_texwatchd_flags_agree_with_its_mounts_and_ports(compose: dict[str, Any]) -> None:
    service = compose["services"]["texwatchd"]
    flags = _texwatchd_flags(service["command"])
    # Reachable from the Prometheus container; published on the host's loopback only.
    assert flags["--bind"] == "0.0.0.0"
    port = flags.get("--port") or str(DEFAULT_PORT)
    assert f"127.0.0.1:{port}:{port}" in service["ports"]
    source, _, read_only = _mount_for(service, str(flags.get("--root") or flags.get("--store")))
    assert not read_only, "texwatchd writes derived/ into the stores: the runs mount must be rw"
    assert _env_default(source) == "../runs"
    assert "--snapshot-dir" in flags
    assert not _mount_for(service, str(flags["--snapshot-dir"]))[2]
    jobs = _load(PROMETHEUS_YML)["scrape_configs"]
    targets = [t for job in jobs for group in job["static_configs"] for t in group["targets"]]
    assert targets == [f"texwatchd:{port}"], "Prometheus scrapes the texwatchd service's port"


def test_compose_builds_texwatchd_from_the_repo(compose: dict[str, Any]) -> None:
    spec = compose["services"]["texwatchd"]["build"]
    context = (COMPOSE.parent / spec["context"]).resolve()
    assert context == ROOT
    dockerfile = context / spec["dockerfile"]
    lines = dockerfile.read_text(encoding="utf-8").splitlines()
    copies = [shlex.split(line)[1:-1] for line in lines if line.startswith("COPY ")]
    assert copies
    for sources in copies:
        for source in sources:
            assert (context / source).exists(), f"Dockerfile copies missing {source}"
    (entrypoint,) = [line for line in lines if line.startswith("ENTRYPOINT ")]
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT ")) == ["texwatchd"]
    assert '".[daemon]"' in "\n".join(lines)


def test_compose_prometheus_loads_the_config_and_rules(compose: dict[str, Any]) -> None:
    service = compose["services"]["prometheus"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", service["image"])
    (config_flag,) = [c for c in service["command"] if c.startswith("--config.file=")]
    config_target = config_flag.split("=", 1)[1]
    source, _, _ = _mount_for(service, config_target)
    assert (COMPOSE.parent / source).resolve() == PROMETHEUS_YML
    for pattern in _load(PROMETHEUS_YML)["rule_files"]:
        in_container = str(PurePosixPath(config_target).parent / pattern)
        rules_source, rules_target, _ = _mount_for(service, str(PurePosixPath(in_container).parent))
        host_dir = (
            COMPOSE.parent
            / rules_source
            / PurePosixPath(in_container).parent.relative_to(rules_target)
        )
        assert sorted(host_dir.glob(PurePosixPath(pattern).name)), f"{pattern} not mounted"


def test_compose_grafana_provisions_datasource_dashboards_and_alerts(
    compose: dict[str, Any],
) -> None:
    service = compose["services"]["grafana"]
    schema = json.loads((ROOT / "dashboards" / "package.json").read_text())["devDependencies"]
    # Grafana runs the version the dashboard JSON is type-checked against.
    assert service["image"] == f"grafana/grafana:{schema['@grafana/schema']}"
    source, _, _ = _mount_for(service, "/etc/grafana/provisioning")
    assert (COMPOSE.parent / source).resolve() == PROVISIONING

    (datasource,) = _load(PROVISIONING / "datasources" / "texwatch.yml")["datasources"]
    assert datasource["type"] == "prometheus" and datasource["uid"] == DATASOURCE_UID
    assert datasource["url"] == "http://prometheus:9090"
    assert (
        datasource["jsonData"]["timeInterval"] == _load(PROMETHEUS_YML)["global"]["scrape_interval"]
    )

    (provider,) = _load(PROVISIONING / "dashboards" / "texwatch.yml")["providers"]
    dash_source, dash_target, _ = _mount_for(service, provider["options"]["path"])
    assert dash_target == provider["options"]["path"]
    host_dir = (COMPOSE.parent / dash_source).resolve()
    assert (ROOT / build.DASHBOARD_FILE).parent == host_dir
    home = service["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (host_dir / PurePosixPath(home).relative_to(dash_target)).is_file()

    alerting = _load(ROOT / build.ALERTING_FILE)
    uids = {d["datasourceUid"] for g in alerting["groups"] for r in g["rules"] for d in r["data"]}
    assert uids == {DATASOURCE_UID, "__expr__"}
    assert {g["folder"] for g in alerting["groups"]} == {provider["folder"]}


# --- systemd ----------------------------------------------------------------------------------


def test_systemd_unit_runs_texwatchd_with_valid_flags() -> None:
    unit: dict[str, dict[str, list[str]]] = {}
    section = ""
    for line in (DEPLOY / "systemd" / "texwatchd.service").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            unit[section] = {}
            continue
        key, value = line.split("=", 1)
        unit[section].setdefault(key, []).append(value)
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    (exec_start,) = service["ExecStart"]
    argv = shlex.split(exec_start)
    assert PurePosixPath(argv[0]).is_absolute() and PurePosixPath(argv[0]).name == "texwatchd"
    flags = _texwatchd_flags(argv[1:])
    assert flags["--bind"] == "127.0.0.1"
    writable = service["ReadWritePaths"][0].split()
    assert any(_inside(str(flags["--root"]), path) for path in writable)
    (state,) = service["StateDirectory"]
    assert _inside(str(flags["--snapshot-dir"]), f"/var/lib/{state}")
    assert service["Restart"] == ["on-failure"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


# --- Kubernetes -------------------------------------------------------------------------------


def test_kubernetes_sidecar_shares_the_runs_volume_with_the_trainer() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "texwatch-sidecar.yaml").read_text()))
    kinds = {doc["kind"]: doc for doc in docs}
    assert set(kinds) == {"PersistentVolumeClaim", "Job"}
    pod = kinds["Job"]["spec"]["template"]
    spec = pod["spec"]
    (sidecar,) = [c for c in spec["initContainers"] if c["name"] == "texwatchd"]
    assert sidecar["restartPolicy"] == "Always", "a native sidecar stops with the trainer"
    (trainer,) = spec["containers"]
    flags = _texwatchd_flags(sidecar["args"])
    assert flags["--bind"] == "0.0.0.0" and flags["--device"] == "cpu"
    port = int(str(flags["--port"]))
    assert [p["containerPort"] for p in sidecar["ports"]] == [port]
    assert pod["metadata"]["annotations"]["texwatch.io/port"] == str(port)
    assert pod["metadata"]["annotations"]["texwatch.io/scrape"] == "true"

    def volume_of(container: dict[str, Any], path: str) -> str:
        mounts = [m for m in container["volumeMounts"] if _inside(path, m["mountPath"])]
        assert mounts, f"{path} is not on a volume of {container['name']}"
        return str(max(mounts, key=lambda m: len(m["mountPath"]))["name"])

    runs = str(flags["--root"])
    shared = volume_of(sidecar, runs)
    assert volume_of(trainer, runs) == shared
    assert volume_of(sidecar, str(flags["--snapshot-dir"])) == shared
    (volume,) = [v for v in spec["volumes"] if v["name"] == shared]
    assert (
        volume["persistentVolumeClaim"]["claimName"]
        == kinds["PersistentVolumeClaim"]["metadata"]["name"]
    )


def test_kubernetes_sidecar_lingers_so_a_finished_run_is_scraped_before_it_goes() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "texwatch-sidecar.yaml").read_text()))
    (job,) = [doc for doc in docs if doc["kind"] == "Job"]
    spec = job["spec"]["template"]["spec"]
    (sidecar,) = [c for c in spec["initContainers"] if c["name"] == "texwatchd"]
    linger = float(str(_texwatchd_flags(sidecar["args"])["--linger"]))
    scrape_interval = float(_load(PROMETHEUS_YML)["global"]["scrape_interval"].removesuffix("s"))
    assert linger >= 2 * scrape_interval, "two scrapes see the run finished"
    assert spec["terminationGracePeriodSeconds"] > linger


# --- Prometheus Operator ----------------------------------------------------------------------


def _operator(relative: str) -> dict[str, Any]:
    (doc,) = list(yaml.safe_load_all((ROOT / relative).read_text(encoding="utf-8")))
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["metadata"]["name"] == "texwatch"
    return dict(doc)


def test_the_pod_monitor_selects_the_sidecar_pods_and_scrapes_them_as_the_job() -> None:
    monitor = _operator(build.POD_MONITOR_FILE)
    assert monitor["kind"] == "PodMonitor"
    spec = monitor["spec"]
    assert spec["selector"] == {"matchLabels": POD_LABELS}
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "texwatch-sidecar.yaml").read_text()))
    (job,) = [doc for doc in docs if doc["kind"] == "Job"]
    pod = job["spec"]["template"]
    assert POD_LABELS.items() <= pod["metadata"]["labels"].items(), "the selector misses the pod"
    (sidecar,) = [c for c in pod["spec"]["initContainers"] if c["name"] == "texwatchd"]
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    port = int(str(_texwatchd_flags(sidecar["args"])["--port"]))
    (endpoint,) = spec["podMetricsEndpoints"]
    assert ports[endpoint["port"]] == port and endpoint["port"] == POD_PORT
    assert endpoint["path"] == "/metrics"
    assert endpoint["relabelings"] == [
        {"action": "replace", "targetLabel": "job", "replacement": SCRAPE_JOB}
    ]
    assert spec["namespaceSelector"] == {"any": True}


def test_the_prometheus_rule_holds_the_groups_of_the_rules_file(tmp_path: Path) -> None:
    rule = _operator(build.PROMETHEUS_RULE_FILE)
    assert rule["kind"] == "PrometheusRule"
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == _load(ROOT / build.RULES_FILE)["groups"]
    # The operator hands the groups to Prometheus as a rule file: promtool accepts them.
    rules = tmp_path / "operator.rules.yml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}), encoding="utf-8")
    proc = _promtool("check", "rules", str(rules))
    assert proc.returncode == 0, proc.stdout + proc.stderr
