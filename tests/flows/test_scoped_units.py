"""What a night's scoped editor is told to keep out of its scope: the preserved pool's clean
images always, the night's other units' images unless ``avoid_neighbours`` is off; which
editor it wraps (a learned update network's, when ``scoped.method`` is ke or mend); and how
a large cluster is split into units (``max_unit_errors``)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from flows.config import EditSettings
from flows.edits import GroupImages, _scoped_editor
from flows.preserved import PreservedPool
from vitedit_ops.gate.suite import image_hashes, load_suite
from vitedit_ops.hypernet import MaskHypernet
from vitedit_ops.learned_update import new_updater
from vitedit_ops.models import load_model
from vitedit_ops.scoped import ScopedPatch


def _unit(lineage, neighbours: torch.Tensor) -> GroupImages:
    pixels, labels = lineage.production, lineage.labels
    empty = torch.empty(0, *pixels.shape[1:])
    return GroupImages(key="sub1", edit_pixels=pixels[:4], edit_labels=labels[:4],
                       edit_refs=(), heldout_pixels=empty,
                       heldout_labels=torch.empty(0, dtype=torch.long), heldout_refs=(),
                       keep_pixels=empty, keep_labels=torch.empty(0, dtype=torch.long),
                       scoped=True, neighbours=neighbours)


def test_the_nights_other_units_are_kept_out_of_a_scope_unless_switched_off(lineage):
    model, _ = load_model(lineage.checkpoint)
    suite = load_suite(lineage.suite_dir)
    context = SimpleNamespace(model=model, suite=suite,
                              hypernet=MaskHypernet.load(lineage.hypernet_dir))
    clean = lineage.clean[:16]
    preserved = PreservedPool(pixels=clean, hashes=tuple(image_hashes(clean)),
                              from_production=0, labels=torch.full((16,), -1))
    neighbours = lineage.production[8:14]
    unit = _unit(lineage, neighbours)

    avoiding = _scoped_editor(context, unit, EditSettings(), preserved)
    assert torch.equal(avoiding.avoid, suite.inputs(neighbours))
    assert len(avoiding.outside) == 16

    settings = EditSettings(scoped={"avoid_neighbours": False})
    assert _scoped_editor(context, unit, settings, preserved).avoid is None


def test_a_scoped_ke_unit_is_edited_by_the_lineages_network_inside_its_scope(lineage):
    model, _ = load_model(lineage.checkpoint)
    suite = load_suite(lineage.suite_dir)
    hypernet = MaskHypernet.load(lineage.hypernet_dir)
    net = new_updater("ke", model, hypernet.window(model))
    asked: list[str] = []
    context = SimpleNamespace(model=model, suite=suite, hypernet=hypernet,
                              updater=lambda kind: asked.append(kind) or net)
    clean = lineage.clean[:16]
    preserved = PreservedPool(pixels=clean, hashes=tuple(image_hashes(clean)),
                              from_production=0, labels=torch.full((16,), -1))
    unit = _unit(lineage, lineage.production[8:14])
    settings = EditSettings(scoped={"method": "ke", "lr": 20.0, "max_steps": 2})
    editor = _scoped_editor(context, unit, settings, preserved)
    assert asked == ["ke"] and editor.inner.updater is net
    assert (editor.inner.optim.lr, editor.inner.optim.max_steps) == (20.0, 2)
    result = editor.edit(model, suite.inputs(unit.edit_pixels), unit.edit_labels)
    assert isinstance(result.patch, ScopedPatch) and result.method == "ke+scope"
    assert result.settings["updater"] == "ke"


def test_a_large_cluster_is_split_into_units_when_max_unit_errors_asks(lineage):
    """The wiring of ``scoped.max_unit_errors``: the errors that make one loose cluster
    become several units, and no error is counted twice."""
    from flows.units import _Error, _subpopulations
    from vitedit_ops.groups import ImageRef

    model, spec = load_model(lineage.checkpoint)
    context = SimpleNamespace(model=model, spec=spec, suite=load_suite(lineage.suite_dir),
                              hypernet=MaskHypernet.load(lineage.hypernet_dir),
                              base_preserved=lineage.clean[:60])
    wrong = (lineage.predictions != lineage.labels).nonzero().flatten().tolist()
    hashes = image_hashes(lineage.production[wrong])
    errors = [_Error(ImageRef(h, f"mem://{h}"), int(lineage.labels[i]),
                     int(lineage.predictions[i]), lineage.production[i])
              for i, h in zip(wrong, hashes)]
    # one big cluster, never split
    loose = {"min_errors": 6, "max_units": 50, "cluster_scale": 50.0, "max_unit_errors": None}
    whole, _, note = _subpopulations(context, errors, None, EditSettings(scoped=loose))
    assert note == "" and len(whole) == 1
    total = len(whole[0].edit_pixels) + len(whole[0].heldout_pixels)
    parts, _, _ = _subpopulations(context, errors, None,
                                  EditSettings(scoped={**loose, "max_unit_errors": 12}))
    assert len(parts) >= 2
    assert sum(len(u.edit_pixels) + len(u.heldout_pixels) for u in parts) <= total


def test_each_serving_days_errors_are_clustered_on_their_own_when_cluster_per_day_asks(lineage):
    """``scoped.cluster_per_day``: one loose cluster of two days' errors becomes units of one
    day each; no error is counted twice, and a confirmed-correct image is kept by one unit."""
    from flows.units import _Error, _subpopulations
    from vitedit_ops.groups import ImageRef

    model, spec = load_model(lineage.checkpoint)
    context = SimpleNamespace(model=model, spec=spec, suite=load_suite(lineage.suite_dir),
                              hypernet=MaskHypernet.load(lineage.hypernet_dir),
                              base_preserved=lineage.clean[:60])
    wrong = (lineage.predictions != lineage.labels).nonzero().flatten().tolist()
    right = (lineage.predictions == lineage.labels).nonzero().flatten()
    days = ("2026-11-20T10:00:00+00:00", "2026-11-21T23:59:00+00:00")
    errors = [_Error(ImageRef(h, f"mem://{h}", served_at=days[n % 2]),
                     int(lineage.labels[i]), int(lineage.predictions[i]), lineage.production[i])
              for n, (i, h) in enumerate(zip(wrong, image_hashes(lineage.production[wrong])))]
    correct = lineage.production[right]
    preserved = PreservedPool(pixels=correct, hashes=tuple(image_hashes(correct)),
                              from_production=len(correct), labels=lineage.labels[right])
    loose = {"min_errors": 6, "max_units": 50, "cluster_scale": 50.0, "max_unit_errors": None}
    pooled, _, _ = _subpopulations(context, errors, preserved, EditSettings(scoped=loose))
    assert len(pooled) == 1
    per_day, _, _ = _subpopulations(context, errors, preserved,
                                    EditSettings(scoped={**loose, "cluster_per_day": True}))
    assert len(per_day) == 2
    seen: list[str] = []
    for unit in per_day:
        refs = (*unit.edit_refs, *unit.heldout_refs)
        assert len({r.served_at for r in refs}) == 1
        seen += [r.sha256 for r in refs]
    assert len(seen) == len(set(seen)) == len(pooled[0].edit_refs) + len(pooled[0].heldout_refs)
    assert len(pooled[0].keep_pixels) > 0  # else the claim below checks nothing
    kept = [h for u in per_day if len(u.keep_pixels) for h in image_hashes(u.keep_pixels)]
    assert len(kept) == len(set(kept)) == len(pooled[0].keep_pixels)
