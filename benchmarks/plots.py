"""Benchmark pictures: the GR/LR Pareto plot and the sequential-editing curves."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .frontier import point_means  # noqa: E402


def pareto_plot(rows: list[dict[str, Any]], path: str | Path, ks: list[int],
                thresholds: tuple[float, ...] = (0.90, 0.95)) -> Path:
    """GR vs LR, one curve (upper envelope) per method and one panel per edit size k."""
    means = point_means(rows)
    fig, axes = plt.subplots(1, len(ks), figsize=(6.5 * len(ks), 5.2), squeeze=False)
    families = sorted({key[0] for key in means})
    colors = {f: plt.cm.tab10(i % 10) for i, f in enumerate(families)}
    for ax, k in zip(axes[0], ks):
        for family in families:
            pts = sorted((v["lr_locality"], v["gr"]) for key, v in means.items()
                         if key[0] == family and key[3] == k)
            if not pts:
                continue
            ax.scatter(*zip(*pts), s=14, alpha=0.45, color=colors[family])
            envelope, best = [], -1.0
            for lr, gr in sorted(pts, reverse=True):
                if gr > best:
                    envelope.append((lr, gr))
                    best = gr
            ax.plot(*zip(*sorted(envelope)), marker="o", ms=4, color=colors[family],
                    label=family)
        for t in thresholds:
            ax.axvline(t, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("locality (share of unrelated predictions unchanged)")
        ax.set_ylabel("generalization (held-out images of the group fixed)")
        ax.set_title(f"GR/LR frontier, {k} edit image{'s' if k > 1 else ''}")
        ax.set_xlim(left=max(0.5, min(v["lr_locality"] for v in means.values()) - 0.02),
                    right=1.005)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sequential_plot(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Four panels over the edit sequence: newest reliability, earlier-fix retention,
    locality vs the original model, max norm growth; one line per method."""
    by_family: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_family[row["family"]].append(row)
    panels = [("newest_reliability", "reliability of newest edit"),
              ("earlier_retention", "earlier fixes kept"),
              ("locality", "locality vs original"), ("max_norm_growth", "max norm growth")]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    for ax, (metric, title) in zip(axes, panels):
        for family, items in sorted(by_family.items()):
            ax.plot([r["step"] for r in items], [r[metric] for r in items], marker=".",
                    label=family)
        ax.set_title(title)
        ax.set_xlabel("edits so far")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
