"""moto's S3 server started as a process on a free loopback port, for the object-storage tests.

The tests talk to it exactly as users talk to S3-compatible storage: through ``AWS_ENDPOINT_URL``
and the ``AWS_*`` credentials in the environment.
"""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request


class S3Server:
    """One moto server process; ``stop`` ends it."""

    ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")

    def __init__(self, process: subprocess.Popen[bytes], endpoint: str) -> None:
        self._process = process
        self.endpoint = endpoint

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "texwatch-test",
            "AWS_SECRET_ACCESS_KEY": "texwatch-test",
            "AWS_REGION": "us-east-1",
        }

    @classmethod
    def start(cls, timeout: float = 60.0) -> S3Server:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                    return cls(process, endpoint)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    raise RuntimeError(f"moto's S3 server did not start on {endpoint}") from None
                time.sleep(0.1)

    @staticmethod
    def create_bucket(endpoint: str, name: str) -> str:
        """Create a bucket named after ``name`` (made valid and unique); its ``s3://`` URL."""
        slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:40] or "bucket"
        bucket = f"{slug}-{hashlib.sha1(f'{name}{time.time_ns()}'.encode()).hexdigest()[:10]}"
        request = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")
        with urllib.request.urlopen(request, timeout=10):
            pass
        return f"s3://{bucket}"

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
