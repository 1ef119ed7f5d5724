"""Where the generated files point: the scrape job's name, Grafana's and the runbooks' URLs.

Defaults fit the shipped Docker Compose stack; ``python -m dashboards.build --job NAME
--grafana-url URL --runbook-url URL --snapshot-url URL`` regenerates every file for another site.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from texwatch.metric_names import DEFAULT_PORT, SCRAPE_JOB

__all__ = ["Site", "site_or_default"]

# A Prometheus label value is any string, but the job name is also written into YAML, PromQL
# strings and Kubernetes objects unquoted: keep it to what all of them take as is.
_JOB = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]*$")


@dataclass(frozen=True)
class Site:
    """The deployment the generated rules, dashboard and manifests are for.

    Attributes:
        job: the Prometheus ``job`` label of texwatchd's scrape target (``up{job=...}``).
        grafana_url: Grafana's base URL, for the ``dashboard_url`` annotation of the
            Prometheus rules (Grafana-managed rules link the dashboard by uid instead).
        runbook_url: the runbooks page; each alert's ``runbook_url`` is this plus ``#`` and
            the alert's name in lower case (an anchor of docs/runbooks.md).
        snapshot_url: texwatchd's base URL as the dashboard viewer's browser reaches it: the
            snapshot panel's images load from ``<snapshot_url>/snapshots/...``.
    """

    job: str = SCRAPE_JOB
    grafana_url: str = "http://127.0.0.1:3000"
    runbook_url: str = "docs/runbooks.md"
    snapshot_url: str = f"http://127.0.0.1:{DEFAULT_PORT}"

    def __post_init__(self) -> None:
        for name in ("job", "grafana_url", "runbook_url", "snapshot_url"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"Site {name} must be a str, got {type(value).__name__} {value!r}")
        if not _JOB.match(self.job):
            raise ValueError(
                f"Site job must be a job name of letters, digits and _ . : / - (not starting "
                f"with a digit), got {self.job!r}"
            )
        for name in ("grafana_url", "snapshot_url"):
            value = getattr(self, name)
            if not re.match(r"^https?://[^\s\"'<>]+$", value) or value.endswith("/"):
                raise ValueError(
                    f"Site {name} must be an http(s) URL without a trailing /, got {value!r}"
                )
        if not self.runbook_url or re.search(r"[\s\"'<>#]", self.runbook_url):
            raise ValueError(
                f"Site runbook_url must be a URL or path without spaces, quotes or #, "
                f"got {self.runbook_url!r}"
            )

    def runbook(self, alert: str) -> str:
        """The runbook of ``alert``: its anchor in the runbooks page."""
        return f"{self.runbook_url}#{alert.lower()}"


def site_or_default(site: Site | None) -> Site:
    """``site``, or the default :class:`Site` for None; a TypeError for anything else."""
    if site is None:
        return Site()
    if not isinstance(site, Site):
        raise TypeError(f"site must be a Site, got {type(site).__name__}")
    return site
