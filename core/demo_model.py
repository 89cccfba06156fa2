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
) -> Path:
    """Save a randomly initialised Qwen3 sequence classifier (``num_labels=1``) and its tokenizer
    to ``out_dir``; it loads with ``AutoModelForSequenceClassification.from_pretrained``."""
    import torch
    from transformers import AutoModelForSequenceClassification, Qwen3Config

    tokenizer = build_demo_tokenizer(texts, vocab_size=vocab_size, think_tokens=think_tokens)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=4096,
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
