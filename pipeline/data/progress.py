"""What every preprocess run (label or tokenize) sets up and prints: its Ray Data settings, one line when it
starts and one per finished unit."""

from __future__ import annotations

from collections.abc import Callable

import ray.data

from pipeline.data.shard_writer import WritePlan
from schemas.shards import UnitRecord


def log_plan(log: Callable[[str], None], plan: WritePlan, total: int, pending: int, root: str) -> None:
    log(f"preprocess [{plan.run}: {', '.join(plan.folders)}]: {total} units from {root}; "
        f"{total - pending} already done, {pending} to do")


def log_unit(log: Callable[[str], None], row: dict, count: int, total: int) -> UnitRecord:
    record = UnitRecord.from_json(row["record"])
    node = f" on node {row['node'][:8]}" if "node" in row else ""
    log(f"  unit {record.unit:>6} done ({count}/{total}){node}: {record.samples_written} written, "
        f"{len(record.quarantine)} quarantined")
    return record


def set_data_context(*, single_operator: bool) -> None:
    """The Ray Data settings of a preprocess run (on the driver's current context, which every dataset built after
    this copies).

    Blocks are never split, so one block (= one batch with batch_size=None) stays one work unit end to end.
    Resource reservation is off when the whole run is one operator (every stage fused into one task per unit, or
    the tokenize run): it reserves a share of the cluster per operator so that no stage of a multi-stage pipeline
    starves another, but with one operator it only held the run back: the second CPU's first task started about
    a second after the first one's, and each CPU idled ~0.2 s between units while the budget caught up
    (BENCHMARKS.md, "Preprocess throughput"). A run with actor pools keeps it, since there it does its job.
    """
    context = ray.data.DataContext.get_current()
    context.target_max_block_size = None
    context.op_resource_reservation_enabled = not single_operator
