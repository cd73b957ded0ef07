"""The whole chain on a small training budget: model and eval rows with lineage, and caching."""

from __future__ import annotations

import json
from pathlib import Path

from sftflow.tasks.core.catalog import connect_readonly


def test_ingest_to_evaluate(completed_run, completed_project, run_pipeline, small_train):
    project, cold = completed_run
    stages = [s["stage"] for s in cold["stages"]]
    assert stages[-2:] == ["train", "evaluate"]

    with connect_readonly(project / "data" / "warehouse" / "catalog.duckdb") as con:
        (model_id, artifact_id, base, method, path, run_id, gate), = con.execute("SELECT * FROM models").fetchall()
        assert base == "builtin:tiny-llama" and method == "full" and run_id == cold["run_id"]
        assert (Path(path) / "model.safetensors").is_file()
        # lineage: the model's artifact was trained on the latest mix's shards
        trained_on = con.execute(
            """SELECT count(DISTINCT se.example_id) FROM artifact_inputs ai
               JOIN shards s ON s.artifact_id = ai.input_artifact_id AND s.split = 'train'
               JOIN shard_examples se USING (shard_id) WHERE ai.artifact_id = ?""", [artifact_id]).fetchone()[0]
        assert trained_on > 0
        metrics = dict(con.execute("SELECT metric, value FROM evals WHERE model_id = ?", [model_id]).fetchall())
    for name in ("heldout_loss", "heldout_loss_base", "general_ppl", "general_ppl_base", "if_prompt_acc",
                 "if_instruction_acc", "mask_supervised_token_share", "mask_zero_supervised_examples"):
        assert name in metrics, name
    assert metrics["mask_zero_supervised_examples"] == 0
    assert 0 < metrics["mask_supervised_token_share"] < 1
    # a randomly initialised model trained 10 steps beats itself untrained on held-out answers
    assert metrics["heldout_loss"] < metrics["heldout_loss_base"]

    artifact = Path(path).parent
    for name in ("mask_audit.json", "roundtrip.json", "training.png", "MODEL_CARD.md", "training_config.yaml",
                 "log_history.json", "chat_template.jinja"):
        assert (artifact / name).is_file(), name
    assert json.loads((artifact / "roundtrip.json").read_text())["ok"] is True
    assert (Path(path) / "chat_template.jinja").read_bytes() == (artifact / "chat_template.jinja").read_bytes()
    card = (artifact / "MODEL_CARD.md").read_text()
    assert "alpaca_sample" in card and "exact_duplicate" in card

    copy, _ = completed_project
    warm = run_pipeline(copy, small_train, only="all")
    assert all(s["cache_hit"] for s in warm["stages"]), warm["stages"]
