"""Tessera's shared vocabulary: modalities, keys, shard and manifest formats, and typed job configs.

Everything else in the project imports from here; this package imports nothing of ours.
"""
