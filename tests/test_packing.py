"""Padding-free batches (``padding_free``): a batch's sequences end to end in one row, no pad tokens.

Oracles: TRL's own ``RewardTrainer.compute_loss`` on TRL's padded batch of the same pairs, and the
saved model folder read back with plain transformers."""

from __future__ import annotations

import json

import pytest

from core.data.importer import import_rows
from core.training.config import TrainingConfig

pytestmark = pytest.mark.slow

ROWS = [{"prompt": f"Question {i}? ", "chosen": " a careful answer" + " with reasons" * (i % 7 + 1),
         "rejected": " no" + " idea" * (3 * i % 11)} for i in range(12)]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_padding_free_loss_and_gradients_equal_trl_on_padded_batches_with_grouped_query_attention(tmp_path, lora):
    import datasets
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from core.training import packing
    from core.training.demo_model import build_demo_reward_model
    from core.training.trainer import length_grouped_reward_trainer, lora_config

    folder = build_demo_reward_model(tmp_path / "rm", [json.dumps(r) for r in ROWS] * 4, hidden_size=64, num_layers=2,
                                     num_heads=8, num_key_value_heads=2, seed=1)
    tokenizer = AutoTokenizer.from_pretrained(folder)

    def loss_and_gradients(padding_free: bool) -> tuple[float, dict]:
        model = AutoModelForSequenceClassification.from_pretrained(folder)
        if padding_free:
            packing.enable(model)
        if lora:
            torch.manual_seed(0)  # LoRA's A matrices are drawn from the RNG: the same draw for both runs
            model = get_peft_model(model, lora_config(TrainingConfig(lora=True, lora_r=4)))
            for name, parameter in model.named_parameters():
                if "lora_B" in name:  # B starts at 0; give it weight so LoRA's path shows in the gradients
                    parameter.data.normal_(0, 0.2)
        trainer_class = length_grouped_reward_trainer() if padding_free else RewardTrainer
        extra = {"padding_free": True} if padding_free else {}
        args = RewardConfig(output_dir=str(tmp_path / f"run-{padding_free}"), bf16=False, use_cpu=True, report_to=[],
                            save_strategy="no", center_rewards_coefficient=0.01, disable_tqdm=True,
                            per_device_train_batch_size=len(ROWS), max_length=200, train_sampling_strategy="random")
        trainer = trainer_class(model=model, args=args, train_dataset=datasets.Dataset.from_list(ROWS),
                                processing_class=tokenizer, **extra)
        (batch,) = list(trainer.get_train_dataloader())
        if padding_free:  # one row, only the sequences' own tokens
            assert batch["input_ids"].shape == (1, int(batch["cu_seq_lens_q"][-1]))
        else:
            assert (batch["attention_mask"] == 0).any()  # TRL's batch does carry padding
        model.eval()  # no dropout, so both runs compute the same function
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    packed_loss, packed_grads = loss_and_gradients(True)
    padded_loss, padded_grads = loss_and_gradients(False)
    assert packed_loss == pytest.approx(padded_loss, abs=1e-6)
    assert packed_grads.keys() == padded_grads.keys() and len(packed_grads) > 2
    for name, gradient in padded_grads.items():
        assert torch.allclose(packed_grads[name], gradient, atol=1e-6, rtol=1e-4), name


def test_a_padding_free_job_saves_a_model_that_plain_transformers_loads_with_sdpa(store, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from core.training.trainer import run_training

    import_rows(store, ROWS * 3, source="import:packing")
    lines: list[str] = []
    outcome = run_training(store, TrainingConfig(max_steps=4, eval_fraction=0.2, output_name="packed-rm"),
                           tmp_path / "work", log=lines.append)
    assert outcome.status == "succeeded", lines
    assert not [line for line in lines if "cannot take it" in line]  # packing ran: no fallback note
    saved = json.loads((outcome.model_dir / "config.json").read_text())
    assert "rewardlab" not in json.dumps(saved)
    model = AutoModelForSequenceClassification.from_pretrained(outcome.model_dir)
    assert model.config._attn_implementation == "sdpa"
    tokenizer = AutoTokenizer.from_pretrained(outcome.model_dir)
    with torch.inference_mode():  # the model scores a padded batch like each text alone
        texts = ["Question 1? a careful answer<|im_end|>", "Question 2? no idea idea idea<|im_end|>"]
        alone = [model(**tokenizer(t, return_tensors="pt")).logits[0, 0].item() for t in texts]
        batched = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits[:, 0].tolist()
    assert batched == pytest.approx(alone, abs=1e-5)
