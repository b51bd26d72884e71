import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest


@pytest.fixture(autouse=True)
def _restore_environ():
    """Adapters export variables their libraries read (DeepFace reads DEEPFACE_HOME at call time);
    put the environment back after each test so no test sees another's model folders."""
    saved = dict(os.environ)
    yield
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    os.environ.update(saved)
