"""Safe defaults: no remote code, safetensors only, loopback-only Ray, no pickles in results."""
from __future__ import annotations

import json

import pytest

from orchestrator.coordinator import Coordinator, ray_init_kwargs
from tests.sweeps import parsed, tiny_config
from workers.errors import UsageError
from workers.models import load_model

PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


pytestmark = pytest.mark.usefixtures("ray_session")


def test_remote_code_is_never_trusted(tmp_path):
    model_dir = tmp_path / "custom"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": {
        "AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}}))
    (model_dir / "evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(UsageError, match="unknown model|could not load"):
        load_model(str(model_dir))


def test_pickle_only_checkpoint_is_refused(tmp_path):
    model_dir = tmp_path / "pickled"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (model_dir / "pytorch_model.bin").write_bytes(b"\x80\x04...")
    with pytest.raises(UsageError, match="only pickle weights"):
        load_model(str(model_dir))


def test_embedded_ray_binds_loopback_without_dashboard():
    kwargs = ray_init_kwargs(None)
    assert kwargs["include_dashboard"] is False and kwargs["dashboard_host"] == "127.0.0.1"
    assert kwargs["_node_ip_address"] == "127.0.0.1"
    assert "_node_ip_address" not in ray_init_kwargs("10.0.0.1:6379")  # joining a cluster: its own addresses


@pytest.mark.slow
def test_no_pickles_in_results(tmp_path):
    config = parsed(tiny_config(methods=["activscalar", "steervec"], search={"n_trials": 2, "batch": 2}))
    Coordinator(config, tmp_path, quiet=True).run()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    for p in files:
        assert p.suffix not in (".pkl", ".pickle", ".pt", ".bin"), p
        assert p.read_bytes()[:2] not in PICKLE_MAGIC, p
