"""report.md: the report as Markdown, linking the PNGs in plots/; every text from the results is
escaped so it shows literally."""

from __future__ import annotations

import html
import re

from lifelong.report.noise import NOISE_NOTE, WATCH_HEADER, noise_lines, watch_rows
from lifelong.report.plots import PLOTS_DIR, Plot
from lifelong.report.text import visible
from lifelong.report.view import View, columns, comparison_note, comparison_rows, keyed_rows, summary_line


def _md(text: str) -> str:
    """Text shown literally in Markdown, on one line (control characters and line breaks written as
    escapes, so no text can end a table row or start a block), HTML-escaped (renderers pass raw HTML
    through), and with the characters that would start emphasis, code, links, strikethrough or table
    cells backslash-escaped."""
    return re.sub(r"([\\`*_\[\]|#~])", r"\\\1", html.escape(visible(text), quote=False))


def _md_table(header: list[str], rows: list[list[str]], right_from: int = 1) -> list[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def markdown_report(view: View, forgetting: Plot, pairs: list[tuple[Plot, Plot]]) -> str:
    def image(plot: Plot) -> str:
        return f"![{_md(plot.alt)}]({PLOTS_DIR}/{plot.filename})"

    lines = [f"# lifelong report: {_md(view.benchmark)}", "", _md(summary_line(view)), ""]
    lines += [f"Tasks in order: {_md(', '.join(view.tasks))}", ""]
    lines += ["## Comparison across strategies", ""]
    header = ["strategy", *(_md(label) for _, label in columns(view))]
    rows = [
        [_md(label), *(f"**{_md(text)}**" if best else _md(text) for text, best in cells)]
        for label, cells in comparison_rows(view)
    ]
    lines += _md_table(header, rows)
    lines += ["", _md(comparison_note(view)), ""]
    watched = watch_rows(view)
    if watched:
        lines += [
            "## Watch sets",
            "",
            "Scored whole before the first task and after the last; never trained on.",
            "",
        ]
        lines += _md_table(WATCH_HEADER, [[_md(c) for c in row] for row in watched], right_from=3)
        lines.append("")
    noise = noise_lines(view)
    if noise:
        lines += [
            "## Differences and noise",
            "",
            *(f"- {_md(line)}" for line in noise),
            "",
            _md(NOISE_NOTE),
            "",
        ]
    lines += ["## Forgetting per task", "", image(forgetting), "", _md(forgetting.caption), ""]
    lines += ["## Per strategy", "", f"{_md(pairs[0][0].caption)} {_md(pairs[0][1].caption)}", ""]
    for entry, (heatmap, stream) in zip(view.entries, pairs, strict=True):
        lines += [f"### {_md(entry.label)}", "", image(heatmap), "", image(stream), ""]
    for title, part in (("Configuration", "config"), ("Versions", "versions")):
        keys_header, keyed = keyed_rows(view, part)
        if keyed:
            lines += [f"## {title}", ""]
            lines += _md_table(
                ["key", *map(_md, keys_header)],
                [[_md(key), *map(_md, values)] for key, values in keyed],
                right_from=len(keys_header) + 1,
            )
            lines.append("")
    return "\n".join(lines)
