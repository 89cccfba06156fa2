"""A small Qwen3-architecture reward model built on this machine, with no download.

It stands in for a hub model wherever the network is out of reach (tests, the offline demo): the
tokenizer is a byte-level BPE trained on the spot with ``tokenizers`` and carries what the real
Qwen3 tokenizer carries and what reward modeling needs:

* ``<think>`` and ``</think>`` as single special tokens, as in Qwen3-Thinking;
* a ChatML chat template (``<|im_start|>role\\n...<|im_end|>``) so conversational data works;
* EOS (``<|im_end|>``) distinct from padding (``<|endoftext|>``): with pad == EOS the pooled
  reward is read one token early, since the appended EOS is taken for padding.

The weights are random; training (``RewardTrainer``) makes it a reward model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [PAD_TOKEN, "<|im_start|>", EOS_TOKEN, "<think>", "</think>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_demo_tokenizer(texts: Iterable[str], *, vocab_size: int = 512, think_tokens: bool = True):
    """A ``PreTrainedTokenizerFast`` trained on ``texts`` (byte-level BPE, so any text encodes).

    ``think_tokens=False`` leaves ``<think>``/``</think>`` as ordinary text, like most tokenizers.
    """
    specials = SPECIAL_TOKENS if think_tokens else [t for t in SPECIAL_TOKENS if t not in ("<think>", "</think>")]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[t for t in specials if t not in (PAD_TOKEN, EOS_TOKEN)],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_demo_reward_model(
    out_dir: Path,
    texts: Iterable[str],
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    vocab_size: int = 512,
    seed: int = 0,
    think_tokens: bool = True,
    max_positions: int = 4096,
    num_key_value_heads: int | None = None,
) -> Path:
    """Save a randomly initialised Qwen3 sequence classifier (``num_labels=1``) and its tokenizer
    to ``out_dir``; it loads with ``AutoModelForSequenceClassification.from_pretrained``.
    ``num_key_value_heads`` below ``num_heads`` gives grouped-query attention, as real Qwen3 models use."""
    import torch
    from transformers import AutoModelForSequenceClassification, Qwen3Config

    tokenizer = build_demo_tokenizer(texts, vocab_size=vocab_size, think_tokens=think_tokens)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_key_value_heads or num_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_positions,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


DEMO_MODEL_NAME = "demo-tiny-qwen3"


def train_demo_reward_model(out_dir: Path, *, steps: int = 80, seed: int = 0) -> dict[str, float]:
    """Build the tiny Qwen3 and train it with RewardTrainer on the demo preference pairs (chat
    format, <think> blocks included), so the offline app has a reward model that prefers something.
    Returns the accuracy and mean margin on those pairs (its training data: a demo, not a benchmark)."""
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from core.data.demo_data import DEMO_CANDIDATES, demo_preference_rows

    rows = demo_preference_rows()
    texts = [m["content"] for row in rows for key in ("prompt", "chosen", "rejected") for m in row[key]]
    texts += [c["text"] for row in DEMO_CANDIDATES for c in row["completions"]]
    out_dir = Path(out_dir)
    build_demo_reward_model(out_dir, texts * 4, hidden_size=64, num_layers=2, num_heads=4, seed=seed)
    model = AutoModelForSequenceClassification.from_pretrained(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    datasets.disable_progress_bars()
    train = datasets.Dataset.from_list(rows)
    args = RewardConfig(
        output_dir=str(out_dir / "run"), bf16=False, activation_checkpointing=False, max_steps=steps,
        per_device_train_batch_size=4, learning_rate=3e-3, logging_steps=max(1, steps // 4), save_strategy="no",
        report_to=[], use_cpu=True, seed=seed, disable_tqdm=True,
    )
    torch.manual_seed(seed)
    trainer = RewardTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    metrics = trainer.evaluate(train)
    trainer.save_model(str(out_dir))
    tokenizer.save_pretrained(out_dir)
    return {"accuracy": float(metrics["eval_accuracy"]), "margin": float(metrics.get("eval_margin", 0.0))}


def register_demo_model(store, folder: Path, metrics: dict[str, float]) -> bool:  # noqa: ANN001
    """Register the trained demo model at ``folder`` in ``store``; False when a model of that name is
    already there (a second app start raced this one)."""
    from storage.registry import RegistryError, register_model

    try:
        with store.write() as session:
            register_model(
                session, name=DEMO_MODEL_NAME, path=str(Path(folder).resolve()), base_model="tiny Qwen3 built locally",
                config={"trained_on": "demo preference pairs", "note": "a demo model, trained on its evaluation data"},
                n_pairs=14, eval_accuracy=metrics["accuracy"], eval_margin=metrics["margin"],
            )
    except RegistryError as error:
        print(f"not registered: {error}")
        return False
    return True


def _exit_when_parent_exits(parent_pid: int) -> None:
    """The app starts this training in the background; once the app stops, the training stops too instead
    of running on as an orphan (the next start trains again, since nothing was registered)."""
    import os
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-app", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """``python -m core.training.demo_model --db URL --out DIR``: train the demo model and register it."""
    import argparse

    from storage.engine import Store

    parser = argparse.ArgumentParser(description="Train and register the offline demo reward model.")
    parser.add_argument("--db", default=None, help="store URL (default: $REWARDLAB_DB, which the app sets)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="stop when the process with this id (the app that started the training) stops")
    args = parser.parse_args(argv)
    if args.parent_pid is not None:
        _exit_when_parent_exits(args.parent_pid)
    metrics = train_demo_reward_model(args.out)
    if register_demo_model(Store(args.db), args.out, metrics):
        print(f"registered {DEMO_MODEL_NAME} at {args.out} ({metrics})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
