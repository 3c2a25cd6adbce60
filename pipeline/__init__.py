"""Tessera's library: data, tokenizers, model, train, eval and study code (jobs/ holds the entry points)."""
