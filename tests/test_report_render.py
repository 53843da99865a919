"""report.html as a browser shows it: headless Chromium (the Debian package `chromium`) loads the page with
a small probe script appended, which writes into the DOM whether every image decoded (naturalWidth > 0)
and whether any table is wider than its column; --dump-dom hands the DOM back.

The report is built from two runs compared side by side (long run directories, config differences) and a
scored curation pool in the curation stage's own file formats, so every figure and table kind is on the page.
"""

from __future__ import annotations

import html
import io
import json
import random
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.select import uid_subset
from openaim.report import report_from_config
from tests.report_runs import config, make_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PROBE = """<script>
window.addEventListener("load", () => {
  const main = document.querySelector("main");
  const images = [...document.images].map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0,
                                                  width: i.naturalWidth}));
  const tables = [...document.querySelectorAll("table")].map(t => {
    const column = t.parentElement;
    return {caption: (t.caption ? t.caption.textContent : t.rows[0].textContent).slice(0, 80),
            table: t.getBoundingClientRect().width, column: column.clientWidth,
            scroll: column.scrollWidth, main: main.clientWidth};
  });
  const out = document.createElement("pre");
  out.id = "render-check";
  out.textContent = JSON.stringify({images, tables});
  document.body.appendChild(out);
});
</script>"""


def write_curated_pool(curation: Path, n: int = 60, seed: int = 0) -> float:
    """A scored pool in the curation stage's formats (pairs/, scores/parts/, dedup/ and safety/ keep/ parts,
    subset.npy, img2dataset pool shard + stats file); returns the threshold."""
    rng = random.Random(seed)
    uids = [f"{rng.getrandbits(128):032x}" for _ in range(n)]
    scores = [rng.uniform(0.05, 0.45) for _ in range(n)]
    captions = [
        f"a {rng.choice(['red', 'blue', 'green'])} {rng.choice(['disc', 'square', 'bar'])} number {i}"
        for i in range(n)
    ]
    dedup_reason = ["near_dup" if i % 11 == 3 else "" for i in range(n)]
    safety_reason = ["unsafe_concept" if i % 13 == 5 else "" for i in range(n)]
    (curation / "scores" / "parts").mkdir(parents=True)
    pq.write_table(pa.table({"uid": uids, "score": scores}), curation / "scores" / "parts" / "00000.parquet")
    (curation / "pairs").mkdir()
    pq.write_table(
        pa.table({"uid": uids, "url": [f"http://127.0.0.1/{u}.jpg" for u in uids], "caption": captions}),
        curation / "pairs" / "part-00000.parquet",
    )
    for name, reasons in (("dedup", dedup_reason), ("safety", safety_reason)):
        (curation / name / "keep").mkdir(parents=True)
        pq.write_table(
            pa.table({"uid": uids, "keep": [not r for r in reasons], "reason": reasons}),
            curation / name / "keep" / "00000.parquet",
        )
    survivors = [i for i in range(n) if not dedup_reason[i] and not safety_reason[i]]
    threshold = sorted((scores[i] for i in survivors), reverse=True)[len(survivors) // 3]
    kept = [uids[i] for i in survivors if scores[i] >= threshold]
    np.save(curation / "subset.npy", uid_subset(kept))
    (curation / "pool").mkdir()
    with tarfile.open(curation / "pool" / "00000.tar", "w") as tar:
        for i, uid in enumerate(uids):
            buf = io.BytesIO()
            Image.new("RGB", (64, 64), (40 * (i % 6), 90, 200 - 3 * i)).save(buf, format="JPEG")
            for ext, payload in (
                ("jpg", buf.getvalue()),
                ("txt", captions[i].encode()),
                ("json", json.dumps({"uid": uid, "url": f"http://127.0.0.1/{uid}.jpg"}).encode()),
            ):
                info = tarfile.TarInfo(f"{i:09d}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    (curation / "pool" / "00000_stats.json").write_text(json.dumps({"count": n, "successes": n}))
    manifest = json.loads((curation / "manifest.json").read_text())
    manifest["threshold"] = threshold
    (curation / "manifest.json").write_text(json.dumps(manifest))
    return threshold


def render_checks(page: Path, tmp_path: Path) -> dict:
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "\n</body>"))
    out = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--window-size=1280,900",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probed.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found = re.search(r'<pre id="render-check">(.*?)</pre>', out.stdout, re.DOTALL)
    assert found, f"chromium gave no probe output (rc {out.returncode}): {out.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.skipif(CHROMIUM is None, reason="needs the Debian package chromium (CI installs it in .ci/run)")
def test_report_renders_in_chromium_with_every_image_and_no_table_overflow(tmp_path):
    old = tmp_path / ("an-archived-run-with-a-long-directory-name-" + "x" * 90)
    make_run(old, seed=3, kept=120)
    make_run(tmp_path / "new", seed=4, kept=220)
    threshold = write_curated_pool(tmp_path / "new" / "curation")
    cfg = config(tmp_path / "new", compare=[str(old)])
    page = report_from_config(cfg)
    text = page.read_text()
    for figure in ("score_histogram.png", "curation_examples.png", "loss_vs_top1.png", "curation_funnel.png"):
        assert (cfg.report_dir / figure).is_file(), figure
    assert f"threshold {threshold:.4f}" in (cfg.report_dir / "report.md").read_text()
    assert "Config differences between the runs" in text

    checks = render_checks(page, tmp_path)
    assert len(checks["images"]) == len(list(cfg.report_dir.glob("*.png"))) >= 8
    broken = [i["alt"] for i in checks["images"] if not i["ok"]]
    assert not broken, broken
    assert len(checks["tables"]) >= 8
    overflowing = [
        t
        for t in checks["tables"]
        if t["table"] > t["column"] + 1 or t["scroll"] > t["column"] + 1 or t["column"] > t["main"]
    ]
    assert not overflowing, overflowing


@pytest.mark.skipif(CHROMIUM is None, reason="needs the Debian package chromium (CI installs it in .ci/run)")
def test_the_probe_sees_a_broken_image_and_an_overflowing_table(tmp_path):
    """The checks can fail: a page with an undecodable image and a too-wide table is caught."""
    page = tmp_path / "bad.html"
    wide = "".join(f"<td>{'y' * 40}</td>" for _ in range(40))
    page.write_text(
        '<!DOCTYPE html><html><body><main style="max-width: 600px">'
        '<img alt="broken" src="data:image/png;base64,iVBORw0KGgoAAAA=">'
        f'<div class="table-wrap" style="overflow-x: auto"><table><tr>{wide}</tr></table></div>'
        "</main></body></html>"
    )
    checks = render_checks(page, tmp_path)
    assert [i["ok"] for i in checks["images"]] == [False]
    table = checks["tables"][0]
    assert table["table"] > table["column"] and table["scroll"] > table["column"]
