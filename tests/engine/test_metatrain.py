from __future__ import annotations

import pytest
import torch

from vitedit_ops.episodes import CutMixEpisodes, patch_grid
from vitedit_ops.forward import SplitForward
from vitedit_ops.metatrain import MetaTrainConfig, meta_train, optimise_episode_masks
from vitedit_ops.episodes import EpisodeBatch
from vitedit_ops.sites import edit_window

from .conftest import tiny_vit

FAST = dict(iterations=3, batch_size=4, outer_steps=2, inner_steps=2, hypernet_width=16,
            hypernet_depth=1, hypernet_heads=2)


def _images(n=24, seed=0):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _killed_after(iteration: int, model, images, out) -> None:
    """A checkpointing meta-training run into ``out`` interrupted after ``iteration``."""
    def crash(done, _total, _entry):
        if done == iteration:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        meta_train(model, images, MetaTrainConfig(**FAST, checkpoint_every=1), out_dir=out,
                   on_iteration=crash)


def test_cutmix_rectangles_align_to_the_patch_grid():
    model = tiny_vit()
    images = _images()
    sampler = CutMixEpisodes(model, images, patch_grid(model, (3, 16, 16)), prefer_changed=False)
    batch = sampler(16, torch.Generator().manual_seed(0))
    changed = (batch.mixed != batch.clean).any(1)  # (B, H, W)
    for mask in changed:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(ys):  # rectangle edges fall on multiples of the 4-pixel patch
            assert ys.min() % 4 == 0 and (ys.max() + 1) % 4 == 0
            assert xs.min() % 4 == 0 and (xs.max() + 1) % 4 == 0


def test_vectorized_episodes_match_the_per_episode_loop():
    model = tiny_vit()
    window = edit_window(model)
    split = SplitForward(model, window.sites[0].block_path)
    images = _images(8)
    batch = EpisodeBatch(mixed=images[:4].flip(-1), clean=images[:4])
    config = MetaTrainConfig(outer_steps=3, inner_steps=3, inner_lr=0.5)
    for p in model.parameters():
        p.requires_grad_(False)
    together, _ = optimise_episode_masks(model, window, split, batch, config)
    for i in range(4):
        one = EpisodeBatch(batch.mixed[i:i + 1], batch.clean[i:i + 1])
        alone, _ = optimise_episode_masks(model, window, split, one, config)
        for a, b in zip(together, alone):
            torch.testing.assert_close(a[i:i + 1], b, atol=1e-4, rtol=1e-4)


def test_inner_steps_reduce_the_episode_kl():
    model = tiny_vit()
    window = edit_window(model)
    split = SplitForward(model, window.sites[0].block_path)
    images = _images(8)
    batch = EpisodeBatch(mixed=images[:4].flip(-1), clean=images[:4])
    for p in model.parameters():
        p.requires_grad_(False)
    _, stats = optimise_episode_masks(model, window, split, batch,
                                      MetaTrainConfig(outer_steps=1, inner_steps=5,
                                                      inner_lr=0.1, sparsity=0.0))
    assert stats.kl_after < stats.kl_before


def test_same_seed_same_masks_and_resume_equals_uninterrupted(tmp_path):
    model, images = tiny_vit(), _images()
    emb = torch.randn(3, 32)
    a = meta_train(model, images, MetaTrainConfig(**FAST)).hypernet
    b = meta_train(model, images, MetaTrainConfig(**FAST)).hypernet
    for x, y in zip(a.masks(emb), b.masks(emb)):
        assert torch.equal(x, y)
    # killed after iteration 2 (checkpoint every 1), then run again with the same settings
    out = tmp_path / "hn"
    _killed_after(2, model, images, out)
    resumed = meta_train(model, images, MetaTrainConfig(**FAST, checkpoint_every=1),
                         out_dir=out)
    assert resumed.resumed_from == 2 and len(resumed.log) == 3
    for x, y in zip(a.masks(emb), resumed.hypernet.masks(emb)):
        torch.testing.assert_close(x, y)
    assert (out / "hypernet.json").is_file() and (out / "metatrain-log.jsonl").is_file()


def test_meta_training_leaves_the_base_model_trainable_flags_alone():
    model = tiny_vit()
    meta_train(model, _images(), MetaTrainConfig(**{**FAST, "iterations": 1}))
    assert all(p.requires_grad for p in model.parameters())


def test_resuming_with_other_settings_is_refused_as_bad_input(tmp_path):
    from vitedit_ops.errors import InvalidInputError

    model, images, out = tiny_vit(), _images(), tmp_path / "hn"
    _killed_after(1, model, images, out)
    other = MetaTrainConfig(**{**FAST, "inner_steps": 3}, checkpoint_every=1)
    with pytest.raises(InvalidInputError, match="other meta-training settings"):
        meta_train(model, images, other, out_dir=out)


def test_pgd_episodes_stay_in_their_ball_and_move_the_frozen_prediction():
    """The paper's gradient-based episodes: every perturbation within epsilon of its clean
    image (L-inf), and the frozen model's prediction moved on more images than random noise
    of the same size moves it."""
    from vitedit_ops.episodes import PGDEpisodes

    model = tiny_vit().eval()
    images = _images(32)
    batch = PGDEpisodes(model, images, epsilon=0.5, steps=10)(32, torch.Generator().manual_seed(0))
    assert batch.mixed.shape == batch.clean.shape
    assert float((batch.mixed - batch.clean).abs().max()) <= 0.5 + 1e-6
    with torch.no_grad():
        clean = model(batch.clean).argmax(-1)
        moved = (model(batch.mixed).argmax(-1) != clean).float().mean()
        signs = torch.sign(torch.randn(batch.clean.shape,
                                       generator=torch.Generator().manual_seed(1)))
        noise = batch.clean + 0.5 * signs
        by_noise = (model(noise).argmax(-1) != clean).float().mean()
    assert moved > by_noise and moved >= 0.5
    assert all(p.grad is None for p in model.parameters())  # the model is only read


def test_meta_training_on_pgd_episodes_runs_and_records_its_kind(tmp_path):
    """``episodes="pgd"`` trains a hypernetwork; its settings record the kind and its own
    options only, so a CutMix config's fingerprint is what it was before PGD existed."""
    model = tiny_vit()
    config = MetaTrainConfig(**FAST, episodes="pgd", pgd_epsilon=0.5, pgd_steps=3)
    result = meta_train(model, _images(), config, out_dir=tmp_path / "h")
    training = result.hypernet.config.training
    assert training["episodes"] == "pgd" and training["pgd_steps"] == 3
    assert "cutmix_min_frac" not in training
    cutmix = MetaTrainConfig(**FAST).settings()
    assert not any(k.startswith("pgd_") for k in cutmix) and "cutmix_min_frac" in cutmix
    from vitedit_ops.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="unknown episode kind 'bogus'"):
        meta_train(model, _images(), MetaTrainConfig(**FAST, episodes="bogus"))
