import os
import sys
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Keep tests on 2 cores predictable.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 (tests/s3_server.py), its endpoint and keys in the standard AWS
    variables for this process and the processes it starts, and the bucket openaim-test created."""
    from tests.s3_server import BUCKET, MotoServer

    pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    with MotoServer(tmp_path_factory.mktemp("moto")) as server, mock.patch.dict(os.environ, server.aws_env):
        s3fs.S3FileSystem(skip_instance_cache=True).mkdir(BUCKET)
        yield server
