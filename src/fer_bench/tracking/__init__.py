"""Handing finished runs over to the experiment trackers teams already use (MLflow)."""
