"""texwatch's monitoring as code, one module per concern.

- :mod:`dashboards.metrics`: the metric contract texwatchd exports (stdlib only, so the daemon's
  tests can import it without the Grafana SDK).
- :mod:`dashboards.thresholds`: alert thresholds, the one place both alert forms read.
- :mod:`dashboards.alerts`: the alert rules as Prometheus rules and Grafana provisioning.
- :mod:`dashboards.overview`: the Grafana dashboard, built with grafana-foundation-sdk.
- :mod:`dashboards.promql`: reading PromQL just enough to check it against the contract.
- :mod:`dashboards.build`: ``python -m dashboards.build`` writes (or checks) the generated files.
- :mod:`dashboards.typecheck`: ``tsc --strict`` of the JSON against @grafana/schema.
"""

__all__: list[str] = []
