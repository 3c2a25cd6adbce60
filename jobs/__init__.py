"""Thin entry points, one per job: `python -m jobs.NAME`. Each parses its config, connects to Ray, calls pipeline."""
