import re
import subprocess
import sys

from conftest import REPO
from typer.testing import CliRunner

from fer_bench.cli import app

REFERENCE = REPO / "results" / "reference"


def generated_block(marker: str) -> str:
    readme = (REPO / "README.md").read_text()
    return re.search(rf"<!-- {marker}:start -->\n(.*?)<!-- {marker}:end -->", readme, re.S).group(1)


def script_output(name: str) -> str:
    return subprocess.run([sys.executable, str(REPO / "scripts" / name)], capture_output=True, text=True,
                          check=True).stdout


def test_readme_config_reference_matches_the_schema():
    assert generated_block("config-reference") == script_output("config_reference.py")


def test_readme_reference_results_are_the_committed_files():
    assert generated_block("reference-results") == script_output("reference_section.py")


def test_readme_precision_benchmarks_are_the_committed_measurements():
    measured = sorted((REPO / "results" / "benchmark").glob("precision-*.md"))
    assert measured
    for table in measured:  # one README block per CPU measured, named as its file
        assert generated_block(table.stem) == table.read_text()


def test_readme_scale_benchmark_is_the_committed_measurement():
    assert generated_block("scale-benchmark") == (REPO / "results" / "benchmark" / "scale.md").read_text()


def test_readme_sweep_benchmark_is_the_committed_measurement():
    assert generated_block("sweep-benchmark") == (REPO / "results" / "benchmark" / "sweep.md").read_text()


def test_compare_reproduces_the_committed_reference_table(tmp_path):
    result = CliRunner().invoke(app, ["compare", str(REFERENCE), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "comparison.md").read_text() == (REFERENCE / "comparison.md").read_text()


def test_readme_gives_the_install_and_test_commands_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci/run").read_text()
    assert 'pip install -e ".[cpu,dev]"' in readme and '-e ".[cpu,dev]"' in ci
    assert "\npytest " in readme and "python -m pytest" in ci


def test_compare_says_which_runs_trained_in_bfloat16():
    rows = {line.split(" | ")[1]: line for line in (REFERENCE / "comparison.md").read_text().splitlines()
            if line.startswith("| ") and line.count(" | ") > 3}
    assert ", bfloat16" in rows["cpu-tuned_cnn-bf16"] and ", bfloat16" in rows["cpu-tuned_cnn-bf16_continued_sqrt_weights"]
    assert "bfloat16" not in rows["cpu-tuned_cnn"]  # the same config in float32
