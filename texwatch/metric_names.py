"""The Prometheus metric families texwatchd exports: the contract that the exporter, the
dashboards and the alert rules share (a rename here breaks their tests, not a dashboard).

Standard library only, so the dashboards code and tests can import it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_PORT",
    "ERROR_KINDS",
    "FAMILIES",
    "SCRAPE_JOB",
    "STREAM_HEALTH_NAMES",
    "STREAM_METRIC_NAMES",
    "TEXTURE_LOSSES",
    "Family",
]

#: The Prometheus ``job`` that scrapes texwatchd, in every shipped config and alert rule.
SCRAPE_JOB = "texwatch"

#: texwatchd's default ``--port``. Outside 9100-9999, the exporter range of Prometheus' default
#: port allocations, which is fully allocated (9400 there is NVIDIA's dcgm-exporter, on every GPU
#: host); below Linux's ephemeral ports (32768-60999) and clear of PyTorch's distributed
#: defaults (29400 rendezvous, 29500 ``MASTER_PORT``).
DEFAULT_PORT = 19400

#: Values of the ``loss`` label of ``texwatch_texture_loss``: what texwatchd monitors between
#: ``pred`` and its target (or the reference tile).
TEXTURE_LOSSES = ("spectral_period", "log_polar_align", "acf_period")


@dataclass(frozen=True)
class Family:
    """One exported metric family: its name (without a counter's ``_total``), type and labels."""

    name: str
    kind: str  # "gauge" | "counter" | "histogram"
    labels: tuple[str, ...]
    doc: str


#: Every per-run series carries the run's name (``run``), its unique id (``run_id``) and its
#: ``rank``: runs that share a name (a job started twice) keep their own series, and the ranks of
#: an ``all_ranks`` job share the job's name and tell themselves apart by rank (empty for a run of
#: its own, which Prometheus stores as no label at all).
_RUN = ("run", "run_id", "rank")
_STREAM = (*_RUN, "stream")
_TERM = (*_RUN, "term")

#: Per-stream texture metrics: derived key (spectral.py) -> exported family name.
STREAM_METRIC_NAMES: dict[str, str] = {
    "fundamental_radius_bin": "texwatch_fundamental_radius_bin",
    "periodic": "texwatch_periodic",
    "peak_prominence": "texwatch_peak_prominence_db",
    "acf_first_peak_radius_bin": "texwatch_acf_first_peak_radius_bin",
    "tile_scale": "texwatch_tile_scale",
    "axis_ratio_at_f": "texwatch_axis_ratio_at_f",
    "shift_mse_dx1": "texwatch_shift_mse_dx1",
    "shift_mse_dy1": "texwatch_shift_mse_dy1",
    "resize_mse_downUp": "texwatch_resize_mse_down_up",
    "alias_score": "texwatch_alias_score",
    "ref_radius_bin": "texwatch_ref_radius_bin",
    "checkerboard_energy": "texwatch_checkerboard_energy",
    "band_score": "texwatch_band_score",
    "band_max_run": "texwatch_band_max_run",
}

#: Per-stream value health: derived key (spectral.latent_health) -> exported family name.
STREAM_HEALTH_NAMES: dict[str, str] = {
    "mean": "texwatch_stream_mean",
    "std": "texwatch_stream_std",
    "min": "texwatch_stream_min",
    "max": "texwatch_stream_max",
    "clip_fraction": "texwatch_stream_clip_fraction",
    "clip_excess": "texwatch_stream_clip_excess",
}

_STREAM_DOCS: dict[str, str] = {
    "texwatch_fundamental_radius_bin": "Radius (FFT-index px) of the significant spectral peak f*.",
    "texwatch_periodic": "1 when the image holds a periodic texture (f* and ACF period agree).",
    "texwatch_peak_prominence_db": "Prominence (dB) of the f* bin over its ring's noise floor.",
    "texwatch_acf_first_peak_radius_bin": "Texture period (px) from the first ACF peak.",
    "texwatch_tile_scale": "Period over the reference's period (ACF, reference's direction).",
    "texwatch_axis_ratio_at_f": "Share of the ring-at-f energy within 1 px of the axes.",
    "texwatch_shift_mse_dx1": "Masked MSE between the image and itself shifted 1 px in x.",
    "texwatch_shift_mse_dy1": "Masked MSE between the image and itself shifted 1 px in y.",
    "texwatch_resize_mse_down_up": "Masked MSE after a 0.5x antialiased down-and-up resize.",
    "texwatch_alias_score": "Share of power in strong spectral peaks the reference lacks.",
    "texwatch_ref_radius_bin": "f* of the reference tile or target.",
    "texwatch_checkerboard_energy": "Share of non-DC energy at the Nyquist corners and edges.",
    "texwatch_band_score": (
        "Share of row/column strips at the doubled period, beyond the reference's."
    ),
    "texwatch_band_max_run": "Extent (px) of the longest run of doubled-period strips.",
    "texwatch_stream_mean": "Mean of the finite values of the stream's newest row.",
    "texwatch_stream_std": "Standard deviation of the finite values of the newest row.",
    "texwatch_stream_min": "Minimum finite value of the newest row.",
    "texwatch_stream_max": "Maximum finite value of the newest row.",
    "texwatch_stream_clip_fraction": "Share of values with |x| above the clip range (3).",
    "texwatch_stream_clip_excess": "mean(relu(|x| - r)) / r with r the clip range.",
}

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        *(Family(n, "gauge", _STREAM, d) for n, d in _STREAM_DOCS.items()),
        Family(
            "texwatch_texture_loss",
            "gauge",
            (*_STREAM, "loss"),
            "Texture losses between the stream and the target or reference tile.",
        ),
        Family("texwatch_loss", "gauge", _RUN, "Training loss of the newest step."),
        Family("texwatch_loss_ema", "gauge", _RUN, "Exponential moving average of the loss."),
        Family("texwatch_loss_zscore", "gauge", _RUN, "Loss z-score against the rolling window."),
        Family("texwatch_loss_spikes", "counter", (*_RUN, "rule"), "Loss spikes, by the rule."),
        Family("texwatch_loss_spike_warnings", "counter", _RUN, "Loss values over the warn level."),
        Family("texwatch_loss_term", "gauge", _TERM, "Unweighted value of a loss term."),
        Family("texwatch_loss_term_weight", "gauge", _TERM, "Weight of a loss term."),
        Family("texwatch_loss_term_share", "gauge", _TERM, "Share of the weighted loss total."),
        Family("texwatch_loss_term_dead", "gauge", _TERM, "1 while a weighted term is dead."),
        Family(
            "texwatch_loss_term_nonfinite",
            "gauge",
            _TERM,
            "1 while a term's latest value is NaN or Inf.",
        ),
        Family("texwatch_dead_loss_terms", "gauge", _RUN, "Number of dead loss terms."),
        Family("texwatch_scalar", "gauge", (*_RUN, "name"), "User scalars (lr, grad_norm, ...)."),
        Family("texwatch_nonfinite", "counter", _STREAM, "Non-finite values seen, by stream."),
        Family("texwatch_last_step", "gauge", _RUN, "Newest committed step derived."),
        Family("texwatch_daemon_lag_rows", "gauge", _RUN, "Committed rows not yet derived."),
        Family(
            "texwatch_last_processed_timestamp_seconds",
            "gauge",
            _RUN,
            "Unix time of the last derived batch.",
        ),
        Family(
            "texwatch_client_dropped_rows",
            "counter",
            _STREAM,
            "Rows the client dropped under back-pressure, as counted in the store.",
        ),
        Family(
            "texwatch_run_finished",
            "gauge",
            _RUN,
            "1 once the run's recorder closed cleanly and every committed row is derived.",
        ),
        Family(
            "texwatch_snapshot_step",
            "gauge",
            (*_RUN, "folder"),
            "Step of the run's newest snapshot, served at /snapshots/<folder>/latest.png.",
        ),
        Family("texwatch_runs", "gauge", (), "Runs being served."),
        Family(
            "texwatch_build_info",
            "gauge",
            ("version", "python", "torch", "zarr"),
            "Always 1: the texwatch version serving, and the Python, torch and zarr it runs on.",
        ),
        Family(
            "texwatch_run_stalled",
            "gauge",
            _RUN,
            "1 while texwatchd's work on the run has not returned within --stall-after seconds.",
        ),
        Family("texwatch_errors", "counter", ("kind",), "Daemon errors, by kind."),
        Family(
            "texwatch_object_store_requests",
            "counter",
            ("bucket",),
            "Requests texwatchd made to an object store (retries included).",
        ),
        Family(
            "texwatch_object_store_retries",
            "counter",
            ("bucket",),
            "Requests retried after throttling, a server error, a timeout or a lost connection.",
        ),
        Family(
            "texwatch_object_store_failures",
            "counter",
            ("bucket",),
            "Requests that failed for good (out of retries, or refused).",
        ),
        Family(
            "texwatch_object_store_throttled_seconds",
            "counter",
            ("bucket",),
            "Seconds requests waited for the cap on requests per second.",
        ),
        Family(
            "texwatch_processing_seconds",
            "histogram",
            _RUN,
            "Time one wake spent deriving a run's new rows.",
        ),
    ]
}

#: Values of the ``kind`` label of ``texwatch_errors_total``: a typed error's ``kind``
#: (:mod:`texwatch.errors`), ``snapshot``, ``stalled`` (a run's work did not return within
#: ``--stall-after``), and ``internal`` for any other exception: a texwatch bug, logged with its
#: traceback.
ERROR_KINDS = (
    "corrupt_chunk",
    "store_missing",
    "schema",
    "read",
    "compute",
    "snapshot",
    "stalled",
    "internal",
)
