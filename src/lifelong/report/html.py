"""report.html: one self-contained page (plots embedded as data URIs, inline CSS, no script), so it
can be mailed or attached as it is; every text from the results is escaped."""

from __future__ import annotations

import base64
import html
import struct

from lifelong.report.noise import NOISE_NOTE, WATCH_HEADER, noise_lines, watch_rows
from lifelong.report.plots import DPI, Plot
from lifelong.report.view import View, columns, comparison_note, comparison_rows, keyed_rows, summary_line

_CSS_SCALE = 96 / DPI

_CSS = """
body { margin: 0; background: #f6f7f9; color: #1d2125; font: 15px/1.5 system-ui, -apple-system,
  "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #e3e6ea; }
h3 { font-size: 16px; margin: 22px 0 6px; }
.summary { color: #59636e; margin: 0 0 8px; }
.note, figcaption { color: #59636e; font-size: 13px; }
table { border-collapse: collapse; margin: 6px 0; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 12px; border-bottom: 1px solid #e3e6ea; text-align: right; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
th:first-child, td:first-child, table.settings th { text-align: left; }
td.best { font-weight: 700; color: #0b6e4f; }
table.settings td { text-align: left; font-family: ui-monospace, SFMono-Regular, Menlo, monospace;
  font-size: 13px; word-break: break-all; }
figure { margin: 0 16px 4px 0; }
img { max-width: 100%; height: auto; display: block; }
.pair { display: flex; flex-wrap: wrap; align-items: flex-start; }
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def html_report(view: View, forgetting: Plot, pairs: list[tuple[Plot, Plot]]) -> str:
    esc = html.escape

    def figure(plot: Plot, caption: bool = True) -> str:
        # The pixel width at 96 dpi: the plot appears at its drawn size and stays sharp on HiDPI.
        width = struct.unpack(">I", plot.png[16:20])[0]  # PNG IHDR: width is bytes 16..19
        text = f"<figcaption>{esc(plot.caption)}</figcaption>" if caption else ""
        return (
            f'<figure><img src="{_data_uri(plot.png)}" alt="{esc(plot.alt)}" '
            f'width="{round(width * _CSS_SCALE)}">{text}</figure>'
        )

    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>lifelong report: {esc(view.benchmark)}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<h1>lifelong report: {esc(view.benchmark)}</h1>",
        f'<p class="summary">{esc(summary_line(view))}</p>',
        f'<p class="summary">Tasks in order: {esc(", ".join(view.tasks))}</p>',
        "<h2>Comparison across strategies</h2>",
        '<table class="comparison"><thead><tr><th>strategy</th>',
        *(f"<th>{esc(label)}</th>" for _, label in columns(view)),
        "</tr></thead><tbody>",
    ]
    for label, cells in comparison_rows(view):
        out.append(f"<tr><td>{esc(label)}</td>")
        out += [f"<td{' class=best' if best else ''}>{esc(text)}</td>" for text, best in cells]
        out.append("</tr>")
    out += ["</tbody></table>", f'<p class="note">{esc(comparison_note(view))}</p>']
    watched = watch_rows(view)
    if watched:
        out += ["<h2>Watch sets</h2>", "<table><thead><tr>", *(f"<th>{esc(h)}</th>" for h in WATCH_HEADER)]
        out.append("</tr></thead><tbody>")
        out += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in watched]
        out.append("</tbody></table>")
    noise = noise_lines(view)
    if noise:
        out += ["<h2>Differences and noise</h2>", "<ul>", *(f"<li>{esc(line)}</li>" for line in noise)]
        out += ["</ul>", f'<p class="note">{esc(NOISE_NOTE)}</p>']
    out += ["<h2>Forgetting per task</h2>", figure(forgetting)]
    out += [
        "<h2>Per strategy</h2>",
        f'<p class="note">{esc(pairs[0][0].caption)} {esc(pairs[0][1].caption)}</p>',
    ]
    for entry, (heatmap, stream) in zip(view.entries, pairs, strict=True):
        out += [
            f"<section><h3>{esc(entry.label)}</h3>",
            f'<div class="pair">{figure(heatmap, False)}{figure(stream, False)}</div></section>',
        ]
    for title, part in (("Configuration", "config"), ("Versions", "versions")):
        header, keyed = keyed_rows(view, part)
        if not keyed:
            continue
        out += [f"<h2>{title}</h2>", '<table class="settings"><thead><tr><th>key</th>']
        out += [f"<th>{esc(name)}</th>" for name in header]
        out.append("</tr></thead><tbody>")
        for key, values in keyed:
            out.append(f"<tr><td>{esc(key)}</td>" + "".join(f"<td>{esc(v)}</td>" for v in values) + "</tr>")
        out.append("</tbody></table>")
    out += ["</main></body></html>", ""]
    return "\n".join(out)
