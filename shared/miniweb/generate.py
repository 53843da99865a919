"""`generate_web`: the whole mini web from one seed, byte-identical every time.

OUT/
  site/pages/*.html, site/img/*.jpg, site/index.html   what the server serves as plain files
  routes.json        paths answered with a behaviour (errors, stalls, resets, loops, odd bodies)
  payloads/          bodies of those routes
  warc/*.warc.gz, wat/*.warc.wat.gz                       the crawl of the pages
  truth.parquet      one row per <img> link: what it really is
  hq/hq-%05d.tar     clean captioned pairs; bench/<task>/{train,test}/<class>/*.png  labelled sets
  manifest.json      seed, config, counts, files (written last: its presence means complete)
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from shared.atomic import atomic_dir
from shared.config.web import WebConfig
from shared.errors import OpenAIMError
from shared.miniweb.datasets import BENCH_TASKS, PLAN, stream, write_bench, write_hq
from shared.miniweb.links import KINDS, Link, kind_counts, plan_links
from shared.miniweb.warc import Page, write_warc, write_wat
from shared.progress import progress_bar

log = logging.getLogger("openaim.web")

GENERATOR_VERSION = 1  # bump when the output for a given config changes
PAGES_PER_WARC = 200
HQ_SHARD_SIZE = 500
TRUTH_COLUMNS = ("url", "alt", "kind", "reason", "group", "image_id", "dup_of", "page_url", "sha256",
                 "shape", "color", "count", "texture", "size")
_WORDS = ("gallery", "shapes", "patterns", "collection", "studio", "archive", "sketches", "colors", "forms")


def base_url(host: str, port: int) -> str:
    return f"http://{host}:{port}"


def _config_dump(cfg: WebConfig) -> dict:
    return cfg.model_dump(mode="json")


def read_manifest(out_dir: Path) -> dict | None:
    try:
        return json.loads((Path(out_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def is_complete(out_dir: Path, cfg: WebConfig) -> bool:
    """A finished mini web of this exact config and generator version (every listed file present, same
    size)."""
    manifest = read_manifest(out_dir)
    if (not manifest or manifest.get("generator_version") != GENERATOR_VERSION
            or manifest.get("config") != _config_dump(cfg)):
        return False
    for rel, size in manifest.get("files", {}).items():
        p = Path(out_dir) / rel
        if not p.is_file() or p.stat().st_size != size:
            return False
    return True


def _place_on_pages(links: list[Link], cfg: WebConfig, rng) -> list[Page]:
    """Shuffle the links onto pages; pages alternate absolute, root-relative and page-relative src."""
    root = base_url(cfg.host, cfg.port)
    order = rng.permutation(len(links))
    pages: list[Page] = []
    for p, start in enumerate(range(0, len(links), cfg.images_per_page)):
        page_url = f"{root}/pages/{p:05d}.html"
        title = f"{_WORDS[p % len(_WORDS)].capitalize()} page {p}"
        style = p % 3
        items, page_links = [], []
        for i in order[start:start + cfg.images_per_page]:
            link = links[i]
            if link.path is not None and not link.url:
                link.url = root + link.path
            if link.path is not None and link.url.startswith(root) and style == 1:
                src = link.path
            elif link.path is not None and link.url.startswith(root) and style == 2:
                src = ".." + link.path  # resolved against /pages/xxxxx.html
            else:
                src = link.url
            link.page_url = page_url
            page_links.append((src, link.alt))
            items.append(f'<figure><img src="{html.escape(src)}" alt="{html.escape(link.alt)}" '
                         f'width="{cfg.image_size}" height="{cfg.image_size}"></figure>')
        n_pages = max(1, -(-len(links) // cfg.images_per_page))
        nav = f'<a href="/pages/{(p + 1) % n_pages:05d}.html">next page</a>'
        doc = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
               f"<title>{html.escape(title)}</title></head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
               "<p>Shapes and patterns, drawn by hand and by machine.</p>\n" + "\n".join(items)
               + f"\n{nav}\n</body></html>\n")
        pages.append(Page(url=page_url, title=title, html=doc, links=page_links))
    return pages


def _truth_rows(links: list[Link]) -> list[dict]:
    rows = []
    for link in links:
        s = link.scene
        rows.append({
            "url": link.url, "alt": link.alt, "kind": link.kind, "reason": link.reason, "group": link.group,
            "image_id": link.image_id, "dup_of": link.dup_of, "page_url": link.page_url,
            "sha256": link.sha256, "shape": s.shape if s else None, "color": s.color if s else None,
            "count": s.count if s else None, "texture": s.texture if s else None,
            "size": s.size if s else None,
        })
    rows.sort(key=lambda r: (r["page_url"], r["url"], r["alt"]))
    return rows


def _write_truth(path: Path, rows: list[dict]) -> None:
    schema = pa.schema([(c, pa.int64() if c == "count" else pa.string()) for c in TRUTH_COLUMNS])
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, path)


def _write(path: Path, data: bytes) -> None:
    """Plain write: everything goes into atomic_dir's temporary directory, swapped in whole at the end."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_site(out: Path, links: list[Link], pages: list[Page]) -> dict:
    """Static files under site/, route bodies under payloads/; returns the routes table."""
    routes: dict[str, dict] = {}
    for link in links:
        if link.path is None:
            continue
        if link.route is None:
            _write(out / "site" / link.path.lstrip("/"), link.body)
        else:
            entry = dict(link.route)
            if link.body is not None:
                rel = "payloads/" + link.path.strip("/").replace("/", "_")
                _write(out / rel, link.body)
                entry["payload"] = rel
            routes[link.path] = entry
        routes.update(link.extra_routes)
    for page in pages:
        _write(out / "site" / "pages" / page.url.rsplit("/", 1)[1], page.html.encode("utf-8"))
    index = "".join(f'<li><a href="/pages/{p.url.rsplit("/", 1)[1]}">{html.escape(p.title)}</a></li>\n'
                    for p in pages)
    _write(out / "site" / "index.html",
           f"<!DOCTYPE html>\n<html><body><h1>mini web</h1><ul>\n{index}</ul></body></html>\n".encode())
    routes_json = json.dumps(dict(sorted(routes.items())), indent=1, sort_keys=True) + "\n"
    _write(out / "routes.json", routes_json.encode())
    return routes


def generate_web(cfg: WebConfig, out_dir: Path, skip_if_done: bool = False) -> dict:
    """Generate the mini web of ``cfg`` into ``out_dir`` (swapped in atomically); returns the manifest."""
    out_dir = Path(out_dir)
    if skip_if_done and is_complete(out_dir, cfg):
        log.info("mini web at %s is up to date (seed %d)", out_dir, cfg.seed)
        return read_manifest(out_dir)  # type: ignore[return-value]
    if out_dir.exists() and not out_dir.is_dir():
        raise OpenAIMError(f"mini web output {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and read_manifest(out_dir) is None:
        raise OpenAIMError(f"{out_dir} is not empty and holds no mini web (no manifest.json); "
                           "choose another folder")

    counts = kind_counts(cfg.n_images)
    n_classes = sum(len(classes) for _, classes in BENCH_TASKS.values())
    n_bench = n_classes * (cfg.bench_train_per_class + cfg.bench_test_per_class)
    n_drawn = sum(counts[k] for k in ("match", "mismatch", "junk", "broken"))  # the others copy these
    total = n_bench + cfg.hq_size + n_drawn
    with atomic_dir(out_dir) as tmp, progress_bar() as progress:
        bar = progress.add_task("mini web: benchmark sets", total=total)
        def step() -> None:
            progress.advance(bar)

        bench = write_bench(tmp, cfg.seed, cfg.image_size, cfg.bench_train_per_class,
                            cfg.bench_test_per_class, step)
        progress.update(bar, description="mini web: high-quality pairs")
        hq_shards = write_hq(tmp, cfg.seed, cfg.image_size, cfg.hq_size, HQ_SHARD_SIZE, step)

        progress.update(bar, description="mini web: web images")
        test_images = [b for b in bench if b.split == "test"]
        links = plan_links(cfg.seed, cfg.n_images, cfg.image_size, cfg.host, cfg.port, cfg.slow_seconds,
                           test_images, lambda b: Image.open(tmp / b.relpath).convert("RGB"), step)
        pages = _place_on_pages(links, cfg, stream(cfg.seed, PLAN, 1))

        progress.update(bar, description="mini web: site, WARC and WAT")
        routes = _write_site(tmp, links, pages)
        for w, start in enumerate(range(0, len(pages), PAGES_PER_WARC)):
            chunk = pages[start:start + PAGES_PER_WARC]
            write_warc(tmp / "warc" / f"miniweb-{w:05d}.warc.gz", chunk, cfg.seed, start)
            write_wat(tmp / "wat" / f"miniweb-{w:05d}.warc.wat.gz", chunk, cfg.seed, start)
        rows = _truth_rows(links)
        _write_truth(tmp / "truth.parquet", rows)

        by_kind = {k: sum(1 for r in rows if r["kind"] == k) for k in KINDS}
        files = {p.relative_to(tmp).as_posix(): p.stat().st_size
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {
            "generator_version": GENERATOR_VERSION,
            "seed": cfg.seed,
            "config": _config_dump(cfg),
            "base_url": base_url(cfg.host, cfg.port),
            "n_links": len(rows),
            "n_pages": len(pages),
            "counts": by_kind,
            "fractions": {k: round(v / len(rows), 4) for k, v in by_kind.items()},
            "broken_reasons": {r: sum(1 for x in rows if x["kind"] == "broken" and x["reason"] == r)
                               for r in sorted({x["reason"] for x in rows if x["kind"] == "broken"})},
            "n_routes": len(routes),
            "hq_shards": hq_shards,
            "hq_size": cfg.hq_size,
            "bench": {task: sorted({b.class_name for b in bench if b.task == task})
                      for task in sorted({b.task for b in bench})},
            "files": files,
        }
        _write(tmp / "manifest.json", (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    log.info("mini web: %d links on %d pages (%.0f%% match) -> %s", len(rows), len(pages),
             100 * manifest["fractions"]["match"], out_dir)
    return manifest
