"""The scoring engine against rewards computed separately, one plain forward pass per defined text.

A tiny random Qwen3 in fp32 (random weights make every position's score differ, so a reward read
one token early, or a prefix that sees a token it should not, shows up).
"""

from __future__ import annotations

import pytest
import torch

from core.scoring.engine import ModelLoadError, RewardScorer
from core.training.demo_model import build_demo_reward_model

TOLERANCE = 1e-4
CORPUS = [
    "What is 2 + 2? <think>two and two make four</think> The answer is 4.",
    "Explain photosynthesis. Plants turn light, water and carbon dioxide into sugar and oxygen.",
    "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\nhi there<|im_end|>\n",
] * 20

RESPONSES = [
    "<think>\nLet me add: 2 + 2 = 4.\n</think>\n\nThe answer is 4.",  # with <think>
    "The answer is 4, plainly.",  # no thinking
    "first idea</think> second thought </think>\n\nFinal: four.",  # no opening tag, two closings
    "<think>short</think>",  # thinking only, empty answer
]


@pytest.fixture(scope="module", params=[True, False], ids=["think-token-id", "think-as-text"])
def scorer(request, tmp_path_factory) -> RewardScorer:
    folder = build_demo_reward_model(
        tmp_path_factory.mktemp("model") / "rm", CORPUS, hidden_size=32, num_layers=2, num_heads=2, seed=3,
        think_tokens=request.param,
    )
    return RewardScorer(folder, device="cpu", batch_tokens=256)


def reference(scorer: RewardScorer, ids: list[int]) -> float:
    """The model's own forward on one unpadded sequence: RewardTrainer's pooling at the last token."""
    with torch.inference_mode():
        return scorer.model(input_ids=torch.tensor([ids])).logits[0, 0].item()


def closing_tokens(example) -> list[int]:  # noqa: ANN001
    """What the example holds after its response (text: EOS; chat: the template's end of the assistant
    turn, <|im_end|> and a newline): a prefix cut after token k is closed the same way."""
    return example.ids[example.response_tokens[1]:]


def reference_text(scorer: RewardScorer, prompt, response: str) -> float:  # noqa: ANN001
    if isinstance(prompt, list):
        ids = scorer.tokenizer.apply_chat_template(
            [*prompt, {"role": "assistant", "content": response}], tokenize=True, return_dict=True
        )["input_ids"]
    else:
        ids = scorer.tokenizer(prompt + response + scorer.eos_token)["input_ids"]
    return reference(scorer, ids)


PROMPTS = ["Question: what is 2 + 2?\nAnswer: ", [{"role": "user", "content": "What is 2 + 2?"}]]


@pytest.mark.parametrize("prompt", PROMPTS, ids=["standard", "conversational"])
@pytest.mark.parametrize("options", [{"strategy": "bucket", "padding_side": "right"}, {"strategy": "bucket", "padding_side": "left"},
                                     {"strategy": "pad", "padding_side": "right"},
                                     {"strategy": "pad", "padding_side": "left"}],
                         ids=["bucket-right", "bucket-left", "pad-right", "pad-left"])
def test_rewards_and_segment_rewards_equal_the_defined_texts(scorer, prompt, options):
    results = scorer.score_responses([(prompt, r) for r in RESPONSES], **options)
    for response, result in zip(RESPONSES, results, strict=True):
        assert result.reward == pytest.approx(reference_text(scorer, prompt, response), abs=TOLERANCE)
        cut = response.rfind("</think>")
        if cut == -1:
            assert result.thinking_reward is None
            assert result.answer_reward == pytest.approx(result.reward, abs=TOLERANCE)
        else:
            thinking = response[: cut + len("</think>")]
            answer = response[cut + len("</think>") :].lstrip()
            assert result.thinking_reward == pytest.approx(reference_text(scorer, prompt, thinking), abs=TOLERANCE)
            assert result.answer_reward == pytest.approx(reference_text(scorer, prompt, answer), abs=TOLERANCE)


@pytest.mark.parametrize("prompt", PROMPTS, ids=["standard", "conversational"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_every_trajectory_value_is_the_reward_of_the_prefix_closed_like_the_example(scorer, prompt, padding_side):
    """The prefix cut after token k, closed as the whole example is (text: EOS; chat: <|im_end|> and the
    newline after it), so the last point is the response's own reward."""
    examples = [scorer.format(prompt, r) for r in RESPONSES]
    trajectories = scorer.trajectories(examples, padding_side=padding_side, batch_size=4)
    for example, (steps, think_end) in zip(examples, trajectories, strict=True):
        start, end = example.response_tokens
        assert len(steps) == end - start
        assert len(closing_tokens(example)) == (1 if isinstance(prompt, str) else 2)
        assert steps[-1][1] == pytest.approx(reference(scorer, example.ids), abs=TOLERANCE)
        for k, (token_text, value) in zip(range(start, end), steps, strict=True):
            assert token_text == example.text[example.offsets[k][0] : example.offsets[k][1]]
            assert value == pytest.approx(reference(scorer, example.ids[: k + 1] + closing_tokens(example)),
                                          abs=TOLERANCE)
        response_text = "".join(text for text, _ in steps)
        if "</think>" in response_text:
            upto = "".join(text for text, _ in steps[: think_end + 1])
            assert upto.endswith("</think>") or "</think>" in upto[-len("</think>") - 8 :]
            assert "</think>" not in "".join(text for text, _ in steps[think_end + 1 :])
        else:
            assert think_end is None


def test_the_boundary_uses_the_think_token_id_when_the_tokenizer_has_one(scorer):
    example = scorer.format(PROMPTS[0], RESPONSES[0])
    steps, think_end = scorer.trajectory_of(example)
    if scorer.think_close_id is not None:
        assert steps[think_end][0] == "</think>"
    else:
        assert "</think>" not in scorer.tokenizer.get_vocab()
        assert steps[think_end][0].endswith(">")


def test_length_bucketing_returns_results_in_input_order(scorer):
    responses = [("word " * n).strip() for n in (40, 1, 7, 120, 3, 60, 2)]
    batched = scorer.score(PROMPTS[0], responses)
    one_at_a_time = [reference_text(scorer, PROMPTS[0], r) for r in responses]
    assert batched == pytest.approx(one_at_a_time, abs=TOLERANCE)


def test_a_model_with_several_labels_is_refused(tmp_path):
    from transformers import AutoModelForSequenceClassification

    folder = build_demo_reward_model(tmp_path / "rm", CORPUS, hidden_size=32, num_layers=1, num_heads=2)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3, ignore_mismatched_sizes=True)
    model.save_pretrained(folder)
    with pytest.raises(ModelLoadError, match="num_labels=3; a reward model has one output"):
        RewardScorer(folder, device="cpu")


def test_a_missing_model_says_so(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot load"):
        RewardScorer(tmp_path / "nothing-here", device="cpu")


@pytest.mark.parametrize("split_attention", [True, False], ids=["split-probe-attention", "masked-probe-attention"])
@pytest.mark.parametrize("prompt", PROMPTS, ids=["standard", "conversational"])
def test_the_cached_prefix_path_gives_each_prefix_reward_like_the_probe_rows(scorer, prompt, split_attention):
    """With a tiny ``batch_tokens`` every example takes the long-sequence path (one cached forward,
    then EOS probes in chunks), through the split probe attention (shared prefix + band, the path SDPA
    models take) or the masked one (other models): each value is still the reward of its prefix plus EOS."""
    long_path = RewardScorer(scorer.name, device="cpu", batch_tokens=8)
    assert long_path.split_probe_attention  # the tiny Qwen3 runs SDPA, so the split path is the default
    long_path.split_probe_attention = split_attention
    for response in RESPONSES:
        example = long_path.format(prompt, response)
        steps, think_end = long_path.trajectory_of(example)
        start, end = example.response_tokens
        assert len(steps) == end - start
        assert steps[-1][1] == pytest.approx(reference(scorer, example.ids), abs=TOLERANCE)
        for k, (_, value) in zip(range(start, end), steps, strict=True):
            assert value == pytest.approx(reference(scorer, example.ids[: k + 1] + closing_tokens(example)),
                                          abs=TOLERANCE)
        batched_steps, batched_end = scorer.trajectory_of(scorer.format(prompt, response))
        assert think_end == batched_end
        assert [v for _, v in steps] == pytest.approx([v for _, v in batched_steps], abs=TOLERANCE)


@pytest.mark.slow
def test_a_trajectory_over_8k_tokens_with_grouped_query_attention_is_exact_at_every_sampled_prefix(tmp_path):
    """Over 8k tokens the probes run in many chunks of the split attention, each with its own shared
    prefix and band; four query heads share each key/value head, as in real Qwen3 models."""
    import random

    folder = build_demo_reward_model(tmp_path / "rm", CORPUS, hidden_size=64, num_layers=2, num_heads=8, seed=5,
                                     max_positions=65_536, num_key_value_heads=2)
    scorer = RewardScorer(folder, device="cpu")
    assert scorer.split_probe_attention
    response = "<think>" + "we add the numbers one by one and check. " * 300 + "</think> The answer is 4."
    example = scorer.format(PROMPTS[0], response)
    assert len(example.ids) >= 8_000
    steps, think_end = scorer.trajectory_of(example)
    start, end = example.response_tokens
    assert len(steps) == end - start and steps[think_end][0] == "</think>"
    for k in sorted({start, end - 1, start + think_end, *random.Random(0).sample(range(start, end), 24)}):
        assert steps[k - start][1] == pytest.approx(reference(scorer, example.ids[: k + 1] + [scorer.eos_id]),
                                                    abs=TOLERANCE)


def test_progress_rises_to_one_and_a_cancelling_callback_stops_a_long_trajectory(scorer):
    from core.scoring.engine import ScoringCancelled

    long_path = RewardScorer(scorer.name, device="cpu", batch_tokens=8)
    response = "<think>" + "we check each case. " * 60 + "</think> four"
    reported: list[float] = []
    long_path.score_responses([(PROMPTS[0], response)], trajectory=True, progress=reported.append)
    assert reported == sorted(reported) and reported[-1] == pytest.approx(1.0) and len(reported) >= 3
    calls = []

    def cancel_after_two(done: float) -> None:
        calls.append(done)
        if len(calls) == 2:
            raise ScoringCancelled

    with pytest.raises(ScoringCancelled):
        long_path.score_responses([(PROMPTS[0], response)], trajectory=True, progress=cancel_after_two)
    assert len(calls) == 2 < len(reported)  # the work stopped at the next report, not at the end


@pytest.mark.parametrize("fused", [True, False], ids=["fused-kernel", "portable-key-blocks"])
def test_split_probe_attention_equals_a_plain_masked_softmax_over_each_probes_prefix(fused, monkeypatch):
    """The attention of each probe, computed directly: softmax over the cached keys 0..cut and its own
    key, grouped-query heads repeated. Key blocks of 7 make the portable path merge several blocks."""
    from core.scoring import probe_attention

    monkeypatch.setattr(probe_attention, "PORTABLE_KEY_BLOCK", 7)
    generator = torch.Generator().manual_seed(0)
    heads, kv_heads, dim, length = 6, 2, 8, 40
    query, key, value = (torch.randn(1, h, 5, dim, generator=generator) for h in (heads, kv_heads, kv_heads))
    cached_keys, cached_values = (torch.randn(1, kv_heads, length, dim, generator=generator) for _ in range(2))
    cuts = torch.tensor([20, 21, 23, 24, 30])
    out = probe_attention.probe_attention(query, key, value, cached_keys, cached_values, cuts, 0.3, fused=fused)
    for i, cut in enumerate(cuts.tolist()):
        for h in range(heads):
            keys = torch.cat([cached_keys[0, h // 3, : cut + 1], key[0, h // 3, i : i + 1]])
            values = torch.cat([cached_values[0, h // 3, : cut + 1], value[0, h // 3, i : i + 1]])
            expected = torch.softmax(keys @ query[0, h, i] * 0.3, dim=0) @ values
            assert out[0, h, i].tolist() == pytest.approx(expected.tolist(), abs=1e-5)


def test_split_probe_attention_with_two_token_probes_sees_only_its_own_probes_earlier_tokens():
    """Chat probes are two tokens (<|im_end|>, newline): token j of probe i sees cached keys 0..cut_i
    and tokens 0..j of probe i, never another probe's."""
    from core.scoring import probe_attention
    from core.scoring.engine import _own_probe_visibility

    generator = torch.Generator().manual_seed(1)
    heads, dim, length, probes, tokens = 4, 8, 30, 3, 2
    query, key, value = (torch.randn(1, heads, probes * tokens, dim, generator=generator) for _ in range(3))
    cached_keys, cached_values = (torch.randn(1, heads, length, dim, generator=generator) for _ in range(2))
    cuts = torch.tensor([10, 11, 12]).repeat_interleave(tokens)
    out = probe_attention.probe_attention(query, key, value, cached_keys, cached_values, cuts, 0.5,
                                          own_visible=_own_probe_visibility(probes, tokens))
    for q in range(probes * tokens):
        probe, first = q // tokens, q // tokens * tokens
        for h in range(heads):
            keys = torch.cat([cached_keys[0, h, : int(cuts[q]) + 1], key[0, h, first : q + 1]])
            values = torch.cat([cached_values[0, h, : int(cuts[q]) + 1], value[0, h, first : q + 1]])
            expected = torch.softmax(keys @ query[0, h, q] * 0.5, dim=0) @ values
            assert out[0, h, q].tolist() == pytest.approx(expected.tolist(), abs=1e-5), (probe, q, h)
