"""texwatch's alert rules, rendered in both forms users run: Prometheus rules and Grafana alerting.

Each rule is one PromQL query, a comparison and a threshold taken from :class:`Thresholds`. The
Prometheus form is ``query <op> threshold`` with ``for:``; the Grafana form runs the same query as
an instant query (refId ``A``) and applies the same comparison in a threshold expression (``B``),
so the two forms cannot drift apart.

Every rule about one run is silenced once the run finished (its recorder closed cleanly and
texwatchd derived all of it), and every rule carries a ``runbook_url`` (an anchor of
docs/runbooks.md) and a link to its dashboard panel.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from grafana_foundation_sdk.builders import alerting, expr, prometheus
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import alerting as alerting_models
from grafana_foundation_sdk.models import dashboard as dashboard_models

from dashboards.overview import DASHBOARD_UID, build_overview
from dashboards.site import Site, site_or_default
from dashboards.thresholds import Thresholds, thresholds_or_default

__all__ = [
    "DATASOURCE_UID",
    "GRAFANA_FOLDER",
    "RULE_GROUP",
    "VALUE",
    "FINISHED",
    "AlertRule",
    "alert_rules",
    "grafana_alerting",
    "prometheus_rules",
]

#: uid of the Prometheus datasource the Grafana provisioning creates and the alerts query.
DATASOURCE_UID = "texwatch-prometheus"
#: Grafana folder the provisioned alert rules live in.
GRAFANA_FOLDER = "texwatch"
#: Name of the rule group, in both forms.
RULE_GROUP = "texwatch"
_EVALUATION_INTERVAL = "1m"
_QUERY_RANGE_SECONDS = 600

#: Stands for the alert's value in :attr:`AlertRule.value_note`.
VALUE = "{value}"

#: Names the run in an alert's text: ``job rank 3`` for a rank of an ``all_ranks`` job.
_RUN_NAME = "{{ $labels.run }}{{ if $labels.rank }} rank {{ $labels.rank }}{{ end }}"

#: Appended to the query of every rule about one run: nothing fires for a finished run.
FINISHED = "unless on(run_id, rank) texwatch_run_finished == 1"
_SET_OPERATORS = (" or ", " and ", " unless ")

Comparison = Literal[">", ">=", "<"]
_GRAFANA_EVALUATOR: dict[str, Literal["gt", "gte", "lt"]] = {">": "gt", ">=": "gte", "<": "lt"}
NoDataState = Literal["Alerting", "NoData", "OK"]


@dataclass(frozen=True)
class AlertRule:
    """One alert, independent of the system that evaluates it.

    Attributes:
        name: the alert name (``alertname`` label), also the Grafana rule title.
        uid: stable Grafana rule uid.
        query: PromQL whose per-series value is compared with ``threshold``.
        op: the comparison that fires.
        threshold: the value compared against.
        for_: how long the condition must hold before the alert fires.
        severity: ``critical`` or ``warning`` (a label in both forms).
        summary: one line, may use ``{{ $labels.x }}``.
        description: what happened and what to look at, may use ``{{ $labels.x }}``.
        value_note: the sentence appended to ``description`` that shows the alert's value, with
            :data:`VALUE` where each form puts its own template of it (Prometheus's
            ``$value``, Grafana's ``$values.A.Value``).
        panel: the title of the dashboard panel that shows what the rule watches.
        per_run: the query's series are one run's (labels ``run_id`` and ``rank``): the rule
            is silenced for a finished run (:data:`FINISHED`).
        no_data: Grafana's state when the query returns no series. Rules whose query returns
            series only when something is wrong choose ``OK``; absence of the daemon is its
            own rule.
    """

    name: str
    uid: str
    query: str
    op: Comparison
    threshold: float
    for_: str
    severity: Literal["critical", "warning"]
    summary: str
    description: str
    panel: str
    per_run: bool
    no_data: NoDataState = "OK"
    value_note: str = f"Value: {VALUE}."

    @property
    def live_query(self) -> str:
        """The query both forms run: ``query``, without the finished runs of a per-run rule."""
        if not self.per_run:
            return self.query
        query = f"({self.query})" if any(op in self.query for op in _SET_OPERATORS) else self.query
        return f"{query} {FINISHED}"

    @property
    def expr(self) -> str:
        """The Prometheus alerting expression: the query compared with the threshold."""
        query = self.live_query
        query = f"({query})" if any(op in query for op in _SET_OPERATORS) else query
        return f"{query} {self.op} {_number(self.threshold)}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def alert_rules(
    thresholds: Thresholds | None = None, site: Site | None = None
) -> tuple[AlertRule, ...]:
    """The texwatch alert rules for the given thresholds and site (defaults when ``None``).

    Raises:
        TypeError: ``thresholds`` is not a :class:`Thresholds` or ``site`` not a :class:`Site`.
    """
    th = thresholds_or_default(thresholds)
    job = site_or_default(site).job
    up = f'up{{job="{job}"}}'
    scale = th.harmonic_scale
    return (
        AlertRule(
            name="TexwatchHarmonicLock",
            uid="texwatch-harmonic-lock",
            query=(
                'label_replace(texwatch_tile_scale, "harmonic", "half", "", "")'
                ' or label_replace(1 / texwatch_tile_scale, "harmonic", "2f", "", "")'
            ),
            op=">=",
            threshold=scale,
            for_=th.harmonic_for,
            severity="warning",
            summary=(
                _RUN_NAME
                + "/{{ $labels.stream }}: texture tiles "
                + _by_harmonic("doubled", "halved")
                + " (harmonic lock)"
            ),
            description=(
                "The texture period of stream {{ $labels.stream }} in run "
                + _RUN_NAME
                + " is "
                + _by_harmonic(
                    f"{scale:g} times the reference's or more (tiles doubled: the fundamental "
                    "moved to f/2)",
                    f"1/{scale:g} of the reference's or less (tiles halved: the fundamental "
                    "moved to 2f)",
                )
                + ", both periods read from the autocorrelation along the reference's peak "
                "direction. See the Tile scale panel of the texwatch dashboard."
            ),
            value_note=f"Tile scale: {_by_harmonic(VALUE, '1/' + VALUE)}.",
            panel="Tile scale",
            per_run=True,
        ),
        AlertRule(
            name="TexwatchLossSpikes",
            uid="texwatch-loss-spikes",
            query=_counted_within(
                'texwatch_loss_spikes_total{rule!~"nonfinite|drift"}',
                th.spike_window,
                "run, run_id, rank",
            ),
            op=">=",
            threshold=th.spike_count,
            for_="0s",
            severity="warning",
            summary=_RUN_NAME + f": loss spikes in the last {th.spike_window}",
            description=(
                "The loss of run " + _RUN_NAME + " spiked (sigma rule on the log loss, hard max "
                "or sustained rule). Check the batches and the learning rate around the spike "
                "annotations."
            ),
            panel="Loss spikes",
            per_run=True,
        ),
        AlertRule(
            name="TexwatchLossDrift",
            uid="texwatch-loss-drift",
            query=_counted_within(
                'texwatch_loss_spikes_total{rule="drift"}', th.spike_window, "run, run_id, rank"
            ),
            op=">=",
            threshold=1.0,
            for_="0s",
            severity="warning",
            summary=_RUN_NAME + f": the loss drifted up in the last {th.spike_window}",
            description=(
                "The loss of run " + _RUN_NAME + " has risen against its long baseline (a "
                "divergence or a sustained level shift that the spike rules adapt to). Check "
                "the learning rate, the data mix and the gradient norm since the rise began."
            ),
            panel="Loss and EMA",
            per_run=True,
        ),
        AlertRule(
            name="TexwatchNonFinite",
            uid="texwatch-nonfinite",
            query=_counted_within(
                "texwatch_nonfinite_total", th.nonfinite_window, "run, run_id, rank, stream"
            ),
            op=">",
            threshold=0.0,
            for_="0s",
            severity="critical",
            summary=_RUN_NAME + ": NaN/Inf in {{ $labels.stream }}",
            description=(
                "Non-finite values appeared in {{ $labels.stream }} of run " + _RUN_NAME + " "
                f"within the last {th.nonfinite_window}."
            ),
            panel="Non-finite values (total)",
            per_run=True,
        ),
        AlertRule(
            name="TexwatchDeadLossTerm",
            uid="texwatch-dead-loss-term",
            query="texwatch_loss_term_dead",
            op=">",
            threshold=0.0,
            for_=th.dead_term_for,
            severity="warning",
            summary=_RUN_NAME + ": loss term {{ $labels.term }} contributes nothing",
            description=(
                "Loss term {{ $labels.term }} of run " + _RUN_NAME + " has been dead (constant "
                "zero or no share of the weighted total) - is it computed at all?"
            ),
            panel="Dead terms",
            per_run=True,
        ),
        AlertRule(
            name="TexwatchDaemonLagging",
            uid="texwatch-daemon-lagging",
            query="texwatch_daemon_lag_rows",
            op=">",
            threshold=th.lag_rows,
            for_=th.lag_for,
            severity="warning",
            summary="texwatchd is behind on " + _RUN_NAME,
            description=(
                "texwatchd has committed rows of run " + _RUN_NAME + " it has not derived yet: "
                "the metrics are stale. Check its processing time and errors, or give it a GPU."
            ),
            panel="Lag (committed rows not yet derived)",
            per_run=True,
        ),
        AlertRule(
            name="TexwatchRunStalled",
            uid="texwatch-run-stalled",
            query="texwatch_run_stalled",
            op=">",
            threshold=0.0,
            for_="0s",
            severity="warning",
            summary="texwatchd is stuck reading run " + _RUN_NAME,
            description=(
                "texwatchd's turn on run " + _RUN_NAME + " has not returned for --stall-after "
                "seconds (60 by default): a read of its store hangs (an NFS server gone, a "
                "frozen disk). Its metrics are stale; other runs are served. Check the store's "
                "mount; the run resumes from its cursor once the read returns."
            ),
            panel="Stalled runs",
            per_run=True,
        ),
        AlertRule(
            name="TexwatchDaemonDown",
            uid="texwatch-daemon-down",
            query=up,
            op="<",
            threshold=1.0,
            for_=th.down_for,
            severity="critical",
            summary="texwatchd {{ $labels.instance }} is down",
            description="Prometheus cannot scrape texwatchd at {{ $labels.instance }}.",
            panel="texwatchd up",
            per_run=False,
        ),
        AlertRule(
            name="TexwatchDaemonAbsent",
            uid="texwatch-daemon-absent",
            # A run whose newest texwatch_run_finished (within the window) read 0, served by an
            # instance that is no scrape target any more: live when its daemon went. Between
            # jobs nothing is live, and a run that finished was seen finished first.
            query=(
                f'last_over_time(texwatch_run_finished{{job="{job}"}}[{th.absent_window}])'
                f" unless on(instance) {up}"
            ),
            op="<",
            threshold=1.0,
            for_=th.down_for,
            severity="critical",
            summary="texwatchd {{ $labels.instance }} is gone while " + _RUN_NAME + " is live",
            description=(
                f'Prometheus has no scrape target job="{job}", instance '
                "{{ $labels.instance }} any more, and the run "
                + _RUN_NAME
                + " it served had not finished: texwatchd died or was removed mid-run, or the "
                "training process ended without closing its Recorder (a crash)."
            ),
            value_note="",
            panel="Run state",
            per_run=False,
        ),
    )


def _by_harmonic(half: str, twice: str) -> str:
    """Annotation text that reads ``half`` on the ``harmonic="half"`` series (tiles doubled) and
    ``twice`` on the ``harmonic="2f"`` ones (tiles halved)."""
    return f'{{{{ if eq $labels.harmonic "half" }}}}{half}{{{{ else }}}}{twice}{{{{ end }}}}'


def _counted_within(counter: str, window: str, by: str) -> str:
    """PromQL for how much ``counter`` grew within ``window``, summed by the ``by`` labels.

    Not ``increase()``: it needs two samples of a series, and texwatchd publishes a counter from
    the first batch that has it, which may already hold counts (a stream's first NaN, spikes in
    the rows a freshly started daemon catches up on). A series that did not exist a window ago
    counts from 0 here.
    """
    return f"sum by ({by}) ({counter} - ({counter} offset {window} or {counter} * 0))"


def _panel_ids(thresholds: Thresholds | None, site: Site) -> dict[str, int]:
    """Dashboard panel title -> panel id, as the dashboard is built for these settings."""
    board = build_overview(thresholds, site)
    return {p["title"]: p["id"] for p in board["panels"] if p["type"] != "row"}


def _described(rule: AlertRule, value: str) -> str:
    """``rule``'s description and value note, with ``value`` (one form's template) in the note."""
    note = rule.value_note.replace(VALUE, value)
    return f"{rule.description} {note}" if note else rule.description


def _dashboard_url(rule: AlertRule, site: Site) -> str:
    """The dashboard, showing the alert's run when it names one."""
    url = f"{site.grafana_url}/d/{DASHBOARD_UID}"
    if "$labels.run" in rule.summary:
        url += "?var-run={{ $labels.run }}"
    return url


def prometheus_rules(
    thresholds: Thresholds | None = None, site: Site | None = None
) -> dict[str, Any]:
    """The Prometheus rule file (``deploy/prometheus/rules/texwatch.rules.yml``) as a mapping."""
    site = site_or_default(site)
    rules = [
        {
            "alert": rule.name,
            "expr": rule.expr,
            "for": rule.for_,
            "labels": {"severity": rule.severity},
            "annotations": {
                "summary": rule.summary,
                "description": _described(rule, "{{ $value | humanize }}"),
                "runbook_url": site.runbook(rule.name),
                "dashboard_url": _dashboard_url(rule, site),
            },
        }
        for rule in alert_rules(thresholds, site)
    ]
    return {"groups": [{"name": RULE_GROUP, "rules": rules}]}


def _grafana_rule(rule: AlertRule, datasource_uid: str, site: Site, panel_id: int) -> alerting.Rule:
    query = (
        prometheus.Dataquery()
        .ref_id("A")
        .expr(rule.live_query)
        .instant()
        .datasource(dashboard_models.DataSourceRef(type_val="prometheus", uid=datasource_uid))
    )
    threshold = (
        expr.TypeThreshold()
        .ref_id("B")
        .expression("A")
        .datasource(dashboard_models.DataSourceRef(type_val="__expr__", uid="__expr__"))
        .conditions(
            [
                expr.ExprTypeThresholdConditions().evaluator(
                    expr.ExprTypeThresholdConditionsEvaluator()
                    .type(_GRAFANA_EVALUATOR[rule.op])
                    .params([float(rule.threshold)])
                )
            ]
        )
    )
    return (
        alerting.Rule(rule.name)
        .uid(rule.uid)
        .condition("B")
        .queries(
            [
                alerting.Query("A")
                .datasource_uid(datasource_uid)
                .relative_time_range(
                    alerting_models.RelativeTimeRange(from_val=_QUERY_RANGE_SECONDS, to=0)
                )
                .model(query),
                alerting.Query("B").datasource_uid("__expr__").model(threshold),
            ]
        )
        .for_val(rule.for_)
        .no_data_state(rule.no_data)
        # A failing query is shown as an error alert, neither silently OK nor a false page.
        .exec_err_state("Error")
        .labels({"severity": rule.severity})
        .annotations(
            {
                "summary": rule.summary,
                "description": _described(rule, "{{ humanize $values.A.Value }}"),
                "runbook_url": site.runbook(rule.name),
                # Grafana links the alert to this dashboard and panel (its provisioning keys).
                "__dashboardUid__": DASHBOARD_UID,
                "__panelId__": str(panel_id),
            }
        )
        .is_paused(False)
    )


# Fields of the SDK's rule (the HTTP API's shape) that a provisioning file sets per group instead.
_API_ONLY_FIELDS = ("folderUID", "orgID", "ruleGroup")


def grafana_alerting(
    thresholds: Thresholds | None = None,
    datasource_uid: str = DATASOURCE_UID,
    site: Site | None = None,
) -> dict[str, Any]:
    """The Grafana alerting provisioning file (``provisioning/alerting/texwatch.yml``).

    Rules are built with the SDK's alerting builders. The file envelope (``apiVersion``, and a
    group's ``orgId``/``name``/``folder``/``interval``) has no SDK builder (the SDK models the
    HTTP API's rule group), so it is written as a plain mapping.

    Args:
        thresholds: the thresholds; defaults when ``None``.
        datasource_uid: uid of the Prometheus datasource the rules query.
        site: the job name and runbook URL; defaults when ``None``.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``datasource_uid`` is empty.
    """
    if not isinstance(datasource_uid, str):
        raise TypeError(f"datasource_uid must be a str, got {type(datasource_uid).__name__}")
    if not datasource_uid:
        raise ValueError("datasource_uid must be a non-empty datasource uid, got ''")
    site = site_or_default(site)
    panels = _panel_ids(thresholds, site)
    rules = []
    for rule in alert_rules(thresholds, site):
        built = _grafana_rule(rule, datasource_uid, site, panels[rule.panel]).build()
        as_dict = json.loads(json.dumps(built, cls=JSONEncoder))
        for key in _API_ONLY_FIELDS:
            as_dict.pop(key, None)
        rules.append(as_dict)
    group = {
        "orgId": 1,
        "name": RULE_GROUP,
        "folder": GRAFANA_FOLDER,
        "interval": _EVALUATION_INTERVAL,
        "rules": rules,
    }
    return {"apiVersion": 1, "groups": [group]}
