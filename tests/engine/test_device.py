"""Device names: a bad or absent device is bad input (one line, exit 2), never a crash."""

from __future__ import annotations

import pytest
import torch

from vitedit_ops.device import resolve_device
from vitedit_ops.errors import InvalidInputError


def test_auto_and_cpu_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_device_that_is_not_a_device_name_is_bad_input():
    with pytest.raises(InvalidInputError, match="'gpu0' is not a device name"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA")
def test_cuda_on_a_host_without_it_is_bad_input():
    with pytest.raises(InvalidInputError, match="CUDA is not available"):
        resolve_device("cuda:0")
