"""report.html: one self-contained page (inline CSS, PNGs as base64 data URIs, no external assets)."""

from __future__ import annotations

import base64
from html import escape

from openaim.report.document import Block, Bullets, Code, Figure, Heading, Inline, Link, Paragraph, Table

_CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --band: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
  font: 16px/1.55 -apple-system, "Segoe UI", "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 2rem 1.5rem 4rem; }
h1 { font-size: 2rem; margin: 0 0 .25rem; }
h2 { font-size: 1.4rem; margin: 2.5rem 0 .75rem; padding-bottom: .3rem;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 1.1rem; margin: 1.75rem 0 .5rem; }
p, li { max-width: 75ch; }
a { color: var(--accent); }
.callout { border-left: 4px solid var(--accent); background: #ddf4ff; padding: .6rem 1rem; font-weight: 600; }
.table-wrap { overflow-x: auto; margin: .75rem 0 1.25rem; }
table { border-collapse: collapse; font-size: .9rem; font-variant-numeric: tabular-nums; max-width: 100%; }
caption { caption-side: top; text-align: left; color: var(--muted); padding-bottom: .4rem; }
th, td { border-bottom: 1px solid var(--line); padding: .35rem .7rem; text-align: right;
  white-space: nowrap; }
th { background: var(--band); white-space: normal; min-width: 4.5em; vertical-align: bottom;
  overflow-wrap: anywhere; }
nav { color: var(--muted); margin: .5rem 0 1.5rem; font-size: .95rem; }
nav a { margin-right: 1rem; }
/* paths, hashes and config values have no spaces: let them break anywhere rather than widen the table */
th.text, td.text { text-align: left; white-space: normal; overflow-wrap: anywhere; }
tbody tr:hover { background: #fafbfc; }
tr.summary td { border-top: 2px solid var(--fg); font-style: italic; }
td.best { font-weight: 700; }
figure { margin: 1rem 0 1.5rem; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: .9rem; }
pre { background: var(--band); padding: .8rem 1rem; border-radius: 6px; overflow-x: auto; font-size: .85rem; }
"""


def _inline(parts: list[Inline]) -> str:
    return "".join(
        f'<a href="{escape(p.url)}">{escape(p.text)}</a>' if isinstance(p, Link) else escape(p) for p in parts
    )


def _table(t: Table) -> str:
    def css(i: int, j: int) -> str:
        names = (["text"] if j < t.text_columns else []) + (["best"] if (i, j) in t.bold else [])
        return f' class="{" ".join(names)}"' if names else ""

    head = "".join(f"<th{css(-1, j)}>{escape(h)}</th>" for j, h in enumerate(t.headers))
    body = []
    for i, row in enumerate(t.rows):
        cls = ' class="summary"' if i >= len(t.rows) - t.footer_rows else ""
        cells = "".join(f"<td{css(i, j)}>{escape(v)}</td>" for j, v in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    caption = f"<caption>{escape(t.caption)}</caption>" if t.caption else ""
    return (
        f'<div class="table-wrap"><table>{caption}<thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def render_html(title: str, blocks: list[Block], images: dict[str, bytes]) -> str:
    """``images`` maps a Figure's filename to its PNG bytes; a figure without bytes is left out."""
    out = [f"<h1>{escape(title)}</h1>"]
    sections = [b for b in blocks if isinstance(b, Heading) and b.level == 2 and b.anchor]
    nav = "".join(f'<a href="#{escape(b.anchor)}">{escape(b.text)}</a>' for b in sections)
    for block in blocks:
        if isinstance(block, Heading):
            anchor = f' id="{escape(block.anchor)}"' if block.anchor else ""
            out.append(f"<h{block.level}{anchor}>{escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            cls = ' class="callout"' if block.emphasis else ""
            out.append(f"<p{cls}>{_inline(block.parts)}</p>")
        elif isinstance(block, Bullets):
            out.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Table):
            out.append(_table(block))
        elif isinstance(block, Figure) and block.filename in images:
            data = base64.b64encode(images[block.filename]).decode("ascii")
            caption = f"<figcaption>{escape(block.caption)}</figcaption>" if block.caption else ""
            out.append(
                f'<figure><img alt="{escape(block.alt)}" src="data:image/png;base64,{data}">'
                f"{caption}</figure>"
            )
        elif isinstance(block, Code):
            out.append(f"<pre><code>{escape(block.text)}</code></pre>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(out[:2] + ([f"<nav>{nav}</nav>"] if nav else []) + out[2:])
        + "\n</main>\n</body>\n</html>\n"
    )
