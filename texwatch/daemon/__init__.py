"""``texwatchd``: watches run stores, derives texture metrics and loss detectors incrementally,
serves them to Prometheus and writes snapshots.

Example:
    texwatchd --store runs/x.zarr
    texwatchd --root runs/ --port 19400 --device cuda
    texwatchd --store runs/x.zarr --once
    texwatchd --root runs/ --shard 0/2    # and --shard 1/2 on another daemon: half the runs each
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from texwatch._argtypes import (
    non_negative_float,
    positive_float,
    positive_int,
    store_location,
)
from texwatch._commandline import HelpFormatter, add_version, exit_codes, quiet_on_closed_stdout
from texwatch._memory import retain_freed_memory
from texwatch.derive import add_derive_arguments, settings_from_args
from texwatch.metric_names import DEFAULT_PORT

from ._daemon import REMOTE_POLL, Daemon, DaemonOptions
from ._shard import Shard, parse_shard
from ._snapshots import snapshot_folder_name

__all__ = ["Daemon", "DaemonOptions", "build_parser", "main", "snapshot_folder_name"]


def _shard_arg(text: str) -> Shard:
    try:
        return parse_shard(text)
    except ValueError as err:  # argparse would print only "invalid value"
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    """The texwatchd command line."""
    defaults = DaemonOptions()
    p = argparse.ArgumentParser(
        prog="texwatchd",
        description="Watch texwatch run stores and serve their metrics to Prometheus.",
        formatter_class=HelpFormatter,
        epilog=exit_codes(
            {
                0: "stopped by SIGTERM or Ctrl-C, or --once derived every store",
                1: "--once: a store failed (each named in one line on stderr)",
                2: "bad arguments, or /metrics cannot be served on --bind:--port, such as a "
                "port in use (one line on stderr)",
            }
        ),
    )
    add_version(p)
    what = p.add_argument_group("what to watch")
    what.add_argument(
        "--store",
        action="append",
        type=store_location,
        default=[],
        metavar="PATH",
        help="a run store: a folder or an s3://, gs://, az:// URL, credentials from the usual "
        "environment variables (repeatable; a per-rank job's folder serves every rank as one "
        "job, its series labelled by rank); one that does not exist yet is waited for",
    )
    what.add_argument(
        "--root",
        type=store_location,
        metavar="DIR",
        help="serve every *.zarr in DIR (a folder or an object-store URL), picking up new ones "
        "(DIR may appear later)",
    )
    what.add_argument(
        "--shard",
        type=_shard_arg,
        default=defaults.shard,
        metavar="I/N",
        help="serve only the runs whose md5 hash of their run_id (a per-rank job's job_id) mod N "
        "is I, as Prometheus' hashmod: N daemons given 0/N .. N-1/N split the runs between them "
        "without coordination (default 0/1: every run)",
    )
    what.add_argument(
        "--poll",
        type=positive_float,
        metavar="SECONDS",
        help="poll the file system instead of inotify (NFS, CIFS, FUSE); for stores on object "
        f"storage, seconds between looks at each run's commit marker (default {REMOTE_POLL:g})",
    )
    what.add_argument(
        "--rescan",
        type=positive_float,
        default=defaults.rescan,
        metavar="SECONDS",
        help=f"look at every run at least this often (default {defaults.rescan:g})",
    )
    what.add_argument(
        "--stall-after",
        type=positive_float,
        default=defaults.stall_after,
        metavar="SECONDS",
        help="report a run whose work has not returned for this long, e.g. a hung read "
        f"(default {defaults.stall_after:g})",
    )
    what.add_argument(
        "--turn-seconds",
        type=positive_float,
        default=defaults.turn_seconds,
        metavar="SECONDS",
        help="how long one run's turn (one batch) should take, and the longest the others wait "
        f"for it (default {defaults.turn_seconds:g})",
    )
    what.add_argument(
        "--once",
        action="store_true",
        help="derive the backlog, write snapshots, and exit (1 when a store failed)",
    )
    derive = p.add_argument_group("derivation")
    add_derive_arguments(derive)
    derive.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="CPU threads of the metrics' torch work (default 1: a sidecar leaves the cores to "
        "the training job beside it; more derive a CPU backlog faster)",
    )
    derive.add_argument(
        "--batch-rows",
        type=positive_int,
        default=defaults.batch_rows,
        help="most rows per table derived and committed in one turn of a run "
        f"(default {defaults.batch_rows})",
    )
    serve = p.add_argument_group("serving")
    serve.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"/metrics and /snapshots port (default {DEFAULT_PORT})",
    )
    serve.add_argument("--bind", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate")
    serve.add_argument("--tls-key", metavar="FILE", help="the certificate's private key")
    serve.add_argument(
        "--basic-auth-file",
        type=Path,
        metavar="FILE",
        help="require HTTP Basic auth; FILE holds one line user:password",
    )
    serve.add_argument(
        "--linger",
        type=non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="on SIGTERM, go on deriving and serving this long before exiting, so Prometheus "
        "scrapes the runs' last state, e.g. a run that just finished (default 0; a second "
        "SIGTERM exits at once)",
    )
    serve.add_argument(
        "--forget-after",
        type=positive_float,
        default=defaults.forget_after,
        metavar="SECONDS",
        help="drop a run's series after this long without a commit "
        f"(default {defaults.forget_after:g})",
    )
    snap = p.add_argument_group("snapshots")
    snap.add_argument(
        "--snapshot-dir",
        type=Path,
        metavar="DIR",
        help="where <run>-<run id>/<step>.png|.json go (default: snapshots/ beside the store)",
    )
    snap.add_argument(
        "--snapshot-every",
        type=positive_int,
        default=defaults.snapshot_every,
        metavar="STEPS",
        help=f"steps between snapshots (default {defaults.snapshot_every})",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run texwatchd; the exit code: 0, 2 for bad arguments or a port it cannot serve on, 1 when
    ``--once`` saw a store fail."""
    with quiet_on_closed_stdout():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s texwatchd %(levelname)s %(message)s"
    )
    if not args.store and args.root is None:
        parser.error("one of --store PATH or --root DIR is required")
    retain_freed_memory()
    import prometheus_client
    import torch

    from ._exporter import MetricsBoard, read_basic_auth_file, serve_metrics

    prometheus_client.disable_created_metrics()
    try:
        settings = settings_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    options = DaemonOptions(
        stores=tuple(args.store),
        root=args.root,
        poll=args.poll,
        rescan=args.rescan,
        batch_rows=args.batch_rows,
        snapshot_dir=args.snapshot_dir,
        snapshot_every=args.snapshot_every,
        forget_after=args.forget_after,
        stall_after=args.stall_after,
        turn_seconds=args.turn_seconds,
        shard=args.shard,
    )
    registry = prometheus_client.CollectorRegistry()
    board = MetricsBoard(registry)
    try:
        daemon = Daemon(options, settings, board)
        auth = read_basic_auth_file(args.basic_auth_file) if args.basic_auth_file else None
    except (ValueError, OSError) as err:
        parser.error(str(err))
    server = None
    if not args.once:
        try:
            server = serve_metrics(
                registry,
                bind=args.bind,
                port=args.port,
                certfile=args.tls_cert,
                keyfile=args.tls_key,
                basic_auth=auth,
                snapshots=daemon.newest_snapshot,
            )
        except ValueError as err:  # --tls-cert without --tls-key: an argument error
            daemon.close()
            parser.error(str(err))
        except OSError as err:  # a port in use, an address that does not resolve: no usage
            daemon.close()
            print(
                f"texwatchd: error: cannot serve /metrics on {args.bind}:{args.port}: {err}",
                file=sys.stderr,
            )
            return 2
        logging.getLogger("texwatch.daemon").info(
            "serving /metrics and /snapshots on %s:%d (device %s, shard %s)",
            args.bind,
            server.port,
            settings.device,
            args.shard,
        )

    def _terminate(signum: int, frame: FrameType | None) -> None:
        daemon.stop(grace=args.linger if server is not None else 0.0)

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        daemon.run(once=args.once)
    finally:
        daemon.close()
        if server is not None:
            server.close()
        torch.set_num_threads(threads)  # main() called from Python gives the process back
    failures = daemon.failures if args.once else {}
    for path, why in failures.items():
        print(f"texwatchd: store {path} failed: {why}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
