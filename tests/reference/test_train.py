"""Training is seeded and bit-reproducible on CPU, and leaves global state alone."""

from __future__ import annotations

import torch

from vitedit_ops.models import fingerprint
from vitedit_ops.reference import TrainConfig, reference_spec, train_reference

from .conftest import TINY


def test_same_seed_same_fingerprint(data):
    first, _, stats = train_reference(data.train, TINY, device="cpu", progress=False)
    second, _, _ = train_reference(data.train, TINY, device="cpu", progress=False)
    assert fingerprint(first) == fingerprint(second)
    assert stats.steps == TINY.max_steps and stats.threads == TINY.threads
    other, _, _ = train_reference(data.train, TrainConfig(seed=1, max_steps=3, batch_size=16),
                                  device="cpu", progress=False)
    assert fingerprint(other) != fingerprint(first)


def test_fingerprint_does_not_depend_on_caller_threads(data):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two, _, _ = train_reference(data.train, TINY, device="cpu", progress=False)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        one, _, _ = train_reference(data.train, TINY, device="cpu", progress=False)
    finally:
        torch.set_num_threads(before)
    assert fingerprint(one) == fingerprint(two)


def test_global_rng_untouched_and_model_in_eval(data):
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    model, spec, _ = train_reference(data.train, TINY, device="cpu", progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not model.training
    assert spec == reference_spec()


def test_reference_spec_is_a_real_timm_vit():
    import timm.models.vision_transformer as vt

    spec = reference_spec()
    model = spec.build()
    assert isinstance(model, vt.VisionTransformer)
    assert spec.input_size == (3, 32, 32) and spec.num_classes == 10
    assert len(model.blocks) == 6 and model.embed_dim == 128
    assert model.blocks[0].mlp.fc1.out_features == 512
    assert model.patch_embed.patch_size == (8, 8)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
