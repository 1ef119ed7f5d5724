"""The exporter: contract checks, exposition format, Basic auth, TLS."""

from __future__ import annotations

import base64
import http.client
import importlib.metadata
import platform
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import texwatch
from texwatch.daemon._exporter import (
    MetricsBoard,
    Sample,
    build_info,
    read_basic_auth_file,
    serve_metrics,
)
from texwatch.daemon._snapshots import newest_snapshot
from texwatch.metric_names import FAMILIES


def _board() -> tuple[CollectorRegistry, MetricsBoard]:
    registry = CollectorRegistry()
    return registry, MetricsBoard(registry)


def test_publish_replaces_a_runs_samples_and_forget_drops_them() -> None:
    registry, board = _board()
    board.publish("a", [Sample("texwatch_loss", {"run": "a", "run_id": "a", "rank": ""}, 1.5)])
    board.publish("b", [Sample("texwatch_loss", {"run": "b", "run_id": "b", "rank": ""}, 2.0)])
    board.publish("a", [Sample("texwatch_loss_ema", {"run": "a", "run_id": "a", "rank": ""}, 1.2)])
    assert (
        registry.get_sample_value("texwatch_loss", {"run": "a", "run_id": "a", "rank": ""}) is None
    )
    assert (
        registry.get_sample_value("texwatch_loss_ema", {"run": "a", "run_id": "a", "rank": ""})
        == 1.2
    )
    assert registry.get_sample_value("texwatch_runs") == 2
    board.observe_processing("a", {"run": "a", "run_id": "a", "rank": ""}, 0.01)
    board.forget("a")
    assert (
        registry.get_sample_value("texwatch_loss_ema", {"run": "a", "run_id": "a", "rank": ""})
        is None
    )
    assert (
        registry.get_sample_value(
            "texwatch_processing_seconds_count", {"run": "a", "run_id": "a", "rank": ""}
        )
        is None
    )
    assert (
        registry.get_sample_value("texwatch_loss", {"run": "b", "run_id": "b", "rank": ""}) == 2.0
    )
    assert board.runs() == ["b"]


def test_counters_are_exposed_with_total_suffix() -> None:
    registry, board = _board()
    board.publish(
        "r",
        [
            Sample(
                "texwatch_loss_spikes",
                {"run": "r", "run_id": "r", "rank": "", "rule": "sigma"},
                3.0,
            )
        ],
    )
    board.count_error("corrupt_chunk")
    assert (
        registry.get_sample_value(
            "texwatch_loss_spikes_total", {"run": "r", "run_id": "r", "rank": "", "rule": "sigma"}
        )
        == 3
    )
    assert registry.get_sample_value("texwatch_errors_total", {"kind": "corrupt_chunk"}) == 1
    assert registry.get_sample_value("texwatch_errors_total", {"kind": "schema"}) == 0


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        (Sample("texwatch_nope", {"run": "r", "run_id": "r", "rank": ""}, 1.0), "texwatch_nope"),
        (
            Sample("texwatch_loss", {"run": "r", "run_id": "r", "rank": "", "step": "5"}, 1.0),
            "labels",
        ),
        (
            Sample("texwatch_processing_seconds", {"run": "r", "run_id": "r", "rank": ""}, 1.0),
            "texwatch_processing_seconds",
        ),
    ],
)
def test_publish_rejects_unknown_names_and_labels(sample: Sample, message: str) -> None:
    _, board = _board()
    with pytest.raises(ValueError, match=message):
        board.publish("r", [sample])


def test_unknown_error_kind_is_rejected() -> None:
    _, board = _board()
    with pytest.raises(ValueError, match="error kind"):
        board.count_error("oops")


def _full_board() -> tuple[CollectorRegistry, MetricsBoard]:
    """A board with one sample of every family, as a busy daemon would have."""
    registry, board = _board()
    samples = []
    for fam in FAMILIES.values():
        process_wide = fam.name in ("texwatch_runs", "texwatch_errors", "texwatch_build_info")
        if fam.kind == "histogram" or process_wide or fam.name.startswith("texwatch_object_"):
            continue  # the board's own families, not a run's
        labels = {
            name: {"run": "r1", "run_id": "r1", "rank": "", "stream": "pred"}.get(name, "x")
            for name in fam.labels
        }
        samples.append(Sample(fam.name, labels, 0.25))
    board.publish("r1", samples)
    board.observe_processing("r1", {"run": "r1", "run_id": "r1", "rank": ""}, 0.02)
    board.count_error("read")
    return registry, board


# The standard families of prometheus_client's process and platform collectors (Linux).
STANDARD = {
    "process_cpu_seconds",
    "process_max_fds",
    "process_open_fds",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_virtual_memory_bytes",
    "python_info",
}


def test_exposition_parses_and_carries_every_family() -> None:
    registry, _ = _full_board()
    text = generate_latest(registry).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {n for n in names if not n.endswith("_created")} == set(FAMILIES) | STANDARD


def test_build_info_and_the_standard_process_metrics() -> None:
    registry, _ = _board()
    build = {
        "version": texwatch.__version__,
        "python": platform.python_version(),
        "torch": importlib.metadata.version("torch"),
        "zarr": importlib.metadata.version("zarr"),
    }
    assert build_info() == build
    assert registry.get_sample_value("texwatch_build_info", build) == 1.0
    assert registry.get_sample_value("process_resident_memory_bytes")
    assert registry.get_sample_value("process_start_time_seconds")
    (python,) = [f for f in registry.collect() if f.name == "python_info"]
    assert python.samples[0].labels["version"] == platform.python_version()


def test_exposition_passes_promtool_check_metrics() -> None:
    registry, _ = _full_board()
    done = subprocess.run(
        ["promtool", "check", "metrics"],
        input=generate_latest(registry),
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


def _get(
    url: str, auth: tuple[str, str] | None = None, context: ssl.SSLContext | None = None
) -> str:
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        return str(response.read().decode())


def test_server_serves_metrics_on_loopback() -> None:
    registry, board = _board()
    board.publish("r", [Sample("texwatch_last_step", {"run": "r", "run_id": "r", "rank": ""}, 42)])
    server = serve_metrics(registry, bind="127.0.0.1", port=0)
    try:
        body = _get(f"http://127.0.0.1:{server.port}/metrics")
    finally:
        server.close()
    assert 'texwatch_last_step{rank="",run="r",run_id="r"} 42.0' in body
    server.close()


def test_basic_auth_rejects_missing_and_wrong_credentials(tmp_path: Path) -> None:
    auth_file = tmp_path / "auth"
    auth_file.write_text("prom:s3cret\n")
    registry, board = _board()
    board.publish("r", [Sample("texwatch_last_step", {"run": "r", "run_id": "r", "rank": ""}, 7)])
    server = serve_metrics(
        registry, bind="127.0.0.1", port=0, basic_auth=read_basic_auth_file(auth_file)
    )
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        for auth in (None, ("prom", "wrong")):
            with pytest.raises(urllib.error.HTTPError) as err:
                _get(url, auth)
            assert err.value.code == 401
        assert 'texwatch_last_step{rank="",run="r",run_id="r"} 7.0' in _get(url, ("prom", "s3cret"))
    finally:
        server.close()


def test_basic_auth_file_must_hold_a_pair(tmp_path: Path) -> None:
    bad = tmp_path / "auth"
    bad.write_text("justauser\n")
    with pytest.raises(ValueError, match="basic-auth-file"):
        read_basic_auth_file(bad)


def _self_signed(tmp_path: Path) -> tuple[str, str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


@pytest.mark.parametrize("with_auth", [False, True])
def test_tls_serves_over_https(tmp_path: Path, with_auth: bool) -> None:
    cert, key = _self_signed(tmp_path)
    registry, board = _board()
    board.publish("r", [Sample("texwatch_last_step", {"run": "r", "run_id": "r", "rank": ""}, 3)])
    auth = ("u", "p") if with_auth else None
    server = serve_metrics(
        registry, bind="127.0.0.1", port=0, certfile=cert, keyfile=key, basic_auth=auth
    )
    context = ssl.create_default_context(cafile=cert)
    try:
        body = _get(f"https://127.0.0.1:{server.port}/metrics", auth, context)
    finally:
        server.close()
    assert 'texwatch_last_step{rank="",run="r",run_id="r"} 3.0' in body


def test_tls_needs_both_cert_and_key() -> None:
    registry, _ = _board()
    with pytest.raises(ValueError, match="tls-cert"):
        serve_metrics(registry, port=0, certfile="c.pem")


def test_non_ascii_authorization_is_refused_with_401_and_no_traceback(
    capfd: pytest.CaptureFixture[str],
) -> None:
    registry, board = _board()
    board.publish("r", [Sample("texwatch_last_step", {"run": "r", "run_id": "r", "rank": ""}, 5)])
    server = serve_metrics(registry, bind="127.0.0.1", port=0, basic_auth=("prom", "pässwörd"))
    tokens = [
        b"Basic " + "prom:pässwörd".encode("latin-1"),
        b"Basic \xc3\xa9t\xc3\xa9",
        b"\xff\xfe\xfd",
    ]
    answers = []
    try:
        for token in tokens:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            try:
                conn.putrequest("GET", "/metrics")
                conn.putheader("Authorization", token)
                conn.endheaders()
                response = conn.getresponse()
                answers.append((response.status, response.read()))
            finally:
                conn.close()
        body = _get(f"http://127.0.0.1:{server.port}/metrics", ("prom", "pässwörd"))
    finally:
        server.close()
    assert answers == [(401, b"unauthorized\n")] * len(tokens)
    assert 'texwatch_last_step{rank="",run="r",run_id="r"} 5.0' in body
    assert "Traceback" not in capfd.readouterr().err


def _ipv6_loopback() -> str | None:
    """Why this machine cannot serve on ``::1``, or None when it can."""
    if not socket.has_ipv6:
        return "Python was built without IPv6"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError as err:
        return f"no IPv6 loopback on this machine: {err}"
    return None


@pytest.mark.skipif(_ipv6_loopback() is not None, reason=str(_ipv6_loopback()))
@pytest.mark.parametrize("with_auth", [False, True])
def test_serves_on_the_ipv6_loopback(with_auth: bool) -> None:
    registry, board = _board()
    board.publish("r", [Sample("texwatch_last_step", {"run": "r", "run_id": "r", "rank": ""}, 6)])
    auth = ("u", "p") if with_auth else None
    server = serve_metrics(registry, bind="::1", port=0, basic_auth=auth)
    try:
        body = _get(f"http://[::1]:{server.port}/metrics", auth)
    finally:
        server.close()
    assert 'texwatch_last_step{rank="",run="r",run_id="r"} 6.0' in body


@pytest.mark.parametrize("with_auth", [False, True])
def test_an_idle_connection_does_not_hold_up_200_concurrent_tls_scrapes(
    tmp_path: Path, with_auth: bool
) -> None:
    cert, key = _self_signed(tmp_path)
    registry, board = _board()
    board.publish("r", [Sample("texwatch_last_step", {"run": "r", "run_id": "r", "rank": ""}, 8)])
    auth = ("u", "p") if with_auth else None
    server = serve_metrics(
        registry, bind="127.0.0.1", port=0, certfile=cert, keyfile=key, basic_auth=auth
    )
    context = ssl.create_default_context(cafile=cert)
    url = f"https://127.0.0.1:{server.port}/metrics"

    def scrape(_: int) -> str:
        try:
            request = urllib.request.Request(url)
            if auth is not None:
                token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
                request.add_header("Authorization", f"Basic {token}")
            with urllib.request.urlopen(request, timeout=60, context=context) as response:
                return f"{response.status} {response.read().decode()}"
        except OSError as err:
            return f"failed: {err!r}"

    idle = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    try:
        with ThreadPoolExecutor(max_workers=200) as pool:
            answers = list(pool.map(scrape, range(200)))
    finally:
        idle.close()
        server.close()
    failed = [a for a in answers if not a.startswith("200 ")]
    assert not failed, f"{len(failed)} of 200 scrapes failed, first: {failed[0]}"
    assert all('texwatch_last_step{rank="",run="r",run_id="r"} 8.0' in a for a in answers)


def _ended_by_server(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (end of stream or reset) rather than kept it open."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _connection_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "texwatch-metrics-connection"]


@pytest.mark.parametrize("tls", [False, True])
def test_a_silent_connection_is_dropped_after_the_timeout_and_close_ends_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tls: bool
) -> None:
    timeout = "texwatch.daemon._http.CONNECTION_TIMEOUT"
    monkeypatch.setattr(timeout, 0.5)
    cert, key = _self_signed(tmp_path) if tls else (None, None)
    registry, _ = _board()
    server = serve_metrics(registry, bind="127.0.0.1", port=0, certfile=cert, keyfile=key)
    silent = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    try:
        assert _ended_by_server(silent), "the server kept a silent connection open"
        # Its thread ends right after closing it: wait, so the held connection's is the only one.
        deadline = time.monotonic() + 60
        while _connection_threads() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _connection_threads(), "the silent connection's thread never ended"
        monkeypatch.setattr(timeout, 3600.0)
        held = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        try:
            deadline = time.monotonic() + 60
            while not _connection_threads() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _connection_threads(), "the held connection was never accepted"
            server.close()
            assert not _connection_threads()
            assert _ended_by_server(held)
        finally:
            held.close()
    finally:
        silent.close()
        server.close()


# --- /snapshots ------------------------------------------------------------------------------


def _snapshot_folders(tmp_path: Path) -> tuple[dict[str, Path], Path]:
    """Two served runs' folders (one holding steps 9, 10 and 100, one empty) and a secret file
    beside them that no request may read."""
    base = tmp_path / "snapshots"
    run = base / "run-abcd1234"
    run.mkdir(parents=True)
    for step in (9, 10, 100):
        (run / f"{step}.png").write_bytes(b"\x89PNG step %d" % step)
        (run / f"{step}.json").write_bytes(b'{"step": %d}' % step)
    (run / "notes.png").write_bytes(b"not a snapshot")
    (base / "empty-00000000").mkdir()
    (tmp_path / "secret.json").write_text("secret")
    (base / "stranger-11111111").mkdir()
    (base / "stranger-11111111" / "1.png").write_bytes(b"a run texwatchd does not serve")
    return {"run-abcd1234": run, "empty-00000000": base / "empty-00000000"}, base


def _request(
    port: int,
    path: str,
    method: str = "GET",
    auth: tuple[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=60, context=context)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            conn.putheader("Authorization", f"Basic {token}")
        conn.endheaders()
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_newest_snapshot_orders_steps_as_numbers(tmp_path: Path) -> None:
    folders, base = _snapshot_folders(tmp_path)
    assert newest_snapshot(folders["run-abcd1234"], ".png") == folders["run-abcd1234"] / "100.png"
    assert newest_snapshot(folders["empty-00000000"], ".json") is None
    assert newest_snapshot(base / "missing", ".png") is None


def test_snapshots_serve_the_newest_of_a_known_run_behind_tls_and_basic_auth(
    tmp_path: Path,
) -> None:
    folders, _ = _snapshot_folders(tmp_path)
    asked: list[tuple[str, str]] = []

    def newest(name: str, suffix: str) -> Path | None:
        asked.append((name, suffix))
        folder = folders.get(name)
        return None if folder is None else newest_snapshot(folder, suffix)

    cert, key = _self_signed(tmp_path)
    registry, _ = _board()
    auth = ("grafana", "s3cret")
    server = serve_metrics(
        registry,
        bind="127.0.0.1",
        port=0,
        certfile=cert,
        keyfile=key,
        basic_auth=auth,
        snapshots=newest,
    )
    context = ssl.create_default_context(cafile=cert)
    png = "/snapshots/run-abcd1234/latest.png"
    try:
        for wrong in (None, ("grafana", "wrong")):
            status, _, _ = _request(server.port, png, auth=wrong, context=context)
            assert status == 401
        assert asked == [], "an unauthenticated request reached the snapshots"
        status, headers, body = _request(server.port, png, auth=auth, context=context)
        assert (status, body) == (200, b"\x89PNG step 100")
        assert headers["Content-Type"] == "image/png"
        assert headers["Cache-Control"] == "no-cache"
        assert headers["X-Texwatch-Step"] == "100"
        status, headers, body = _request(
            server.port,
            "/snapshots/run-abcd1234/latest.json?t=1700000000000",
            auth=auth,
            context=context,
        )
        assert (status, body) == (200, b'{"step": 100}')
        assert headers["Content-Type"] == "application/json"
        status, headers, body = _request(server.port, png, "HEAD", auth=auth, context=context)
        assert (status, headers["Content-Length"], body) == (200, "13", b"")
        status, _, _ = _request(server.port, png, "POST", auth=auth, context=context)
        assert status == 405
        metrics = _request(server.port, "/metrics", auth=auth, context=context)
        assert metrics[0] == 200 and b"texwatch_build_info" in metrics[2]
    finally:
        server.close()


@pytest.mark.parametrize(
    "path",
    [
        "/snapshots/stranger-11111111/latest.png",  # on disk, but not a run being served
        "/snapshots/empty-00000000/latest.png",  # served, no snapshot yet
        "/snapshots/run-abcd1234/100.png",  # only latest.png and latest.json are served
        "/snapshots/run-abcd1234/notes.png",
        "/snapshots/run-abcd1234/",
        "/snapshots/run-abcd1234",
        "/snapshots/",
        "/snapshots/../secret.json",
        "/snapshots/run-abcd1234/../../secret.json",
        "/snapshots/%2e%2e/latest.json",
        "/snapshots/..%2f..%2fsecret.json/latest.json",
        "/snapshots/run-abcd1234/latest.png/..",
        "/snapshots//latest.png",
        "/snapshots/./latest.png",
    ],
)
def test_snapshots_refuse_unknown_runs_files_and_path_traversal(tmp_path: Path, path: str) -> None:
    folders, _ = _snapshot_folders(tmp_path)

    def newest(name: str, suffix: str) -> Path | None:
        folder = folders.get(name)
        return None if folder is None else newest_snapshot(folder, suffix)

    registry, _ = _board()
    server = serve_metrics(registry, bind="127.0.0.1", port=0, snapshots=newest)
    try:
        status, _, body = _request(server.port, path)
    finally:
        server.close()
    assert status == 404, (path, body)
    assert b"secret" not in body and b"PNG" not in body and b"stranger" not in body
