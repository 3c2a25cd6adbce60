"""Scaling-law studies: sweep specs, run bookkeeping, parametric and IsoFLOP fits, plots and reports."""
