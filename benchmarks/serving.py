"""Serving benchmark: the prediction logger, file ingest and ``vitedit-ops serve`` on loopback.

Why: the loop only learns from what serving logs, so the logger must keep up with the server
(goal: >= 10,000 records/s into PostgreSQL on 2 cores), and the server must not waste the
model's speed (goal: served images/s at concurrency 32 >= 0.8 x a bare onnxruntime session at
the same batch size). Measured, in one run so the ratios sit side by side:

- logger records/s into SQLite and PostgreSQL, 1 and 4 processes, each record with its own
  new image (hashed, header-checked, written to the image store) and each referring to an
  image already stored (the database path alone); CPU microseconds per record beside it;
- file ingest records/s (JSON Lines, every image read, verified, decoded and stored);
- the reference model served by a real ``vitedit-ops serve`` process: images/s at
  concurrency 32 against a bare onnxruntime session at batch 32 on the same ONNX file, the
  p50/p99 latency of a bounded open-loop load generator at 50%, 80% and 100% of that peak,
  and every answered prediction stored exactly once while the champion alias moves 3 times;
- the served / bare ratio along the two axes that decide it, side by side: images per
  request (1, and 16 in a multipart form) and the model's cost (the reference, and a
  realistically sized timm ViT with random weights, a throughput-only model served the same
  way), each row with the server's CPU per image (read from /proc), the load generator's
  and the bare session's: where the CPU of a served image goes.

The machine is shared: the load average is recorded at the start and end, and CPU time per
record is reported beside wall-clock rates (other processes stretch the wall time, not the
work done).
"""

from __future__ import annotations

import copy
import http.client
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from monitoring.images import ImageStore
from monitoring.ingest import ingest_file
from monitoring.logger import PredictionLogger
from monitoring.store import open_store

from .home import bench_home
from .loadgen import CONCURRENCY, closed_loop, open_loop, predict_requests
from .monitoring import _png, _throwaway_pg_database, _write_inputs

LOGGER_GOAL_PER_S = 10_000
SERVED_RATIO_GOAL = 0.8
LOAD_LEVELS = (0.5, 0.8, 1.0)
NUM_CLASSES = 10
MODEL = "bench-served"
IMAGES_PER_REQUEST = 16     # the multi-image requests beside one image per request
THROUGHPUT_ARCH = "vit_tiny_patch16_224"  # realistic size; 8-18 images/s on the busy 2 cores
THROUGHPUT_MODEL = "bench-served-throughput"
THROUGHPUT_IMAGES = 64      # distinct images sent to it
THROUGHPUT_SUITE = 8        # images of its suite (registration needs one; nothing is gated)


# -- the logger ---------------------------------------------------------------------------
def _logger_process(url: str, cas: str, n: int, offset: int, own_images: bool,
                    ready: Any, go: Any, results: Any) -> None:
    """One process logging ``n`` records as a server would; reports its timings."""
    with open_store(url, migrate=False) as store:
        images = ImageStore(cas)
        pngs = [_png(offset + i) for i in range(n)] if own_images else []
        shared = _png(0)
        sha = images.put(shared)
        uri = images.uri_for(sha)
        logger = PredictionLogger(store, images, batch_size=1000, max_queue=n + 1,
                                  flush_interval=0.2)
        ready.put(os.getpid())
        go.wait()
        start, cpu = time.time(), time.process_time()
        for i in range(n):
            if own_images:
                logger.log(f"p{offset + i}", model="vit", model_version="1", predicted_class=1,
                           topk=[[1, 0.9], [2, 0.05], [3, 0.01]], image=pngs[i],
                           image_decoded=True, metadata={"filename": "x.png"})
            else:
                logger.log(f"p{offset + i}", model="vit", model_version="1", predicted_class=1,
                           topk=[[1, 0.9], [2, 0.05], [3, 0.01]], image_uri=uri,
                           image_sha256=sha, metadata={"filename": "x.png"})
        logger.flush()
        end, cpu = time.time(), time.process_time() - cpu
        stats = logger.stats()
        logger.close()
    results.put({"start": start, "end": end, "cpu_s": cpu, "accepted": stats.accepted,
                 "dropped": stats.dropped, "quarantined": stats.quarantined})


def _logger_rate(url: str, root: Path, processes: int, n: int, own_images: bool
                 ) -> dict[str, Any]:
    with open_store(url) as store:
        store.register_model("vit", NUM_CLASSES)
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    cas = str(root / f"cas-{time.monotonic_ns()}")
    share = n // processes
    workers = [context.Process(target=_logger_process, args=(
        url, cas, share, k * share, own_images, ready, go, results)) for k in range(processes)]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.get(timeout=600)
    go.set()
    done = [results.get(timeout=1800) for _ in workers]
    for worker in workers:
        worker.join(60)
    accepted = sum(d["accepted"] for d in done)
    wall = max(d["end"] for d in done) - min(d["start"] for d in done)
    with open_store(url, migrate=False) as store:
        stored = store.counts()["predictions"]
    return {"records": share * processes, "accepted": accepted, "stored": stored,
            "dropped": sum(d["dropped"] for d in done),
            "per_s": round(accepted / wall), "cpu_us_per_record":
            round(sum(d["cpu_s"] for d in done) / max(1, accepted) * 1e6, 1)}


def _bench_logger(root: Path, quick: bool) -> dict[str, Any]:
    n = 4_000 if quick else 20_000
    out: dict[str, Any] = {"goal_postgresql_per_s": LOGGER_GOAL_PER_S,
                           "image": "16x16 PNG (~70 bytes), a new one per record"}
    for backend in ("sqlite", "postgresql"):
        rows: dict[str, Any] = {}
        for processes in (1, 4):
            for own_images in (True, False):
                label = f"{processes}p_{'new_images' if own_images else 'stored_image'}"
                if backend == "sqlite":
                    url = f"sqlite:///{root / f'logger-{label}.db'}"
                    rows[label] = _logger_rate(url, root, processes, n, own_images)
                    continue
                with _throwaway_pg_database() as url:
                    if url is None:
                        rows = {"skipped": "no PostgreSQL server answered "
                                           "(set VITEDIT_BENCH_PG_URL)"}
                        break
                    rows[label] = _logger_rate(url, root, processes, n, own_images)
            if "skipped" in rows:
                break
        out[backend] = rows
    pg = out["postgresql"]
    if "skipped" not in pg:
        best = max(pg[k]["per_s"] for k in pg)
        out["goal_met_postgresql"] = best >= LOGGER_GOAL_PER_S
    return out


def _bench_file_ingest(root: Path, quick: bool) -> dict[str, Any]:
    n = 2_000 if quick else 10_000
    predictions, _ = _write_inputs(root / "ingest-inputs", n)
    out: dict[str, Any] = {"records": n}
    for backend in ("sqlite", "postgresql"):
        with _throwaway_pg_database() if backend == "postgresql" else _nothing() as pg:
            url = pg if backend == "postgresql" else f"sqlite:///{root / 'ingest.db'}"
            if url is None:
                out[backend] = {"skipped": "no PostgreSQL server answered"}
                continue
            with open_store(url) as store:
                store.register_model("vit", NUM_CLASSES)
                start, cpu = time.perf_counter(), time.process_time()
                report = ingest_file("predictions", predictions, store=store,
                                     images=ImageStore(str(root / f"ingest-cas-{backend}")))
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            out[backend] = {"accepted": report.accepted, "per_s": round(report.accepted / wall),
                            "cpu_us_per_record": round(cpu / max(1, report.accepted) * 1e6, 1)}
    return out


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


# -- the served model ---------------------------------------------------------------------
def _edited(base: Any, spec: Any, suite: Any, inputs: Any, seed: int, onnx_path: Path) -> Any:
    """A small random FFN patch on the last block, gated for real on the suite: a second
    verified version for the alias to move to (its quality is not what is measured)."""
    import torch

    from registry.record import EditRunRecord, GroupEdit
    from vitedit_ops.export import export_onnx
    from vitedit_ops.gate.report import CheckResult, GateReport
    from vitedit_ops.metrics import predict_logits
    from vitedit_ops.models import fingerprint
    from vitedit_ops.patch import Patch

    block = len(base.blocks) - 1
    fc1, fc2 = f"blocks.{block}.mlp.fc1.weight", f"blocks.{block}.mlp.fc2.weight"
    hidden, width = base.get_parameter(fc1).shape
    generator = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(base)
    index = torch.randperm(hidden, generator=generator)[:16]
    deltas = [(fc1, "rows", index, torch.randn(16, width, generator=generator) * 1e-3),
              (fc2, "cols", index.clone(), torch.randn(width, 16, generator=generator) * 1e-3)]
    patch = Patch.from_deltas(model, deltas, base_fingerprint=fingerprint(model),
                              metadata={"group": f"bench-{seed}"})
    patch.apply(model)
    before = predict_logits(base, inputs).argmax(-1)
    after = predict_logits(model, inputs).argmax(-1)
    locality = float((after == before).float().mean())
    report = GateReport(
        checks=[CheckResult.evaluate("locality", locality, 0.9, ">=")],
        suite_hash=suite.content_hash, base_fingerprint=fingerprint(base),
        candidate_fingerprint=fingerprint(model))
    group = GroupEdit(key=f"bench-{seed}", num_edit_images=1, num_heldout_images=5,
                      patch=patch, success=True, kept_units={fc1: index, fc2: index})
    return EditRunRecord(
        registered_model=MODEL, parent_version="1", parent_fingerprint=fingerprint(base),
        base_version="1", lineage_root_fingerprint=fingerprint(base), method="bench-random",
        settings={"seed": seed}, window=f"block {block}", groups=[group],
        metrics_before={"locality": 1.0}, metrics_after={"locality": locality},
        gate_report=report, model=model, spec=spec,
        suite_labels=torch.as_tensor(suite.labels), suite_predictions_before=before,
        suite_predictions_after=after,
        onnx=export_onnx(model, spec.input_size, onnx_path))


def _bare_ort(onnx_path: Path, inputs: Any, seconds: float, as_served: bool
              ) -> dict[str, Any]:
    """Images/s of a bare onnxruntime session on batches of CONCURRENCY normalised images:
    onnxruntime's defaults, or the server's options (idle threads sleep), which run faster on
    a busy machine and may run slower on an idle one; the ratio takes the faster. Its CPU per
    image is what the model itself costs, the figure the server's CPU is read against."""
    from vitedit_ops.export import load_session

    session = load_session(onnx_path, prefer_cuda=True, spinning=not as_served)
    name = session.get_inputs()[0].name
    batch = inputs[:CONCURRENCY].numpy()
    session.run(None, {name: batch})
    runs, start, cpu = 0, time.perf_counter(), time.process_time()
    while runs < 5 or time.perf_counter() - start < seconds:
        session.run(None, {name: batch})
        runs += 1
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"batch": len(batch), "images_per_s": round(runs * len(batch) / wall, 1),
            "cpu_ms_per_image": round(cpu / (runs * len(batch)) * 1000, 3)}


def _decode_cost(spec: Any, images: list[bytes]) -> dict[str, Any]:
    """Per-image CPU of what the server does around the model, as its batch thread does it
    (torch on one thread, batches of CONCURRENCY): PNG decode and timm's preprocessing (the
    logger's share is the logger benchmark's CPU per record)."""
    import torch

    from vitedit_ops.preprocess import Preprocessor, open_image

    pre = Preprocessor(spec)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cpu = time.process_time()
        for i in range(0, len(images), CONCURRENCY):
            pre.normalize(torch.stack([pre.pixels_from_pil(open_image(image))
                                       for image in images[i:i + CONCURRENCY]]))
        cpu = time.process_time() - cpu
    finally:
        torch.set_num_threads(threads)
    return {"decode_and_preprocess_us_per_image": round(cpu / len(images) * 1e6, 1)}


def _metric(port: int, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def _swaps_under_load(server: Any, home: Path, requests: list[bytes], runs: dict[str, str],
                      uri: str) -> dict[str, Any]:
    """Clients at concurrency 32 while the alias moves 1 -> 2 -> 3 -> 2 (promote, promote,
    rollback); then every answered prediction must be in the server's store exactly once,
    under the version that answered it."""
    import sqlalchemy as sa

    from monitoring.schema import Prediction
    from registry.promotion import promote, rollback
    from serving.client import ServingClient

    answered: list[tuple[str, str]] = []
    statuses: list[int] = []
    lock = threading.Lock()

    def keep(status: int, body: dict[str, Any]) -> None:
        with lock:
            statuses.append(status)
            if status == 200:
                answered.extend((p["prediction_id"], p["version"]) for p in body["predictions"])
    stop = threading.Event()
    port = server.port
    loop = threading.Thread(target=closed_loop, args=(port, requests, 0, 1, keep, stop))
    loop.start()
    moves = []
    try:
        with ServingClient(server.url) as client:
            for target, move in (("2", lambda: promote(runs["2"], user="bench", reason="bench",
                                                       tracking_uri=uri)),
                                 ("3", lambda: promote(runs["3"], user="bench", reason="bench",
                                                       tracking_uri=uri)),
                                 ("2", lambda: rollback(MODEL, user="bench", reason="bench",
                                                        tracking_uri=uri))):
                time.sleep(2.0)
                started = time.perf_counter()
                move()
                while client.ready_version() != target:
                    if time.perf_counter() - started > 300:
                        raise RuntimeError(f"the server did not move to v{target} in 300 s")
                    time.sleep(0.1)
                moves.append({"to": target, "seconds": round(time.perf_counter() - started, 2)})
            time.sleep(2.0)
    finally:
        stop.set()
        loop.join()
    dropped = _metric(port, "vitedit_serve_logger_records_total", outcome="dropped")
    server.stop()  # SIGTERM: the queue is written before the exit
    with open_store(f"sqlite:///{home / 'monitoring.db'}", migrate=False) as store:
        with store.read() as conn:
            stored = conn.execute(sa.select(Prediction.id, Prediction.model_version)
                                  ).tuples().all()
    ids = [pid for pid, _ in answered]
    stored_map = dict(stored)
    return {"swaps": moves, "requests": len(statuses),
            "failed": sum(s != 200 for s in statuses),
            "answered_predictions": len(ids), "distinct_ids": len(set(ids)),
            "stored_rows": len(stored),
            "versions_answered": sorted({v for _, v in answered}),
            "missing": sum(pid not in stored_map for pid in ids),
            "wrong_version": sum(stored_map.get(pid, v) != v for pid, v in answered),
            "logger_dropped": dropped,
            "exactly_once": (len(set(ids)) == len(ids) and set(ids) <= set(stored_map)
                             and all(stored_map[p] == v for p, v in answered)
                             and not any(s != 200 for s in statuses))}


def _stack() -> str:
    """The HTTP parser and event loop ``serve --http auto --loop auto`` gets here."""
    import importlib.util

    parser = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"{parser} + {loop}"


def _cpu_seconds(pid: int, thread: int | None = None) -> float | None:
    """User + system CPU seconds of process ``pid`` (every thread it ran), or of one of its
    threads, read from /proc as the kernel counts them; None where there is no /proc."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        fields = Path(path).read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _served(server: Any, requests: list[bytes], per_request: int, seconds: float
            ) -> dict[str, Any]:
    """The server's images/s at concurrency 32 and what they cost, over this measurement
    only: images per onnxruntime call, logger drops, the server's CPU per image (all its
    threads, and its event loop's thread alone), the cores it got, the load generator's
    CPU per image."""
    pid, port = server.process.pid, server.port

    def counters() -> dict[str, float | None]:
        return {"batches": _metric(port, "vitedit_serve_batch_size_count"),
                "batched": _metric(port, "vitedit_serve_batch_size_sum"),
                "dropped": _metric(port, "vitedit_serve_logger_records_total",
                                   outcome="dropped"),
                "cpu": _cpu_seconds(pid), "loop": _cpu_seconds(pid, pid),
                "client": time.process_time(), "wall": time.perf_counter()}
    before = counters()
    row = closed_loop(port, requests, seconds, per_request)
    after = counters()
    spent = {key: None if before[key] is None or after[key] is None
             else after[key] - before[key] for key in before}
    images = max(1, row["ok"] * per_request)
    wall = spent["wall"]

    def per_image(key: str) -> float | None:
        return None if spent[key] is None else round(spent[key] / images * 1000, 3)
    return {**row,
            "batch_sizes_mean": round(spent["batched"] / max(1.0, spent["batches"]), 1),
            "logger_dropped": int(spent["dropped"]),
            "server_cpu_ms_per_image": per_image("cpu"),
            "event_loop_cpu_ms_per_image": per_image("loop"),
            "server_cores": None if spent["cpu"] is None else round(spent["cpu"] / wall, 2),
            "client_cpu_ms_per_image": per_image("client")}


BARE_KEYS = ("bare_onnxruntime", "bare_onnxruntime_as_served")


def _side_by_side(server: Any, onnx_path: Path, inputs: Any, axes: dict[int, list[bytes]],
                  seconds: float) -> dict[str, Any]:
    """The server at each number of images per request, between two measurements of bare
    onnxruntime (both option sets) on the same ONNX file: every ratio is against the mean of
    the faster bare session's two runs, in the same stretch of machine load. Beside it, the
    model's share of the CPU a served image costs (the bare session's CPU per image over the
    server's plus the load generator's): the ratio to expect when both saturate the cores."""
    out: dict[str, Any] = {}
    for key in BARE_KEYS:
        out[key] = _bare_ort(onnx_path, inputs, seconds, as_served=key.endswith("served"))
    served = [_served(server, requests, n, seconds) for n, requests in axes.items()]
    for key in BARE_KEYS:
        out[f"{key}_after"] = _bare_ort(onnx_path, inputs, seconds,
                                        as_served=key.endswith("served"))
    bares = {key: statistics.mean([out[key]["images_per_s"],
                                   out[f"{key}_after"]["images_per_s"]]) for key in BARE_KEYS}
    out["bare_reference"] = max(bares, key=bares.__getitem__)
    bare = bares[out["bare_reference"]]
    model_cpu = round(statistics.mean(out[f"bare_onnxruntime_as_served{when}"]
                                      ["cpu_ms_per_image"] for when in ("", "_after")), 3)
    out["rows"] = []
    for row in served:
        ratio = round(row["images_per_s"] / bare, 3)
        cost = (None if row["server_cpu_ms_per_image"] is None
                else row["server_cpu_ms_per_image"] + row["client_cpu_ms_per_image"])
        out["rows"].append({**row, "bare_images_per_s": round(bare, 1),
                            "served_to_bare_ratio": ratio,
                            "goal_met": ratio >= SERVED_RATIO_GOAL,
                            "model_cpu_ms_per_image": model_cpu,
                            "model_share_of_cpu": None if not cost else round(model_cpu / cost,
                                                                              3)})
    return out


def _throughput_model(root: Path, uri: str, env: dict[str, str], spec: Any, pixels: Any,
                      labels: Any, per_request: int, seconds: float) -> dict[str, Any]:
    """A realistically sized timm model with random weights beside the reference: registered,
    exported and served exactly as the reference is, against its own bare session. A
    throughput-only model (its answers mean nothing): it shows how the ratio moves when the
    model, not the HTTP and Python around it, costs most of an image's CPU. Its images are the
    reference digits resized to its input size, as PNG bodies."""
    import torch
    import torch.nn.functional as F

    from registry.base import register_base
    from serving.process import ServeProcess
    from vitedit_ops.export import export_onnx
    from vitedit_ops.gate import build_suite
    from vitedit_ops.imagefiles import png_bytes
    from vitedit_ops.models import save_model
    from vitedit_ops.preprocess import Preprocessor

    torch.manual_seed(0)
    model = spec.build().eval()
    with torch.no_grad():
        resized = F.interpolate(pixels[:THROUGHPUT_IMAGES], size=tuple(spec.input_size[1:]),
                                mode="bicubic", align_corners=False).clamp(0, 1)
    images = [png_bytes(p) for p in resized]
    suite = root / "throughput-suite"  # a few images: nothing is ever gated on it
    build_suite(suite, model, spec, resized[:THROUGHPUT_SUITE], labels[:THROUGHPUT_SUITE])
    onnx = export_onnx(model, spec.input_size, root / "throughput.onnx")
    weights = save_model(model, spec, root / "throughput" / "model.safetensors")
    register_base(weights, suite, name=THROUGHPUT_MODEL, onnx=onnx, tracking_uri=uri)
    kwargs = "".join(f", {k}={v}" for k, v in sorted(spec.model_kwargs.items()))
    size = "x".join(map(str, spec.input_size[1:]))
    out: dict[str, Any] = {
        "model": f"timm {spec.architecture}{kwargs} at {size} "
                 f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters), "
                 "random weights: a throughput-only model, its answers mean nothing",
        "throughput_only": True}
    single = predict_requests(images, 1)
    with ServeProcess(THROUGHPUT_MODEL, root / "serve-throughput.log", env=env) as server:
        closed_loop(server.port, single, min(2.0, seconds))  # warm-up
        out.update(_side_by_side(server, onnx.path, Preprocessor(spec).normalize(resized),
                                 {1: single, per_request: predict_requests(images, per_request)},
                                 seconds))
    out["where_time_goes"] = _decode_cost(spec, images)
    return out


def _bench_serving(root: Path, seconds: float, per_request: int, throughput_spec: Any
                   ) -> dict[str, Any]:
    from registry.base import register_base
    from registry.mlflow_registry import publish_edit
    from serving.process import ServeProcess
    from vitedit_ops.export import export_onnx
    from vitedit_ops.gate import build_suite
    from vitedit_ops.imagefiles import png_bytes
    from vitedit_ops.preprocess import Preprocessor
    from vitedit_ops.models import save_model
    from vitedit_ops.reference import load_reference_data
    from vitedit_ops.settings import get_settings

    from .gate import reference_sized_model

    # the reference architecture with seeded weights (speed does not depend on them, and the
    # shared reference cache may be locked by a build), on the reference's real digits
    model, spec = reference_sized_model()
    data = load_reference_data()
    pixels = data.validation.pixels
    images = [png_bytes(p) for p in pixels]
    single = predict_requests(images, 1)
    axes = {1: single, per_request: predict_requests(images, per_request)}
    inputs = Preprocessor(spec).normalize(pixels)
    home = root / "serve-home"
    with bench_home(home):
        uri = get_settings().resolved_mlflow_uri()
        pool = data.locality
        suite = build_suite(home / "suite", model, spec, pool.pixels, pool.labels, pool.ids)
        onnx = export_onnx(model, spec.input_size, root / "base.onnx")
        weights = save_model(model, spec, root / "base" / "model.safetensors")
        base = register_base(weights, home / "suite", name=MODEL, onnx=onnx, tracking_uri=uri)
        suite_inputs = Preprocessor(spec).normalize(pool.pixels)
        runs = {base.version: base.run_id}
        for version, seed in (("2", 2), ("3", 3)):
            record = _edited(model, spec, suite, suite_inputs, seed,
                             root / f"edit-{seed}.onnx")
            runs[version] = publish_edit(record, uri).run_id
        env = {"VITEDIT_HOME": str(home), "VITEDIT_MLFLOW_TRACKING_URI": uri}
        # uvicorn's pure-Python stack first (h11 parser, asyncio loop), then what `serve`
        # runs by default (httptools and uvloop when installed): the lever side by side
        python_stack = ServeProcess(MODEL, root / "serve-h11.log", "--poll-interval", "0.5",
                                    "--http", "h11", "--loop", "asyncio", env=env)
        python_stack.start()
        try:
            closed_loop(python_stack.port, single, min(2.0, seconds))  # warm-up
            served_python = closed_loop(python_stack.port, single, seconds)
        finally:
            python_stack.stop()
        server = ServeProcess(MODEL, root / "serve.log", "--poll-interval", "0.5", env=env)
        port = server.port
        server.start()
        try:
            out: dict[str, Any] = {"model": "the reference ViT architecture (32x32, width "
                                            "128, depth 6), seeded weights",
                                   "store": "SQLite (the default)",
                                   "concurrency": CONCURRENCY,
                                   "images_per_request": list(axes)}
            closed_loop(port, single, min(2.0, seconds))  # warm-up
            side = _side_by_side(server, root / "base.onnx", inputs, axes, seconds)
            rows = side.pop("rows")
            out.update(side)
            out["served"] = {**rows[0], "stack": _stack()}
            out["served_h11_asyncio"] = {**served_python, "stack": "h11 + asyncio"}
            bare = rows[0]["bare_images_per_s"]
            out["served_to_bare_ratio"] = rows[0]["served_to_bare_ratio"]
            out["served_h11_asyncio_to_bare_ratio"] = round(
                served_python["images_per_s"] / bare, 3)
            out["goal_ratio"] = SERVED_RATIO_GOAL
            out["goal_met"] = rows[0]["goal_met"]  # the reference, one image per request
            peak = out["served"]["images_per_s"]
            out["latency"] = {f"{int(level * 100)}%": open_loop(port, single, level * peak,
                                                                seconds)
                              for level in LOAD_LEVELS}
            out["where_time_goes"] = {**_decode_cost(spec, images),
                                      "batch_sizes_mean": rows[0]["batch_sizes_mean"]}
            out["alias_swaps"] = _swaps_under_load(server, home, single, runs, uri)
        finally:
            server.stop()
        out["ratios"] = [{"model": "reference", "throughput_only": False, **row}
                         for row in rows]
        other = _throughput_model(root, uri, env, throughput_spec, pixels,
                                  data.validation.labels, per_request, seconds)
        out["throughput_model"] = other
        out["ratios"] += [{"model": throughput_spec.architecture, "throughput_only": True,
                           **row} for row in other.pop("rows")]
    return out


def run_benchmark(quick: bool, seconds: float | None = None,
                  images_per_request: int | None = None,
                  throughput_model: str | Any | None = None) -> dict[str, Any]:
    """Logger, file ingest and served throughput; see the module doc. ``seconds`` per
    serving measurement: None is 5 (quick) or 10 (the tests check the structure with 1).
    ``images_per_request``: the multi-image requests measured beside one image per request
    (None: 16; at most one batch, 32). ``throughput_model``: the model served beside the
    reference, a timm name or a ``ModelSpec`` (None: vit_tiny_patch16_224, 10 classes)."""
    from vitedit_ops.errors import InvalidInputError
    from vitedit_ops.models import ModelSpec

    seconds = seconds or (5.0 if quick else 10.0)
    per_request = images_per_request or IMAGES_PER_REQUEST
    if not 2 <= per_request <= CONCURRENCY:
        raise InvalidInputError(f"images per request {per_request}: the multi-image requests "
                                f"need 2 to {CONCURRENCY} images (one batch at most)")
    # resolved first: a bad name fails now, not after the logger's minutes
    spec = (throughput_model if isinstance(throughput_model, ModelSpec)
            else ModelSpec.for_timm_model(throughput_model or THROUGHPUT_ARCH, NUM_CLASSES))
    out: dict[str, Any] = {
        "quick": quick,
        "note": (f"QUICK MODE: fewer records and {seconds:g} s per serving measurement"
                 if quick else "full sizes: 20,000 records per logger configuration, "
                 f"{seconds:g} s per serving measurement")
                + "; a shared 2-core machine: see the load averages",
        "cpus": os.cpu_count(), "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory(prefix="vitedit-bench-serving-") as tmp:
        root = Path(tmp)
        out["logger"] = _bench_logger(root, quick)
        out["file_ingest"] = _bench_file_ingest(root, quick)
        out["serving"] = _bench_serving(root, seconds, per_request, spec)
    out["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def markdown(results: dict[str, Any]) -> str:
    """The docs/BENCHMARKS.md section of one run: every ratio of the run side by side."""
    lines = ["## Serving and logger throughput", "",
             f"One `vitedit-ops bench --serving{' --quick' if results['quick'] else ''}` run "
             f"({results['note']}); {results['cpus']} cores, load average "
             f"{results['load_average_start'][0]} at the start and "
             f"{results['load_average_end'][0]} at the end (other jobs shared the machine: "
             "wall-clock rates are lower bounds, CPU per record is the steadier figure). "
             "Results: `docs/serving-results.json`.", ""]
    logger = results["logger"]
    lines += [f"**Prediction logger** (goal >= {logger['goal_postgresql_per_s']:,} records/s "
              f"into PostgreSQL; image: {logger['image']}):", "",
              "| store | processes | images | records/s | CPU us/record | dropped |",
              "|---|---|---|---|---|---|"]
    for backend in ("sqlite", "postgresql"):
        rows = logger[backend]
        if "skipped" in rows:
            lines.append(f"| {backend} | - | - | skipped: {rows['skipped']} | | |")
            continue
        for label, row in rows.items():
            processes, images = label.split("_", 1)
            lines.append(f"| {backend} | {processes[:-1]} | "
                         f"{'a new one per record' if images == 'new_images' else 'already stored'}"
                         f" | {row['per_s']:,} | {row['cpu_us_per_record']} | {row['dropped']} |")
    ingest = results["file_ingest"]
    lines += ["", f"**File ingest** ({ingest['records']:,} JSON Lines records, every image "
              "read, verified, decoded and stored): "
              + ", ".join(f"{b} {ingest[b]['per_s']:,}/s ({ingest[b]['cpu_us_per_record']} us "
                          "CPU/record)" for b in ("sqlite", "postgresql")
                          if "per_s" in ingest.get(b, {})), ""]
    serving = results["serving"]
    if "error" in serving:
        return "\n".join(lines + [f"Serving: not measured ({serving['error']})"]) + "\n"
    bare = {key: (serving[key]["images_per_s"], serving[f"{key}_after"]["images_per_s"])
            for key in ("bare_onnxruntime", "bare_onnxruntime_as_served")}
    reference = {"bare_onnxruntime": "its defaults",
                 "bare_onnxruntime_as_served": "as served"}[serving["bare_reference"]]
    lines += [f"**Served** ({serving['model']}, logger into {serving['store']}, raw PNG "
              f"bodies, concurrency {serving['concurrency']}):", "",
              "| figure | value |", "|---|---|",
              f"| bare onnxruntime, batch {serving['bare_onnxruntime']['batch']}, its defaults "
              f"(before, after) | {bare['bare_onnxruntime'][0]:,} / "
              f"{bare['bare_onnxruntime'][1]:,} images/s |",
              f"| bare onnxruntime, batch {serving['bare_onnxruntime']['batch']}, as served "
              f"(idle threads sleep; before, after) | "
              f"{bare['bare_onnxruntime_as_served'][0]:,} / "
              f"{bare['bare_onnxruntime_as_served'][1]:,} images/s |",
              f"| `vitedit-ops serve --http h11 --loop asyncio`, 32 clients | "
              f"{serving['served_h11_asyncio']['images_per_s']:,} images/s "
              f"({serving['served_h11_asyncio']['failed']} failed); served / bare "
              f"{serving['served_h11_asyncio_to_bare_ratio']} |",
              f"| `vitedit-ops serve` ({serving['served']['stack']}), 32 clients | "
              f"{serving['served']['images_per_s']:,} images/s "
              f"({serving['served']['failed']} failed) |",
              f"| served / bare (the faster bare: {reference}; goal >= {serving['goal_ratio']}) | "
              f"**{serving['served_to_bare_ratio']}** |",
              f"| mean images per onnxruntime call (during the 32-client measurement) | "
              f"{serving['where_time_goes']['batch_sizes_mean']} |",
              f"| PNG decode + timm preprocessing | "
              f"{serving['where_time_goes']['decode_and_preprocess_us_per_image']} us CPU/image |"]
    for level, row in serving["latency"].items():
        lines.append(f"| {level} of peak ({row['target_per_s']}/s offered, "
                     f"{row['achieved_per_s']}/s done) | p50 {row['p50_ms']} ms, "
                     f"p99 {row['p99_ms']} ms, {row['failed']} failed |")
    swaps = serving["alias_swaps"]
    lines.append(f"| 3 alias swaps under load ({', '.join('v' + m['to'] for m in swaps['swaps'])}"
                 f"; {swaps['requests']:,} requests, {swaps['failed']} failed) | "
                 f"{swaps['answered_predictions']:,} answered, {swaps['stored_rows']:,} stored, "
                 f"{swaps['missing']} missing, {swaps['wrong_version']} under another version: "
                 f"exactly once **{swaps['exactly_once']}** |")
    return "\n".join(lines + _ratio_table(serving)) + "\n"


def _ratio_table(serving: dict[str, Any]) -> list[str]:
    """The ratio along its two axes, images per request and the model's cost, one row per
    measurement, with where each served image's CPU went."""
    other = serving["throughput_model"]
    lines = ["", f"**Served / bare side by side** (concurrency {serving['concurrency']}, one "
             "image as a raw PNG body or several as a multipart form; each model against its "
             "own bare onnxruntime at batch 32, the faster option set, measured before and "
             f"after its served rows; the throughput-only model is {other['model']}):", "",
             "| model | images per request | served images/s | bare images/s | served / bare "
             "(goal >= 0.8) | images per onnxruntime call | server CPU ms/image (of it the "
             "event loop) | server cores | load generator CPU ms/image | bare CPU ms/image | "
             "model's share of the CPU | logger drops |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in serving["ratios"]:
        name = ("reference" if not row["throughput_only"]
                else f"{row['model']} (throughput only)")
        lines.append(
            f"| {name} | {row['images_per_request']} | {row['images_per_s']:,} | "
            f"{row['bare_images_per_s']:,} | **{row['served_to_bare_ratio']}** | "
            f"{row['batch_sizes_mean']} | {row['server_cpu_ms_per_image']} "
            f"({row['event_loop_cpu_ms_per_image']}) | {row['server_cores']} | "
            f"{row['client_cpu_ms_per_image']} | {row['model_cpu_ms_per_image']} | "
            f"{row['model_share_of_cpu']} | {row['logger_dropped']} |")
    met = [f"{'reference' if not r['throughput_only'] else r['model']} at "
           f"{r['images_per_request']} image(s) per request" for r in serving["ratios"]
           if r["goal_met"]]
    lines += ["", f"Goal (served >= 0.8 x bare at concurrency 32) met by: "
              f"{', '.join(met) if met else 'no row'}. PNG decode + timm preprocessing of the "
              "throughput-only model: "
              f"{other['where_time_goes']['decode_and_preprocess_us_per_image']} us CPU/image."]
    return lines
