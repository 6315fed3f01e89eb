"""``vitedit-ops ingest ...`` and ``vitedit-ops collect``, registered via entry point.

Import-light on purpose: this module is imported by every ``vitedit-ops`` call, so the store,
SQLAlchemy and PIL are imported inside the commands.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich.console import Console

from vitedit_ops.errors import InvalidInputError

if TYPE_CHECKING:
    from .ingest import Format, Kind

console = Console()
ingest_app = typer.Typer(no_args_is_help=True, add_completion=False,
                         help="Load production predictions and feedback into the store.")

StoreUrl = Annotated[str | None, typer.Option(
    "--store-url", help="SQLAlchemy URL of the store [default: VITEDIT_STORE_URL or SQLite "
    "under VITEDIT_HOME].")]
ImageStoreUrl = Annotated[str | None, typer.Option(
    "--image-store-url", help="Directory or fsspec URL of the image store [default: "
    "VITEDIT_IMAGE_STORE_URL or VITEDIT_HOME/images].")]
FormatOpt = Annotated[str | None, typer.Option(
    "--format", help="jsonl or csv [default: from the file extension].")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1,
                                        help="Records per transaction.")]


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``7d``, ``12h``, ``30m`` (ago) or an ISO 8601 timestamp (naive means UTC)."""
    from .validation import Rejected, parse_timestamp, utcnow

    now = now or utcnow()
    match = re.fullmatch(r"\s*(\d+)\s*([dhm])\s*", text)
    if match:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[match.group(2)]
        return now - timedelta(**{unit: int(match.group(1))})
    try:
        return parse_timestamp(text, now=now, max_skew=timedelta(days=36500))
    except Rejected:
        raise InvalidInputError(f"cannot read {text!r} as a time: use 7d, 12h, 30m or "
                                "ISO 8601") from None


def _check_format(fmt: str | None) -> Format | None:
    if fmt is None or fmt in ("jsonl", "csv"):
        return cast("Format | None", fmt)
    raise InvalidInputError(f"--format must be jsonl or csv, not {fmt!r}")


def _ingest(kind: Kind, path: Path, fmt: str | None, store_url: str | None,
            image_store_url: str | None, image_root: Path | None, batch_size: int) -> None:
    from .images import open_image_store
    from .ingest import ingest_file
    from .store import open_store

    checked = _check_format(fmt)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file")
    with open_store(store_url) as store:
        report = ingest_file(kind, path, store=store, images=open_image_store(image_store_url),
                             fmt=checked, image_root=image_root, batch_size=batch_size)
    if report.quarantined and not (report.accepted or report.duplicates):
        raise InvalidInputError(f"{path}: no record could be stored ({kind}: "
                                f"{report.summary()}); see the quarantine")
    console.print(f"{kind}: {report.summary()}", highlight=False)


@ingest_app.command("predictions")
def ingest_predictions(
    file: Annotated[Path, typer.Argument(help="JSON Lines or CSV file of predictions.")],
    fmt: FormatOpt = None,
    image_root: Annotated[Path | None, typer.Option(
        "--image-root", help="Directory local image paths resolve against and must stay "
        "inside [default: the file's directory].")] = None,
    batch_size: BatchSize = 1000,
    store_url: StoreUrl = None,
    image_store_url: ImageStoreUrl = None,
) -> None:
    """Ingest predictions; prints accepted, duplicate and quarantined counts."""
    _ingest("predictions", file, fmt, store_url, image_store_url, image_root, batch_size)


@ingest_app.command("feedback")
def ingest_feedback(
    file: Annotated[Path, typer.Argument(help="JSON Lines or CSV file of feedback.")],
    fmt: FormatOpt = None,
    batch_size: BatchSize = 1000,
    store_url: StoreUrl = None,
) -> None:
    """Ingest feedback (true labels); prints accepted, duplicate and quarantined counts."""
    _ingest("feedback", file, fmt, store_url, None, None, batch_size)


@ingest_app.command("model")
def ingest_model(
    name: Annotated[str, typer.Argument(help="Served model name, as predictions name it.")],
    num_classes: Annotated[int | None, typer.Option(
        "--num-classes", min=1, help="Number of classes.")] = None,
    labels: Annotated[str | None, typer.Option(
        "--labels", help="Comma-separated class labels (sets the number of classes).")] = None,
    store_url: StoreUrl = None,
) -> None:
    """Register a model's classes; predictions and feedback are checked against them."""
    from .store import open_store

    label_list = [x.strip() for x in labels.split(",")] if labels else None
    count = num_classes or (len(label_list) if label_list else None)
    if count is None:
        raise InvalidInputError("give --num-classes or --labels")
    with open_store(store_url) as store:
        store.register_model(name, count, label_list)
    console.print(f"model {name!r}: {count} classes registered", highlight=False)


def collect(
    model: Annotated[str, typer.Option("--model", help="Served model name.")],
    since: Annotated[str, typer.Option(
        "--since", help="Predictions from: 7d, 12h, 30m ago, or ISO 8601.")] = "7d",
    until: Annotated[str | None, typer.Option(
        "--until", help="Predictions before this time [default: now].")] = None,
    version: Annotated[str | None, typer.Option(
        "--version", help="Only predictions of this model version.")] = None,
    heldout_fraction: Annotated[float, typer.Option(
        "--heldout-fraction", min=0.0, max=0.99,
        help="Share of each group held out from editing.")] = 0.5,
    max_edit_images: Annotated[int | None, typer.Option(
        "--max-edit-images", min=1, help="Cap on edit images per group.")] = None,
    min_group_size: Annotated[int, typer.Option(
        "--min-group-size", min=1, help="Skip smaller groups.")] = 1,
    seed: Annotated[int | None, typer.Option(
        "--seed", help="Split seed [default: VITEDIT_SEED].")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write groups and summary as JSON here.")] = None,
    store_url: StoreUrl = None,
    image_store_url: ImageStoreUrl = None,
) -> None:
    """Collect error groups (true -> predicted) from misclassified production images."""
    from rich.table import Table

    from vitedit_ops.settings import get_settings

    from .collector import Collector
    from .images import open_image_store
    from .store import open_store

    since_ts = parse_since(since)
    until_ts = parse_since(until) if until else None
    with open_store(store_url) as store:
        result = Collector(store, open_image_store(image_store_url)).collect(
            since_ts, model, until=until_ts, version=version, heldout_fraction=heldout_fraction,
            max_edit_images=max_edit_images, min_group_size=min_group_size,
            seed=get_settings().seed if seed is None else seed)
    table = Table("group (true->pred)", "edit", "held-out", title=f"error groups of {model}")
    for group in result.groups:
        table.add_row(group.key, str(len(group.edit_images)), str(len(group.heldout_images)))
    console.print(table)
    s = result.summary
    console.print(f"{s.groups} groups, {s.edit_images} edit + {s.heldout_images} held-out "
                  f"images from {s.misclassified_feedback} misclassified feedback rows; left "
                  f"out: {s.already_used} already used, {s.conflicts} conflicting, "
                  f"{s.unknown_class} unknown class, {s.orphans_expired} orphaned "
                  f"({s.seconds:.2f} s)", highlight=False)
    if output is not None:
        output.write_text(json.dumps(result.to_dict(), indent=2))
        console.print(f"wrote {output}", highlight=False)


def register(app: typer.Typer) -> None:
    """Entry point of ``vitedit_ops.commands``: adds ``ingest`` and ``collect``."""
    app.add_typer(ingest_app, name="ingest")
    app.command("collect")(collect)
