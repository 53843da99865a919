"""WARC -> image links per CPU second: the extract step's parser against the one it replaced.

    .venv/bin/python benchmarks/warc_parse.py [--images 3000] [--no-write]

On a freshly generated mini web of N images, the shipped path (curation.extract: FastWARC records +
selectolax/lexbor, as the extract step runs it per source file) and the warcio + html.parser path it replaced
(the named baseline, with the same charset decoding and URL resolution) each read every WARC file, best of 3
interleaved runs, CPU time. Figures go to benchmarks/RESULTS.md under "## Curation: WARC parsing".
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results_md import write_section

PARSE_SECTION = "## Curation: WARC parsing"
PORT = 18999  # baked into the web's URLs only; nothing is served


def parse_shipped(paths: list[Path]) -> int:
    """What the extract step runs per WARC file: curation.warc_links' FastWARC + selectolax (lexbor) path."""
    from curation.extract import ExtractStats
    from curation.warc_links import warc_links
    from shared.config.curation import ExtractConfig

    max_page_bytes = ExtractConfig.model_fields["max_page_bytes"].default
    links = 0
    for p in paths:
        with open(p, "rb") as f:
            links += sum(1 for _ in warc_links(f, str(p), ExtractStats(), max_page_bytes))
    return links


class _BaselineImgParser(HTMLParser):
    """The baseline's html.parser handler: (src, alt) of every <img>, and the first <base href>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[tuple[str, str]] = []
        self.base: str | None = None

    def handle_starttag(self, tag, attrs):
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "img" and a.get("src"):
            self.images.append((a["src"], a.get("alt", "")))
        elif tag == "base" and a.get("href") and self.base is None:
            self.base = a["href"]

    handle_startendtag = handle_starttag


def parse_warcio(paths: list[Path]) -> int:
    """The baseline: the path curation.extract ran before FastWARC + selectolax, warcio's reader (which undoes
    transfer/content codings) and html.parser, with the same charset decoding
    (curation.warc_links.decode_html) and URL resolution."""
    from urllib.parse import urljoin

    from warcio.archiveiterator import ArchiveIterator

    from curation.warc_links import decode_html

    links = 0
    for p in paths:
        with open(p, "rb") as f:
            for record in ArchiveIterator(f):
                if record.rec_type != "response" or record.http_headers is None:
                    continue
                ctype = record.http_headers.get_header("Content-Type")
                if ctype and "html" not in ctype.lower():
                    continue
                page = record.rec_headers.get_header("WARC-Target-URI") or ""
                tags = _BaselineImgParser()
                tags.feed(decode_html(record.content_stream().read(), ctype))
                tags.close()
                base = urljoin(page, tags.base) if tags.base else page
                links += len([urljoin(base, src.strip()) for src, _ in tags.images])
    return links


PARSERS = (("FastWARC + selectolax/lexbor (curation.extract)", parse_shipped),
           ("warcio + html.parser (baseline: the path before)", parse_warcio))


def parse_bench(paths: list[Path], repeats: int = 3) -> list[list]:
    """Per parser: links found, links and MB per CPU second (best of ``repeats``, interleaved), and the
    speed-up over the baseline measured in the same run."""
    mb = sum(p.stat().st_size for p in paths) / 1e6
    best: dict[str, float] = {}
    found: dict[str, int] = {}
    for _ in range(repeats):
        for name, fn in PARSERS:
            cpu = time.process_time()
            found[name] = fn(paths)
            spent = time.process_time() - cpu
            best[name] = min(best.get(name, spent), spent)
    base = best[PARSERS[-1][0]]
    return [[name, found[name], f"{found[name] / best[name]:,.0f}", f"{mb / best[name]:.1f}",
             f"{base / best[name]:.2f}"] for name, _ in PARSERS]


def parse_report(rows: list[list], n: int, files: int, mb: float) -> str:
    head = ["parser", "links", "links/CPU-s", "MB/CPU-s", "speed-up vs baseline"]
    return "\n".join([
        PARSE_SECTION, "",
        (f"`benchmarks/warc_parse.py --images {n}` ({time.strftime('%Y-%m-%d')}, "
         f"{platform.processor() or platform.machine()}, one process on {os.cpu_count()} cores shared with "
         f"other jobs). WARC -> image links of the mini web with {n} images ({files} gzipped WARC files, "
         f"{mb:.1f} MB), best of 3 interleaved runs, CPU time. The shipped path is what the extract step "
         "runs per source file (FastWARC records, charset decoding, lexbor HTML tree, URL resolution); the "
         "baseline is the warcio + html.parser path it replaced, with the same charset decoding and URL "
         "resolution, in the same run."), "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
        *["| " + " | ".join(str(c) for c in r) + " |" for r in rows], "",
    ])


def parse_only(base: Path, n: int) -> str:
    """The parser comparison alone, on a freshly generated mini web of n images."""
    from shared.config import load_config
    from shared.miniweb.generate import generate_web

    cfg = load_config(None, [f"workdir={base / f'parse{n}'}", f"web.n_images={n}", "web.hq_size=10",
                             "web.bench_train_per_class=2", "web.bench_test_per_class=5", f"web.port={PORT}"])
    generate_web(cfg.web, cfg.web_dir, skip_if_done=True)
    warcs = sorted((cfg.web_dir / "warc").glob("*.warc.gz"))
    rows = parse_bench(warcs)
    return parse_report(rows, n, len(warcs), sum(p.stat().st_size for p in warcs) / 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000, help="image records of the mini web")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="warc-parse-"))
    try:
        text = parse_only(base, args.images)
        print(text)
        if not args.no_write:
            write_section(PARSE_SECTION, text)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
