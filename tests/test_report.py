"""fer-bench report: one self-contained HTML page, read back as HTML and opened in a real headless Chromium."""

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fer_bench.cli import app
from fer_bench.config import flatten
from fer_bench.reporting.compare import build_comparison
from fer_bench.reporting.report import config_differences, render_report

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "results" / "reference"
# A small real comparison: the committed reference runs (two groups of seeds and two single runs, on FER-2013).
REAL = [REFERENCE / "seeds", REFERENCE / "cpu-tuned_cnn", REFERENCE / "cpu-hog_svm"]
runner = CliRunner()


class Page(HTMLParser):
    """What a test needs of the page: every tag with its attributes, and the text of the comparison table's rows."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.rows: list[dict] = []
        self._in_body = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table" and attrs.get("id") == "comparison":
            self._in_body = True
        if tag == "tr" and self._in_body and "data-name" in attrs:
            self.rows.append(attrs)

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_body = False


def test_flatten_and_differences():
    config = {"train": {"epochs": 3, "learning_rate": 0.001}, "model": {"name": "custom_cnn", "params": {}}, "name": "x"}
    assert flatten(config) == {"train.epochs": 3, "train.learning_rate": 0.001, "model.name": "custom_cnn",
                               "model.params": {}, "name": "x"}
    other = {"train": {"epochs": 5, "learning_rate": 0.001}, "model": {"name": "custom_cnn", "params": {"filters": [8]}}}
    assert config_differences(config, other) == [("model.params", {}, "(not set)"), ("model.params.filters", "(not set)", [8]),
                                                  ("name", "x", "(not set)"), ("train.epochs", 3, 5)]


def test_report_is_self_contained_and_holds_every_row_section_and_chart():
    comparison = build_comparison(REAL)
    page_text = render_report(comparison, [str(p) for p in REAL])
    page = Page(page_text)
    # nothing to fetch: no external script, stylesheet, font or image; figures inline
    for tag, attrs in page.tags:
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            assert not re.match(r"(https?:)?//", value), (tag, attrs)
            if key == "src" and key in attrs:
                assert value.startswith("data:image/png;base64,"), (tag, key)
        assert not (tag == "link" and "stylesheet" in (attrs.get("rel") or "")), attrs
    assert "@import" not in page_text and "url(" not in page_text
    assert [r["data-name"] for r in page.rows] == list(comparison.table["name"]) == \
        ["cpu-tuned_cnn", "cpu-hog_svm", "seeds/hog_rf (5 seeds)", "seeds/short_cnn (5 seeds)"]
    anchors = {attrs["id"] for tag, attrs in page.tags if tag == "article"}
    assert len(anchors) == 4
    images = [attrs for tag, attrs in page.tags if tag == "img"]
    # the charts; per row a confusion matrix, and curves where it trained by epochs (the CNNs, not the classifiers)
    assert len(images) == len(comparison.figures) + 2 + 1 + 1 + 2
    # only what changed, against the best row; the commands that make a run again
    assert "<code>model.name</code></td><td>svm</td><td>custom_cnn</td>" in page_text
    assert "fer-bench sweep sweeps/reference-seeds.yaml --data-dir ../shared/fer2013 --results-dir results/reference" in page_text
    assert f"fer-bench run {REFERENCE / 'cpu-tuned_cnn' / 'config.yaml'} --data-dir ../shared/fer2013 --name cpu-tuned_cnn" in page_text
    for verdict in comparison.significance_text[1:]:
        assert verdict.replace("'", "&#x27;").replace(">", "&gt;") in page_text


def test_report_command_and_its_errors(tmp_path):
    out = runner.invoke(app, ["report", *map(str, REAL), "-o", str(tmp_path / "r" / "report.html")])
    assert out.exit_code == 0, out.output
    assert re.fullmatch(r"wrote .*report\.html \(\d+\.\d MB\): 4 rows from 12 runs; open it in a browser\n", out.output)
    assert (tmp_path / "r" / "report.html").read_text().startswith("<!DOCTYPE html>")
    out = runner.invoke(app, ["report", str(REFERENCE), "-o", str(tmp_path / "report.pdf")])
    assert out.exit_code == 1 and out.output == f"error: --out must be an .html file; got {tmp_path / 'report.pdf'}\n"
    out = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert out.exit_code == 1 and out.output == f"error: results directory not found: {tmp_path / 'nothing'}\n"
    out = runner.invoke(app, ["report", str(REFERENCE), "--sort", "colour", "-o", str(tmp_path / "x.html")])
    assert out.exit_code == 1 and out.output.startswith("error: --sort must be one of [")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("CI"):
        pytest.fail("no Chromium on the CI machine: .ci/run installs it with apt-get")
    pytest.skip("no Chromium here (apt-get install -y chromium)")


# Opens the report in a frame, as a person would use it: clicks a heading, then another, types in the filter,
# and writes what the table showed after each step into the page, which --dump-dom prints.
HARNESS = """<!DOCTYPE html><html><body><pre id="out">not loaded</pre>
<iframe id="report" src="report.html" width="1280" height="900"></iframe>
<script>
document.getElementById('report').addEventListener('load', function () {
  var doc = this.contentDocument, seen = {};
  function shown() {
    return Array.prototype.map.call(doc.querySelectorAll('#comparison tbody tr:not([hidden])'),
                                    function (row) { return row.getAttribute('data-name'); });
  }
  function click(key) { doc.querySelector('th[data-key="' + key + '"]').click(); return shown(); }
  seen.initial = shown();
  seen.by_name = click('name');
  seen.by_name_again = click('name');
  seen.by_training_time = click('training_seconds');
  seen.sort_mark = doc.querySelector('th[data-key="training_seconds"]').getAttribute('aria-sort');
  seen.address = this.contentWindow.location.hash;
  var filter = doc.getElementById('filter');
  filter.value = 'SEEDS/';
  filter.dispatchEvent(new Event('input'));
  seen.filtered = shown();
  seen.count = doc.getElementById('shown').textContent;
  document.getElementById('out').textContent = JSON.stringify(seen);
});
</script></body></html>"""


def test_report_in_headless_chromium(tmp_path):
    browser = chromium()
    comparison = build_comparison(REAL)
    report = tmp_path / "report.html"
    report.write_text(render_report(comparison, [str(p) for p in REAL]))
    (tmp_path / "harness.html").write_text(HARNESS)
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--enable-logging=stderr", "--v=0",
             f"--user-data-dir={tmp_path / 'profile'}"]
    shown = subprocess.run([*flags, "--allow-file-access-from-files", "--virtual-time-budget=10000", "--dump-dom",
                            (tmp_path / "harness.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    seen = json.loads(re.search(r'<pre id="out">(.*?)</pre>', shown.stdout, re.DOTALL).group(1))
    # the page logged nothing to the console: no error, no uncaught exception
    assert [line for line in shown.stderr.splitlines() if ":CONSOLE" in line] == []
    names = list(comparison.table["name"])
    assert seen["initial"] == names  # one row per run or group, in compare's order
    assert seen["by_name"] == sorted(names) and seen["by_name_again"] == sorted(names, reverse=True)
    minutes = dict(zip(comparison.table["name"], comparison.table["training_seconds"]))
    assert seen["by_training_time"] == sorted(names, key=lambda n: -minutes[n])  # a number column: largest first
    assert seen["by_training_time"] != names and seen["sort_mark"] == "descending"
    assert seen["address"] == "#sort=training_seconds:desc"
    assert seen["filtered"] == [n for n in seen["by_training_time"] if n.startswith("seeds/")]
    assert seen["count"] == f"2 of {len(names)} rows"

    # the address keeps the view: opened with it, the page shows the table sorted so
    dom = subprocess.run([*flags, "--virtual-time-budget=5000", "--dump-dom", report.as_uri() + "#sort=name:asc&filter=cpu"],
                         capture_output=True, text=True, timeout=120)
    rows = [attrs for tag, attrs in Page(dom.stdout).tags if tag == "tr" and "data-name" in attrs]
    assert [r["data-name"] for r in rows if "hidden" not in r] == sorted(n for n in names if "cpu" in n)
    assert len(rows) == len(names)

    shot = tmp_path / "shot.png"
    subprocess.run([*flags, "--hide-scrollbars", "--window-size=1280,1600", f"--screenshot={shot}", report.as_uri()],
                   capture_output=True, timeout=120, check=True)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (1600, 1280)
    assert (pixels < 128).mean() > 0.01 and len(np.unique(pixels)) > 50  # text, table lines and a chart, not a blank page
