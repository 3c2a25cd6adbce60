"""Where jobs run: `cluster.connect` attaches a driver to Ray; `cluster.local` runs a multi-node Ray cluster on one
machine for tests and demos (not imported here, so that `python -m cluster.local` runs it only once)."""

from cluster.connect import ClusterSummary, connect, connected

__all__ = ["ClusterSummary", "connect", "connected"]
