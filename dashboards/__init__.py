"""texwatch's monitoring as code: the Grafana dashboard, alert rules in both forms, and the
metric contract they are checked against. ``python -m dashboards.build`` writes the files.
"""

from dashboards.alerts import AlertRule, alert_rules, grafana_alerting, prometheus_rules
from dashboards.metrics import METRIC_NAMES, METRICS, MetricSpec
from dashboards.overview import build_overview
from dashboards.thresholds import Thresholds, load_thresholds

__all__ = [
    "METRICS",
    "METRIC_NAMES",
    "AlertRule",
    "MetricSpec",
    "Thresholds",
    "alert_rules",
    "build_overview",
    "grafana_alerting",
    "load_thresholds",
    "prometheus_rules",
]
