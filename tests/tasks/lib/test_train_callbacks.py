"""What the training process reports while it trains: per-batch counts, step lines, metrics.json."""

from __future__ import annotations

from sftflow.tasks.lib.train_callbacks import batch_counts, step_line, train_metrics


def test_train_metrics_tokens_per_second_from_tokens_and_runtime():
    history = [{"loss": 3.0, "step": 1}, {"loss": 2.5, "step": 2}, {"train_runtime": 4.0, "step": 2}]
    metrics = train_metrics({"train_runtime": 4.0, "train_loss": 2.75}, 1000, history, None)
    assert metrics["tokens_per_second"] == 250.0 and metrics["global_step"] == 2
    assert (metrics["first_logged_loss"], metrics["last_logged_loss"]) == (3.0, 2.5)
    assert metrics["peak_memory_bytes"] > 0 and metrics["peak_memory_kind"] in ("max_rss", "torch.cuda.max_memory_allocated")
    assert train_metrics({"train_runtime": 0.0}, None, [], None)["tokens_per_second"] is None


def test_batch_counts_packed_and_padded():
    import torch

    # padding-free: one flattened row of three conversations (3 + 2 + 4 tokens), no pad
    assert batch_counts({"input_ids": torch.ones(1, 9), "position_ids": torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])}) \
        == (3, 9)
    # padded: one conversation per row, pad tokens excluded
    assert batch_counts({"input_ids": torch.ones(3, 4),
                         "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])}) == (3, 7)


def test_step_line_has_every_field_and_skips_other_logs():
    line = step_line({"loss": 4.81234, "grad_norm": 1.93, "learning_rate": 1.9e-3, "tokens_per_second": 5120.2,
                      "conversations_per_step": 11.5, "tokens_per_step": 2048}, 25, 300)
    assert line == ("[train] step 25/300 loss 4.812 grad_norm 1.93 lr 1.9e-03 tokens/s 5120 "
                    "conversations/step 11.5 tokens/step 2048")
    assert step_line({"eval_loss": 1.0}, 25, 300) is None
    assert step_line({"train_runtime": 3.0, "train_loss": 2.0}, 300, 300) is None
