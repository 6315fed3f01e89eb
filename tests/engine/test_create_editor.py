"""``create_editor``: one place builds every editor, keeping only what each one declares."""

from __future__ import annotations

import pytest

from vitedit_ops.editors import (EDITORS, PRODUCT, OptimConfig, create_editor, editor_options,
                                 list_editors, register_editor, takes_preserved)
from vitedit_ops.editors.finetune import WindowFinetuneEditor
from vitedit_ops.errors import InvalidInputError
from vitedit_ops.hypernet import new_hypernet
from vitedit_ops.sites import edit_window


@pytest.fixture
def hypernet(vit):
    return new_hypernet(vit, edit_window(vit, 1, 2))


def test_every_builtin_editor_is_registered_at_its_definition():
    assert set(list_editors()) >= {"localized", "random_mask", "window_ft", "ft_l1", "ft_l2",
                                   "lora", "full_ft", "grace", "t_patcher", "rome",
                                   "rome_lora", "kn", "serac"}
    with pytest.raises(InvalidInputError, match="unknown editor 'nope'.*localized"):
        create_editor("nope")


def test_options_other_editors_declare_are_dropped_unknown_ones_refused(hypernet):
    lora = create_editor("lora", hypernet=hypernet, keep_fraction=0.3, null_space_energy=0.9,
                         rank=2, lr=5e-3)
    assert (lora.rank, lora.optim.lr) == (2, 5e-3)
    assert not hasattr(lora, "keep_fraction")
    with pytest.raises(InvalidInputError, match="unknown editor option.*kep_fraction"):
        create_editor("random_mask", kep_fraction=0.3)


def test_none_means_the_editors_default_and_flat_keys_update_a_given_optim(hypernet):
    editor = create_editor("random_mask", keep_fraction=None, lr=None, max_steps=7)
    default = create_editor("random_mask")
    assert editor.keep_fraction == default.keep_fraction
    assert (editor.optim.lr, editor.optim.max_steps) == (default.optim.lr, 7)
    given = create_editor("window_ft", optim=OptimConfig(lr=2e-2, ce_target=0.3), max_steps=9)
    assert (given.optim.lr, given.optim.ce_target, given.optim.max_steps) == (2e-2, 0.3, 9)


def test_the_hypernetwork_gives_window_methods_their_window_unless_one_is_given(hypernet):
    assert create_editor("window_ft", hypernet=hypernet).window == (1, 2)
    assert create_editor("lora", hypernet=hypernet, window=(0, 0)).window == (0, 0)
    assert create_editor("window_ft").window is None  # the model's default window
    with pytest.raises(InvalidInputError, match="needs a mask hypernetwork"):
        create_editor("localized")


def test_the_preserved_pool_goes_only_to_editors_that_take_one(vit, hypernet):
    import torch

    pool = torch.zeros(3, 3, 32, 32)
    assert create_editor("localized", hypernet=hypernet, preserved=pool).preserved is pool
    assert takes_preserved("random_mask") and not takes_preserved("lora")
    create_editor("lora", hypernet=hypernet, preserved=pool)  # accepted and ignored


def test_the_product_recipe_names_only_options_its_editor_declares(hypernet):
    assert set(PRODUCT.options) <= editor_options(PRODUCT.method)
    editor = PRODUCT.create(hypernet=hypernet, lr=7e-3)
    assert editor.name == PRODUCT.method and editor.optim.lr == 7e-3
    assert editor.optim.ce_target == PRODUCT.get("ce_target")


def test_a_registered_editor_is_built_like_the_builtin_ones(monkeypatch):
    from dataclasses import dataclass

    monkeypatch.setattr(EDITORS, "_builders", dict(EDITORS._builders))

    @register_editor("window_ft_strong")
    @dataclass(kw_only=True)
    class Strong(WindowFinetuneEditor):
        penalty: str = "l2"
        strength: float = 1.0
        name: str = "window_ft_strong"

    built = create_editor("window_ft_strong", strength=2.0, keep_fraction=0.5)
    assert isinstance(built, Strong) and built.strength == 2.0
    with pytest.raises(InvalidInputError, match="already registered"):
        register_editor("window_ft_strong")(Strong)
