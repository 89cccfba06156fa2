"""The reward scoring engine: exact rewards, segment rewards and per-token trajectories.

Definitions (the tests hold the code to them):

* **Formatting** is RewardTrainer's: standard = ``prompt + response`` with EOS appended when
  missing, tokenized with the tokenizer's defaults; conversational = the chat template of
  ``prompt + [assistant response]``, no EOS added. A score means what training optimised.
* **Segments**: split at the last ``</think>`` (``core.segments``). ``thinking_reward`` scores
  prompt + thinking, ``answer_reward`` prompt + answer, each formatted as above.
* **Trajectory**: for each response token k (in the tokenization of the whole example), the reward
  of the example cut after token k and closed as the whole example is (text: EOS; chat: the
  template's end of the assistant turn), so the last point is the reward.

How it runs. A reward model's head scores every position; the reward is the score at the last
token. So the engine runs the backbone and the head itself and reads the score where it wants:

* throughput: examples are sorted by length and batched with others of similar length (the
  shortest at least 70% of the longest, at most ``batch_tokens`` per batch), so matrix products
  get many rows while little is padded; a long example runs alone, with no mask, so attention takes
  its causal fast path. (Packing several examples into one row with a block-diagonal mask was
  measured too: it wastes attention across examples that cannot see each other, and lost.)
* trajectory: one row holds the whole example followed by one EOS **probe** per response token;
  probe k sees tokens 0..k and itself at position k+1, which is exactly the prefix-plus-EOS
  example, so n prefix rewards cost one forward pass instead of n.

Encoder (bidirectional) models get rewards and segment rewards through their own forward, and no
trajectory: a prefix of a bidirectional model cannot be read off a longer input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from core.scoring import probe_attention
from core.segments import THINK_CLOSE, split_thinking

Prompt = str | list[dict[str, str]]


# Attention scores one chunk of trajectory probes may hold per head (chunk x sequence length): ~4M
# floats, 16 MB, whatever the length, so a 32k-token trajectory costs memory linear in its length.
PROBE_SCORE_BUDGET = 4 * 1024 * 1024
# Probes per chunk with split probe attention, which holds no chunk x length scores: its band block is
# chunk x chunk per head, and larger chunks spend less time per probe outside the kernels.
SPLIT_PROBE_CHUNK = 512


class ScoringCancelled(Exception):
    """Raised by a progress callback to stop long scoring (the user pressed Cancel)."""


Progress = Callable[[float], None]  # called with the fraction done; may raise ScoringCancelled to stop


class _WorkMeter:
    """Counts units of work done (sequences scored, trajectory probes run) and reports the fraction."""

    def __init__(self, total: int, report: Progress | None) -> None:
        self.total, self.done, self.report = max(1, total), 0, report

    def add(self, units: int) -> None:
        self.done += units
        if self.report is not None:
            self.report(min(1.0, self.done / self.total))


PREFIX_CHARS_PER_TOKEN = 8  # a prefix long enough to hold max_length tokens of ordinary text (~4 characters each)
PREFIX_SLACK_TOKENS = 32  # a prefix cut inside a very long "word" may tokenize to this many more than its part


class ModelLoadError(ValueError):
    """A model that cannot be used as a reward model; the message says why and what to do."""


@dataclass(frozen=True)
class FormattedExample:
    ids: list[int]
    text: str
    response_tokens: tuple[int, int] | None  # [start, end) token indices of the response
    offsets: list[tuple[int, int]]


@dataclass(frozen=True)
class SegmentedExample:
    """A response formatted whole and, when it closes a thinking block, as prompt + thinking and prompt + answer."""

    whole: FormattedExample
    thinking: FormattedExample | None
    answer: FormattedExample | None


def segment_sequences(examples: Sequence[SegmentedExample]) -> list[list[int]]:
    """The token sequences whose rewards ``segment_rewards`` reads: every whole example first, then the
    thinking and the answer of each example that has a thinking block, in input order."""
    sequences = [example.whole.ids for example in examples]
    for example in examples:
        if example.thinking is not None:
            sequences += [example.thinking.ids, example.answer.ids]
    return sequences


def segment_rewards(examples: Sequence[SegmentedExample], rewards: Sequence[float]
                    ) -> list[tuple[float, float | None, float | None]]:
    """(reward, thinking reward, answer reward) of each example from the rewards of its
    ``segment_sequences``; without a thinking block there is no thinking reward, and the answer is
    the whole response."""
    segments = iter(rewards[len(examples):])
    results = []
    for example, reward in zip(examples, rewards[: len(examples)], strict=True):
        if example.thinking is None:
            results.append((reward, None, reward))
        else:
            results.append((reward, next(segments), next(segments)))
    return results


@dataclass
class Row:
    """Tokens for one forward pass row: ids, their position ids, who sees whom, and where to read."""

    ids: list[int]
    positions: list[int]
    visible: Any  # torch.BoolTensor [len, len]: visible[i, j] = token i attends to token j; None = causal
    read_at: list[int]
    plain_causal: bool = False  # one ordinary sequence: no mask needed


@dataclass(frozen=True)
class ScoreResult:
    reward: float | None  # None: over max_length, never scored (Inspect's rule; score_responses scores what it is given)
    thinking_reward: float | None
    answer_reward: float | None
    n_tokens: int
    exceeds_max_length: bool
    trajectory: list[tuple[str, float]] | None = None
    think_end_token: int | None = None  # index in the trajectory of the token that ends </think>


class RewardScorer:
    """A loaded reward model (full model or LoRA adapter) with its tokenizer, ready to score."""

    def __init__(self, name_or_path: str | Path, *, device: str | None = None, dtype: Any = None,
                 batch_tokens: int = 1024, max_length: int | None = None) -> None:
        import torch

        self.name = str(name_or_path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            dtype = torch.bfloat16 if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        self.dtype = dtype
        self.batch_tokens = batch_tokens
        self.model, self.tokenizer = _load(self.name, dtype)
        self.model.to(self.device).eval()
        self.hf_model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self.head = getattr(self.hf_model, "score", None)
        self.backbone = getattr(self.hf_model, self.hf_model.base_model_prefix, None)
        # Decoder reward models (Qwen, Llama, Mistral...) put a `score` head on every position of a causal
        # backbone; encoders (BERT...) pool bidirectionally through a `classifier`.
        self.is_decoder = self.head is not None and self.backbone is not None
        # Trajectory probes split their attention into a shared, unmasked prefix and a small band
        # (core.scoring.probe_attention) when the model runs SDPA; other models use the masked path.
        self.split_probe_attention = self.is_decoder and probe_attention.enable(self.hf_model)
        eos = self.tokenizer.eos_token
        if eos is None and self.tokenizer.sep_token is not None:
            # The rule training follows (core.training.trainer): a tokenizer without EOS (BERT-style)
            # ends examples with its separator, which RewardTrainer is told to use as EOS.
            self.tokenizer.eos_token = eos = self.tokenizer.sep_token
        if eos is None:
            raise ModelLoadError(f"{self.name}: the tokenizer has neither an EOS nor a separator token; set "
                                 "tokenizer.eos_token (RewardTrainer appends it to every example)")
        self.eos_token, self.eos_id = eos, self.tokenizer.eos_token_id
        vocab = self.tokenizer.get_vocab()
        self.think_close_id = vocab.get(THINK_CLOSE)
        limit = max_length or getattr(self.tokenizer, "model_max_length", None)
        if not limit or limit > 10**8:
            limit = getattr(self.hf_model.config, "max_position_embeddings", None)
        self.max_length = limit

    # ----- formatting -------------------------------------------------------------------------
    def format(self, prompt: Prompt, response: str) -> FormattedExample:
        """The example as RewardTrainer tokenizes it, with the token span of the response."""
        return format_example(self.tokenizer, prompt, response)

    def surely_over_max_length(self, texts: Sequence[str]) -> bool:
        """Whether the example made of ``texts`` (its prompt's texts and the response) is surely longer than
        ``max_length``, found by tokenizing a prefix of each text (at most ``PREFIX_CHARS_PER_TOKEN`` characters
        per allowed token), so a 200,000-character text over the limit costs a few kilobytes of tokenizing
        instead of its whole encoding. False means "not known": format the example in full and count.

        Sound because a prefix cut at whitespace tokenizes to no more tokens than its part of the whole text
        (pre-tokenizers split at whitespace); joining texts merges at most a token at each seam, and a cut
        inside a word (no whitespace near the end) is allowed ``PREFIX_SLACK_TOKENS`` extra."""
        if not self.max_length:
            return False
        budget, counted = self.max_length, 0
        for text in texts:
            head = text[: PREFIX_CHARS_PER_TOKEN * (budget + 1)]
            if len(head) < len(text):
                cut = max(head.rfind(" "), head.rfind("\n"))
                head, slack = (head[:cut], 1) if cut > len(head) // 2 else (head, PREFIX_SLACK_TOKENS)
            else:
                slack = 1
            counted += len(self.tokenizer(head, add_special_tokens=False)["input_ids"]) - slack
            if counted > budget:
                return True
        return False

    # ----- execution --------------------------------------------------------------------------
    def _run(self, rows: list[Row], padding_side: str = "right", features_out: list | None = None) -> list[list[float]]:
        """Forward ``rows`` as one padded batch; return the head's scores at each row's read_at. With
        ``features_out``, also append each row's head inputs at its read_at (float32 vectors, one list per row)."""
        import torch

        if len(rows) == 1 and rows[0].plain_causal:
            # Without a mask, attention takes its causal fast path, which skips the masked half of
            # the score matrix: on a long sequence that is most of the attention work.
            with torch.inference_mode():
                hidden = self.backbone(input_ids=torch.tensor([rows[0].ids], device=self.device)).last_hidden_state
                scores = self.head(hidden).squeeze(-1).float().cpu()
                if features_out is not None:
                    features_out.append([hidden[0, i].float().cpu() for i in rows[0].read_at])
            return [[scores[0, i].item() for i in rows[0].read_at]]
        width = max(len(row.ids) for row in rows)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        # Padding sees only itself, so no attention row is empty (an all-masked row gives NaN).
        visible = torch.eye(width, dtype=torch.bool).repeat(len(rows), 1, 1)
        offsets = []
        for b, row in enumerate(rows):
            n = len(row.ids)
            o = width - n if padding_side == "left" else 0
            offsets.append(o)
            ids[b, o : o + n] = torch.tensor(row.ids)
            positions[b, o : o + n] = torch.tensor(row.positions)
            # A causal row's mask is only built here, inside a batch, whose width ``_buckets`` bounds by
            # ``batch_tokens``: a long sequence runs alone with no mask, so no n x n tensor is made for it.
            visible[b, o : o + n, o : o + n] = (
                torch.ones(n, n, dtype=torch.bool).tril() if row.visible is None else row.visible
            )
        mask = torch.zeros(visible.shape, dtype=self.dtype).masked_fill(~visible, torch.finfo(self.dtype).min)
        with torch.inference_mode():
            hidden = self.backbone(
                input_ids=ids.to(self.device),
                attention_mask=mask[:, None].to(self.device),
                position_ids=positions.to(self.device),
            ).last_hidden_state
            scores = self.head(hidden).squeeze(-1).float().cpu()
            if features_out is not None:
                features_out += [[hidden[b, offsets[b] + i].float().cpu() for i in row.read_at]
                                 for b, row in enumerate(rows)]
        return [[scores[b, offsets[b] + i].item() for i in row.read_at] for b, row in enumerate(rows)]

    def scores_at(self, ids: list[int], positions: list[int]) -> list[float]:
        """The score head's output at ``positions`` of one causal forward pass over ``ids`` (no mask: the fused causal
        kernel, memory linear in the length): the reward of each prefix ``ids[:p + 1]``."""
        return self._run([Row(list(ids), list(range(len(ids))), None, list(positions), plain_causal=True)])[0]

    def _encoder_scores(self, examples: list[FormattedExample]) -> list[float]:
        import torch

        results = []
        for example in examples:
            with torch.inference_mode():
                logits = self.model(input_ids=torch.tensor([example.ids], device=self.device)).logits
            results.append(logits[0, 0].float().item())
        return results

    def score_ids(self, sequences: Sequence[list[int]], *, strategy: str = "bucket", padding_side: str = "right",
                  batch_size: int = 8, meter: _WorkMeter | None = None, features_out: list | None = None) -> list[float]:
        """Rewards of already formatted token sequences, in input order.

        ``bucket`` (the default) batches sequences of similar length, longest first, up to
        ``batch_tokens`` per batch; ``pad`` is a plain length-sorted batch of ``batch_size``.
        Either pads on ``padding_side``; a sequence alone in its batch gets no mask at all.
        ``features_out`` (a list) receives, in input order, each sequence's score-head input at its reward
        token (float32; what the loop's ensemble heads read), from the same forward pass: decoders only.
        """
        if strategy not in ("bucket", "pad"):
            raise ValueError(f"strategy must be 'bucket' or 'pad', got {strategy!r}")
        if not sequences:
            return []
        if features_out is not None and not self.is_decoder:
            raise ModelLoadError(f"{self.name} is an encoder (bidirectional) model: it has no reward-token features")
        if not self.is_decoder:
            return self._encoder_scores([FormattedExample(list(s), "", None, []) for s in sequences])
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]), reverse=True)
        if strategy == "bucket":
            groups = _buckets(order, [len(s) for s in sequences], self.batch_tokens)
        else:
            groups = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        rewards: list[float] = [0.0] * len(sequences)
        features: list[Any] = [None] * len(sequences)
        for group in groups:
            read: list | None = [] if features_out is not None else None
            values = self._run([_causal_row(sequences[i]) for i in group], padding_side, read)
            for k, (i, value) in enumerate(zip(group, values, strict=True)):
                rewards[i] = value[0]
                if read is not None:
                    features[i] = read[k][0]
            if meter is not None:
                meter.add(len(group))
        if features_out is not None:
            features_out += features
        return rewards

    # ----- what users call --------------------------------------------------------------------
    def score(self, prompt: Prompt, responses: Sequence[str], **options: Any) -> list[float]:
        return self.score_pairs([(prompt, response) for response in responses], **options)

    def score_pairs(self, examples: Iterable[tuple[Prompt, str]], **options: Any) -> list[float]:
        formatted = [self.format(prompt, response) for prompt, response in examples]
        return self.score_ids([f.ids for f in formatted], **options)

    def score_responses(self, examples: Sequence[tuple[Prompt, str]], *, trajectory: bool = False,
                        progress: Progress | None = None, **options: Any) -> list[ScoreResult]:
        """Reward, thinking reward, answer reward (and optionally the trajectory) of each example.
        ``progress`` is called with the fraction done as the work goes (and may stop it)."""
        segmented = [self.format_segments(prompt, response) for prompt, response in examples]
        whole = [example.whole for example in segmented]
        sequences = segment_sequences(segmented)
        with_trajectory = trajectory and self.is_decoder
        probes = sum(f.response_tokens[1] - f.response_tokens[0] for f in whole if f.response_tokens) if with_trajectory else 0
        meter = _WorkMeter(len(sequences) + probes, progress)
        rewards = segment_rewards(segmented, self.score_ids(sequences, meter=meter, **options))
        trajectories = self.trajectories(whole, meter=meter, **options) if with_trajectory else [(None, None)] * len(whole)
        return [
            ScoreResult(reward, thinking_reward, answer_reward, len(example.ids),
                        bool(self.max_length and len(example.ids) > self.max_length), steps, think_end)
            for example, (reward, thinking_reward, answer_reward), (steps, think_end)
            in zip(whole, rewards, trajectories, strict=True)
        ]

    def reward_features(self, examples: Sequence[tuple[Prompt, str]]) -> list[Any]:
        """The score head's input at each example's reward token (its last, EOS), as a float32 vector,
        or None for an example over ``max_length`` (never truncated). Decoder models only: what the
        loop's ensemble heads (``core.loop.ensemble``) are fitted on and applied to."""
        import torch

        if not self.is_decoder:
            raise ModelLoadError(f"{self.name} is an encoder (bidirectional) model: its classifier reads a pooled "
                                 "output, so the loop's ensemble heads cannot be fitted on it; use margin uncertainty")
        features: list[Any] = []
        with torch.inference_mode():
            for prompt, response in examples:
                ids = self.format(prompt, response).ids
                if self.max_length and len(ids) > self.max_length:
                    features.append(None)
                    continue
                hidden = self.backbone(input_ids=torch.tensor([ids], device=self.device)).last_hidden_state
                features.append(hidden[0, -1].float().cpu())
        return features

    def format_segments(self, prompt: Prompt, response: str) -> SegmentedExample:
        """The example whole and, when the response closes a thinking block, prompt + thinking and
        prompt + answer, each formatted as RewardTrainer formats an example."""
        thinking, answer = split_thinking(response)
        if thinking is None:
            return SegmentedExample(self.format(prompt, response), None, None)
        return SegmentedExample(self.format(prompt, response), self.format(prompt, thinking), self.format(prompt, answer))

    def probe_suffix(self, example: FormattedExample) -> list[int]:
        """What a trajectory probe appends after a cut: the tokens that close the example after its
        response, so the last point is the reward itself. Text: EOS. Chat: the template's end of the
        assistant turn (Qwen: ``<|im_end|>`` and a newline, where the sequence classifier reads).
        A response that carries its own EOS leaves nothing after it: EOS then."""
        start, end = example.response_tokens
        return list(example.ids[end:]) or [self.eos_id]

    def trajectories(self, examples: Sequence[FormattedExample], *, padding_side: str = "right", batch_size: int = 4,
                     strategy: str = "bucket", meter: _WorkMeter | None = None) -> list[tuple[list[tuple[str, float]], int | None]]:
        """``trajectory_of`` for many examples. Short ones (example and probes within ``batch_tokens``)
        run as padded batches of probe rows; a longer one runs alone through the cached-prefix path,
        whose memory grows linearly with its length (``_cached_prefix_probes``)."""
        del strategy  # each probe row holds one example and its probes; rows are batched by length
        if not self.is_decoder:
            raise ModelLoadError(f"{self.name} is an encoder (bidirectional) model: it has no per-token trajectory")
        results: list[tuple[list[tuple[str, float]], int | None]] = [([], None)] * len(examples)
        todo = [i for i, example in enumerate(examples) if example.response_tokens is not None]
        todo.sort(key=lambda i: len(examples[i].ids), reverse=True)

        def probe_width(i: int) -> int:
            start, end = examples[i].response_tokens
            return len(examples[i].ids) + (end - start) * len(self.probe_suffix(examples[i]))

        for i in [i for i in todo if probe_width(i) > self.batch_tokens]:
            start, end = examples[i].response_tokens
            results[i] = self._label_trajectory(examples[i], self._cached_prefix_probes(
                examples[i].ids, range(start, end), meter=meter, suffix=self.probe_suffix(examples[i])))
        short = [i for i in todo if probe_width(i) <= self.batch_tokens]
        for begin in range(0, len(short), batch_size):
            chunk = short[begin : begin + batch_size]
            rows = []
            for i in chunk:
                start, end = examples[i].response_tokens
                rows.append(_probe_row(examples[i].ids, list(range(start, end)), self.probe_suffix(examples[i])))
            for i, values in zip(chunk, self._run(rows, padding_side), strict=True):
                results[i] = self._label_trajectory(examples[i], values)
                if meter is not None:
                    meter.add(len(values))
        return results

    def _cached_prefix_probes(self, ids: list[int], cut_after: Sequence[int], *, meter: _WorkMeter | None = None,
                              suffix: Sequence[int] | None = None) -> list[float]:
        """The reward of ``ids[: k + 1] + suffix`` (default ``[EOS]``) for each k in ``cut_after``, in
        memory linear in len(ids). A probe is the suffix's tokens, read at its last.

        One causal forward over the whole example keeps its key/value cache (no mask: attention's
        causal fast path). Then the EOS probes run in chunks of ``probe_chunk`` on top of that cache:
        probe k sits at position k + 1 and attends to cached tokens 0..k and to itself, a mask of
        chunk x (length + chunk), never length x length. After each chunk the cache is cut back to
        the example, so every probe sees exactly its prefix.
        """
        import torch

        n, cuts = len(ids), list(cut_after)
        suffix = list(suffix) if suffix else [self.eos_id]
        s = len(suffix)
        if not cuts:
            return []
        if self.split_probe_attention:
            return self._split_attention_probes(ids, cuts, meter, suffix)
        # Probes per chunk: the chunk's attention scores (chunk x length per head) stay near a fixed budget.
        chunk_size = max(8, min(256, PROBE_SCORE_BUDGET // max(1, n * s)))
        with torch.inference_mode():
            cache = self.backbone(input_ids=torch.tensor([ids], device=self.device), use_cache=True).past_key_values
            values: list[float] = []
            for begin in range(0, len(cuts), chunk_size):
                chunk = torch.tensor(cuts[begin : begin + chunk_size])
                m = len(chunk)
                query_cuts, offsets = chunk.repeat_interleave(s), torch.arange(s).repeat(m)
                visible = torch.zeros(m * s, n + m * s, dtype=torch.bool)
                visible[:, :n] = torch.arange(n)[None, :] <= query_cuts[:, None]
                visible[:, n:] = _own_probe_visibility(m, s)
                mask = torch.zeros(visible.shape, dtype=self.dtype).masked_fill(~visible, torch.finfo(self.dtype).min)
                hidden = self.backbone(
                    input_ids=torch.tensor([suffix * m], dtype=torch.long, device=self.device),
                    position_ids=(query_cuts + 1 + offsets)[None].to(self.device),
                    attention_mask=mask[None, None].to(self.device),
                    past_key_values=cache,
                    use_cache=True,
                ).last_hidden_state
                cache.crop(-m * s)
                values += self.head(hidden[:, s - 1 :: s]).squeeze(-1).float()[0].cpu().tolist()
                if meter is not None:
                    meter.add(m)
        return values

    def _split_attention_probes(self, ids: list[int], cuts: list[int], meter: _WorkMeter | None,
                                suffix: list[int]) -> list[float]:
        """``_cached_prefix_probes`` with the probes' attention split into the prefix they share and a
        small band (``core.scoring.probe_attention``): the cache is read, never copied or cut, and the
        shared part runs through the fused kernel without a mask."""
        import torch

        values: list[float] = []
        s = len(suffix)
        probes_per_chunk = max(1, SPLIT_PROBE_CHUNK // s)  # the own-key block is (probes x s) squared per head
        with torch.inference_mode():
            cache = self.backbone(input_ids=torch.tensor([ids], device=self.device), use_cache=True).past_key_values
            begin = 0
            while begin < len(cuts):
                # A chunk's band spans its first to last cut: bound that span, not only the count.
                end = begin + 1
                while end < len(cuts) and end - begin < probes_per_chunk and cuts[end] - cuts[begin] < SPLIT_PROBE_CHUNK:
                    end += 1
                m = end - begin
                query_cuts = torch.tensor(cuts[begin:end], device=self.device).repeat_interleave(s)
                offsets = torch.arange(s, device=self.device).repeat(m)
                with probe_attention.probing(cache, query_cuts, _own_probe_visibility(m, s).to(self.device)):
                    hidden = self.backbone(
                        input_ids=torch.tensor([suffix * m], dtype=torch.long, device=self.device),
                        position_ids=(query_cuts + 1 + offsets)[None],
                        use_cache=False,
                    ).last_hidden_state
                values += self.head(hidden[:, s - 1 :: s]).squeeze(-1).float()[0].cpu().tolist()
                if meter is not None:
                    meter.add(end - begin)
                begin = end
        return values

    def trajectory_of(self, example: FormattedExample) -> tuple[list[tuple[str, float]], int | None]:
        """(token text, reward of the example cut after that token and closed like the example) for each response token,
        and the index of the token that closes the last </think> (None without one). One pass."""
        return self.trajectories([example])[0]

    def _label_trajectory(self, example: FormattedExample, values: list[float]) -> tuple[list[tuple[str, float]], int | None]:
        start, end = example.response_tokens
        texts = [example.text[a:b] for a, b in example.offsets[start:end]]
        think_end = None
        if self.think_close_id is not None:
            hits = [k for k in range(start, end) if example.ids[k] == self.think_close_id]
            think_end = hits[-1] - start if hits else None
        else:
            close = example.text.rfind(THINK_CLOSE, example.offsets[start][0], example.offsets[end - 1][1])
            if close >= 0:
                last_char = close + len(THINK_CLOSE) - 1
                think_end = next(k - start for k in range(start, end)
                                 if example.offsets[k][0] <= last_char < example.offsets[k][1])
        return list(zip(texts, values, strict=True)), think_end

def format_example(tokenizer: Any, prompt: Prompt, response: str) -> FormattedExample:
    """``prompt`` + ``response`` tokenized as RewardTrainer does: the chat template for chat
    prompts (no EOS added), else the concatenated text with EOS appended when missing."""
    if isinstance(prompt, list):
        messages = [*prompt, {"role": "assistant", "content": response}]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        start = text.rfind(response) if response else -1
        span = (start, start + len(response)) if start >= 0 else None
    else:
        eos = tokenizer.eos_token
        body = response if response.endswith(eos) else response + eos
        text = prompt + body
        encoded = tokenizer(text, return_offsets_mapping=True)
        span = (len(prompt), len(prompt) + len(response))
    offsets = [tuple(pair) for pair in encoded["offset_mapping"]]
    return FormattedExample(list(encoded["input_ids"]), text, _token_span(offsets, span), offsets)


def _token_span(offsets: list[tuple[int, int]], span: tuple[int, int] | None) -> tuple[int, int] | None:
    if span is None or span[0] == span[1]:
        return None
    begin, finish = span
    inside = [k for k, (a, b) in enumerate(offsets) if b > a and b > begin and a < finish]
    return (inside[0], inside[-1] + 1) if inside else None


def _causal_row(ids: list[int]) -> Row:
    n = len(ids)
    return Row(list(ids), list(range(n)), None, [n - 1], plain_causal=True)


def _own_probe_visibility(probes: int, suffix_length: int) -> Any:
    """Among the probes' own tokens (``probes`` blocks of ``suffix_length``, one block per cut), each
    token sees the tokens of its own probe up to itself."""
    import torch

    block = torch.arange(probes * suffix_length) // suffix_length
    index = torch.arange(probes * suffix_length)
    return (block[:, None] == block[None, :]) & (index[None, :] <= index[:, None])


def _probe_row(ids: list[int], cut_after: list[int], suffix: list[int]) -> Row:
    """The whole example, then one probe per cut point k: the ``suffix`` tokens at positions
    k+1.., seeing tokens 0..k and their own probe's tokens up to themselves, read at the last."""
    import torch

    n, m, s = len(ids), len(cut_after), len(suffix)
    visible = torch.zeros(n + m * s, n + m * s, dtype=torch.bool)
    visible[:n, :n] = torch.ones(n, n, dtype=torch.bool).tril()
    cuts = torch.tensor(cut_after).repeat_interleave(s)
    visible[n:, :n] = torch.arange(n)[None, :] <= cuts[:, None]
    visible[n:, n:] = _own_probe_visibility(m, s)
    positions = list(range(n)) + [k + 1 + j for k in cut_after for j in range(s)]
    return Row(list(ids) + list(suffix) * m, positions, visible, [n + i * s + s - 1 for i in range(m)])


def _buckets(order: list[int], lengths: list[int], budget: int, min_fill: float = 0.7) -> list[list[int]]:
    """Consecutive sequences (longest first) batched while batch x longest <= ``budget`` tokens and
    the shortest fills at least ``min_fill`` of the longest, so little is padded."""
    groups: list[list[int]] = []
    for i in order:
        if groups:
            group = groups[-1]
            longest = lengths[group[0]]
            if longest * (len(group) + 1) <= budget and lengths[i] >= min_fill * longest:
                group.append(i)
                continue
        groups.append([i])
    return groups


def _load(name: str, dtype: Any):  # noqa: ANN202
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(name)
    local = path.is_dir()
    try:
        if local and (path / "adapter_config.json").exists():
            from peft import AutoPeftModelForSequenceClassification

            model = AutoPeftModelForSequenceClassification.from_pretrained(str(path), dtype=dtype)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(str(path) if local else name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(path) if local else name)
    except OSError as error:
        where = "a local folder" if local else "not a local folder, and the hub could not provide it"
        raise ModelLoadError(f"cannot load {name!r} ({where}): {error}") from None
    labels = model.config.num_labels
    if labels != 1:
        raise ModelLoadError(
            f"{name} has num_labels={labels}; a reward model has one output (num_labels=1). Train it with "
            "RewardTrainer, or load the base with AutoModelForSequenceClassification(num_labels=1) and train it"
        )
    return model, tokenizer
