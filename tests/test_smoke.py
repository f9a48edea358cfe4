"""Every shipped config, end to end, on a tiny stratified subset of the real FER-2013 (synthetic where absent).

The CPU twins under configs/cpu/ (and the two costliest backbones) run on a two-class subset, so that every
deep model family (and the CNN-feature SVM) is also proven on `data.classes` other than all seven;
test_classical covers every classifier on two classes. The configs in NOT_TRAINED are checked, not trained.
"""

import pytest
import yaml
from conftest import CONFIGS, NOT_TRAINED, REPO, SMOKE_CONFIGS, TWO_CLASSES, config_id, smoke_argv, smoke_classes, tiny_overrides
from helpers import check_run
from typer.testing import CliRunner

from fer_bench.cli import app
from fer_bench.experiment import load_experiment
from fer_bench.models.features import CLASSIFIERS
from fer_bench.models.registry import MODELS, is_backbone


def test_two_class_smoke_runs_cover_every_deep_model_family():
    two_class = [c for c in SMOKE_CONFIGS if smoke_classes(c) == TWO_CLASSES]
    families = {yaml.safe_load(c.read_text())["model"]["name"] for c in two_class}
    assert set(MODELS) <= families
    assert any((yaml.safe_load(c.read_text()).get("features") or {}).get("extractor") == "cnn" for c in two_class)


@pytest.mark.parametrize("config", [c for c in CONFIGS if config_id(c) in NOT_TRAINED], ids=NOT_TRAINED)
def test_a_twin_that_is_not_trained_differs_from_a_trained_config_only_in_settings(config):
    """What training would check first: it loads with the smoke overrides, its model family trains elsewhere (a
    classifier: test_classical fits every one), and so does its way of training (a backbone whole or in two phases,
    a network or features for a classifier)."""
    exp = load_experiment(config, tiny_overrides(config))
    trained = [load_experiment(c) for c in SMOKE_CONFIGS]
    assert any(t.model.name == exp.model.name for t in trained) or exp.model.name in CLASSIFIERS
    way = lambda e: (is_backbone(e.model.name), e.model.fine_tune is None, e.features is None)
    assert any(way(t) == way(exp) for t in trained)


@pytest.mark.slow
@pytest.mark.parametrize("config", SMOKE_CONFIGS, ids=[config_id(c) for c in SMOKE_CONFIGS])
def test_config_runs_end_to_end(config, smoke_data, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # configs name other configs relative to the repository root
    classes = smoke_classes(config)
    result = CliRunner().invoke(app, smoke_argv(config, smoke_data, tmp_path))
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load((tmp_path / config.stem / "config.yaml").read_text())
    model_file = "model.keras" if resolved["features"] is None else "model.joblib"
    metrics = check_run(tmp_path / config.stem, classes, model_file=model_file)
    assert metrics["test"]["count"] == len(classes) * (6 if smoke_data.name == "fer2013" else 3)
    assert metrics["protocol"] == "official"
