"""Built-in eval tasks: importing this package registers them (see pipeline/eval/registry.py)."""
