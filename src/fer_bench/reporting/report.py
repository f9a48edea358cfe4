"""A comparison as one self-contained HTML page, to open in a browser or send to a colleague.

It renders the `Comparison` that `compare` builds (the same table, tests and charts; nothing is scored
twice) and adds a section per row: what differs from the best row's config, its curves and confusion
matrix, where and how long it trained, and the command that makes it again. Everything is inline: figures
as base64 PNG, one small script for sorting and filtering; the page opens offline.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fer_bench.config import flatten
from fer_bench.reporting.compare import COLUMNS, DATA_LABELS, TEXT_COLUMNS, Comparison, cell_text, confusion_matrix, ranks, trained_on
from fer_bench.reporting.groups import Group, configuration
from fer_bench.runs.artifacts import Run

FIGURE_ROWS = 10  # rows whose section shows curves and a confusion matrix: a page of 1,000 figures would not open
FIGURE_DPI = 80

def render_report(comparison: Comparison, sources: list[str], title: str = "fer-bench report") -> str:
    """The whole page as one string."""
    from fer_bench import __version__

    table = comparison.table
    row_ranks = ranks(table)
    groups = {g.name: g for g in comparison.groups}
    best = groups[table["name"].iloc[0]]
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    runs = sum(len(g.runs) for g in comparison.groups)
    parts = [
        f"<header><h1>{_e(title)}</h1><p class='meta'>{runs} run{'s' * (runs != 1)} in {len(table)} row"
        f"{'s' * (len(table) != 1)} from {_e(', '.join(sources))}; scored on the <b>{_e(comparison.split)}</b> split, "
        f"ranked by <b>{_e(comparison.metric)}</b>. Made {when} by fer-bench {_e(__version__)}.</p></header>",
        "<nav><a href='#table'>table</a> <a href='#significance'>significance</a> <a href='#charts'>charts</a> "
        "<a href='#runs'>runs</a></nav>",
        _table_section(table, row_ranks),
        _significance_section(comparison),
        _charts_section(comparison.figures),
        "<section id='runs'><h2>Runs and groups</h2>",
        *(_row_section(row, row_ranks[i], groups[row["name"]], best, comparison.split, with_figures=i < FIGURE_ROWS)
          for i, row in enumerate(table.to_dict("records"))),
        "</section>",
    ]
    return PAGE.format(title=_e(title), style=STYLE, script=SCRIPT, body="\n".join(parts))


def write_report(comparison: Comparison, sources: list[str], out: Path) -> Path:
    """Render the report into `out` (atomically: a reader never sees half a page)."""
    from fer_bench.files import atomic_write

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    page = render_report(comparison, sources)
    atomic_write(out, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return out


# --- the table ---------------------------------------------------------------------------------


def _sort_value(row: dict, key: str) -> str:
    """What a cell sorts by: the number itself (not its text), or the text; empty for a missing value."""
    value = row.get(key)
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    return str(value) if key in TEXT_COLUMNS else repr(float(value))


def _table_section(table: pd.DataFrame, row_ranks: list[str]) -> str:
    head = "".join(f"<th data-key='{key}' data-type='{'text' if key in TEXT_COLUMNS else 'number'}' "
                   f"tabindex='0' aria-sort='none'>{_e(heading)}</th>" for key, heading in COLUMNS)
    body = []
    for rank, row in zip(row_ranks, table.to_dict("records")):
        cells = []
        for key, _ in COLUMNS:
            if key == "rank":
                text, value = _e(rank), rank if rank != "-" else ""
            else:
                text, value = _e(cell_text(row, key)), _sort_value(row, key)
            if key == "name":
                text = f"<a href='#{_anchor(row['name'])}'>{text}</a>"
            cells.append(f"<td data-v='{_e(value)}'>{text}</td>")
        marked = " class='other'" if row["data"] == DATA_LABELS["different"] else ""
        body.append(f"<tr{marked} data-name='{_e(row['name'])}' data-model='{_e(row['model'])}'>{''.join(cells)}</tr>")
    return ("<section id='table'><h2>Comparison</h2>"
            "<div class='tools'><label>filter <input id='filter' type='search' placeholder='name or model'></label>"
            f"<span id='shown'>{len(table)} of {len(table)} rows</span>"
            "<span class='hint'>click a heading to sort; the table scrolls sideways; the address keeps the view</span></div>"
            f"<div class='scroll'><table id='comparison'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody>"
            "</table></div></section>")


# --- significance and charts --------------------------------------------------------------------


def _significance_section(comparison: Comparison) -> str:
    notes = "".join(f"<p>{_e(note)}</p>" for note in comparison.notes)
    text = comparison.significance_text
    if not text:
        return f"<section id='significance'><h2>Significance</h2>{notes}<p>No pair of rows was scored on the same images.</p></section>"
    verdicts = "".join(f"<li>{_e(v)}</li>" for v in text[1:])
    pairs = comparison.significance
    rows = "".join(
        f"<tr><td>{_e(r.run_a)}</td><td>{_e(r.run_b)}</td><td>{_e(r.test)}</td><td>{_number(r.p_adjusted, '{:.3g}')}</td>"
        f"<td>{_e(r.summary)}</td></tr>" for r in pairs.itertuples(index=False))
    return (f"<section id='significance'><h2>Significance</h2>{notes}<p>{_e(text[0])}</p><ul>{verdicts}</ul>"
            f"<details><summary>every pair considered ({len(pairs)}; {int(pairs['p_value'].notna().sum())} with a test)</summary><div class='scroll'><table class='pairs'>"
            "<thead><tr><th>a</th><th>b</th><th>test</th><th>adjusted p</th><th>verdict</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></div></details></section>")


def _charts_section(figures: dict[str, Any]) -> str:
    images = "".join(f"<figure>{_png(figure, name)}<figcaption>{_e(name)}</figcaption></figure>"
                     for name, figure in figures.items())
    return f"<section id='charts'><h2>Charts</h2>{images}</section>"


# --- a section per row ---------------------------------------------------------------------------


def _row_section(row: dict, rank: str, group: Group, best: Group, split: str, with_figures: bool) -> str:
    first = group.runs[0]
    facts = {
        "model": row["model"], "settings": row["settings"] or "-",
        "seeds": ", ".join(str(s) for s in group.seeds) if not group.single else (group.seeds[0] if group.seeds[0] is not None else "-"),
        f"{split} accuracy": cell_text(row, "accuracy") + (" (over seeds)" if not group.single else ""),
        "macro-F1": cell_text(row, "macro_f1"),
        "accuracy without duplicates": cell_text(row, "accuracy_no_duplicates"),
        "trained on": _trained_where(first), "training time": cell_text(row, "training_seconds")
        + (" (mean over seeds)" if not group.single else ""),
        "epochs": cell_text(row, "epochs"), "data fingerprint": first.metrics.get("data_fingerprint", "-"),
        "git commit": first.environment.get("git_commit", "-"), "folder": ", ".join(str(r.path) for r in group.runs[:3])
        + (f" and {len(group.runs) - 3} more" if len(group.runs) > 3 else ""),
    }
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(str(v))}</dd>" for k, v in facts.items())
    figures = _row_figures(group, split) if with_figures else ""
    return (f"<article id='{_anchor(row['name'])}'><h3>{_e(rank)}. {_e(row['name'])}</h3><dl>{items}</dl>"
            f"<h4>What differs from the best row</h4>{_differences(group, best)}"
            f"<h4>To make it again</h4>{_commands(group)}{figures}</article>")


def _trained_where(run: Run) -> str:
    environment = run.environment.get("trained") or run.environment
    where = trained_on(environment)
    cpu = environment.get("cpu")
    started = environment.get("started")
    return where + (f", {cpu}" if cpu else "") + (f", started {started}" if started else "")


def config_differences(config: dict, reference: dict) -> list[tuple[str, Any, Any]]:
    """(key, value here, value in the reference) for every dotted key whose value differs."""
    here, there = flatten(config), flatten(reference)
    return [(key, here.get(key, "(not set)"), there.get(key, "(not set)"))
            for key in sorted(set(here) | set(there)) if here.get(key, "(not set)") != there.get(key, "(not set)")]


def _differences(group: Group, best: Group) -> str:
    if group is best:
        return "<p>This is the best row.</p>"
    differences = config_differences(configuration(group.runs[0]), configuration(best.runs[0]))
    if not differences:
        return "<p>The same configuration as the best row (other data or seeds).</p>"
    rows = "".join(f"<tr><td><code>{_e(k)}</code></td><td>{_e(_yaml(a))}</td><td>{_e(_yaml(b))}</td></tr>"
                   for k, a, b in differences)
    return f"<div class='scroll'><table class='diff'><thead><tr><th>key</th><th>here</th><th>best row</th></tr></thead><tbody>{rows}</tbody></table></div>"


TRAINED_KINDS = ("keras", "features")  # what `fer-bench run` makes; an ensemble or an evaluation has only its command


def _commands(group: Group) -> str:
    run = group.runs[0]
    lines = []
    if run.metrics.get("kind") in TRAINED_KINDS and (run.path / "config.yaml").is_file():
        again = f"fer-bench run {run.path / 'config.yaml'}"
        source = str((run.environment.get("data") or {}).get("source") or "")
        if (run.config.get("data") or {}).get("path") is None and source.startswith(("folder:", "csv:")):
            again += f" --data-dir {source.split(':', 1)[1]}"  # where it was, from where it ran
        lines.append(f"<p>Its resolved config, run again{' (the first seed; each seed folder has its own)' if not group.single else ''}:</p>"
                     f"<pre>{_e(again + f' --name {run.path.name}')}</pre>")
    recorded = run.environment.get("command")
    if recorded:
        lines.append(f"<p>The command that made it:</p><pre>{_e(recorded)}</pre>")
    return "".join(lines) or "<p>Not recorded.</p>"


def _row_figures(group: Group, split: str) -> str:
    from fer_bench.evaluation import charts

    images = []
    if group.single:
        for file in ("curves.png", "confusion_matrix.png"):
            if (group.runs[0].path / file).is_file():
                images.append(_png_file(group.runs[0].path / file, file))
        return "".join(f"<figure>{image}</figure>" for image in images)
    if all(r.history is not None and "val_accuracy" in r.history for r in group.runs):
        images.append(_png(charts.validation_curves_figure([(group.name, [r.history for r in group.runs])], size=(8, 3.6)),
                           "curves"))
    matrix = sum(confusion_matrix(r, split) for r in group.runs)
    images.append(_png(charts.confusion_grid_figure([f"{group.name} (all seeds)"], [matrix], [group.runs[0].classes], split),
                       "confusion matrix"))
    return "".join(f"<figure>{image}</figure>" for image in images)


# --- small helpers --------------------------------------------------------------------------------


def _png(figure: Any, name: str) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    plt.close(figure)
    return _img(buffer.getvalue(), name)


def _png_file(path: Path, name: str) -> str:
    return _img(path.read_bytes(), name)


def _img(data: bytes, name: str) -> str:
    return f"<img alt='{_e(name)}' loading='lazy' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"


def _anchor(name: str) -> str:
    return "row-" + "".join(c if c.isalnum() else "-" for c in name)


def _number(value: Any, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else fmt.format(value)


def _yaml(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style></head>
<body><main>
{body}
</main><script>{script}</script></body></html>
"""

STYLE = """
:root { --ink: #1d2433; --muted: #5b6478; --line: #d9dde6; --band: #f4f6fa; --accent: #2f5fb3; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: #fff; }
main { max-width: 1200px; margin: 0 auto; padding: 16px; }
h1 { font-size: 1.6em; margin: 0.2em 0; } h2 { margin-top: 1.6em; border-bottom: 2px solid var(--line); }
h3 { margin-bottom: 0.3em; } h4 { margin: 0.8em 0 0.3em; color: var(--muted); }
.meta, .hint, figcaption { color: var(--muted); font-size: 0.9em; }
nav a { margin-right: 1em; color: var(--accent); }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; }
table { border-collapse: collapse; font-size: 0.88em; min-width: 100%; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; white-space: nowrap; vertical-align: top; }
#comparison td:nth-child(4) { white-space: normal; min-width: 14em; }
.pairs td:last-child, .diff td { white-space: normal; }
thead th { background: var(--band); position: sticky; top: 0; }
#comparison th { cursor: pointer; user-select: none; }
#comparison th[aria-sort=ascending]::after { content: " \\25B2"; }
#comparison th[aria-sort=descending]::after { content: " \\25BC"; }
tbody tr:nth-child(even) { background: #fafbfd; }
tr.other td { color: var(--muted); font-style: italic; }
#comparison td:nth-child(2), #comparison th:nth-child(2) { position: sticky; left: 0; background: #fff; z-index: 1; }
#comparison thead th:nth-child(2) { background: var(--band); z-index: 2; }
.tools { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; margin: 8px 0; }
input[type=search] { font: inherit; padding: 4px 8px; border: 1px solid var(--line); border-radius: 4px; min-width: 14em; }
figure { margin: 12px 0; } img { max-width: 100%; height: auto; border: 1px solid var(--line); }
article { border-top: 1px solid var(--line); padding: 4px 0 12px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; }
dt { color: var(--muted); } dd { margin: 0; overflow-wrap: anywhere; }
pre { background: var(--band); padding: 8px; overflow-x: auto; white-space: pre-wrap; word-break: break-all; }
@media (max-width: 640px) { body { font-size: 14px; } main { padding: 8px; } dl { grid-template-columns: 1fr; } dt { margin-top: 6px; } }
"""

# Sorting and filtering run through applyView, whether from a click, the filter box or the address (#sort=accuracy:desc
# &filter=cnn), so that a view can be sent as a link and a headless browser can be shown one.
SCRIPT = """
(function () {
  var table = document.getElementById('comparison');
  if (!table) return;
  var body = table.tBodies[0], heads = table.tHead.rows[0].cells, filter = document.getElementById('filter');
  var original = Array.prototype.slice.call(body.rows);
  var view = { sort: null, dir: 'asc', filter: '' };
  function value(row, index, type) {
    var v = row.cells[index].getAttribute('data-v');
    if (type === 'number') { return v === '' ? null : parseFloat(v); }
    return v.toLowerCase();
  }
  function columnIndex(key) {
    for (var i = 0; i < heads.length; i++) { if (heads[i].getAttribute('data-key') === key) return i; }
    return -1;
  }
  function applyView() {
    var rows = original.slice(), index = view.sort ? columnIndex(view.sort) : -1;
    for (var h = 0; h < heads.length; h++) heads[h].setAttribute('aria-sort', 'none');
    if (index >= 0) {
      var type = heads[index].getAttribute('data-type'), sign = view.dir === 'desc' ? -1 : 1;
      rows.sort(function (a, b) {
        var x = value(a, index, type), y = value(b, index, type);
        if (x === y) return 0;
        if (x === null || x === '') return 1;   /* empty cells last, either way */
        if (y === null || y === '') return -1;
        return (x < y ? -1 : 1) * sign;
      });
      heads[index].setAttribute('aria-sort', view.dir === 'desc' ? 'descending' : 'ascending');
    }
    var needle = view.filter.toLowerCase(), shown = 0;
    rows.forEach(function (row) {
      var hit = !needle || row.getAttribute('data-name').toLowerCase().indexOf(needle) >= 0 ||
                row.getAttribute('data-model').toLowerCase().indexOf(needle) >= 0;
      row.hidden = !hit; if (hit) shown++;
      body.appendChild(row);
    });
    document.getElementById('shown').textContent = shown + ' of ' + original.length + ' rows';
    if (filter.value !== view.filter) filter.value = view.filter;
  }
  function saveView() {
    var parts = [];
    if (view.sort) parts.push('sort=' + encodeURIComponent(view.sort) + ':' + view.dir);
    if (view.filter) parts.push('filter=' + encodeURIComponent(view.filter));
    history.replaceState(null, '', parts.length ? '#' + parts.join('&') : location.pathname + location.search);
  }
  function readView() {
    view = { sort: null, dir: 'asc', filter: '' };
    location.hash.replace(/^#/, '').split('&').forEach(function (part) {
      var pair = part.split('='), key = pair[0], val = decodeURIComponent(pair.slice(1).join('=') || '');
      if (key === 'sort') { var s = val.split(':'); view.sort = s[0]; view.dir = s[1] === 'desc' ? 'desc' : 'asc'; }
      if (key === 'filter') view.filter = val;
    });
  }
  function sortBy(key) {
    if (view.sort === key) { view.dir = view.dir === 'asc' ? 'desc' : 'asc'; }
    else { view.sort = key; view.dir = heads[columnIndex(key)].getAttribute('data-type') === 'number' && key !== 'rank' ? 'desc' : 'asc'; }
    applyView(); saveView();
  }
  for (var i = 0; i < heads.length; i++) {
    heads[i].addEventListener('click', function () { sortBy(this.getAttribute('data-key')); });
    heads[i].addEventListener('keydown', function (e) { if (e.key === 'Enter') sortBy(this.getAttribute('data-key')); });
  }
  filter.addEventListener('input', function () { view.filter = filter.value; applyView(); saveView(); });
  window.addEventListener('hashchange', function () { readView(); applyView(); });
  readView(); applyView();
})();
"""
