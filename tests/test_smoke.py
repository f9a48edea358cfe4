"""Every shipped config, end to end, on a tiny stratified subset of the real FER-2013 (synthetic where absent)."""

import pytest
import yaml
from typer.testing import CliRunner

from fer_bench import EMOTIONS
from fer_bench.cli import app
from helpers import check_run
from conftest import CONFIGS, REPO, tiny_overrides


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(REPO / "configs")) for c in CONFIGS])
def test_config_runs_end_to_end(config, smoke_data, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # configs name other configs relative to the repository root
    overrides = [arg for o in tiny_overrides(config) for arg in ("--set", o)]
    result = CliRunner().invoke(app, ["run", str(config), "--data-dir", str(smoke_data),
                                      "--results-dir", str(tmp_path), *overrides])
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load((tmp_path / config.stem / "config.yaml").read_text())
    model_file = "model.keras" if resolved["features"] is None else "model.joblib"
    metrics = check_run(tmp_path / config.stem, EMOTIONS, model_file=model_file)
    assert metrics["test"]["count"] == 7 * (6 if smoke_data.name == "fer2013" else 3)
    assert metrics["protocol"] == "official"
