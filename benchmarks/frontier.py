"""Comparing methods at matched locality: best points, interpolated frontiers, paired CIs.

A method's GR only means something next to its LR; so each method's operating point is the
best-GR point whose mean LR reaches a threshold, chosen on the *selection* half of the cases,
and reported on the *evaluation* half (no winner's curse from picking and reporting on the
same edits). Differences between methods are paired per case.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import scipy.stats

Row = dict[str, Any]


def point_means(rows: Iterable[Row], split: str | None = None) -> dict[tuple, dict[str, float]]:
    """Mean metrics per (family, knob, lr, k) point, optionally on one split."""
    buckets: dict[tuple, list[Row]] = defaultdict(list)
    for row in rows:
        if split is None or row["split"] == split:
            buckets[(row["family"], row["knob"], row["lr"], row["k"])].append(row)
    out = {}
    for key, items in buckets.items():
        out[key] = {m: statistics.fmean(r[m] for r in items if not _nan(r[m]))
                    if any(not _nan(r[m]) for r in items) else float("nan")
                    for m in ("reliability", "gr", "lr_locality", "lr_sensitive", "steps",
                              "seconds")}
        out[key]["n"] = len(items)
    return out


def _nan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)


def best_point(means: dict[tuple, dict[str, float]], family: str, k: int, threshold: float,
               metric: str = "lr_locality") -> tuple | None:
    """Highest-GR point of ``family`` at ``k`` whose mean LR >= threshold."""
    eligible = [(v["gr"], key) for key, v in means.items()
                if key[0] == family and key[3] == k and v[metric] >= threshold]
    return max(eligible)[1] if eligible else None


def interpolated_gr(means: dict[tuple, dict[str, float]], family: str, k: int, threshold: float,
                    metric: str = "lr_locality") -> float:
    """GR of the upper GR/LR envelope at LR = threshold (linear between hull points)."""
    pts = sorted((v[metric], v["gr"]) for key, v in means.items()
                 if key[0] == family and key[3] == k)
    if not pts:
        return float("nan")
    # Pareto envelope: for each LR, the best GR achievable at >= that LR
    envelope = []
    best = -1.0
    for lr, gr in sorted(pts, reverse=True):
        if gr > best:
            envelope.append((lr, gr))
            best = gr
    envelope.sort()
    if threshold > envelope[-1][0]:
        return float("nan")
    if threshold <= envelope[0][0]:
        return envelope[0][1]
    for (l0, g0), (l1, g1) in zip(envelope, envelope[1:]):
        if l0 <= threshold <= l1:
            return g0 + (g1 - g0) * (threshold - l0) / (l1 - l0) if l1 > l0 else max(g0, g1)
    return float("nan")


def paired_difference(rows: Iterable[Row], a: tuple, b: tuple, metric: str = "gr",
                      split: str = "eval") -> dict[str, float]:
    """Mean per-case difference a - b with a 95% t-interval (cases shared by both)."""
    def per_case(key: tuple) -> dict[int, float]:
        return {r["case"]: r[metric] for r in rows
                if r["split"] == split and (r["family"], r["knob"], r["lr"], r["k"]) == key}

    rows = list(rows)
    xa, xb = per_case(a), per_case(b)
    shared = sorted(set(xa) & set(xb))
    diffs = [xa[c] - xb[c] for c in shared]
    if len(diffs) < 2:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"),
                "n": len(diffs)}
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    t = float(scipy.stats.t.ppf(0.975, len(diffs) - 1))  # two-sided 95% Student-t quantile
    return {"mean": mean, "low": mean - t * se, "high": mean + t * se, "n": len(diffs)}


def paired_across_runs(rows_a: list[Row], rows_b: list[Row], family: str, k: int,
                       threshold: float, names: tuple[str, str] = ("a", "b"),
                       metric: str = "lr_locality") -> dict[str, Any]:
    """One family in two runs on the same cases (e.g. two hypernetworks): each run's operating
    point chosen on its own select half, and the per-case GR difference b - a on the
    evaluation half with a 95% t-interval."""
    cases: dict[str, dict[int, Row]] = {}
    out: dict[str, Any] = {"family": family, "k": k, "threshold": threshold}
    for name, rows in zip(names, (rows_a, rows_b)):
        key = best_point(point_means(rows, "select"), family, k, threshold, metric)
        if key is None:
            return {**out, "missing": name}
        out[f"{name}_point"] = {"knob": key[1], "lr": key[2]}
        cases[name] = {r["case"]: r for r in rows if r["split"] == "eval"
                       and (r["family"], r["knob"], r["lr"], r["k"]) == key}
    shared = sorted(set(cases[names[0]]) & set(cases[names[1]]))
    if len(shared) < 2:
        return {**out, "missing": "shared evaluation cases"}
    diffs = [cases[names[1]][c]["gr"] - cases[names[0]][c]["gr"] for c in shared]
    mean = statistics.fmean(diffs)
    half = (float(scipy.stats.t.ppf(0.975, len(diffs) - 1)) * statistics.stdev(diffs)
            / math.sqrt(len(diffs)))
    for name in names:
        out[name] = {m: statistics.fmean(cases[name][c][m] for c in shared)
                     for m in ("gr", metric, "reliability")}
    return {**out, "n": len(shared),
            "difference": {"mean": mean, "low": mean - half, "high": mean + half}}


def matched_comparison(rows: list[Row], families: list[str], k: int, threshold: float,
                       product: str, metric: str = "lr_locality",
                       baselines: list[str] | None = None) -> dict[str, Any]:
    """Each family's operating point (chosen on 'select'), its 'eval' figures, and the paired
    GR difference of ``product`` against the best of ``baselines`` (default: every other
    family; ablations of the product's own options are no baseline)."""
    select, evaluate = point_means(rows, "select"), point_means(rows, "eval")
    everything = point_means(rows)
    table = {}
    for family in families:
        key = best_point(select, family, k, threshold, metric)
        table[family] = {
            "point": None if key is None else {"knob": key[1], "lr": key[2]},
            "eval": evaluate.get(key) if key else None,
            "interpolated_gr": interpolated_gr(everything, family, k, threshold, metric)}
    baselines = [f for f in (families if baselines is None else baselines)
                 if f != product and table.get(f, {}).get("eval")]
    out: dict[str, Any] = {"threshold": threshold, "k": k, "methods": table}
    if table.get(product, {}).get("eval") and baselines:
        best = max(baselines, key=lambda f: table[f]["eval"]["gr"])
        pkey = (product, table[product]["point"]["knob"], table[product]["point"]["lr"], k)
        bkey = (best, table[best]["point"]["knob"], table[best]["point"]["lr"], k)
        out["product_vs_best_baseline"] = {"baseline": best,
                                           **paired_difference(rows, pkey, bkey)}
    return out
