"""shared.storage rooted at a URL (moto's S3 server on loopback) behaves as rooted at a local folder:
names joined under the root, whole-file writes, listing, reading back, removal, and the record written
last; a step that needs a local path gets one clear error on a URL root instead of a wrong path."""

from __future__ import annotations

import uuid

import pytest

from shared.storage import Storage
from tests.s3_server import BUCKET


def _exercise(store: Storage) -> dict:
    store.makedirs("curation/parts")
    store.write_bytes("curation/parts/part-00001.bin", b"one")
    with store.open_write("curation/parts/part-00000.bin") as f:
        f.write(b"zero")
    store.write_json("curation/parts/stats.json", {"b": 1, "a": [1, 2]})
    before = store.read_json("curation/_SUCCESS")
    store.commit("curation/_SUCCESS", {"parts": store.list("curation/parts", "part-*.bin")})
    store.copy("curation/parts/part-00001.bin", "curation/copy.bin")
    seen = {
        "before": before,
        "listed": store.list("curation/parts"),
        "record": store.read_json("curation/_SUCCESS"),
        "stats": store.read_bytes("curation/parts/stats.json"),
        "copy": store.read_bytes("curation/copy.bin"),
        "missing": store.read_bytes("curation/nothing.bin"),
        "exists": (store.exists("curation/parts/part-00000.bin"), store.exists("curation/nothing.bin")),
    }
    store.remove("curation/parts")
    store.remove("curation/parts")  # nothing to remove is fine
    seen["after_remove"] = (store.list("curation/parts"), store.exists("curation/parts/part-00000.bin"))
    return seen


def test_a_url_root_stores_what_a_local_root_stores(s3_server, tmp_path):
    remote = Storage(f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/run")
    local = Storage(tmp_path / "run")
    got, expected = _exercise(remote), _exercise(local)
    assert got == expected
    assert expected["listed"] == ["curation/parts/part-00000.bin", "curation/parts/part-00001.bin",
                                  "curation/parts/stats.json"]
    assert expected["record"] == {"parts": ["curation/parts/part-00000.bin", "curation/parts/part-00001.bin"]}
    assert expected["after_remove"] == ([], False)
    assert remote.url("curation", "x.bin").startswith(f"s3://{BUCKET}/")
    with pytest.raises(ValueError, match="is a URL"):
        remote.local("curation/pairs")


def test_a_url_workdir_names_what_it_cannot_hold():
    """A URL workdir is kept as text (pathlib would fold its "//"); the mini web and the stages whose own
    folder is local (training, eval, report) say so in one line instead of building a wrong path."""
    from shared.config import load_config
    from shared.errors import ConfigError

    cfg = load_config(None, ["workdir=s3://bucket/run/"])
    assert cfg.workdir == "s3://bucket/run" and cfg.curation_dir == "s3://bucket/run/curation"
    with pytest.raises(ConfigError, match="web.dir"):
        _ = cfg.web_dir
    with pytest.raises(ConfigError, match="workdir s3://bucket/run: training keeps its folder on local disk"):
        _ = cfg.training_dir
    local = load_config(None, ["workdir=s3://bucket/run", "web.dir=/srv/web"])
    assert str(local.web_dir) == "/srv/web"
