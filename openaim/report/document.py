"""The report as a list of plain blocks, so the Markdown and the HTML writers show the same content."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Link:
    text: str
    url: str


Inline = str | Link


@dataclass
class Heading:
    text: str
    level: int = 2
    anchor: str = ""


@dataclass
class Paragraph:
    parts: list[Inline]
    emphasis: bool = False  # a headline finding, shown as a call-out


@dataclass
class Bullets:
    items: list[list[Inline]]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)  # (row, column) cells to show in bold
    caption: str = ""
    footer_rows: int = 0  # the last rows are summaries (averages), set apart from the data rows
    text_columns: int = 1  # the first columns hold text (left-aligned); the others numbers (right-aligned)


@dataclass
class Figure:
    filename: str  # PNG beside report.md; inlined into the HTML
    alt: str
    caption: str = ""


@dataclass
class Code:
    text: str


Block = Heading | Paragraph | Bullets | Table | Figure | Code


def text(*parts: Inline) -> Paragraph:
    return Paragraph(list(parts))


Images = dict[str, bytes]  # PNG file name -> bytes: the figures a section adds, written beside the report
