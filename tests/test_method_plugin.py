"""A fourth method from this file alone: registered here, named under `plugins:`, and run by a
real sweep (Ray workers import this module), the report and `actscale train`, with no edit
anywhere else. This is the contract of docs/architecture.md, "Where a new thing goes"."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from orchestrator.cli import main
from orchestrator.coordinator import Coordinator
from search_spaces.config import parse_config
from storage.query import load
from tests.sweeps import check_run, tiny_config
from workers.errors import UsageError
from workers.interventions import CellStats, ForwardContext, Intervention, Setup, method_class, register_method
from workers.names import METHODS

pytestmark = pytest.mark.usefixtures("ray_session")
PLUGIN = __name__  # "tests.test_method_plugin": importable by the Ray workers, which start in the repo root


@register_method
class ToyShift(Intervention):
    """h <- h + b * 1 (the same offset b in every coordinate), one b per (layer, position)."""

    method = "toyshift"
    needs_norms = True  # its effect is relative to the activation's size, like SteerVec's
    identity = 0.0
    moved_measure = "|b| sqrt(W) / mean|h|"
    threshold_setting = "steer_threshold"

    def __init__(self, setup: Setup):
        super().__init__(setup)
        shape = (len(setup.refs), setup.n_positions)
        self.shifts = nn.ParameterList([nn.Parameter(torch.zeros(shape)) for _ in range(setup.n_trials)])

    def transform(self, index: int, h: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        x = h.reshape(self.n_trials, -1, h.shape[1], h.shape[2])  # [K, B, T, W]
        b = torch.stack(list(self.shifts))[:, index].to(x.dtype)  # [K, T]
        return (x + b[:, None, :, None]).reshape(h.shape)

    def minimality(self, ctx: ForwardContext) -> torch.Tensor:
        return torch.stack(list(self.shifts)).abs().flatten(1).sum(1)  # [K]

    def trial_parameters(self, k: int) -> list[nn.Parameter]:
        return [self.shifts[k]]

    def cells(self, k: int, stats: CellStats) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.shifts[k].detach().cpu()  # [L, T]
        return b, b.abs() * self.width ** 0.5 / stats.norms.clamp_min(1e-6)


@pytest.mark.slow
def test_a_sweep_runs_a_method_registered_in_a_test_file(tmp_path):
    config = parse_config(tiny_config(plugins=[PLUGIN], methods=["activscalar", "toyshift"],
                                      search={"n_trials": 2, "batch": 2, "replicates": 2},
                                      train={"steps": 4, "batch_size": 8}))
    summary = Coordinator(config, tmp_path, quiet=True).run()
    assert summary.completed == 6 and summary.failed == 0
    check_run(tmp_path, n_trials=2, n_units=2, replicates=2)
    units = load(tmp_path, "units").set_index("method")
    assert units.loc["toyshift", "moved_measure"] == ToyShift.moved_measure
    scalars = load(tmp_path, "scalars")
    toy = scalars[scalars.method == "toyshift"]
    assert len(toy) > 0 and (toy.value != 0).any()  # it trained: offsets moved away from the identity 0
    # the report draws it by its moved measure, since its value is not a scale
    assert main(["report", str(tmp_path)]) == 0
    assert any("toyshift" in p.name for p in (tmp_path / "report" / "figures").glob("heatmap-*.png"))


def test_train_command_takes_a_plugin(capsys):
    assert main(["train", "--model", "tiny-gpt2", "--task", "ioi", "--task-option", "n=20", "--site", "mlp_out",
                 "--method", "toyshift", "--plugin", PLUGIN, "--steps", "3", "--batch-size", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "complete" and report["n_params"] == report["sites_total"]


def test_unknown_methods_and_plugins_are_named_with_what_is_accepted():
    with pytest.raises(UsageError, match=r"unknown method 'nope'; accepted: activscalar, steervec, dynscalar"):
        parse_config(tiny_config(methods=["nope"]))
    with pytest.raises(UsageError, match=r"plugin module 'no_such_module' cannot be imported"):
        parse_config(tiny_config(plugins=["no_such_module"]))
    assert method_class("toyshift") is ToyShift


def test_a_method_name_cannot_be_registered_twice():
    class Other(Intervention):
        method = "toyshift"

    with pytest.raises(UsageError, match="registered twice"):
        register_method(Other)


def test_registering_a_method_makes_it_known_without_torch():
    """What validation, the units table and the report need is plain data in workers/names.py."""
    info = METHODS["toyshift"]
    assert info.path == f"{PLUGIN}:ToyShift" and info.fixed_length and info.identity == 0.0
    assert info.moved_measure == ToyShift.moved_measure and info.threshold_setting == "steer_threshold"


def test_a_method_missing_part_of_the_contract_is_refused_by_name():
    class Half(Intervention):
        method = "half"
        moved_measure = "|x|"

        def transform(self, index, h, ctx):
            return h

    with pytest.raises(UsageError, match="Half does not define cells, minimality, trial_parameters"):
        register_method(Half)
    assert "half" not in METHODS
