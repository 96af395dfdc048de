"""Shared fixtures. Tests run on CPU with gloo; distributed tests spawn real torchrun process groups."""
import os
import sys

import pytest

from vffn_megatron.device import configure_environment

configure_environment()  # DS_ACCELERATOR for this process and the ones it launches
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(__file__))  # the helpers package (tests/helpers/)


@pytest.fixture(scope="session")
def megatron_tp1():
    """megatron-core initialised in this process: world size 1, TP=1 (the CPU compat layer applied)."""
    from vffn_megatron import init_megatron

    init_megatron(tensor_parallel_size=1, seed=1234)
    yield
