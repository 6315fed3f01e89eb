"""Probe one shift's subpopulation edited inside a nearest-neighbour scope, outside the flow.

Why: the continual benchmark says *that* a night's scoped units generalize too little; this
says *why*, per setting, on the benchmark's own world: how many held-out errors fall inside
the scope (coverage), how many of those the edit fixes (generalization), and how many correct
shifted images of the never-served half it breaks.

    .venv/bin/python scripts/scope_probe.py rotate '[{}, {"opts": {"jitter_copies": 4}}]'

Each setting is a JSON object: ``method`` (default: the scoped recipe's editor), ``opts``
(editor options on top of ``PRODUCT_SCOPED``, or the whole options for another method),
``margin`` (scope ratio, default 0.8), ``heldout`` (share of errors held out, default 0.5).
"""

from __future__ import annotations

import json
import sys
import time

import torch

from benchmarks.continual.scenario import Scenario, World, as_served
from vitedit_ops.editors import PRODUCT_SCOPED, ScopedEditor, create_editor
from vitedit_ops.metrics import predict_logits
from vitedit_ops.preprocess import Preprocessor
from vitedit_ops.reference.hypernet import load_reference_with_hypernet
from vitedit_ops.scope import window_keys


def probe(kind: str, settings: list[dict]) -> None:
    reference, hypernet = load_reference_with_hypernet()
    model, data = reference.model, reference.data
    pre = Preprocessor(reference.spec)
    world = World.build(data, Scenario())
    window = hypernet.window(model)
    outside = pre.normalize(as_served(data.preserved.pixels))
    suite = pre.normalize(data.locality.pixels)
    suite_before = predict_logits(model, suite).argmax(-1)
    day = world.scenario.days.index(kind)
    shifted = [r for r in world.requests(day) if r.subpopulation != "clean"]
    x = pre.normalize(torch.stack([r.pixels for r in shifted]))
    y = torch.tensor([r.true_class for r in shifted])
    wrong = (predict_logits(model, x).argmax(-1) != y).nonzero().flatten()
    right = (predict_logits(model, x).argmax(-1) == y).nonzero().flatten()
    eval_pixels, eval_labels = world.evaluation_set(kind)
    ev = pre.normalize(eval_pixels)
    eval_wrong = predict_logits(model, ev).argmax(-1) != eval_labels
    print(f"{kind}: {len(shifted)} shifted images served on day {day + 1}, {len(wrong)} errors; "
          f"never-served half: {int(eval_wrong.sum())}/{len(eval_labels)} errors", flush=True)
    for setting in settings:
        order = wrong[torch.randperm(len(wrong), generator=torch.Generator().manual_seed(0))]
        held = order[:round(len(order) * setting.get("heldout", 0.5))]
        edit = order[len(held):]
        train, labels = torch.cat([x[edit], x[right]]), torch.cat([y[edit], y[right]])
        method, opts = setting.get("method", PRODUCT_SCOPED.method), dict(setting.get("opts", {}))
        if "window" in opts:
            opts["window"] = tuple(opts["window"])
        inner = (PRODUCT_SCOPED.create(hypernet=hypernet, **opts)
                 if method == PRODUCT_SCOPED.method else create_editor(method, **opts))
        editor = ScopedEditor(inner=inner, window=window, outside=outside,
                              margin=setting.get("margin", 0.8))
        started = time.perf_counter()
        result = editor.edit(model, train, labels)
        result.patch.apply(model)
        try:
            scope = result.patch.scope
            in_scope = scope.covers(window_keys(model, window, x[held])).float().mean()
            generalization = (predict_logits(model, x[held]).argmax(-1) == y[held]).float().mean()
            locality = (predict_logits(model, suite).argmax(-1) == suite_before).float().mean()
            after = predict_logits(model, ev).argmax(-1)
            eval_in_scope = scope.covers(window_keys(model, window, ev[eval_wrong])).float().mean()
            fixed = (after[eval_wrong] == eval_labels[eval_wrong]).float().mean()
            broken = int(((after != eval_labels) & ~eval_wrong).sum())
        finally:
            result.patch.revert(model)
        print(f"  {json.dumps(setting)}: {result.steps} steps; held-out errors in scope "
              f"{in_scope:.2f}, fixed {generalization:.2f}; suite locality {locality:.4f}; "
              f"never-served errors in scope {eval_in_scope:.2f}, fixed {fixed:.2f}; correct "
              f"never-served images broken {broken}/{int((~eval_wrong).sum())} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    probe(sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else [{}])
