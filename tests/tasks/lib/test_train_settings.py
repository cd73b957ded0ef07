"""SFTConfig keyword arguments from the recipe: learning rate, packing, device flags, attention."""

from __future__ import annotations

from sftflow.tasks.core.recipe_training import TrainConfig
from sftflow.tasks.lib.train_settings import attn_implementation, sft_kwargs, wants_packing


def test_default_learning_rate_full_vs_lora_and_explicit_wins():
    assert sft_kwargs(TrainConfig(), "cpu", 10.0)["learning_rate"] == 2e-5
    assert sft_kwargs(TrainConfig(method="lora"), "cpu", 10.0)["learning_rate"] == 2e-4
    assert sft_kwargs(TrainConfig(method="lora", learning_rate=1e-3), "cpu", 10.0)["learning_rate"] == 1e-3


def test_auto_packing_packs_only_rows_under_half_of_max_length():
    cfg = TrainConfig(max_length=512)
    packed = sft_kwargs(cfg, "cpu", 255.9)
    assert packed["packing"] is True and packed["packing_strategy"] == "bfd"
    unpacked = sft_kwargs(cfg, "cpu", 256.0)
    assert unpacked["packing"] is False and "packing_strategy" not in unpacked
    assert sft_kwargs(TrainConfig(packing=False), "cpu", 1.0)["packing"] is False
    assert sft_kwargs(TrainConfig(packing=True), "cpu", 10_000.0)["packing"] is True
    assert (wants_packing("auto", 31.0, 64), wants_packing("auto", 32.0, 64)) == (True, False)


def test_cpu_flags_and_steps_versus_epochs():
    cpu = sft_kwargs(TrainConfig(max_steps=3, seed=7), "cpu", 10.0)
    assert cpu["use_cpu"] is True and cpu["bf16"] is False and cpu["dataloader_pin_memory"] is False
    assert cpu["dataloader_num_workers"] == 0 and cpu["activation_checkpointing"] is False
    assert cpu["max_steps"] == 3 and "num_train_epochs" not in cpu
    assert (cpu["seed"], cpu["data_seed"], cpu["save_total_limit"], cpu["report_to"]) == (7, 7, 2, [])
    assert cpu["eval_strategy"] == "no" and "eval_steps" not in cpu
    epochs = sft_kwargs(TrainConfig(num_train_epochs=1.5), "cpu", 10.0)
    assert epochs["num_train_epochs"] == 1.5 and "max_steps" not in epochs
    assert sft_kwargs(TrainConfig(bf16=True), "cpu", 10.0)["bf16"] is True  # explicit bf16 is honoured


def test_cuda_flags_bf16_auto_follows_hardware_and_eval_every_save():
    cfg = TrainConfig(model="org/some-model", save_steps=25)
    gpu = sft_kwargs(cfg, "cuda", 10.0, bf16_supported=True, has_eval=True)
    assert gpu["use_cpu"] is False and gpu["bf16"] is True and gpu["activation_checkpointing"] is True
    assert (gpu["eval_strategy"], gpu["eval_steps"], gpu["save_steps"]) == ("steps", 25, 25)
    assert sft_kwargs(cfg, "cuda", 10.0, bf16_supported=False)["bf16"] is False
    assert sft_kwargs(TrainConfig(), "cuda", 10.0, bf16_supported=True)["activation_checkpointing"] is False


def test_sft_kwargs_are_accepted_by_sft_config(tmp_path):
    from trl import SFTConfig

    kwargs = sft_kwargs(TrainConfig(max_steps=3, warmup_ratio=0.1), "cpu", 10.0, has_eval=True)
    args = SFTConfig(**kwargs, output_dir=str(tmp_path), assistant_only_loss=True)
    assert args.use_cpu and args.packing and args.get_warmup_steps(30) == 3
    assert args.activation_checkpointing is False and args.gradient_checkpointing is False


def test_attention_choice():
    assert attn_implementation(TrainConfig(), "cpu") == "sdpa"
    assert attn_implementation(TrainConfig(attn_implementation="eager"), "cuda") == "eager"
    try:
        import flash_attn  # noqa: F401
        expected = "flash_attention_2"
    except ImportError:
        expected = "sdpa"
    assert attn_implementation(TrainConfig(), "cuda") == expected
