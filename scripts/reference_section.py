"""Print README's "Reference results" tables, built only from the files in results/reference/.

The comparison table is `fer-bench compare`'s own comparison.md; the second table reads each run's
status.json, metrics.json, environment.json and config.yaml for how, where and for how long it was
trained. tests/test_readme.py checks that README holds exactly this output, so every number there
traces to a committed file.

Usage: python scripts/reference_section.py [RESULTS_DIR]   (default results/reference)
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import yaml

from fer_bench.reporting.compare import accelerators_used

REPO = Path(__file__).resolve().parents[1]


def _minutes(status: dict) -> float:
    started, finished = (datetime.fromisoformat(status[k]) for k in ("started", "finished"))
    return (finished - started).total_seconds() / 60


def _hardware(environment: dict) -> str:
    return accelerators_used(environment) or f"{environment.get('cpu', 'CPU')}, {environment.get('cpu_count')} cores, no GPU"


def _how(metrics: dict, config: dict) -> str:
    kind = metrics.get("kind")
    if kind == "ensemble":
        return "mean of the members' probabilities: " + ", ".join(Path(m).name for m in metrics["members"])
    if kind == "features":
        features = config.get("features") or {}
        source = features.get("from_run")
        extractor = features.get("extractor")
        if extractor == "cnn" and source:
            return f"scikit-learn on the features of {Path(source).name}"
        return f"scikit-learn on {extractor} features"
    weights = metrics.get("weights")
    size = (config.get("data") or {}).get("input_size")
    start = "from scratch (no ImageNet weights)" if weights is None else f"from {weights} weights"
    return f"{size} px, {start}, {metrics.get('epochs_run')} epochs"


def run_rows(results: Path) -> list[str]:
    rows = []
    for folder in sorted(p for p in results.iterdir() if (p / "metrics.json").is_file()):
        status = json.loads((folder / "status.json").read_text())
        if status.get("state") != "finished":
            continue
        metrics = json.loads((folder / "metrics.json").read_text())
        config = yaml.safe_load((folder / "config.yaml").read_text())
        environment = json.loads((folder / "environment.json").read_text())
        tta = metrics.get("test_tta")
        tta_text = f"{tta['accuracy']:.4f} ({tta['mode']})" if tta else "-"
        wall = "-" if metrics.get("kind") == "ensemble" else f"{_minutes(status):.0f} min"
        rows.append(f"| {folder.name} | {_how(metrics, config)} | {_hardware(environment)} | {wall} "
                    f"| {metrics['test']['accuracy']:.4f} | {tta_text} |")
    return rows


def seed_rows(results: Path) -> list[str]:
    """Each group of seeds in compare's comparison.csv: its spread over seeds beside one run's interval over test images."""
    import pandas as pd

    table, seeds = pd.read_csv(results / "comparison.csv"), pd.read_csv(results / "seeds.csv")
    rows = []
    for group in table[table["seeds"] > 1].itertuples(index=False):
        runs = seeds[seeds["group"] == group.name]
        sample = float(((runs["accuracy_high"] - runs["accuracy_low"]) / 2).mean())
        seed_half = (group.accuracy_high - group.accuracy_low) / 2
        spread = 1.96 * group.accuracy_sd  # where one run's score falls, seed to seed
        larger = "the seed" if spread > sample else "the test sample"
        rows.append(f"| {group.name} | {group.seeds} | {group.accuracy:.4f} | {group.accuracy_sd:.4f} | "
                    f"{group.accuracy_min:.4f}-{group.accuracy_max:.4f} | ±{spread:.4f} | ±{sample:.4f} | {larger} | "
                    f"±{seed_half:.4f} |")
    return rows


def seed_verdicts(results: Path) -> list[str]:
    import pandas as pd

    significance = pd.read_csv(results / "significance.csv")
    tested = significance[(significance["seeds_a"] > 1) & (significance["seeds_b"] > 1)]
    return [f"- {summary}" for summary in tested["summary"]]


def section(results: Path) -> str:
    comparison = (results / "comparison.md").read_text().strip().splitlines()
    # compare's own headings become bold lines, so README keeps its heading structure.
    body = [f"**{line.lstrip('# ').strip()}**" if line.startswith("#") else line for line in comparison]
    lines = [*body, "",
             "| run | how it was trained | hardware | wall time | PrivateTest accuracy | with test-time augmentation |",
             "|---|---|---|---|---|---|", *run_rows(results), ""]
    groups = seed_rows(results)
    if groups:
        lines += ["| configuration | seeds | PrivateTest accuracy, mean | SD over seeds | min-max | one run's score, seed "
                  "to seed (±1.96 SD) | one run's 95% interval over the test images (mean over its seeds) | moves a "
                  "run's score more | 95% interval of the mean over seeds |", "|---|---|---|---|---|---|---|---|---|",
                  *groups, "",
                  "What compare concludes between the groups:", "", *seed_verdicts(results), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "results" / "reference"
    sys.stdout.write(section(target))
