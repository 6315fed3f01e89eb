from __future__ import annotations

import pytest
import torch

from vitedit_ops.editors import create_editor, list_editors, takes_preserved, updater_kind
from vitedit_ops.errors import IncompatibleBaseError, InvalidInputError
from vitedit_ops.hypernet import MaskHypernet, new_hypernet
from vitedit_ops.learned_update import new_updater
from vitedit_ops.models import fingerprint
from vitedit_ops.sites import edit_window

from .conftest import tiny_swin, tiny_vit


def _pool(model, count: int = 24) -> torch.Tensor:
    """Images whose predictions must hold, shaped for ``model``."""
    size = 32 if "swin" in type(model).__name__.lower() else 16
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(7))


def _editor(name, model, **kw):
    if name == "localized":
        kw["hypernet"] = new_hypernet(model, edit_window(model))
    if updater_kind(name):  # KE, MEND: an untrained network edits too (not well)
        kw["updater"] = new_updater(updater_kind(name), model)
    if takes_preserved(name) and "preserved" not in kw:
        kw["preserved"] = _pool(model)
    return create_editor(name, **{"lr": 1e-2, "max_steps": 30, **kw})


@pytest.mark.parametrize("name", list_editors())
def test_every_editor_leaves_the_model_untouched_and_returns_a_revertible_patch(name, vit,
                                                                                batch):
    images, labels = batch
    base = fingerprint(vit)
    result = _editor(name, vit).edit(vit, images, labels)
    assert fingerprint(vit) == base
    assert result.method == name and result.steps <= 30
    assert len(result.loss_history) == result.steps + 1
    result.patch.apply(vit)
    assert fingerprint(vit) != base
    after = vit(images).argmax(-1)
    assert torch.equal(after, result.predictions_after)
    result.patch.revert(vit)
    assert fingerprint(vit) == base


@pytest.mark.parametrize("name", ["localized", "random_mask", "window_ft", "lora", "kn",
                                  "rome", "rome_lora", "ke", "mend"])
def test_window_editors_touch_only_the_window_ffns(name, vit, batch):
    result = _editor(name, vit).edit(vit, *batch)
    window = edit_window(vit)
    assert set(result.patch.params) <= set(window.weight_names)


def test_masked_editors_touch_only_the_kept_units(vit, batch):
    result = _editor("random_mask", vit, keep_fraction=0.1).edit(vit, *batch)
    total = sum(edit_window(vit).mask_sizes)
    kept = sum(len(u) for u in result.kept_units.values())
    assert kept == round(0.1 * total)
    assert sum(result.patch.units_per_param().values()) == kept


def test_full_finetuning_fixes_a_batch(vit, batch):
    result = create_editor("full_ft", lr=1e-3, max_steps=100).edit(vit, *batch)
    assert result.success and result.reliability == 1.0


@pytest.mark.parametrize("name", ["localized", "random_mask", "window_ft", "lora", "kn",
                                  "rome", "rome_lora", "ke", "mend"])
def test_window_editors_touch_only_the_window_ffns_of_a_swin(name):
    swin = tiny_swin()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    result = _editor(name, swin).edit(swin, images, torch.tensor([1, 3]))
    assert set(result.patch.params) <= set(edit_window(swin).weight_names)


@pytest.mark.parametrize("name", list_editors())
def test_every_editor_edits_a_swin_and_reverts_exactly(name):
    swin = tiny_swin()  # hierarchical: the window spans two stages of different FFN widths
    assert len({s.hidden for s in edit_window(swin).sites}) > 1
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([1, 3])
    base = fingerprint(swin)
    result = _editor(name, swin, max_steps=60).edit(swin, images, labels)
    assert fingerprint(swin) == base and result.steps <= 60
    assert result.method == name
    result.patch.apply(swin)
    assert torch.equal(swin(images).argmax(-1), result.predictions_after)
    result.patch.revert(swin)
    assert fingerprint(swin) == base


def test_localized_editor_refuses_a_hypernetwork_of_another_base(vit, batch):
    other = tiny_vit(seed=9)
    editor = create_editor("localized", hypernet=new_hypernet(other, edit_window(other)))
    with pytest.raises(IncompatibleBaseError, match="not a descendant"):
        editor.edit(vit, *batch)


def test_localized_editor_accepts_a_descendant_of_its_base(vit, batch):
    hypernet = new_hypernet(vit, edit_window(vit))
    first = create_editor("random_mask", lr=1e-2, max_steps=5).edit(vit, *batch)
    first.patch.apply(vit)
    lineage = hypernet.check_base(vit)
    assert lineage.relation == "descendant" and lineage.changed_tensors
    result = create_editor("localized", hypernet=hypernet, lr=1e-2,
                           max_steps=5).edit(vit, *batch)
    assert result.settings["lineage"] == "descendant"


@pytest.mark.parametrize("labels,match", [(torch.tensor([0, 1, 9]), "out of range"),
                                          (torch.tensor([0, 1]), "labels")])
@pytest.mark.parametrize("name", list_editors())
def test_bad_edit_input_is_named(name, vit, batch, labels, match):
    with pytest.raises(InvalidInputError, match=match):
        _editor(name, vit).edit(vit, batch[0], labels)


@pytest.mark.parametrize("name", list_editors())
def test_bad_edit_images_are_named(name, vit, batch):
    images, labels = batch
    with pytest.raises(InvalidInputError, match=r"\(N, C, H, W\)"):
        _editor(name, vit).edit(vit, images[0], labels[:1])
    nan = images.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        _editor(name, vit).edit(vit, nan, labels)


@pytest.mark.parametrize("name", list_editors())
def test_nan_weights_are_refused(name, vit, batch):
    with torch.no_grad():
        vit.blocks[0].attn.qkv.weight[0, 0] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        _editor(name, vit).edit(vit, *batch)


def test_hypernet_save_load_roundtrip_and_any_window(tmp_path, vit):
    window = edit_window(vit, 1, 2)
    hypernet = new_hypernet(vit, window, width=16, depth=1, num_heads=2)
    hypernet.save(tmp_path / "hn")
    loaded = MaskHypernet.load(tmp_path / "hn")
    emb = torch.randn(2, 32)
    for a, b in zip(hypernet.masks(emb), loaded.masks(emb)):
        torch.testing.assert_close(a, b)
    assert [m.shape[1] for m in loaded.masks(emb)] == [128] * 4
    assert loaded.window(vit).describe() == window.describe()


def test_confusable_replay_keeps_only_images_of_the_classes_the_edit_moves(vit, batch):
    from vitedit_ops.editors.base import select_replay

    torch.manual_seed(3)
    pool = torch.randn(40, 3, 16, 16)
    predicted = vit(pool).argmax(-1)
    images, labels = batch
    before = vit(images).argmax(-1)
    replay = select_replay(vit, pool, before, labels, "confusable", 1.0)
    moved = set(labels.tolist()) | set(before.tolist())
    assert replay is not None
    assert len(replay.inputs) == sum(int(p) in moved for p in predicted)
    assert len(select_replay(vit, pool, before, labels, "all", 1.0).inputs) == 40
    assert select_replay(vit, pool, before, labels, "all", 0.0) is None


def test_replay_term_holds_replay_predictions_closer_to_the_original(vit, batch):
    torch.manual_seed(4)
    pool = torch.randn(16, 3, 16, 16)
    original = vit(pool).softmax(-1)

    def drift(weight):
        editor = create_editor("random_mask", keep_fraction=0.5, lr=3e-2, max_steps=15,
                               ce_target=-1.0, preserved=pool, replay_weight=weight,
                               replay_scope="all")
        result = editor.edit(vit, *batch)
        result.patch.apply(vit)
        try:
            return float((vit(pool).softmax(-1) - original).abs().sum(-1).mean())
        finally:
            result.patch.revert(vit)

    assert drift(100.0) < drift(0.0)


def test_greedy_window_search_scores_windows_and_grows_the_best(vit, tmp_path):
    from vitedit_ops.edit_cases import GroupInputs
    from vitedit_ops.sites import save_default_window, saved_default_window
    from vitedit_ops.window_search import greedy_window_search

    torch.manual_seed(5)
    groups = [GroupInputs("noise", 1, int(p), torch.randn(6, 3, 16, 16)) for p in (0, 2)]
    locality = torch.randn(20, 3, 16, 16)
    search = greedy_window_search(vit, groups, locality, max_length=2, cases=2, lrs=(1e-2,),
                                  min_locality=0.0)
    singles = [t for t in search.tried if t.window[0] == t.window[1]]
    assert len(singles) == 4  # every block scored alone first
    assert 1 <= search.best[1] - search.best[0] + 1 <= 2
    best_score = max(t.score for t in search.tried if t.window == search.best)
    assert best_score >= max(t.score for t in singles)
    save_default_window(tmp_path / "m.safetensors", search.best, search.to_dict())
    assert saved_default_window(tmp_path / "m.safetensors") == search.best


def test_a_window_scores_only_rates_that_keep_locality(vit):
    from vitedit_ops.edit_cases import GroupInputs, make_cases
    from vitedit_ops.window_search import score_window

    torch.manual_seed(6)
    groups = [GroupInputs("noise", 1, 0, torch.randn(6, 3, 16, 16))]
    locality = torch.randn(20, 3, 16, 16)
    base = vit(locality).argmax(-1)
    cases = make_cases(groups, 1, 1, min_eval=2)
    before = [p.detach().clone() for p in vit.parameters()]
    kept = score_window(vit, (2, 3), groups, cases, locality, base, (1e-2,), 0.0, 1)
    assert all(torch.equal(a, b) for a, b in zip(before, vit.parameters()))  # reverted
    (point,) = kept.points.values()
    assert 0.0 <= point["gr"] <= 1.0 and 0.0 <= point["lr"] <= 1.0
    assert kept.score == point["gr"]
    refused = score_window(vit, (2, 3), groups, cases, locality, base, (1e-2,), 1.01, 1)
    assert refused.points == kept.points and refused.score == 0.0
