"""Evaluation: metrics and statistics (`metrics`), figures (`charts`), trained models behind one surface
(`predictors`) and test-time augmentation (`tta`)."""
