"""The Prometheus Operator's objects for texwatchd: a PodMonitor and a PrometheusRule.

The PodMonitor scrapes the pods of ``deploy/kubernetes/texwatch-sidecar.yaml`` (label
``texwatch.io/scrape: "true"``, port ``metrics``) as the site's job; the PrometheusRule carries
the very groups of the Prometheus rule file, so the two cannot drift apart.
"""

from __future__ import annotations

import copy
from typing import Any

from dashboards.site import Site, site_or_default

__all__ = ["POD_LABELS", "POD_PORT", "pod_monitor", "prometheus_rule"]

_API_VERSION = "monitoring.coreos.com/v1"
_LABELS = {"app.kubernetes.io/name": "texwatch", "app.kubernetes.io/component": "monitoring"}

#: The labels a pod running texwatchd carries to be scraped (the sidecar Job's pod template).
POD_LABELS = {"texwatch.io/scrape": "true"}
#: The name of texwatchd's container port.
POD_PORT = "metrics"


def pod_monitor(site: Site | None = None) -> dict[str, Any]:
    """A PodMonitor scraping every pod labelled :data:`POD_LABELS`, in any namespace, on its
    :data:`POD_PORT` port, as job ``site.job`` (the operator's default job is the PodMonitor's
    ``namespace/name``, which the alert rules would not find)."""
    site = site_or_default(site)
    return {
        "apiVersion": _API_VERSION,
        "kind": "PodMonitor",
        "metadata": {"name": "texwatch", "labels": dict(_LABELS)},
        "spec": {
            "selector": {"matchLabels": dict(POD_LABELS)},
            "namespaceSelector": {"any": True},
            "podMetricsEndpoints": [
                {
                    "port": POD_PORT,
                    "path": "/metrics",
                    "relabelings": [
                        {"action": "replace", "targetLabel": "job", "replacement": site.job}
                    ],
                }
            ],
        },
    }


def prometheus_rule(rules: dict[str, Any]) -> dict[str, Any]:
    """A PrometheusRule holding the groups of the Prometheus rule file ``rules``."""
    return {
        "apiVersion": _API_VERSION,
        "kind": "PrometheusRule",
        "metadata": {"name": "texwatch", "labels": dict(_LABELS)},
        "spec": {"groups": copy.deepcopy(rules["groups"])},
    }
