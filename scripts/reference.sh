#!/usr/bin/env bash
# Reproduce results/reference on the full FER-2013 (CPU-budget configs; see README "Reference results").
# Usage: scripts/reference.sh [DATA_DIR]   (default ../shared/fer2013). Model files stay out of git.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/fer2013}
out=results/reference
fer-bench run configs/cpu/custom_cnn.yaml --data-dir "$data" --results-dir "$out" --name cpu-custom_cnn
fer-bench run configs/cpu/svm_cnn_features.yaml --data-dir "$data" --results-dir "$out" --name cpu-svm_cnn_features \
  --set features.from_run="$out/cpu-custom_cnn" --set features.cnn_config=null
fer-bench run configs/cpu/hog_svm.yaml --data-dir "$data" --results-dir "$out" --name cpu-hog_svm
fer-bench ensemble "$out/cpu-custom_cnn" "$out/cpu-svm_cnn_features" "$out/cpu-hog_svm" --name ensemble-cnn-svm-hog
fer-bench compare "$out"
