"""Evaluation: the task registry, metrics, baselines, probe heads, and the runner that fans tasks out on Ray.

    registry.py   Task declarations; `register_task(...)` is all it takes to add one
    context.py    what a task gets on its worker: model handle, tokenizers, its token split (fit/score by key)
    batches.py    deterministic eval batches in the schemas/batch.py layout (inputs whole, target whole)
    checkpoint.py the exported model as eval sees it (pooled encoder features, decoder logits)
    heads.py      linear / MLP probes on frozen features
    metrics.py, baselines.py   the numbers and what they are compared with
    runner.py     one Ray task per (checkpoint, task), failures as rows; report.py: parquet, markdown, PNGs
    tasks/        the built-in tasks, registered on import
"""
