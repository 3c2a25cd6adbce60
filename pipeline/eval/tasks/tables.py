"""The sample corpus's real tables (scikit-learn's wine, breast cancer, iris, diabetes): each table's target from
the tokens of its other columns, through the frozen encoder. Classification: linear-probe accuracy against the
majority class; regression: a ridge probe's mean absolute error against always predicting the mean.

A row's target value comes from its raw row (the `tabular` label folder, read as an aux folder beside the tokens);
its token is taken out of the input, which the table tokenizer allows because every id names its column.
"""

from __future__ import annotations

import functools

import numpy as np

from pipeline.data.sample_corpus.tabular import TABLES, Table
from pipeline.eval.context import EvalSample, TaskContext
from pipeline.eval.heads import probe_accuracy, ridge_predictor
from pipeline.eval.registry import DataUnmet, HeadKind, Metric, Score, TokenSplit, register_task
from schemas.raw_members import Cell, read_row

TABULAR = "tabular"


def with_target(samples: list[EvalSample], target: str) -> tuple[list[EvalSample], list[Cell]]:
    """The samples whose raw row holds a value in `target` (the rows of that table), and those values."""
    pairs = [(s, read_row(s.aux[TABULAR]["json"]).get(target)) for s in samples]
    pairs = [(s, y) for s, y in pairs if y is not None]
    return [s for s, _ in pairs], [y for _, y in pairs]


def without_column(tokens: np.ndarray, tokenizer, column: str) -> np.ndarray:
    """A stored token row (n_crops, n) as one row with `column`'s token (and padding) left out."""
    ids = [int(i) for i in np.asarray(tokens).reshape(-1) if int(i) != 0]
    return np.array([[i for i in ids if tokenizer.column_of(i) != column]], dtype=np.int64)


def table_features(ctx: TaskContext, samples: list[EvalSample], target: str) -> np.ndarray:
    tokenizer = ctx.tokenizer(TABULAR)
    rows = [{TABULAR: without_column(s.tokens[TABULAR], tokenizer, target)} for s in samples]
    return ctx.model.pooled_features(rows, (TABULAR,), ctx.config.probe.batch_size)


def _split(ctx: TaskContext, table: Table):
    fit, score = ctx.fit_and_score()
    (fit, y_fit), (score, y_score) = with_target(fit, table.target), with_target(score, table.target)
    if len(fit) < 2 or not score:  # the data's tables are not the sample corpus's
        raise DataUnmet(f"too few rows of the sample corpus's {table.name} table (with a {table.target!r} column: "
                        f"fit {len(fit)}, score {len(score)})")
    return table_features(ctx, fit, table.target), y_fit, table_features(ctx, score, table.target), y_score


def evaluate_classification(ctx: TaskContext, table: Table) -> list[Score]:
    x_fit, y_fit, x_score, y_score = _split(ctx, table)
    classes = sorted({str(y) for y in [*y_fit, *y_score]})
    y_fit, y_score = (np.array([classes.index(str(y)) for y in ys]) for ys in (y_fit, y_score))
    return probe_accuracy(ctx, x_fit, y_fit, x_score, y_score)


def evaluate_regression(ctx: TaskContext, table: Table) -> list[Score]:
    x_fit, y_fit, x_score, y_score = _split(ctx, table)
    y_fit, y_score = np.asarray(y_fit, np.float64), np.asarray(y_score, np.float64)
    predicted = ridge_predictor(x_fit, y_fit)(x_score)
    baseline = float(np.mean(np.abs(y_score - y_fit.mean())))
    return [Score("mae", float(np.mean(np.abs(predicted - y_score))), baseline)]


def register_table_task(table: Table) -> None:
    regression = table.kind == "regression"
    register_task(
        name=f"tabular_{table.name}", inputs=(TABULAR,), target=table.target,
        head=HeadKind.LINEAR_PROBE, data=TokenSplit((TABULAR,), (TABULAR,)),
        metrics=(Metric("mae", False),) if regression else (Metric("accuracy", True),),
        baseline="mean of the fit rows" if regression else "majority class",
        evaluate=functools.partial(evaluate_regression if regression else evaluate_classification, table=table),
        tokenizers=(TABULAR,),
        description=f"{table.name}: {table.target} from the other columns' tokens, "
                    f"{'ridge' if regression else 'linear'} probe on mean-pooled encoder features")


for _table in TABLES:
    register_table_task(_table)
