"""The champion's labels: the spec's class names, else the class indices, made once (the
server reads them for every answered image)."""

from __future__ import annotations

from serving.champion import Champion
from vitedit_ops.models import ModelSpec


def _champion(spec: ModelSpec) -> Champion:
    return Champion(name="m", version="1", run_id="r", onnx_sha256="", spec=spec,
                    session=None, preprocessor=None)


def test_labels_are_the_class_names_or_indices_and_made_once() -> None:
    unnamed = _champion(ModelSpec("vit_tiny_patch16_224", num_classes=1000))
    assert unnamed.class_names == tuple(str(c) for c in range(1000))
    assert unnamed.class_names is unnamed.class_names  # not rebuilt per image
    named = _champion(ModelSpec("vit_tiny_patch16_224", num_classes=2,
                                class_names=["cat", "dog"]))
    assert named.class_names == ("cat", "dog")
