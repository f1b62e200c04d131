"""Parts of schema version 4 (before the model's identity columns) read as version 5, their new columns NULL:
the committed runs in docs/data stay readable, alone or beside new parts, and compaction keeps their rows."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage.query import load, run_sql
from storage.query_docs import SAMPLE_RUN
from storage.schema import META_TABLE, META_VERSION, MODEL_IDENTITY, SCHEMA_VERSION, UNITS
from storage.store import RunStore, check_part, part_files, read_table, table_dir

V5_ONLY = set(MODEL_IDENTITY) | {"near_chance", "n_folds"}  # the units columns a version-4 part lacks


def _unit(unit_id: str, model: str, **extra) -> dict:
    return dict(unit_id=unit_id, run_id="r", model=model, model_revision="x", n_layers=4, d_model=64, task="ioi",
                task_options="{}", task_hash="h", site="mlp_out", layers=[0, 1, 2, 3], method="activscalar",
                settings="{}", n_train=30, n_val=10, n_test=10, counts="{}", base_accuracy=0.55, mean_ld=0.1,
                moved_measure="|alpha-1|", moved_threshold=0.1, min_split=20, warnings=[], value_identity=1.0, **extra)


def _write_v4_part(run_dir, rows: list[dict]) -> None:
    """A units part as actscale wrote it at schema version 4."""
    schema = pa.schema([f for f in UNITS if f.name not in V5_ONLY]).with_metadata(
        {META_TABLE: b"units", META_VERSION: b"4"})
    directory = table_dir(run_dir, "units")
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), directory / "part-00000000000000000001-1-000001.parquet")


def test_a_version_4_part_reads_as_the_current_version_beside_a_new_one(tmp_path):
    assert SCHEMA_VERSION == 6
    run = tmp_path / "run"
    _write_v4_part(run, [_unit("u-old", "tiny-gpt2")])
    store = RunStore(run)
    store.write_now("units", [_unit("u-new", "gemma3-270m", model_family="Gemma 3", model_type="gemma3_text",
                                    model_checkpoint="base", train_dtype="bf16", eval_dtype="fp32", near_chance=False)])
    assert all(check_part(p, "units") is None for p in part_files(run, "units"))
    table = read_table(run, "units").table
    assert table.schema.names == UNITS.names
    rows = {r["unit_id"]: r for r in table.to_pylist()}
    assert all(rows["u-old"][c] is None for c in V5_ONLY) and rows["u-old"]["base_accuracy"] == 0.55
    assert rows["u-new"]["model_checkpoint"] == "base"
    frame, problems = run_sql([run], "SELECT unit_id, model_family, near_chance FROM units ORDER BY unit_id")
    assert not problems and frame.unit_id.tolist() == ["u-new", "u-old"]
    assert frame.model_family.iloc[0] == "Gemma 3" and frame.model_family.isna().iloc[1]
    models, _ = run_sql([run], "SELECT model, model_checkpoint, train_dtypes FROM models ORDER BY model")
    assert models.model.tolist() == ["gemma3-270m", "tiny-gpt2"] and list(models.train_dtypes.iloc[0]) == ["bf16"]
    competence, _ = run_sql([run], "SELECT model, near_chance FROM competence ORDER BY model")
    assert competence.near_chance.tolist() == [False, True]  # the old part judged by the same threshold (0.55)
    store.compact("units")  # a merged part of both versions, written as the current version
    (merged,) = part_files(run, "units")
    assert pq.read_schema(merged).metadata[META_VERSION] == b"6"
    assert sorted(load(run, "units").unit_id) == ["u-new", "u-old"]


def test_a_version_4_part_alone_still_has_every_column_in_sql(tmp_path):
    run = tmp_path / "run"
    _write_v4_part(run, [_unit("u-old", "tiny-gpt2")])
    frame, problems = run_sql([run], "SELECT * FROM units")
    assert not problems and list(frame.columns) == UNITS.names and frame.model_checkpoint.isna().all()


def test_the_committed_sample_run_is_version_4_and_readable():
    (part,) = part_files(SAMPLE_RUN, "units")
    assert pq.read_schema(part).metadata[META_VERSION] == b"4"
    assert len(load(SAMPLE_RUN, "units")) == 4


@pytest.mark.parametrize("version", [b"3", b"7"])
def test_other_versions_are_refused_by_name(tmp_path, version):
    run = tmp_path / "run"
    _write_v4_part(run, [_unit("u-old", "tiny-gpt2")])
    (part,) = part_files(run, "units")
    table = pq.read_table(part)
    pq.write_table(table.replace_schema_metadata({META_TABLE: b"units", META_VERSION: version}), part)
    assert f"schema version {version.decode()} is not supported (this actscale reads versions 4, 5, 6" in check_part(
        part, "units")


def test_status_and_report_name_each_model(tmp_path):
    from orchestrator.sweep_cmds import status_text
    from storage.query import model_lines

    run = tmp_path / "run"
    _write_v4_part(run, [_unit("u-old", "tiny-gpt2")])
    store = RunStore(run)
    identity = dict(model_family="Gemma 3", model_type="gemma3_text", model_checkpoint="base",
                    model_source="gemma-3-270m-q4_k_m.gguf", model_source_sha256="a5fd3b62230aa5ec6021",
                    model_quantisation="Q4_K_M", train_dtype="bf16", eval_dtype="fp32",
                    model_licence="Gemma Terms of Use", model_licence_url="https://ai.google.dev/gemma/terms")
    store.write_now("units", [dict(_unit("u-new", "gemma3-270m", **identity, near_chance=False), base_accuracy=0.975)])
    lines = model_lines(run)
    assert lines[0] == ("gemma3-270m: Gemma 3 (gemma3_text), base checkpoint, dequantised from Q4_K_M "
                        "(gemma-3-270m-q4_k_m.gguf, sha256 a5fd3b62230a...), trained in bf16, evaluated in fp32; "
                        "4 layers, d_model 64; licence Gemma Terms of Use (https://ai.google.dev/gemma/terms). "
                        "Base accuracy before any intervention: ioi 0.97 (mean LD 0.10).")
    assert lines[1].startswith("tiny-gpt2: 4 layers, d_model 64 (identity not recorded")
    assert "ioi 0.55 (mean LD 0.10) (near chance: flagged, no basis for claims)" in lines[1]
    assert status_text(run, []).startswith(lines[0] + "\n" + lines[1] + "\n\nunit")


def test_a_worker_writes_its_model_identity_into_the_units_row(tmp_path):
    """The row of a real unit (tiny Gemma 3, prepared by a worker) carries who the model is, and fits the schema."""
    from workers.actor import WorkerActor
    from workers.tasks.base import TaskSpec
    from workers.unit import TrainSettings, UnitSpec

    worker = WorkerActor("tiny-gemma3")
    spec = UnitSpec("tiny-gemma3", TaskSpec.make("ioi", {"n": 20}), "mlp_out", "all", "activscalar",
                    TrainSettings(precision="fp32"))
    row, _ = worker.unit_record("u-gemma", spec)
    RunStore(tmp_path / "run").write_now("units", [dict(row, run_id="r")])
    (stored,) = read_table(tmp_path / "run", "units").table.to_pylist()
    assert {k: stored[k] for k in ("model_family", "model_type", "model_checkpoint", "train_dtype", "eval_dtype")} == {
        "model_family": "Gemma 3", "model_type": "gemma3_text", "model_checkpoint": "random weights",
        "train_dtype": "fp32", "eval_dtype": "fp32"}
    assert stored["near_chance"] == (stored["base_accuracy"] < 0.6) and stored["model_quantisation"] is None
