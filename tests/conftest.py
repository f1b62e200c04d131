"""Shared fixtures: tiny random-weight models of each architecture, loaded once."""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest

# before anything loads torch: OpenMP threads that sleep while waiting (see orchestrator.coordinator.worker_env),
# for the models trained in this process and for every process and Ray worker started from it
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")
warnings.filterwarnings("ignore", category=UserWarning)

pytest_plugins = ["pytester"]

TINY = ("tiny-gpt2", "tiny-neox", "tiny-llama", "tiny-gemma3")


@pytest.fixture(scope="session")
def tiny_models():
    from workers.models import load_model

    return {name: load_model(name) for name in TINY}


@pytest.fixture(scope="session")
def ray_session():
    """One embedded Ray for the session: a coordinator uses a Ray that is already running instead
    of starting (about 6 s) and stopping its own. Tests that need their own Ray use `own_ray`."""
    import ray

    from orchestrator.coordinator import ray_init_kwargs

    if not ray.is_initialized():
        ray.init(**ray_init_kwargs(None))
    yield
    ray.shutdown()


@pytest.fixture
def own_ray(ray_session):
    """Stop the session's Ray for this test (which starts its own), and bring it back afterwards."""
    import ray

    from orchestrator.coordinator import ray_init_kwargs

    ray.shutdown()
    yield
    ray.shutdown()
    ray.init(**ray_init_kwargs(None))


@pytest.fixture(scope="session")
def embedded_model():
    from workers.models import load_model

    return load_model("smollm2-135m")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that times out says which sweep step was waiting: what an in-process coordinator
    waits for, and the end of every run log under the test's tmp_path (for subprocess ones)."""
    outcome = yield
    report = outcome.get_result()
    if not (report.failed and call.excinfo is not None and "Timeout" in str(call.excinfo.value)):
        return
    lines = []
    coordinator = sys.modules.get("orchestrator.coordinator")
    for running in getattr(coordinator, "RUNNING", []):
        lines.append(f"coordinator of {running.run_dir} is waiting for: {running.waiting_for()}")
    tmp_path = item.funcargs.get("tmp_path")
    for log in sorted(Path(tmp_path).rglob("actscale.log")) if tmp_path else []:
        lines.append(f"--- last lines of {log}")
        lines += log.read_text(errors="replace").splitlines()[-15:]
    report.sections.append(("sweep step that was waiting", "\n".join(lines) or "no sweep was running"))
