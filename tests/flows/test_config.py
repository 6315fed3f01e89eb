"""The nightly's edit settings: the product's defaults, and refusals before anything runs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from flows.config import EDITOR_FIELDS, EditSettings
from vitedit_ops.editors import PRODUCT


def test_the_nightly_defaults_are_the_product_recipe():
    settings = EditSettings()
    assert settings.method == PRODUCT.method
    chosen = {k: v for k, v in settings.editor_options().items() if v is not None}
    assert chosen == {k: v for k, v in PRODUCT.options.items() if k in EDITOR_FIELDS}
    assert set(PRODUCT.options) - set(EDITOR_FIELDS) <= {"jitter_max_images"}


@pytest.mark.parametrize("changes, message", [
    ({"method": "bogus"}, "method"),
    ({"optimizer": "adagrad"}, "optimizer"),
    ({"method": "window_ft", "null_space_energy": 0.9}, "not an option of the 'window_ft'"),
    ({"lr": 0}, "lr"),
    ({"replay": True}, "replay"),  # the old name: refused, never silently ignored
])
def test_bad_settings_are_refused_at_once(changes, message):
    with pytest.raises(ValidationError, match=message):
        EditSettings(**changes)


def test_another_editor_drops_the_product_options_it_does_not_take():
    assert EditSettings(method="lora").uses_preserved  # the subpopulations' scopes need it
    settings = EditSettings(method="lora", subpopulations=False)
    assert not settings.uses_preserved
    assert settings.editor_options()["null_space_energy"] == PRODUCT.get("null_space_energy")
