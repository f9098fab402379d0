"""HTML report of a diff: one self-contained page (inline CSS, inline SVG, a few lines of inline
JS to sort and filter the layer table; nothing is fetched), readable offline and attachable to
an issue or a CI artifact.

Sections: summary (parameters, MACs, file size, nodes, latency: before, after, ratio), how the
layers were paired, charts (kept ratio per layer; parameters and MACs per block, before and
after; latency before and after, only when the report has latency), the per-layer table,
graph input/output signatures, op counts and MACs per op type.

Every number a chart shows is also in a table as text, and every chart has a title and a
description for screen readers. Blocks are the report's own (`DiffReport.blocks`: grouped by
module-name prefix, else by position; see `graphprune.diff`).
"""

from __future__ import annotations

import html as _html
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from graphprune.diff import DiffReport
from graphprune.report import params_text

BEFORE, AFTER = "#94a3b8", "#2563eb"
STATUS_COLOURS = {
    "same": "#94a3b8",
    "pruned": "#2563eb",
    "resized": "#d97706",
    "bypassed": "#9333ea",
    "removed": "#dc2626",
    "added": "#059669",
    "unmatched": "#6b7280",
}
CHART_WIDTH = 1100


def render_html(report: DiffReport) -> str:
    """The report as one self-contained HTML document."""
    data = report.as_dict()
    title = f"graphprune diff: {Path(data['a']['path']).name} → {Path(data['b']['path']).name}"
    body = "\n".join(
        [
            _header(data),
            _summary_section(data),
            _matching_section(data),
            _charts_section(data),
            _layers_section(data),
            _signature_section(data),
            _ops_section(data),
            f"<footer>graphprune · {_e(data['format'])}</footer>",
        ]
    )
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        f"{body}\n</main>\n<script>{JS}</script>\n</body>\n</html>\n"
    )


def write_html(report: DiffReport, path: str | Path) -> Path:
    """Render `report` into `path` (UTF-8, atomically); returns the path."""
    from graphprune.outputs import write_text

    path = Path(path)
    write_text(path, render_html(report))
    return path


# --------------------------------------------------------------------------- formatting


def _e(value) -> str:
    return _html.escape(str(value), quote=True)


def _n(value) -> str:
    """An integer with thousands separators; '–' when absent."""
    return "–" if value is None else f"{int(value):,}"


def _ratio(before, after) -> str:
    return f"{after / before:.3f}" if before and after is not None else "–"


def _si(value: float) -> str:
    """Compact: 1.2k, 3.4M, 5.6G."""
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def _bytes(value) -> str:
    if value is None:
        return "–"
    for limit, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if value >= limit:
            return f"{value / limit:.1f} {suffix}"
    return f"{value} B"


def _shape(shape) -> str:
    if shape is None:
        return "unknown"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _plain(before, after) -> str:
    """'64 → 32' as plain text (for tooltips)."""
    return _n(before) if before == after else f"{_n(before)} → {_n(after)}"


def _arrow(before, after) -> str:
    """'64 → 32', or one number when unchanged."""
    if before is None and after is None:
        return "–"
    if before == after:
        return _n(before) if isinstance(before, int) else _e(before)
    return f'<span class="nw">{_n(before)}</span> → <span class="nw">{_n(after)}</span>'


# --------------------------------------------------------------------------- sections


def _header(data: dict) -> str:
    return (
        "<header>\n<h1>graphprune diff</h1>\n"
        f'<p class="paths"><span class="tag a">A · before</span> <code>{_e(data["a"]["path"])}'
        f'</code><br><span class="tag b">B · after</span> <code>{_e(data["b"]["path"])}</code>'
        "</p>\n</header>"
    )


def _summary_section(data: dict) -> str:
    a, b = data["a"], data["b"]
    rows = [
        ("Parameters", a["params"], b["params"], _n),
        ("MACs", a["macs"], b["macs"], _n),
        ("File size (bytes)", a["bytes"], b["bytes"], _n),
        ("Nodes", a["nodes"], b["nodes"], _n),
        ("Layers", a["layers"], b["layers"], _n),
    ]
    latency = data["latency"]
    if latency:
        rows.append(("Latency (ms)", latency["before_ms"], latency["after_ms"], _ms))
    cards = "".join(_card(name, x, y, fmt) for name, x, y, fmt in rows[:4])
    if latency:
        cards += _card("Latency (ms)", latency["before_ms"], latency["after_ms"], _ms)
    body = "".join(
        f'<tr><th scope="row">{name}</th><td class="num">{fmt(x)}</td>'
        f'<td class="num">{fmt(y)}</td><td class="num">{_ratio(x, y)}</td>'
        f'<td class="num">{_delta_text(x, y, fmt)}</td></tr>'
        for name, x, y, fmt in rows
    )
    shapes = "; ".join(f"{_e(k)} {_shape(v)}" for k, v in a["input_shapes"].items())
    macs_note = "" if a["macs_complete"] and b["macs_complete"] else _warn_macs()
    return (
        '<section id="summary">\n<h2>Summary</h2>\n'
        f'<div class="cards">{cards}</div>\n'
        '<table class="summary"><caption>Before (A) and after (B)</caption>'
        '<thead><tr><th scope="col"></th><th scope="col">before</th><th scope="col">after</th>'
        '<th scope="col">after/before</th><th scope="col">change</th></tr></thead>'
        f"<tbody>{body}</tbody></table>\n"
        f'<p class="note">MACs counted at input shapes {shapes or "–"} '
        f"({_e(_bytes(a['bytes']))} → {_e(_bytes(b['bytes']))} on disk, external data "
        f"included).{macs_note}</p>\n"
        f'<p class="note params-by-dtype">Parameters by dtype: A {_e(_params(a))}; '
        f"B {_e(_params(b))}.</p>\n"
        f"{_notes(data)}</section>"
    )


def _params(side: dict) -> str:
    """`22,713,600 (int8 21.3M, float32 1.4M)` (graphprune.report.params_text)."""
    return params_text(side["params"], side["params_by_dtype"], side["params_in_subgraphs"])


def _warn_macs() -> str:
    return " Some MACs could not be counted (unknown shapes): see the notes."


def _ms(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _delta_text(before, after, fmt: Callable) -> str:
    if before is None or after is None:
        return "–"
    change = after - before
    if fmt is _ms:
        return f"{change:+.3f}"
    return f"{change:+,}"


def _card(name: str, before, after, fmt: Callable) -> str:
    ratio = _ratio(before, after)
    return (
        f'<div class="card"><div class="label">{name}</div>'
        f'<div class="value">{fmt(after)}</div>'
        f'<div class="sub">from {fmt(before)} · ×{ratio}</div></div>'
    )


def _notes(data: dict) -> str:
    if not data["notes"]:
        return ""
    items = "".join(f"<li>{_e(n)}</li>" for n in data["notes"])
    return f'<ul class="notes">{items}</ul>'


def _matching_section(data: dict) -> str:
    matching = data["matching"]
    chips = "".join(
        f'<span class="chip" style="--c:{STATUS_COLOURS[s]}">{s} <b>{n}</b></span>'
        for s, n in matching["status_counts"].items()
        if n
    )
    missing = matching["not_matched"]
    listing = ""
    if missing:
        items = "".join(
            f"<li><b>{_e(m['status'])}</b> {_e(m['op'])} <code>{_e(m['layer'])}</code> "
            f"(only in {m['side'].upper()}): {_e(m['reason'] or '')}</li>"
            for m in missing
        )
        listing = (
            f"<details><summary>{len(missing)} layers without a counterpart</summary>"
            f"<ul>{items}</ul></details>"
        )
    return (
        '<section id="matching">\n<h2>Layer matching</h2>\n'
        f"<p>{_e(matching['summary'])}.</p>\n<p>{chips}</p>\n{listing}\n</section>"
    )


def _charts_section(data: dict) -> str:
    charts = [_kept_chart(data["layers"])]
    blocks = data["blocks"]
    if blocks:
        charts.append(_block_chart(blocks, "params", "Parameters per block"))
        charts.append(_block_chart(blocks, "macs", "MACs per block"))
    if data["latency"]:
        charts.append(_latency_chart(data["latency"]))
    return '<section id="charts">\n<h2>Charts</h2>\n' + "\n".join(charts) + "\n</section>"


def _layers_section(data: dict) -> str:
    head = "".join(
        f'<th scope="col"><button type="button">{h}</button></th>'
        for h in (
            "#",
            "block",
            "op",
            "layer in A",
            "layer in B",
            "in",
            "out",
            "kept",
            "params",
            "MACs",
            "status",
            "matched by / why",
        )
    )
    body = "\n".join(_layer_row(row) for row in data["layers"])
    return (
        '<section id="layers">\n<h2>Layers</h2>\n'
        '<p class="controls"><label><input type="checkbox" id="changed-only"> only rows that '
        "changed</label> · click a column header to sort</p>\n"
        '<div class="scroll"><table class="layers sortable"><caption>Per layer, A → B '
        f"(grouped into blocks by {_e(data['block_grouping'])})</caption>"
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table></div>\n</section>"
    )


def _layer_row(row: dict) -> str:
    a, b = row["a"] or {}, row["b"] or {}
    kept = row["kept_ratio"]
    status = row["status"]
    why = row["matched_by"] or row["reason"] or ""
    cells = [
        (row["index"], _e(row["index"] + 1)),
        (row["block"], _e(row["block"])),
        (row["op"], _e(row["op"])),
        (a.get("name", ""), _name_cell(a)),
        (b.get("name", ""), _name_cell(b)),
        *(_value_cell(a, b, key) for key in ("in", "out")),
        ("" if kept is None else kept, "–" if kept is None else f"{kept:.3f}"),
        *(_value_cell(a, b, key) for key in ("params", "macs")),
        (status, f'<span class="status" style="--c:{STATUS_COLOURS[status]}">{status}</span>'),
        (why, _e(why)),
    ]
    tds = "".join(f'<td data-sort="{_e(key)}">{text}</td>' for key, text in cells)
    return f'<tr data-status="{status}">{tds}</tr>'


def _value_cell(a: dict, b: dict, key: str) -> tuple[str, str]:
    """(sort key, text) of a number: 'A → B' when both sides have the layer, else the one."""
    if a and b:
        return _sort_num(b[key]), _arrow(a[key], b[key])
    value = (a or b)[key]
    return _sort_num(value), _n(value)


def _sort_num(value) -> str:
    return "" if value is None else str(value)


def _name_cell(side: dict) -> str:
    if not side:
        return '<span class="none">—</span>'
    weight = side.get("weight")
    shape = _shape(side.get("weight_shape"))
    hint = f' title="weight {_e(weight)} {shape}"' if weight else ""
    return f"<code{hint}>{_e(side['name'])}</code>"


def _signature_section(data: dict) -> str:
    signatures = data["signatures"]
    rows = []
    for kind in ("inputs", "outputs"):
        for entry in signatures[kind]:
            a, b = entry["a"], entry["b"]
            flag = '<span class="bad">differs</span>' if entry["differs"] else "same"
            rows.append(
                f"<tr><td>{kind[:-1]}</td><td><code>{_e(entry['name'])}</code></td>"
                f"<td>{_sig(a)}</td><td>{_sig(b)}</td><td>{flag}</td></tr>"
            )
    verdict = "differ" if signatures["differ"] else "are identical"
    return (
        '<section id="signature">\n<h2>Graph inputs and outputs</h2>\n'
        f"<p>The signatures {verdict}.</p>\n"
        "<table><caption>Name, dtype and shape (symbolic dimensions by name)</caption>"
        '<thead><tr><th scope="col">kind</th><th scope="col">name</th><th scope="col">A</th>'
        '<th scope="col">B</th><th scope="col"></th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>\n</section>"
    )


def _sig(entry: dict | None) -> str:
    if entry is None:
        return '<span class="none">absent</span>'
    return f"<code>{_e(entry['name'])}</code> {_e(entry['dtype'])} {_e(_shape(entry['shape']))}"


def _ops_section(data: dict) -> str:
    a, b = data["a"], data["b"]
    ops = sorted(set(a["ops"]) | set(b["ops"]) | set(a["macs_by_op"]) | set(b["macs_by_op"]))
    rows = "".join(
        f"<tr><th scope=row>{_e(op)}</th>"
        f'<td class="num">{_n(a["ops"].get(op, 0))}</td><td class="num">{_n(b["ops"].get(op, 0))}'
        f'</td><td class="num">{_n(a["macs_by_op"].get(op, 0))}</td>'
        f'<td class="num">{_n(b["macs_by_op"].get(op, 0))}</td></tr>'
        for op in ops
    )
    return (
        '<section id="ops">\n<h2>Ops</h2>\n<table class="ops sortable"><caption>Node count and '
        "MACs per op type</caption><thead><tr>"
        + "".join(
            f'<th scope="col"><button type="button">{h}</button></th>'
            for h in ("op", "nodes A", "nodes B", "MACs A", "MACs B")
        )
        + f"</tr></thead><tbody>{rows}</tbody></table>\n</section>"
    )


# --------------------------------------------------------------------------- charts


def _kept_chart(rows: list[dict]) -> str:
    shown = [r for r in rows if r["kept_ratio"] is not None and r["a"] is not None]
    if not shown:
        return '<p class="note">No layer of A has a counterpart with a kept ratio.</p>'
    labels = [_short(r["a"]["module"] or r["a"]["name"]) for r in shown]
    values = [r["kept_ratio"] for r in shown]
    tips = [
        f"{r['a']['name']}: {r['status']}, out {_plain(r['a']['out'], (r['b'] or {}).get('out'))}"
        f", kept {r['kept_ratio']:.3f}"
        for r in shown
    ]
    colours = [STATUS_COLOURS[r["status"]] for r in shown]
    top = max(1.0, *values)
    svg = _bar_svg(
        "kept",
        "Kept ratio per layer",
        f"Out channels after / before for {len(shown)} layers of A, in graph order; "
        f"mean {sum(values) / len(values):.3f}, minimum {min(values):.3f}.",
        labels,
        [("kept ratio", values, colours, tips)],
        "kept ratio (out channels B / A)",
        lambda v: f"{v:.2f}",
        top,
        reference=1.0,
    )
    legend = _legend([(s, STATUS_COLOURS[s]) for s in dict.fromkeys(r["status"] for r in shown)])
    return _figure(svg, "Kept ratio per layer (out channels after / before)", legend)


def _short(name: str) -> str:
    """An axis label: a module path or layer name, its tail kept when long."""
    label = name.strip("/").replace("/", ".")
    return label if len(label) <= 28 else "…" + label[-27:]


def _block_chart(blocks: list[dict], key: str, title: str) -> str:
    labels = [b["name"] for b in blocks]
    before = [b[f"{key}_a"] for b in blocks]
    after = [b[f"{key}_b"] for b in blocks]
    tips_a = [f"{b['name']}: {_n(v)} before" for b, v in zip(blocks, before, strict=True)]
    tips_b = [
        f"{b['name']}: {_n(v)} after ({_ratio(x, v)} of before)"
        for b, x, v in zip(blocks, before, after, strict=True)
    ]
    total_a, total_b = sum(before), sum(after)
    svg = _bar_svg(
        f"blocks-{key}",
        f"{title}, before and after",
        f"{len(blocks)} blocks; layer {key} total {_n(total_a)} before, {_n(total_b)} after "
        f"({_ratio(total_a, total_b)}).",
        labels,
        [
            ("before (A)", before, [BEFORE] * len(blocks), tips_a),
            ("after (B)", after, [AFTER] * len(blocks), tips_b),
        ],
        title.split(" per ")[0],
        _si,
        max([*before, *after, 1]),
    )
    legend = _legend([("before (A)", BEFORE), ("after (B)", AFTER)])
    return _figure(svg, f"{title}: before {_n(total_a)}, after {_n(total_b)}", legend)


def _latency_chart(latency: dict) -> str:
    before, after = latency["before_ms"], latency["after_ms"]
    width, left, bar = 700, 90, 34
    top = _axis(max(before, after))[0]
    scale = (width - left - 120) / top
    speed = f"{latency['speedup']:.2f}× faster" if latency.get("speedup") else ""
    parts = []
    for k, (label, value, colour) in enumerate(
        (("before (A)", before, BEFORE), ("after (B)", after, AFTER))
    ):
        y = 20 + k * (bar + 16)
        parts.append(
            f'<text x="{left - 8}" y="{y + bar / 2 + 4}" text-anchor="end">{label}</text>'
            f'<rect x="{left}" y="{y}" width="{max(1.0, value * scale):.1f}" height="{bar}" '
            f'fill="{colour}"><title>{label}: {value:.3f} ms</title></rect>'
            f'<text x="{left + value * scale + 6:.1f}" y="{y + bar / 2 + 4}">{value:.3f} ms</text>'
        )
    height = 20 + 2 * (bar + 16) + 10
    svg = (
        f'<svg viewBox="0 0 {width} {height}" role="img" '
        'aria-labelledby="latency-title latency-desc" class="chart small">'
        f'<title id="latency-title">Median latency before and after</title>'
        f'<desc id="latency-desc">Median latency {before:.3f} ms before, {after:.3f} ms after '
        f"({_e(latency['source'])}); {speed}.</desc>{''.join(parts)}</svg>"
    )
    return _figure(
        svg, f"Median latency, {_e(latency['source'])}: {before:.3f} ms → {after:.3f} ms {speed}"
    )


def _figure(svg: str, caption: str, legend: str = "") -> str:
    return f"<figure>{svg}<figcaption>{caption}{legend}</figcaption></figure>"


def _legend(items: Sequence[tuple[str, str]]) -> str:
    keys = "".join(
        f'<span class="key"><i style="background:{colour}"></i>{_e(label)}</span>'
        for label, colour in items
    )
    return f'<span class="legend">{keys}</span>'


def _nice(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 × 10^k at or above `value` (a readable axis step)."""
    if value <= 0:
        return 0.0
    base = 10 ** math.floor(math.log10(value))
    return next(m * base for m in (1, 2, 2.5, 5, 10) if m * base >= value * (1 - 1e-9))


def _axis(y_max: float, ticks: int = 4) -> tuple[float, float]:
    """(top of the axis, step between gridlines): a readable step, about `ticks` of them."""
    step = _nice(y_max / ticks) or 1.0
    return step * max(1, math.ceil(y_max / step - 1e-9)), step


def _bar_svg(
    uid: str,
    title: str,
    desc: str,
    labels: list[str],
    series: list[tuple[str, list[float], list[str], list[str]]],
    y_label: str,
    fmt: Callable[[float], str],
    y_max: float,
    reference: float | None = None,
) -> str:
    """A vertical (grouped) bar chart: one group per label, one bar per series, a <title> on
    every bar (its exact value), y gridlines with labels, x labels thinned to stay legible."""
    longest = max((len(label) for label in labels), default=0)
    left, right, top, bottom = 70, 10, 16, 30 + int(5.2 * longest)
    n, k = len(labels), len(series)
    plot_w, plot_h = CHART_WIDTH - left - right, 240
    y_top, y_step = _axis(y_max)
    slot = plot_w / max(n, 1)
    bar_w = max(1.0, min(36.0, slot * 0.8 / k))
    y = lambda v: top + plot_h * (1 - v / y_top)  # noqa: E731 - a local scale
    parts = [_grid(left, plot_w, y, y_top, y_step, fmt)]
    if reference is not None and reference <= y_top:
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(reference):.1f}" '
            f'y2="{y(reference):.1f}" class="ref"/>'
        )
    for g in range(n):
        x0 = left + g * slot + (slot - bar_w * k) / 2
        for s, (_name, values, colours, tips) in enumerate(series):
            height = max(2.0, plot_h * values[g] / y_top)  # a zero stays visible as a line
            parts.append(
                f'<rect x="{x0 + s * bar_w:.1f}" y="{top + plot_h - height:.1f}" '
                f'width="{bar_w:.1f}" height="{height:.1f}" fill="{colours[g]}">'
                f"<title>{_e(tips[g])}</title></rect>"
            )
    step = max(1, math.ceil(n / 60))
    for g in range(0, n, step):
        cx = left + g * slot + slot / 2
        parts.append(
            f'<text class="xl" transform="translate({cx:.1f},{top + plot_h + 8}) rotate(-55)" '
            f'text-anchor="end">{_e(labels[g])}</text>'
        )
    parts.append(
        f'<text class="yl" transform="translate(14,{top + plot_h / 2}) rotate(-90)" '
        f'text-anchor="middle">{_e(y_label)}</text>'
    )
    height = top + plot_h + bottom
    return (
        f'<svg viewBox="0 0 {CHART_WIDTH} {height}" role="img" class="chart" '
        f'aria-labelledby="{uid}-title {uid}-desc"><title id="{uid}-title">{_e(title)}</title>'
        f'<desc id="{uid}-desc">{_e(desc)}</desc>{"".join(parts)}</svg>'
    )


def _grid(left: float, width: float, y: Callable, y_top: float, step: float, fmt) -> str:
    """Horizontal gridlines every `step` up to `y_top`, labelled on the left."""
    lines = []
    for k in range(round(y_top / step) + 1):
        value = step * k
        lines.append(
            f'<line x1="{left}" x2="{left + width}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            f'class="grid"/><text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end" '
            f'class="tick">{_e(fmt(value))}</text>'
        )
    return "".join(lines)


CSS = """
:root { --fg:#0f172a; --muted:#64748b; --line:#e2e8f0; --bg:#f8fafc; --card:#fff; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  color:var(--fg); background:var(--bg); }
main { max-width:1180px; margin:0 auto; padding:24px; }
h1 { margin:0 0 4px; font-size:26px; } h2 { margin:28px 0 10px; font-size:19px; }
code { font:12px/1.3 ui-monospace,SFMono-Regular,Menlo,monospace; }
.paths { color:var(--muted); margin:0; }
.tag { display:inline-block; font-size:11px; font-weight:600; padding:1px 6px;
  border-radius:4px; color:#fff; }
.tag.a { background:#64748b; } .tag.b { background:#2563eb; }
.cards { display:flex; gap:12px; flex-wrap:wrap; margin-bottom:14px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px;
  padding:12px 16px; min-width:200px; flex:1; }
.card .label { color:var(--muted); font-size:12px; text-transform:uppercase;
  letter-spacing:.04em; }
.card .value { font-size:22px; font-weight:650; font-variant-numeric:tabular-nums; }
.card .sub { color:var(--muted); font-size:12px; }
table { border-collapse:collapse; background:var(--card); border:1px solid var(--line);
  font-variant-numeric:tabular-nums; }
caption { text-align:left; color:var(--muted); padding:4px 0; caption-side:top; }
th, td { padding:5px 9px; border-bottom:1px solid var(--line); text-align:left;
  vertical-align:top; }
td.num, .summary td { text-align:right; }
thead th { background:#f1f5f9; position:sticky; top:0; z-index:1; }
th button { all:unset; cursor:pointer; font-weight:600; }
th button:focus-visible { outline:2px solid #2563eb; }
th[aria-sort=ascending] button::after { content:" ▲"; }
th[aria-sort=descending] button::after { content:" ▼"; }
.scroll { max-height:760px; overflow:auto; border-radius:8px; }
.layers { font-size:12.5px; width:100%; }
.layers td:nth-child(n+6):nth-child(-n+10) { text-align:right; }
.layers td:nth-child(4), .layers td:nth-child(5) { min-width:140px; max-width:280px;
  overflow-wrap:anywhere; }
.layers td:last-child { min-width:160px; } .nw { white-space:nowrap; }
.layers td:nth-child(6), .layers td:nth-child(7) { white-space:nowrap; }
.status, .chip { display:inline-block; padding:1px 7px; border-radius:10px; color:#fff;
  background:var(--c); font-size:11.5px; font-weight:600; }
.chip { margin-right:6px; }
.none { color:var(--muted); }
.bad { color:#dc2626; font-weight:600; }
.note { color:var(--muted); }
.notes { color:#92400e; }
figure { margin:0 0 18px; background:var(--card); border:1px solid var(--line);
  border-radius:10px; padding:10px; }
figcaption { color:var(--muted); font-size:13px; margin-top:4px; }
.chart { width:100%; height:auto; font-size:11px; fill:var(--fg); }
.chart.small { max-width:700px; display:block; }
.chart .grid { stroke:var(--line); } .chart .ref { stroke:#0f172a; stroke-dasharray:4 3; }
.chart .tick, .chart .xl { fill:var(--muted); font-size:10px; }
.chart .yl { fill:var(--muted); font-size:11px; }
.legend { margin-left:12px; } .key { margin-right:12px; white-space:nowrap; }
.key i { display:inline-block; width:10px; height:10px; border-radius:2px; margin-right:4px; }
details { margin-top:6px; } footer { color:var(--muted); margin:30px 0 10px; font-size:12px; }
"""

JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('thead th').forEach(function (th, col) {
    th.querySelector('button').addEventListener('click', function () {
      var dir = th.getAttribute('aria-sort') === 'ascending' ? 'descending' : 'ascending';
      table.querySelectorAll('thead th').forEach(function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', dir);
      var key = function (row) {
        var cell = row.cells[col], v = cell.dataset.sort !== undefined ? cell.dataset.sort
          : cell.textContent, n = parseFloat(v);
        return v !== '' && !isNaN(n) && isFinite(v) ? n : v;
      };
      var body = table.tBodies[0];
      Array.from(body.rows).sort(function (a, b) {
        var x = key(a), y = key(b);
        var c = typeof x === 'number' && typeof y === 'number' ? x - y
          : String(x).localeCompare(String(y));
        return dir === 'ascending' ? c : -c;
      }).forEach(function (row) { body.appendChild(row); });
    });
  });
});
var only = document.getElementById('changed-only');
if (only) only.addEventListener('change', function () {
  document.querySelectorAll('table.layers tbody tr').forEach(function (row) {
    row.hidden = only.checked && row.dataset.status === 'same';
  });
});
document.documentElement.setAttribute('data-ready', 'yes');  // the script ran to the end
"""
