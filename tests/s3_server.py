"""A real S3 API on loopback for the tests: moto's server (moto[server]) in its own process.

``MotoServer`` starts ``python -m moto.server`` on 127.0.0.1 and a free port, waits until it answers, and
stops it on exit. ``aws_env`` is what a client needs to reach it through the standard AWS variables
(``AWS_ENDPOINT_URL`` and keys): s3fs, boto3 and every process a test starts read the same variables.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Self

from tests.spark_cluster import free_port

BUCKET = "openaim-test"


class MotoServer:
    def __init__(self, log_dir: Path, start_timeout: float = 60.0) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_dir) / "moto.log"
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None

    @property
    def aws_env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

    def __enter__(self) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                          "-p", str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"moto's server did not start on {self.endpoint}: "
                                       f"{self.log_path.read_text()[-500:]}") from None
                time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
