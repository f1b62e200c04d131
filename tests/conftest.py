"""Shared fixtures: tiny random-weight models of each architecture, loaded once."""
from __future__ import annotations

import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")
warnings.filterwarnings("ignore", category=UserWarning)

TINY = ("tiny-gpt2", "tiny-neox", "tiny-llama")


@pytest.fixture(scope="session")
def tiny_models():
    from workers.models import load_model

    return {name: load_model(name) for name in TINY}


@pytest.fixture(scope="session")
def embedded_model():
    from workers.models import load_model

    return load_model("smollm2-135m")
