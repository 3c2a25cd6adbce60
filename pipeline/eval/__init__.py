"""Evaluation: the task registry, metrics, heads, and the runner that fans tasks out as Ray tasks."""
