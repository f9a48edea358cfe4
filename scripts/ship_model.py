"""Make a finished Keras run the model that ships inside the package (src/fer_bench/shipped/).

The model is saved without its optimizer state (inference needs none: about a third of the size),
beside the run's metrics.json, config.yaml and environment.json, so that the shipped folder is a
run folder that `predict` and `evaluate` read like any other and that says how it was made.

Usage: python scripts/ship_model.py results/reference/RUN
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from fer_bench.evaluation.predictors import SHIPPED_MODEL
from fer_bench.models.saved import computes_in_float32, load_model

PROVENANCE = ("metrics.json", "config.yaml", "environment.json")


def ship(run: Path) -> Path:
    if not (run / "model.keras").is_file():
        sys.exit(f"error: {run} holds no model.keras (model files are not committed: train the run first)")
    model = load_model(run / "model.keras")
    if not computes_in_float32(model):
        # Its metrics are what it scored in that precision; rebuilt in float32 it would predict other numbers.
        sys.exit(f"error: {run} computes in bfloat16 or float16 (trained under mixed precision): ship a float32 run, "
                 "or an ensemble with it (`fer-bench ensemble` rebuilds it in float32 and scores it again)")
    SHIPPED_MODEL.mkdir(exist_ok=True)
    model.save(SHIPPED_MODEL / "model.keras")
    for name in PROVENANCE:
        shutil.copyfile(run / name, SHIPPED_MODEL / name)
    return SHIPPED_MODEL


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    folder = ship(Path(sys.argv[1]))
    size = (folder / "model.keras").stat().st_size / 1e6
    print(f"shipped {sys.argv[1]} -> {folder} (model.keras {size:.1f} MB)")
