"""dashboards/: generated files, PromQL, the metric contract, both alert forms."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards import build
from dashboards.alerts import (
    DATASOURCE_UID,
    FINISHED,
    alert_rules,
    grafana_alerting,
    prometheus_rules,
)
from dashboards.metrics import (
    METRIC_NAMES,
    METRICS,
    PROMETHEUS_SYNTHETIC,
    metric,
    series_names,
)
from dashboards.overview import DASHBOARD_UID, build_overview
from dashboards.promql import Selector, label_values_query, selectors, to_promql
from dashboards.site import Site
from dashboards.thresholds import Thresholds, load_thresholds
from dashboards.typecheck import NPM_INSTALL, TypecheckError, typecheck
from texwatch.alarms import HARMONIC_SCALE

ROOT = build.REPO_ROOT
PROMTOOL = shutil.which("promtool")
ROWS = [
    "Latest snapshots",
    "Loss",
    "Texture scale",
    "Banding and aliasing",
    "Latent and stream health",
    "Loss terms",
    "Daemon health",
]
# Target labels Prometheus attaches to every scraped series.
TARGET_LABELS = {"job", "instance"}
# Per-stream metrics whose `stream` label is not an image stream (also 'loss', 'term/<name>').
NOT_IMAGE_STREAM = {"texwatch_nonfinite_total", "texwatch_client_dropped_rows_total"}


def _committed_dashboard() -> dict[str, Any]:
    return json.loads((ROOT / build.DASHBOARD_FILE).read_text(encoding="utf-8"))


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def _dashboard_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target, annotation and variable of a dashboard."""
    queries = [
        (f"panel {p['title']!r} {t['refId']}", t["expr"])
        for p in _panels(board)
        for t in p.get("targets", [])
    ]
    queries += [(f"annotation {a['name']!r}", a["expr"]) for a in board["annotations"]["list"]]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            queries.append((f"variable {var['name']}", label_values_query(var["query"])[0]))
    return queries


def _alert_queries() -> list[tuple[str, str]]:
    return [(f"alert {rule.name}", rule.expr) for rule in alert_rules()]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None, "promtool is not installed (Debian package 'prometheus')"
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False
    )


def _check_rules_file(
    path: Path, queries: list[tuple[str, str]]
) -> subprocess.CompletedProcess[str]:
    rules = [
        {"record": f"texwatch_check:query_{i}", "expr": to_promql(expr)}
        for i, (_, expr) in enumerate(queries)
    ]
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    return _promtool("check", "rules", str(path))


# --- generated files -------------------------------------------------------------------------


def test_committed_files_are_what_the_code_builds() -> None:
    assert build.stale_files(ROOT) == [], "run `python -m dashboards.build` and commit the result"


def test_build_cli_writes_checks_and_takes_threshold_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert build.main(["--out", str(out)]) == 0
    for relative, text in build.render_all().items():
        assert (out / relative).read_text(encoding="utf-8") == text
    assert build.main(["--out", str(out), "--check"]) == 0

    (out / build.RULES_FILE).write_text("groups: []\n", encoding="utf-8")
    assert build.main(["--out", str(out), "--check"]) == 1

    overrides = tmp_path / "thresholds.yml"
    overrides.write_text("harmonic_scale: 1.25\nharmonic_for: 30m\n", encoding="utf-8")
    assert build.main(["--out", str(out), "--thresholds", str(overrides)]) == 0
    rules = yaml.safe_load((out / build.RULES_FILE).read_text(encoding="utf-8"))
    lock = next(r for r in rules["groups"][0]["rules"] if r["alert"] == "TexwatchHarmonicLock")
    assert lock["expr"].endswith(">= 1.25") and lock["for"] == "30m"
    assert build.main(["--out", str(out), "--check"]) == 1  # defaults differ from the overrides


# --- PromQL: parses, and names only what texwatchd exports ----------------------------------


def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    queries = _dashboard_queries(_committed_dashboard()) + _alert_queries()
    assert len(queries) > 40
    proc = _check_rules_file(tmp_path / "queries.yml", queries)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(queries)} rules found" in proc.stdout

    # The harness itself rejects a broken expression.
    broken = _check_rules_file(tmp_path / "broken.yml", [("broken", "sum by (run (texwatch_loss)")])
    assert broken.returncode != 0


def test_every_query_names_contract_metrics_and_labels() -> None:
    allowed = series_names() | PROMETHEUS_SYNTHETIC
    for where, expr in _dashboard_queries(_committed_dashboard()) + _alert_queries():
        found = selectors(expr)
        assert found, f"{where} selects no series: {expr}"
        for sel in found:
            assert sel.metric in allowed, f"{where} uses {sel.metric}, not in dashboards.metrics"
            if sel.metric in PROMETHEUS_SYNTHETIC:
                continue
            spec = metric(sel.metric)
            known = set(spec.labels) | TARGET_LABELS
            if sel.metric.endswith("_bucket"):
                known.add("le")
            assert set(sel.labels) <= known, f"{where}: {sel.metric} has no label {sel.labels}"


def test_queries_filter_on_the_run_and_stream_variables() -> None:
    for where, expr in _dashboard_queries(_committed_dashboard()):
        for sel in selectors(expr):
            if sel.metric in PROMETHEUS_SYNTHETIC or where.startswith("variable"):
                continue
            labels = metric(sel.metric).labels
            if "run" in labels:
                assert 'run=~"$run"' in expr, f"{where} does not filter on $run: {expr}"
            if "stream" in labels and sel.metric not in NOT_IMAGE_STREAM:
                assert 'stream=~"$stream"' in expr, f"{where} does not filter on $stream: {expr}"


def test_dashboard_shows_every_exported_metric() -> None:
    used = set()
    for _, expr in _dashboard_queries(_committed_dashboard()):
        used |= {metric(s.metric).name for s in selectors(expr) if s.metric in series_names()}
    assert used == METRIC_NAMES, f"not on the dashboard: {sorted(METRIC_NAMES - used)}"


def test_selector_reader() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (run, le) (rate(x_bucket{run=~"$run"}[$__rate_interval])))'
    )
    assert selectors(expr) == [Selector("x_bucket", ("run",))]
    assert selectors("time() - a{b='1'} offset 5m > 1e-3 or c") == [
        Selector("a", ("b",)),
        Selector("c", ()),
    ]
    assert to_promql("rate(x[$__rate_interval])") == "rate(x[1m])"
    with pytest.raises(ValueError, match="Grafana variable"):
        to_promql("x > $threshold")
    with pytest.raises(ValueError, match="metric name"):
        selectors('{__name__="x"}')
    with pytest.raises(TypeError, match="expr must be a str"):
        selectors(3)  # type: ignore[arg-type]
    assert label_values_query('label_values(a{b=~"$b"}, c)') == ('a{b=~"$b"}', "c")
    with pytest.raises(ValueError, match="label_values"):
        label_values_query("query_result(a)")


# --- dashboard structure ---------------------------------------------------------------------


def test_dashboard_variables_and_rows() -> None:
    board = _committed_dashboard()
    assert board["uid"] == DASHBOARD_UID
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    run = variables["run"]
    assert run["type"] == "query" and run["multi"] and run["includeAll"]
    assert run["query"] == "label_values(texwatch_last_step, run)"
    stream = variables["stream"]
    assert stream["type"] == "query" and stream["multi"]
    assert label_values_query(stream["query"])[1] == "stream"
    assert [p["title"] for p in board["panels"] if p["type"] == "row"] == ROWS
    for panel in _panels(board):
        if panel["type"] != "text":  # the snapshot images: no query
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_dashboard_layout_has_unique_ids_and_no_overlaps() -> None:
    board = _committed_dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        area = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area


def test_threshold_lines_follow_the_alert_thresholds() -> None:
    board = build_overview(Thresholds(harmonic_scale=1.25, lag_rows=50))
    by_title = {p["title"]: p for p in _panels(board)}
    for title, values in [
        ("Tile scale", [None, 0.8, 1.25]),
        ("Lag (committed rows not yet derived)", [None, 50]),
    ]:
        defaults = by_title[title]["fieldConfig"]["defaults"]
        assert [step["value"] for step in defaults["thresholds"]["steps"]] == values
        assert defaults["custom"]["thresholdsStyle"]["mode"] in {"line", "line+area"}
    with pytest.raises(TypeError, match="thresholds must be a Thresholds"):
        build_overview({"harmonic_scale": 2})  # type: ignore[arg-type]


def test_texture_panels_show_the_new_metrics() -> None:
    by_title = {p["title"]: p for p in _panels(_committed_dashboard())}

    def shown(title: str) -> set[str]:
        return {s.metric for t in by_title[title]["targets"] for s in selectors(t["expr"])}

    assert shown("Tile scale") == {"texwatch_tile_scale"}
    assert shown("Periodicity") == {"texwatch_periodic", "texwatch_peak_prominence_db"}
    assert shown("Aliasing") == {"texwatch_resize_mse_down_up", "texwatch_alias_score"}
    assert shown("Period-doubling bands") == {"texwatch_band_score", "texwatch_band_max_run"}
    assert not {"Harmonic energy ratios", "Resize round trip"} & set(by_title)
    tile_scale = by_title["Tile scale"]["fieldConfig"]["defaults"]
    lines = [step["value"] for step in tile_scale["thresholds"]["steps"]]
    assert lines == [None, pytest.approx(1 / HARMONIC_SCALE), HARMONIC_SCALE]


def test_loss_spike_annotation() -> None:
    (annotation,) = _committed_dashboard()["annotations"]["list"]
    assert annotation["enable"] is True
    assert annotation["datasource"]["type"] == "prometheus"
    assert [s.metric for s in selectors(annotation["expr"])] == ["texwatch_loss_spikes_total"]
    assert "{{rule}}" in annotation["titleFormat"]


def test_dashboard_type_checks_against_grafana_schema(tmp_path: Path) -> None:
    node_modules = Path(build.REPO_ROOT, "dashboards", "node_modules")
    assert node_modules.is_dir(), f"npm packages missing: run `{NPM_INSTALL}` at the repo root"
    typecheck([ROOT / build.DASHBOARD_FILE])

    broken = copy.deepcopy(_committed_dashboard())
    zscore = next(p for p in broken["panels"] if p.get("title") == "Loss z-score")
    zscore["fieldConfig"]["defaults"]["thresholds"]["mode"] = "relative"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken), encoding="utf-8")
    with pytest.raises(TypecheckError, match="relative"):
        typecheck([path])


# --- alert rules: both forms, same thresholds -----------------------------------------------


_EVALUATOR_OP = {"gt": ">", "gte": ">=", "lt": "<"}


def _grafana_as_promql(rule: dict[str, Any]) -> str:
    data = {d["refId"]: d for d in rule["data"]}
    query = data["A"]["model"]["expr"]
    (condition,) = data[rule["condition"]]["model"]["conditions"]
    evaluator = condition["evaluator"]
    (param,) = evaluator["params"]
    number = str(int(param)) if float(param).is_integer() else repr(float(param))
    query = f"({query})" if any(op in query for op in (" or ", " and ", " unless ")) else query
    return f"{query} {_EVALUATOR_OP[evaluator['type']]} {number}"


def test_both_alert_forms_agree() -> None:
    prom = yaml.safe_load((ROOT / build.RULES_FILE).read_text(encoding="utf-8"))
    graf = yaml.safe_load((ROOT / build.ALERTING_FILE).read_text(encoding="utf-8"))
    prom_rules = {r["alert"]: r for r in prom["groups"][0]["rules"]}
    (group,) = graf["groups"]
    graf_rules = {r["title"]: r for r in group["rules"]}
    assert (
        set(prom_rules)
        == set(graf_rules)
        == {
            "TexwatchHarmonicLock",
            "TexwatchLossSpikes",
            "TexwatchLossDrift",
            "TexwatchNonFinite",
            "TexwatchDeadLossTerm",
            "TexwatchDaemonLagging",
            "TexwatchRunStalled",
            "TexwatchDaemonDown",
            "TexwatchDaemonAbsent",
        }
    )
    for name, p in prom_rules.items():
        g = graf_rules[name]
        assert _grafana_as_promql(g) == p["expr"], name
        assert g["for"] == p["for"] and g["labels"] == p["labels"], name
        assert g["annotations"]["summary"] == p["annotations"]["summary"], name
        assert g["annotations"]["runbook_url"] == p["annotations"]["runbook_url"], name
        # Both states are chosen on purpose, never the SDK's defaults (Alerting / OK).
        assert g["noDataState"] == "OK" and g["execErrState"] == "Error", name
        query = next(d for d in g["data"] if d["refId"] == "A")
        assert query["datasourceUid"] == DATASOURCE_UID and query["model"]["instant"] is True
        assert not {"folderUID", "orgID", "ruleGroup"} & set(g), "API-only fields in a file"
    assert group["folder"] == "texwatch" and group["orgId"] == 1


def test_thresholds_are_configurable_in_both_forms() -> None:
    th = Thresholds.from_mapping({"harmonic_scale": 1.8, "lag_rows": 250, "lag_for": "30m"})
    prom = {r["alert"]: r for r in prometheus_rules(th)["groups"][0]["rules"]}
    graf = {r["title"]: r for r in grafana_alerting(th)["groups"][0]["rules"]}
    assert prom["TexwatchHarmonicLock"]["expr"].endswith(">= 1.8")
    assert prom["TexwatchDaemonLagging"]["expr"] == f"(texwatch_daemon_lag_rows {FINISHED}) > 250"
    assert prom["TexwatchDaemonLagging"]["for"] == graf["TexwatchDaemonLagging"]["for"] == "30m"
    for name in prom:
        assert _grafana_as_promql(graf[name]) == prom[name]["expr"]
    assert (
        grafana_alerting(th, datasource_uid="other")["groups"][0]["rules"][0]["data"][0][
            "datasourceUid"
        ]
        == "other"
    )


def test_harmonic_scale_defaults_to_the_alarm_definition() -> None:
    assert Thresholds().harmonic_scale == HARMONIC_SCALE
    (lock,) = [r for r in alert_rules() if r.name == "TexwatchHarmonicLock"]
    assert lock.op == ">=" and lock.threshold == HARMONIC_SCALE
    assert [s.metric for s in selectors(lock.query)] == ["texwatch_tile_scale"] * 2


def test_thresholds_reject_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown threshold"):
        Thresholds.from_mapping({"harmonic_treshold": 2})
    with pytest.raises(ValueError, match="harmonic_for must be a duration"):
        Thresholds(harmonic_for="10 minutes")
    with pytest.raises(ValueError, match="lag_rows must be a finite number > 0"):
        Thresholds(lag_rows=-1)
    with pytest.raises(TypeError, match="harmonic_scale must be a number"):
        Thresholds(harmonic_scale="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"harmonic_scale must be > 1 .*got 0\.5"):
        Thresholds(harmonic_scale=0.5)
    with pytest.raises(ValueError, match=r"harmonic_scale must be > 1 .*got 1"):
        Thresholds.from_mapping({"harmonic_scale": 1})
    with pytest.raises(TypeError, match="spike_count must be a number"):
        Thresholds(spike_count=True)
    with pytest.raises(TypeError, match="overrides must be a mapping"):
        Thresholds.from_mapping([("lag_rows", 1)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="thresholds must be a Thresholds"):
        alert_rules({"lag_rows": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="datasource_uid"):
        grafana_alerting(datasource_uid="")
    listed = tmp_path / "list.yml"
    listed.write_text("- harmonic_scale\n", encoding="utf-8")
    with pytest.raises(ValueError, match="must hold a YAML mapping"):
        load_thresholds(listed)
    empty = tmp_path / "empty.yml"
    empty.write_text("", encoding="utf-8")
    assert load_thresholds(empty) == Thresholds()


# --- the metric contract ---------------------------------------------------------------------


def test_metric_contract_lookup() -> None:
    assert metric("texwatch_processing_seconds_bucket").name == "texwatch_processing_seconds"
    assert metric("texwatch_loss_spikes_total").labels == ("run", "run_id", "rank", "rule")
    assert len(METRIC_NAMES) == len(METRICS)
    with pytest.raises(ValueError, match="not exported by texwatchd"):
        metric("texwatch_loss_ms")
    with pytest.raises(TypeError, match="series must be a str"):
        metric(None)  # type: ignore[arg-type]


def test_metric_contract_passes_promtool_lint() -> None:
    """An exposition of every contract metric, as prometheus_client writes it, lints clean."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    registry = CollectorRegistry()
    for spec in METRICS:
        labels = list(spec.labels)
        values = ["x"] * len(labels)
        if spec.type == "gauge":
            gauge = Gauge(spec.name, spec.help, labels, registry=registry)
            (gauge.labels(*values) if labels else gauge).set(1.0)
        elif spec.type == "counter":
            assert spec.name.endswith("_total"), spec.name
            counter = Counter(
                spec.name.removesuffix("_total"), spec.help, labels, registry=registry
            )
            (counter.labels(*values) if labels else counter).inc()
        else:
            histogram = Histogram(spec.name, spec.help, labels, registry=registry)
            (histogram.labels(*values) if labels else histogram).observe(0.1)
    exposition = generate_latest(registry).decode()
    assert PROMTOOL is not None
    proc = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr
    for name in series_names():
        assert f"\n{name}{{" in exposition or f"\n{name} " in exposition, name


# --- alert conventions: finished runs, runbooks, dashboard links, the job ---------------------


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings (lower case, spaces to -, punctuation out)."""
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add("".join(c for c in title if c.isalnum() or c in " -_").replace(" ", "-"))
    return anchors


def test_every_per_run_alert_is_silenced_for_finished_runs() -> None:
    rules = alert_rules()
    per_run = {r.name for r in rules if r.per_run}
    assert per_run == {r.name for r in rules} - {"TexwatchDaemonDown", "TexwatchDaemonAbsent"}
    for rule in rules:
        assert (FINISHED in rule.expr) is rule.per_run, rule.name
        assert (FINISHED in rule.live_query) is rule.per_run, rule.name


def test_every_alert_links_its_runbook_and_its_dashboard_panel() -> None:
    anchors = _anchors((ROOT / "docs" / "runbooks.md").read_text(encoding="utf-8"))
    board = _committed_dashboard()
    panels = {str(p["id"]): p["title"] for p in _panels(board)}
    prom = yaml.safe_load((ROOT / build.RULES_FILE).read_text(encoding="utf-8"))
    graf = yaml.safe_load((ROOT / build.ALERTING_FILE).read_text(encoding="utf-8"))
    graf_rules = {r["title"]: r for r in graf["groups"][0]["rules"]}
    by_name = {r.name: r for r in alert_rules()}
    for rule in prom["groups"][0]["rules"]:
        name = rule["alert"]
        page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert page == "docs/runbooks.md" and anchor == name.lower(), name
        assert anchor in anchors, f"docs/runbooks.md has no section {name}"
        url = rule["annotations"]["dashboard_url"]
        assert url.startswith(f"http://127.0.0.1:3000/d/{DASHBOARD_UID}"), name
        assert ("var-run={{ $labels.run }}" in url) is (
            "$labels.run" in rule["annotations"]["summary"]
        )
        annotations = graf_rules[name]["annotations"]
        assert annotations["__dashboardUid__"] == board["uid"]
        assert panels[annotations["__panelId__"]] == by_name[name].panel, name


def test_the_job_and_urls_are_configurable(tmp_path: Path) -> None:
    site = Site(
        job="gpu-texwatch",
        grafana_url="https://grafana.example.org",
        runbook_url="https://git.example.org/texwatch/blob/main/docs/runbooks.md",
        snapshot_url="https://texwatchd.example.org:19400",
    )
    files = build.render_all(site=site)
    for relative, text in files.items():
        assert 'job="texwatch"' not in text, relative
    rules = {r["alert"]: r for r in yaml.safe_load(files[build.RULES_FILE])["groups"][0]["rules"]}
    assert rules["TexwatchDaemonDown"]["expr"] == 'up{job="gpu-texwatch"} < 1'
    assert 'up{job="gpu-texwatch"}' in rules["TexwatchDaemonAbsent"]["expr"]
    assert rules["TexwatchNonFinite"]["annotations"]["runbook_url"] == (
        "https://git.example.org/texwatch/blob/main/docs/runbooks.md#texwatchnonfinite"
    )
    assert rules["TexwatchDaemonDown"]["annotations"]["dashboard_url"] == (
        f"https://grafana.example.org/d/{DASHBOARD_UID}"
    )
    (endpoint,) = yaml.safe_load(files[build.POD_MONITOR_FILE])["spec"]["podMetricsEndpoints"]
    assert endpoint["relabelings"] == [
        {"action": "replace", "targetLabel": "job", "replacement": "gpu-texwatch"}
    ]
    board = json.loads(files[build.DASHBOARD_FILE])
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["snapshot_url"]["query"] == "https://texwatchd.example.org:19400"
    up = next(p for p in _panels(board) if p["title"] == "texwatchd up")
    assert up["targets"][0]["expr"] == 'up{job="gpu-texwatch"}'
    out = tmp_path / "site"
    argv = ["--out", str(out), "--job", "gpu-texwatch", "--grafana-url", site.grafana_url]
    argv += ["--runbook-url", site.runbook_url, "--snapshot-url", site.snapshot_url]
    assert build.main(argv) == 0
    assert build.main([*argv, "--check"]) == 0
    assert build.main(["--out", str(out), "--check"]) == 1  # the defaults name another job


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("job", "", "Site job must be a job name"),
        ("job", 'te"x', "Site job must be a job name"),
        ("grafana_url", "grafana:3000", "grafana_url must be an http"),
        ("snapshot_url", "http://h:19400/", "without a trailing /"),
        ("runbook_url", "docs/runbooks.md#x", "runbook_url must be"),
    ],
)
def test_site_rejects_bad_values(field: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Site(**{field: value})
    with pytest.raises(TypeError, match="Site job must be a str"):
        Site(job=1)  # type: ignore[arg-type]
    with pytest.raises(SystemExit):
        build.main(["--check", f"--{field.replace('_', '-')}", value])


def test_the_snapshot_panel_shows_each_runs_image_from_texwatchd() -> None:
    board = _committed_dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    snapshot = variables["snapshot"]
    assert label_values_query(snapshot["query"]) == (
        'texwatch_snapshot_step{run=~"$run", rank=~"$rank"}',
        "folder",
    )
    assert snapshot["multi"] and snapshot["includeAll"]
    assert variables["snapshot_url"]["type"] == "textbox"
    assert variables["snapshot_url"]["query"] == Site().snapshot_url
    (panel,) = [p for p in _panels(board) if p["type"] == "text"]
    assert panel["repeat"] == "snapshot" and panel["options"]["mode"] == "html"
    assert (
        'src="${snapshot_url}/snapshots/${snapshot}/latest.png?t=${__to}"'
        in (panel["options"]["content"])
    )
