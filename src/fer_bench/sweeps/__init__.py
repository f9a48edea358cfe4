"""Sweeps: many runs from one command (configs x grid x seeds), on local worker processes or a Ray cluster."""
