"""The report's document: one content model written as HTML and as PDF pages.

Headings, paragraphs, tables, probable causes and figures are added once; :class:`Document`
keeps the HTML (self-contained: figures inline as PNG, every string HTML-escaped) and writes PDF
pages as it goes (text pages through matplotlib, each figure as its raster on a page of its own).
"""

from __future__ import annotations

import base64
import html
import io
import math
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure

    from texwatch.causes import ProbableCause

__all__ = ["DPI", "Document", "fmt"]

DPI = 90
"""Dots per inch of every figure, in the HTML and on the PDF pages."""


def fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f"{f:.4g}" if math.isfinite(f) else "—"
    return str(v)


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;color:#222;line-height:1.4}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:right}
th:first-child,td:first-child{text-align:left} th{background:#f2f2f2}
img{max-width:100%;border:1px solid #ddd;margin:.4em 0}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em}
.cause{border-left:5px solid #d9534f;background:#fdf3f2;padding:.4em 1em;margin:.8em 0}
.cause h4{margin:.3em 0} .ok{border-left:5px solid #5cb85c;background:#f3faf3;padding:.4em 1em}
.th{color:#555;font-size:.85em} figcaption{color:#555;font-size:.85em}
"""


class Document:
    """Collects headings, text, tables and figures; writes them as HTML and as PDF pages."""

    _LINES_PER_PAGE = 70
    _WRAP = 120

    def __init__(self, pdf: PdfPages) -> None:
        self._html: list[str] = []
        self._pdf = pdf
        self._lines: list[tuple[str, str]] = []  # (style, text) waiting for a PDF text page

    def heading(self, text: str, level: int = 2, anchor: str | None = None) -> None:
        ident = f' id="{html.escape(anchor, quote=True)}"' if anchor else ""
        self._html.append(f"<h{level}{ident}>{html.escape(text)}</h{level}>")
        self._lines += [("blank", ""), (f"h{min(level, 3)}", text)]

    def para(self, text: str, css: str | None = None) -> None:
        cls = f' class="{css}"' if css else ""
        self._html.append(f"<p{cls}>{html.escape(text)}</p>")
        self._lines += [("text", line) for line in textwrap.wrap(text, self._WRAP)] or [
            ("text", "")
        ]

    def pre(self, text: str) -> None:
        self._html.append(f"<pre>{html.escape(text)}</pre>")
        for line in text.splitlines():
            self._lines += [("mono", part) for part in textwrap.wrap(line, self._WRAP) or [""]]

    def cause(self, cause: ProbableCause, run_label: str) -> None:
        th = ", ".join(f"{k} = {v:g}" for k, v in cause.thresholds.items())
        flags = " ".join(f"--threshold {k}=VALUE" for k in cause.thresholds)
        self._html.append(
            '<div class="cause">'
            f"<h4>{html.escape(cause.title)} — {html.escape(run_label)}</h4>"
            f"<p>{html.escape(cause.reading)}</p><ul>"
            + "".join(f"<li>{html.escape(e)}</li>" for e in cause.evidence)
            + "</ul>"
            + (
                f'<p class="th">thresholds: {html.escape(th)} '
                f"(change with {html.escape(flags)})</p>"
                if th
                else ""
            )
            + "</div>"
        )
        self._lines += [("blank", ""), ("h3", f"{cause.title} — {run_label}")]
        self._lines += [("text", ln) for ln in textwrap.wrap(cause.reading, self._WRAP)]
        for e in cause.evidence:
            self._lines += [("mono", ln) for ln in textwrap.wrap("• " + e, self._WRAP)]
        if th:
            self._lines.append(("text", f"thresholds: {th}"))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        cells = [[fmt(c) for c in row] for row in rows]
        self._html.append(
            "<table><tr>"
            + "".join(f"<th>{html.escape(h)}</th>" for h in header)
            + "</tr>"
            + "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                for row in cells
            )
            + "</table>"
        )
        widths = [max(len(str(h)), *(len(r[j]) for r in cells)) for j, h in enumerate(header)]
        lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
        self._lines += [("mono", ln[: self._WRAP + 40]) for ln in lines]

    def figure(self, fig: Figure, caption: str) -> None:
        """Embed ``fig`` as a PNG in the HTML and put the same raster on a PDF page.

        Rendered once: a vector re-render for the PDF would double the report's main cost. The
        raster is placed unresampled (an image drawn with ``interpolation="none"``, pixel for
        pixel): placed as a figure image it was resampled through float RGBA copies of the page,
        150 MB at a time for a 15 × 12 in figure.
        """
        from PIL import Image

        from texwatch.plots import figure_png, literal, new_figure

        png = figure_png(fig, dpi=DPI)
        fig.clear()  # break the artists' reference cycles now, not at some later GC pass
        data = base64.b64encode(png).decode("ascii")
        self._html.append(
            f'<figure><img alt="{html.escape(caption, quote=True)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption>'
            "</figure>"
        )
        del data
        self._flush_text()
        with Image.open(io.BytesIO(png)) as img:
            pixels = np.asarray(img.convert("RGB"))
        h, w = pixels.shape[:2]
        height = h / DPI + 0.3
        page = new_figure(w / DPI, height)
        ax = page.add_axes((0.0, 0.0, 1.0, (h / DPI) / height))
        ax.imshow(pixels, interpolation="none", aspect="auto")
        ax.set_axis_off()
        page.text(0.01, 1.0 - 0.2 / height, literal(caption), fontsize=8, va="top")
        self._pdf.savefig(page, dpi=DPI)
        page.clear()

    def raw(self, markup: str) -> None:
        """Append trusted markup built here (never from a store)."""
        self._html.append(markup)

    def _flush_text(self) -> None:
        from texwatch.plots import literal, new_figure

        sizes = {"h2": 12, "h3": 10, "text": 7.5, "mono": 7, "blank": 7}
        while any(style != "blank" for style, _ in self._lines):
            page, self._lines = (
                self._lines[: self._LINES_PER_PAGE],
                self._lines[self._LINES_PER_PAGE :],
            )
            fig = new_figure(8.27, 11.69)
            for k, (style, text) in enumerate(page):
                fig.text(
                    0.05,
                    0.97 - k * (0.94 / self._LINES_PER_PAGE),
                    literal(text),
                    fontsize=sizes.get(style, 7.5),
                    family="monospace" if style == "mono" else "sans-serif",
                    weight="bold" if style.startswith("h") else "normal",
                    va="top",
                )
            self._pdf.savefig(fig)
        self._lines = []

    def finish(self, title: str) -> str:
        self._flush_text()
        body = "\n".join(self._html)
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
            f"<body>\n{body}\n</body></html>\n"
        )
