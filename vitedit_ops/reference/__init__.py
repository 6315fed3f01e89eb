"""The digits reference model: data pools, named shifts, error groups, and the cached build."""

from .build import (DEFAULT_SHIFTS, HypernetBuilder, Reference, build_reference, default_config,
                    hypernet_path, load_reference, recipe_hash, reference_recipe)
from .card import ModelCard
from .data import (POOL_SIZES, POOLS, LabeledImages, PoolOverlapError, ReferenceData,
                   assert_disjoint, load_reference_data)
from .groups import ShiftedErrorGroup, ShiftOutcome, shifted_error_groups
from .shifts import apply_shift, get_shift, list_shifts, register_shift
from .train import TrainConfig, TrainStats, reference_spec, train_reference

__all__ = [
    "DEFAULT_SHIFTS", "POOLS", "POOL_SIZES", "HypernetBuilder", "LabeledImages", "ModelCard",
    "PoolOverlapError", "Reference", "ReferenceData", "ShiftOutcome", "ShiftedErrorGroup",
    "TrainConfig", "TrainStats", "apply_shift", "assert_disjoint", "build_reference",
    "default_config", "get_shift", "hypernet_path", "list_shifts", "load_reference",
    "load_reference_data", "recipe_hash", "reference_recipe", "reference_spec",
    "register_shift", "shifted_error_groups", "train_reference",
]
