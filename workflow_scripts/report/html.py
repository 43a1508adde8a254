"""Self-contained HTML pages: escaped text, tables and a page with its own stylesheet (nothing fetched)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; color: #1e293b; margin: 1.2em; }
h1 { font-size: 1.35em; margin: 0 0 .4em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; margin: .4em 0; }
th, td { border: 1px solid #cbd5e1; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f1f5f9; } td.number { text-align: right; font-variant-numeric: tabular-nums; }
td.text { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 12px; max-width: 38em; }
.pass { color: #15803d; font-weight: 600; } .fail { color: #b91c1c; font-weight: 600; }
.warn { color: #b45309; font-weight: 600; } .skip { color: #64748b; }
.note { color: #475569; }
"""


class Cell:
    """A table cell with a CSS class (`number`, `text`, a status); plain values are escaped text cells."""

    def __init__(self, value: object, css: str = "") -> None:
        self.value = value
        self.css = css

    def render(self) -> str:
        css = f' class="{self.css}"' if self.css else ""
        return f"<td{css}>{escape(text_of(self.value))}</td>"


def text_of(value: object) -> str:
    """A value as a person reads it in a table: no `None`, floats without noise digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def number(value: object) -> Cell:
    return Cell(value, "number")


def status(value: str) -> Cell:
    return Cell(value, value if value in ("pass", "fail", "warn", "skip") else "")


def table(headers: Sequence[str] | None, rows: Iterable[Sequence[object]]) -> str:
    """A table of `rows`, each cell a Cell or a value shown as text; no header row when `headers` is None."""
    head = "".join(f"<th>{escape(header)}</th>" for header in headers or ())
    head = f"<thead><tr>{head}</tr></thead>" if head else ""
    body = "".join(
        "<tr>" + "".join((cell if isinstance(cell, Cell) else Cell(cell)).render() for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table>{head}<tbody>{body}</tbody></table>"


def key_values(pairs: Iterable[tuple[str, object]]) -> str:
    """A two-column table of named figures, without a header."""
    return table(None, ((name, number(value) if isinstance(value, int | float) else value) for name, value in pairs))


def heading(text: str, level: int = 2) -> str:
    return f"<h{level}>{escape(text)}</h{level}>"


def paragraph(text: str, css: str = "") -> str:
    return f'<p class="{css}">{escape(text)}</p>' if css else f"<p>{escape(text)}</p>"


def page(title: str, parts: Iterable[str]) -> str:
    """A whole document; `parts` are HTML fragments made by this module (already escaped)."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{heading(title, 1)}{''.join(parts)}</body></html>\n"
    )
