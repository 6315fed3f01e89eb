"""KE and MEND's update networks: the gradient factors they read, what an untrained KE does,
meta-training, persistence and refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vitedit_ops.editors import create_editor
from vitedit_ops.editors.base import frozen
from vitedit_ops.errors import IncompatibleBaseError, InvalidInputError, VitEditError
from vitedit_ops.forward import SplitForward
from vitedit_ops.learned_update import (EditInputs, load_updater, new_updater, window_factors)
from vitedit_ops.sites import edit_window
from vitedit_ops.update_metatrain import UpdaterTrainConfig, meta_train_updater

from .conftest import tiny_swin, tiny_vit


def _factors(model, images, labels, episodes=1):
    window = edit_window(model)
    split = SplitForward(model, window.sites[0].block_path)
    with frozen(model):
        return window, window_factors(model, window, split, split.prefix(images), labels,
                                      episodes)


@pytest.mark.parametrize("build", [tiny_vit, tiny_swin])
def test_the_factors_give_each_episodes_own_weight_gradient(build):
    model = build()
    size = 32 if build is tiny_swin else 16
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 3, 1])
    window, (logits, factors) = _factors(model, images, labels, episodes=3)
    assert torch.allclose(logits, model(images), atol=1e-5)
    for e in range(3):  # episode e's gradient is that of its own image's cross-entropy
        model.zero_grad()
        F.cross_entropy(model(images[e:e + 1]), labels[e:e + 1]).backward()
        for (site, which), f in zip(window.matrices, factors):
            layer = site.fc1(model) if which == "fc1" else site.fc2(model)
            assert torch.allclose(f.gradient()[e], layer.weight.grad, atol=1e-6, rtol=1e-4)


def test_an_untrained_ke_update_is_the_gated_gradient(vit, batch):
    images, labels = batch
    net = new_updater("ke", vit)
    with torch.no_grad():
        for head in net.heads:
            head.weight.zero_()  # alpha = beta = eta = 0, gamma = 2, delta = 0
    _, (_, factors) = _factors(vit, images, labels)
    inputs = EditInputs(torch.randn(1, vit.num_features),
                        F.one_hot(labels, vit.num_classes).float().mean(0, keepdim=True))
    for update, f in zip(net.updates(factors, inputs), factors):
        assert torch.allclose(update, 0.5 * f.gradient(), atol=1e-7)


@pytest.mark.parametrize("kind", ["ke", "mend"])
def test_meta_training_lowers_its_loss_and_the_network_round_trips(kind, vit, tmp_path):
    torch.manual_seed(0)
    images = torch.randn(48, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    config = UpdaterTrainConfig(kind=kind, iterations=30, batch_size=4, locality_images=4,
                                lr=3e-3)
    result = meta_train_updater(vit, images, config)
    losses = [entry["loss"] for entry in result.log]
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5])
    assert result.updater.config.training["kind"] == kind
    result.updater.save(tmp_path / kind)
    loaded = load_updater(tmp_path / kind)
    assert loaded.kind == kind and loaded.config == result.updater.config
    first = create_editor(kind, updater=result.updater).edit(vit, images[:2],
                                                              torch.tensor([1, 2]))
    again = create_editor(kind, updater=loaded).edit(vit, images[:2], torch.tensor([1, 2]))
    assert [e.param for e in first.patch.entries] == [e.param for e in again.patch.entries]
    for entry, other in zip(first.patch.entries, again.patch.entries):
        assert torch.equal(entry.after, other.after)


def test_learned_editors_refuse_what_they_cannot_use(vit, batch, tmp_path):
    with pytest.raises(InvalidInputError, match="meta-train --updater mend"):
        create_editor("mend")
    with pytest.raises(InvalidInputError, match="needs a ke update network"):
        create_editor("ke", updater=new_updater("mend", vit)).edit(vit, *batch)
    other = tiny_vit(seed=9)
    with pytest.raises(IncompatibleBaseError, match="not a descendant"):
        create_editor("mend", updater=new_updater("mend", other)).edit(vit, *batch)
    with pytest.raises(IncompatibleBaseError, match="matrices"):
        new_updater("mend", vit).window(tiny_vit(embed_dim=16))
    with pytest.raises(InvalidInputError, match="unknown MEND option"):
        new_updater("mend", vit, width=3)
    with pytest.raises(InvalidInputError, match="rank"):
        new_updater("mend", vit, rank=0)
    with pytest.raises(InvalidInputError, match="unknown KE option"):
        new_updater("ke", vit, rank=8)  # MEND's size is not KE's
    with pytest.raises(InvalidInputError, match="unknown update network kind"):
        new_updater("rome", vit)
    with pytest.raises(VitEditError, match="unreadable"):
        load_updater(tmp_path)
    with pytest.raises(InvalidInputError, match="at least"):
        meta_train_updater(vit, torch.randn(5, 3, 16, 16), UpdaterTrainConfig(iterations=1))
