"""The mini web generator: determinism, real formats (WARC, WAT, parquet, webdataset, image folders),
ground-truth consistency, and the `openaim web` command."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import subprocess
import sys
import tarfile
import time
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urljoin

import pyarrow.parquet as pq
import pytest
from PIL import Image

from shared.config.web import WebConfig
from shared.errors import OpenAIMError
from shared.miniweb.captions import NUMBER_WORDS
from shared.miniweb.datasets import BENCH_TASKS
from shared.miniweb.generate import generate_web, is_complete
from shared.miniweb.links import BROKEN_REASONS, KINDS, UNSAFE_REASONS
from shared.miniweb.scenes import COLORS, SHAPES
from tests.cli_output import problem_lines

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_config(port: int, seed: int = 7, **kw) -> WebConfig:
    values = {"seed": seed, "n_images": 200, "images_per_page": 6, "image_size": 48, "port": port,
              "hq_size": 40, "bench_train_per_class": 3, "bench_test_per_class": 2, "slow_seconds": 1.5}
    values.update(kw)
    return WebConfig(**values)


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    out = tmp_path_factory.mktemp("web") / "web"
    cfg = small_config(free_port())
    manifest = generate_web(cfg, out)
    return SimpleNamespace(out=out, cfg=cfg, manifest=manifest)


@pytest.fixture(scope="module")
def truth(web):
    return pq.read_table(web.out / "truth.parquet").to_pylist()


class _Imgs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            a = dict(attrs)
            self.links.append((a["src"], a.get("alt") or ""))


def _warc_records(paths, record_type):
    from warcio.archiveiterator import ArchiveIterator

    for path in paths:
        with open(path, "rb") as f:
            for record in ArchiveIterator(f):
                if record.rec_type == record_type:
                    yield record, record.content_stream().read()


def test_same_seed_gives_identical_files_and_another_seed_differs(web, tmp_path):
    out, cfg = web.out, web.cfg
    again = tmp_path / "again"
    generate_web(cfg, again)
    first, second = tree_hashes(out), tree_hashes(again)
    first.pop("requests.log", None)
    assert first == second
    other = tmp_path / "other"
    generate_web(cfg.model_copy(update={"seed": cfg.seed + 1}), other)
    third = tree_hashes(other)
    for name in ("truth.parquet", "warc/miniweb-00000.warc.gz", "hq/hq-00000.tar",
                 "bench/miniweb-shape/test/circle/0000.png"):
        assert third[name] != first[name], name


def test_kinds_fractions_and_groups(web, truth):
    kinds = Counter(r["kind"] for r in truth)
    assert set(kinds) == set(KINDS)
    assert web.manifest["counts"] == {k: kinds[k] for k in KINDS}
    assert 0.30 <= kinds["match"] / len(truth) <= 0.40
    assert {r["reason"] for r in truth if r["kind"] == "broken"} == set(BROKEN_REASONS)
    assert {r["reason"] for r in truth if r["kind"] == "unsafe_url"} == set(UNSAFE_REASONS)
    assert len({r["url"] for r in truth}) == len(truth), "every link has its own URL"
    matches = {r["image_id"]: r for r in truth if r["kind"] == "match"}
    assert all(r["group"] == image_id for image_id, r in matches.items())
    for r in truth:
        if r["kind"] == "exact_dup":
            original = matches[r["dup_of"]]
            assert r["group"] == original["group"] and r["sha256"] == original["sha256"]
            assert r["url"] != original["url"]
        if r["kind"] == "near_dup":
            original = matches[r["dup_of"]]
            assert r["group"] == original["group"] and r["sha256"] != original["sha256"]
            for key in ("shape", "color", "count"):
                assert r[key] == original[key], key
    # captions describe the image for match and duplicates, and never for mismatches
    for r in truth:
        alt = r["alt"].lower()
        if r["kind"] in ("match", "near_dup", "exact_dup", "eval_leak"):
            assert r["color"] in alt and r["shape"][:4] in alt, r
        if r["kind"] == "mismatch":
            assert not (r["color"] in alt and r["shape"][:4] in alt), r
    junk_alts = {r["alt"] for r in truth if r["kind"] == "junk"}
    assert not any(c in alt for alt in junk_alts for c in COLORS)


def test_warc_html_holds_every_truth_link(web, truth):
    found: set[tuple[str, str]] = set()
    pages = set()
    styles = Counter()
    for record, body in _warc_records(sorted((web.out / "warc").glob("*.warc.gz")), "response"):
        page_url = record.rec_headers.get_header("WARC-Target-URI")
        assert record.http_headers.get_statuscode() == "200"
        assert record.rec_headers.get_header("WARC-Date").startswith("2024-")
        pages.add(page_url)
        parser = _Imgs()
        parser.feed(body.decode("utf-8"))
        for src, alt in parser.links:
            styles["absolute" if "://" in src or src.startswith("data:") else
                   "root" if src.startswith("/") else "relative"] += 1
            found.add((urljoin(page_url, src), alt))
    assert styles["absolute"] and styles["root"] and styles["relative"]
    assert found == {(r["url"], r["alt"]) for r in truth}
    assert pages == {r["page_url"] for r in truth}
    assert all(p.startswith(f"http://127.0.0.1:{web.cfg.port}/pages/") for p in pages)


def test_wat_metadata_matches_truth(web, truth):
    found = set()
    for record, body in _warc_records(sorted((web.out / "wat").glob("*.warc.wat.gz")), "metadata"):
        assert record.rec_headers.get_header("Content-Type") == "application/json"
        page_url = record.rec_headers.get_header("WARC-Target-URI")
        meta = json.loads(body)
        http_meta = meta["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]
        assert meta["Envelope"]["WARC-Header-Metadata"]["WARC-Target-URI"] == page_url
        for link in http_meta["HTML-Metadata"]["Links"]:
            assert link["path"] == "IMG@/src"
            found.add((urljoin(page_url, link["url"]), link["alt"]))
    assert found == {(r["url"], r["alt"]) for r in truth}


def test_site_files_match_truth_hashes(web, truth):
    out = web.out
    routes = json.loads((out / "routes.json").read_text())
    for r in truth:
        if r["kind"] in ("match", "mismatch", "junk", "near_dup", "exact_dup", "eval_leak"):
            path = r["url"].split("/", 3)[3]
            data = (out / "site" / path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == r["sha256"]
            Image.open(io.BytesIO(data)).verify()
            assert "/" + path not in routes
    bomb = next(r for r in truth if r["reason"] == "bomb")
    payload = (out / routes["/" + bomb["url"].split("/", 3)[3]]["payload"]).read_bytes()
    assert len(payload) < 10_000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(payload))


def test_eval_leaks_copy_benchmark_test_images(web, truth):
    out = web.out
    leaks = [r for r in truth if r["kind"] == "eval_leak"]
    assert leaks
    for r in leaks:
        assert r["image_id"].startswith("bench:") and "/test/" in r["image_id"]
        task, split, cls, idx = r["image_id"].removeprefix("bench:").split("/")
        original = Image.open(out / "bench" / task / split / cls / f"{idx}.png").convert("RGB")
        copy = Image.open(out / "site" / r["url"].split("/", 3)[3]).convert("RGB")
        pixels = zip(original.tobytes(), copy.tobytes(), strict=True)
        diff = sum(abs(a - b) for a, b in pixels) / len(original.tobytes())
        assert diff < 6, "a JPEG copy of the test image"


def test_hq_shards_read_with_webdataset(web, truth):
    import webdataset as wds

    out, cfg = web.out, web.cfg
    shards = sorted(str(p) for p in (out / "hq").glob("hq-*.tar"))
    assert [Path(s).relative_to(out).as_posix() for s in shards] == web.manifest["hq_shards"]
    samples = list(wds.WebDataset(shards, shardshuffle=False).decode("pil"))
    assert len(samples) == cfg.hq_size
    web_hashes = {r["sha256"] for r in truth if r["sha256"]}
    with tarfile.open(shards[0]) as tar:
        for member in tar.getmembers():
            assert member.mtime == 0
            if member.name.endswith(".jpg"):
                assert hashlib.sha256(tar.extractfile(member).read()).hexdigest() not in web_hashes
    for s in samples:
        assert s["jpg"].size == (cfg.image_size, cfg.image_size)
        text = s["txt"].lower()
        assert any(c in text for c in COLORS) and any(sh[:4] in text for sh in SHAPES)


def test_bench_folders_have_every_class(web):
    out, cfg = web.out, web.cfg
    for task, (_, classes) in BENCH_TASKS.items():
        for split, per_class in (("train", cfg.bench_train_per_class), ("test", cfg.bench_test_per_class)):
            root = out / "bench" / task / split
            assert sorted(p.name for p in root.iterdir()) == sorted(classes)
            for cls in classes:
                files = sorted((root / cls).glob("*.png"))
                assert len(files) == per_class
                assert Image.open(files[0]).size == (cfg.image_size, cfg.image_size)
    assert sorted(web.manifest["bench"]["miniweb-count"]) == sorted(NUMBER_WORDS.values())


def test_skip_if_done_and_refuses_foreign_folder(web, tmp_path):
    out, cfg, manifest = web.out, web.cfg, web.manifest
    assert is_complete(out, cfg)
    before = (out / "truth.parquet").stat().st_mtime_ns
    t0 = time.perf_counter()
    assert generate_web(cfg, out, skip_if_done=True) == manifest
    assert time.perf_counter() - t0 < 1.0
    assert (out / "truth.parquet").stat().st_mtime_ns == before
    assert not is_complete(out, cfg.model_copy(update={"n_images": 201}))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("precious")
    with pytest.raises(OpenAIMError, match="no mini web"):
        generate_web(cfg, foreign)
    assert (foreign / "thesis.txt").read_text() == "precious"


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "openaim", *args], capture_output=True, text=True,
                          check=False, timeout=timeout, cwd=ROOT)


def test_cli_generate_and_bad_set(tmp_path):
    out = tmp_path / "cliweb"
    port = free_port()
    res = _cli("web", "generate", str(out), "--seed", "3", "--n-images", "40", "--port", str(port),
               "--set", "web.hq_size=12", "--set", "web.bench_train_per_class=2",
               "--set", "web.bench_test_per_class=2")
    assert res.returncode == 0, res.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 3
    assert manifest["config"]["n_images"] == 40 and manifest["config"]["hq_size"] == 12
    assert manifest["base_url"] == f"http://127.0.0.1:{port}"
    bad = _cli("web", "generate", str(tmp_path / "bad"), "--set", "web.n_images=3")
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "n_images" in bad.stderr
    assert not (tmp_path / "bad").exists()
    bad_flag = _cli("web", "generate", str(tmp_path / "bad"), "--n-images", "3")
    assert bad_flag.returncode == 2 and len(bad_flag.stderr.strip().splitlines()) == 1


def test_cli_serve_says_when_port_is_busy(tmp_path, web):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        res = _cli("web", "serve", str(web.out), "--port", str(blocker.getsockname()[1]), timeout=60)
    assert res.returncode == 1
    # one error line (a logged warning that the pages point at another port may precede it)
    errors = problem_lines(res.stderr, warnings=False)
    assert len(errors) == 1 and errors[0].startswith("error:") and "busy" in errors[0], res.stderr


def test_cli_serve_runs_in_the_foreground_until_interrupted(web):
    import signal
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "openaim", "web", "serve", str(web.out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # printed once the port is bound
        assert f"http://127.0.0.1:{web.cfg.port}/" in line, (line, proc.stderr.read() if proc.poll() else "")
        page = urllib.request.urlopen(f"http://127.0.0.1:{web.cfg.port}/pages/00000.html", timeout=5).read()
        assert b"<img" in page
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "GET /pages/00000.html" in (web.out / "requests.log").read_text().splitlines()
