"""report.md: GitHub-flavoured Markdown, figures referenced as PNG files beside it."""

from __future__ import annotations

from openaim.report.document import Block, Bullets, Code, Figure, Heading, Inline, Link, Paragraph, Table


def _inline(parts: list[Inline]) -> str:
    return "".join(f"[{p.text}]({p.url})" if isinstance(p, Link) else p for p in parts)


def _cell(value: str, bold: bool) -> str:
    value = value.replace("|", "\\|").replace("\n", " ")
    return f"**{value}**" if bold and value else value


def _table(t: Table) -> list[str]:
    lines = []
    if t.caption:
        lines += [f"*{t.caption}*", ""]
    lines.append("| " + " | ".join(_cell(h, False) for h in t.headers) + " |")
    lines.append(
        "|" + "|".join(":---" if j < t.text_columns else "---:" for j in range(len(t.headers))) + "|"
    )
    for i, row in enumerate(t.rows):
        cells = [_cell(v, (i, j) in t.bold) for j, v in enumerate(row)]
        if i >= len(t.rows) - t.footer_rows:
            cells[0] = f"*{cells[0]}*"
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(title: str, blocks: list[Block]) -> str:
    lines = [f"# {title}", ""]
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text]
        elif isinstance(block, Paragraph):
            body = _inline(block.parts)
            lines += [f"> **{body}**" if block.emphasis else body]
        elif isinstance(block, Bullets):
            lines += [f"- {_inline(item)}" for item in block.items]
        elif isinstance(block, Table):
            lines += _table(block)
        elif isinstance(block, Figure):
            lines += [f"![{block.alt}]({block.filename})"] + ([f"*{block.caption}*"] if block.caption else [])
        elif isinstance(block, Code):
            lines += ["```", block.text.rstrip("\n"), "```"]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
