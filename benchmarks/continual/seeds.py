"""The continual benchmark across scenario seeds: does a lever move the scoreboard, or the dice?

One seed's runs differ by 20-40 errors from another's, as much as most levers move them. This
module reads finished runs made at several seeds (``vitedit-ops bench --continual --seed S``)
and puts each variant beside the product seed by seed: every seed serves the same images to
every variant, so a variant's difference from the product is paired per seed, and its mean
gets a 95% Student-t interval over the seeds. With three to five seeds the interval is wide;
that it is, is the finding.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import scipy.stats

from vitedit_ops.errors import InvalidInputError

from .run import PRODUCT

# what a lever is judged on, per seed: (summary key, label, higher is better)
FIGURES = (("nights_passed", "nights passed", True),
           ("errors_removed", "errors removed", True),
           ("clean_agreement", "clean agreement", True),
           ("earlier_fixes_kept", "earlier fixes kept", True))


def _load(directory: Path) -> dict[str, Any]:
    path = directory / "continual.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path}: not a finished continual run ({exc})") from exc


def _figures(summary: dict[str, Any]) -> dict[str, float | None]:
    return {"nights_passed": summary["nights_passed"],
            "errors_removed": summary["errors_before"] - summary["errors_after"],
            "errors_before": summary["errors_before"],
            "error_reduction": summary["error_reduction"],
            "clean_agreement": summary["clean_agreement"],
            "earlier_fixes_kept": summary["earlier_fixes_kept"]}


def _interval(values: list[float]) -> dict[str, float]:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan, "n": len(values)}
    half = (float(scipy.stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values)
            / math.sqrt(len(values)))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(values)}


def across_seeds(run_dirs: list[Path], baseline: str = PRODUCT) -> dict[str, Any]:
    """Every variant's figures per seed, and its paired difference from ``baseline``.

    Refused unless every run played the same days on the same reference model at full size;
    runs of one seed may be split over several directories (variants run in parallel), and a
    variant run twice at the same seed is refused (which one would count?).
    """
    if not run_dirs:
        raise InvalidInputError("nothing to compare: name the continual runs' directories")
    runs = [(d, _load(d)) for d in run_dirs]
    first_dir, first = runs[0]
    per_seed: dict[str, dict[int, dict[str, Any]]] = {}
    for directory, run in runs:
        for key in ("reference", "quick"):
            if run[key] != first[key]:
                raise InvalidInputError(f"{directory} ran another {key} than {first_dir}: "
                                        "runs of different worlds cannot be compared")
        scenario = {k: v for k, v in run["scenario"].items() if k != "seed"}
        if scenario != {k: v for k, v in first["scenario"].items() if k != "seed"}:
            raise InvalidInputError(f"{directory} played other days than {first_dir}: only "
                                    "the seed may differ")
        seed = int(run["scenario"]["seed"])
        for variant, summary in run["summary"].items():
            if seed in per_seed.setdefault(variant, {}):
                raise InvalidInputError(f"{variant!r} ran twice at seed {seed} "
                                        f"({directory}): keep one of the two runs")
            per_seed[variant][seed] = _figures(summary)
    if baseline not in per_seed:
        raise InvalidInputError(f"no run holds the {baseline!r} variant to compare against")
    base = per_seed[baseline]
    variants: dict[str, Any] = {}
    for variant, seeds in per_seed.items():
        entry: dict[str, Any] = {"seeds": {str(s): seeds[s] for s in sorted(seeds)},
                                 "mean": {k: _mean([f[k] for f in seeds.values()])
                                          for k in ("nights_passed", "errors_removed",
                                                    "error_reduction", "clean_agreement",
                                                    "earlier_fixes_kept")}}
        shared = sorted(set(seeds) & set(base))
        if variant != baseline and shared:
            entry["paired_seeds"] = shared
            entry["difference"] = {
                key: _interval([seeds[s][key] - base[s][key] for s in shared
                                if seeds[s][key] is not None and base[s][key] is not None])
                for key, _, _ in FIGURES
                if any(seeds[s][key] is not None and base[s][key] is not None
                       for s in shared)}
        variants[variant] = entry
    return {"reference": first["reference"], "days": first["scenario"]["days"],
            "baseline": baseline, "runs": [str(d) for d in run_dirs],
            "seeds": sorted({s for v in per_seed.values() for s in v}),
            "variants": variants}


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _per_seed(entry: dict[str, Any], seeds: list[int], key: str, fmt: str) -> str:
    cells = []
    for seed in seeds:
        value = entry["seeds"].get(str(seed), {}).get(key)
        cells.append("-" if value is None else format(value, fmt))
    return " / ".join(cells)


def _difference(entry: dict[str, Any], key: str, fmt: str) -> str:
    d = entry.get("difference", {}).get(key)
    if d is None:
        return ""
    if d["n"] < 2:
        return f"{d['mean']:+{fmt}} (1 seed)"
    return f"{d['mean']:+{fmt}} [{d['low']:+{fmt}}, {d['high']:+{fmt}}]"


def markdown(results: dict[str, Any]) -> str:
    """One table: each variant's figures seed by seed, and its paired difference from the
    baseline (mean over the seeds both ran, 95% t-interval)."""
    seeds = results["seeds"]
    order = "/".join(str(s) for s in seeds)
    lines = [f"Seeds {', '.join(map(str, seeds))}; each cell lists the seeds in that order "
             f"({order}, '-' where a variant did not run); differences are against "
             f"**{results['baseline']}** at the same seed, mean over the seeds both ran with a "
             "95% t-interval.", "",
             "| variant | nights passed | errors removed | reduction (mean) | clean agreement | "
             "earlier fixes kept | nights passed vs base | errors removed vs base | "
             "fixes kept vs base |",
             "|---|---|---|---:|---|---|---|---|---|"]
    for name, entry in results["variants"].items():
        reduction = entry["mean"]["error_reduction"]
        lines.append(
            f"| {name} | {_per_seed(entry, seeds, 'nights_passed', 'd')} | "
            f"{_per_seed(entry, seeds, 'errors_removed', 'd')} | "
            f"{'n/a' if reduction is None else f'{reduction:.1%}'} | "
            f"{_per_seed(entry, seeds, 'clean_agreement', '.3f')} | "
            f"{_per_seed(entry, seeds, 'earlier_fixes_kept', '.1%')} | "
            f"{_difference(entry, 'nights_passed', '.1f')} | "
            f"{_difference(entry, 'errors_removed', '.1f')} | "
            f"{_difference(entry, 'earlier_fixes_kept', '.1%')} |")
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "seeds.json").write_text(json.dumps(results, indent=2))
    (out_dir / "seeds.md").write_text(markdown(results))
    return results
