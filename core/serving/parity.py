"""Parity: the same samples scored in this process and through a server's HTTP APIs must agree.

The server runs it on itself before it serves (and refuses to serve on a difference above the
tolerance); ``python app.py check-server URL --model NAME`` runs it against any server speaking
these APIs: this one, OpenRLHF's ``serve_rm`` (``/get_reward``), or a vLLM pooling server
(``/classify``) a team moves to for GPUs. The in-process side is the ``score`` command's path
(``RewardScorer.score_responses``, rewards of examples over max_length dropped), normalized and
reduced as the server does.

Per API the report gives the largest |reward difference| (and the sample it came from), the
share of sample pairs the two sides order alike, and the samples where one side gave a reward and
the other none. What each API is sent:

* ``/score``: every sample, prompts as text or chat, with ``segments`` (thinking and answer rewards compared too);
* ``/get_reward``: the text-prompt samples as full texts (``prompt + response``);
* ``/classify``: the text-prompt samples as the token ids the engine scores (so tokenization cannot
  differ), the chat samples as ``messages`` (so the server's chat template is tested), activation off.

A server that is not RewardLab is not sent samples over the model's max_length on ``/get_reward``
and ``/classify``: OpenRLHF truncates them and vLLM refuses them, and either says nothing of parity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from core.limits import MAX_SERVE_TEXTS
from core.scoring.engine import Prompt
from core.serving.http_client import RemoteError, get_json, post_json
from core.serving.reward_fn import combine_rewards
from core.serving.served_models import ReferenceSamples, ServedModel


class ParityFailed(RuntimeError):
    """The server's rewards differ from in-process scoring; ``report`` says where and by how much."""

    def __init__(self, report: "ParityReport") -> None:
        super().__init__("\n".join(report.lines()))
        self.report = report


@dataclass(frozen=True)
class Expected:
    reward: float | None
    thinking_reward: float | None
    answer_reward: float | None


@dataclass(frozen=True)
class EndpointParity:
    endpoint: str
    compared: int
    max_abs_diff: float
    worst_sample: int | None
    order_agreement: float | None  # share of sample pairs ordered alike (None with fewer than two)
    pairs: int
    null_mismatches: list[int] = field(default_factory=list)  # samples with a reward on one side only
    note: str = ""

    def passed(self, tolerance: float) -> bool:
        return self.max_abs_diff <= tolerance and not self.null_mismatches

    def line(self) -> str:
        if not self.compared:
            return f"{self.endpoint}: nothing compared ({self.note})"
        order = f"{self.order_agreement:.1%} of {self.pairs} pairs" if self.order_agreement is not None else "n/a"
        nulls = f"; a reward on one side only for samples {self.null_mismatches[:10]}" if self.null_mismatches else ""
        worst = f" (sample {self.worst_sample})" if self.worst_sample is not None else ""
        note = f"; {self.note}" if self.note else ""
        return (f"{self.endpoint}: {self.compared} samples, max |Δ| {self.max_abs_diff:.2e}{worst}, "
                f"order agreement {order}{nulls}{note}")


@dataclass(frozen=True)
class ParityReport:
    url: str
    samples: int
    source: str
    tolerance: float
    endpoints: list[EndpointParity]
    not_spoken: list[str]

    @property
    def passed(self) -> bool:
        return any(e.compared for e in self.endpoints) and all(e.passed(self.tolerance) for e in self.endpoints)

    @property
    def max_abs_diff(self) -> float:
        return max((e.max_abs_diff for e in self.endpoints), default=float("nan"))

    def lines(self) -> list[str]:
        head = f"parity of {self.url} with in-process scoring, on {self.samples} reference samples ({self.source}):"
        body = [f"  {e.line()}" for e in self.endpoints]
        if self.not_spoken:
            body.append(f"  not spoken by the server: {', '.join(self.not_spoken)}")
        verdict = (f"PASS: every reward within {self.tolerance:.0e} of in-process scoring" if self.passed else
                   f"FAIL: a difference above {self.tolerance:.0e}, a reward missing on one side, or no API to compare")
        return [head, *body, verdict]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "max_abs_diff": self.max_abs_diff}


def expected_scores(models: Sequence[ServedModel], samples: Sequence[tuple[Prompt, str]], reduction: str) -> list[Expected]:
    """What the server must answer, computed in process by the ``score`` command's path."""
    per_model = [model.scorer.score_responses(list(samples)) for model in models]
    normalizers = [model.normalizer for model in models]

    def part(name: str) -> list[float | None]:
        return combine_rewards([[None if r.exceeds_max_length else getattr(r, name) for r in results]
                                for results in per_model], reduction, normalizers)

    return [Expected(*values) for values in zip(part("reward"), part("thinking_reward"), part("answer_reward"), strict=True)]


def check_parity(url: str, models: Sequence[ServedModel], reference: ReferenceSamples, *, reduction: str,
                 tolerance: float, limit: int, api_key: str | None = None, headers: dict[str, str] | None = None,
                 timeout: float = 300.0, served_model_name: str | None = None) -> ParityReport:
    """Score the first ``limit`` reference samples in process and through every scoring API the server at
    ``url`` speaks; compare. Raises ``RemoteError`` when the server cannot be reached or refuses the key."""
    samples = reference.samples[:limit]
    expected = expected_scores(models, samples, reduction)
    options = {"api_key": api_key, "headers": headers, "timeout": timeout}
    ours = _is_rewardlab(url, options)
    endpoints, not_spoken = [], []
    for endpoint, compare in (("/score", _score_parity), ("/get_reward", _get_reward_parity),
                              ("/classify", _classify_parity)):
        try:
            endpoints.append(compare(url + endpoint, models, samples, expected, tolerance, ours, served_model_name,
                                     options))
        except RemoteError as error:
            if error.status in (404, 405) and not (ours and "does not exist" in str(error)):
                not_spoken.append(endpoint)
                continue
            raise
    return ParityReport(url, len(samples), reference.source, tolerance, endpoints, not_spoken)


def _is_rewardlab(url: str, options: dict[str, Any]) -> bool:
    try:
        info = get_json(url + "/info", **options)
    except RemoteError as error:
        if error.status in (401, 403):
            raise
        return False
    return isinstance(info, dict) and info.get("server") == "rewardlab"


def _score_parity(url, models, samples, expected, tolerance, ours, served_model_name, options) -> EndpointParity:  # noqa: ANN001
    got: list[tuple[float | None, float | None, float | None]] = []
    for start in range(0, len(samples), MAX_SERVE_TEXTS):
        chunk = samples[start : start + MAX_SERVE_TEXTS]
        answer = post_json(url, {"prompts": [p for p, _ in chunk], "completions": [r for _, r in chunk], "segments": True},
                           **options)
        got += list(zip(answer["rewards"], answer["thinking_rewards"], answer["answer_rewards"], strict=True))
    indices = list(range(len(samples)))
    triples = [(e.reward, e.thinking_reward, e.answer_reward) for e in expected]
    return _compare("/score", indices, triples, got, tolerance)


def _get_reward_parity(url, models, samples, expected, tolerance, ours, served_model_name, options) -> EndpointParity:  # noqa: ANN001
    indices = [i for i, (prompt, _) in enumerate(samples) if isinstance(prompt, str)
               and (ours or expected[i].reward is not None)]
    skipped = _skipped_note(samples, expected, indices, text_only=True)
    got: list[float | None] = []
    for start in range(0, len(indices), MAX_SERVE_TEXTS):
        chunk = indices[start : start + MAX_SERVE_TEXTS]
        got += post_json(url, {"query": [samples[i][0] + samples[i][1] for i in chunk],
                               "prompts": [samples[i][0] for i in chunk]}, **options)["rewards"]
    return _compare("/get_reward", indices, [(expected[i].reward,) for i in indices], [(g,) for g in got], tolerance,
                    skipped)


def _classify_parity(url, models, samples, expected, tolerance, ours, served_model_name, options) -> EndpointParity:  # noqa: ANN001
    base = {"use_activation": False, **({"model": served_model_name} if served_model_name else {})}
    wanted = [i for i in range(len(samples)) if ours or expected[i].reward is not None]
    text = [i for i in wanted if isinstance(samples[i][0], str)]
    chats = [i for i in wanted if not isinstance(samples[i][0], str)]
    # One model: the exact token ids it scores. An ensemble: the formatted text, where every model
    # formats the sample alike (the server tokenizes it with each model's tokenizer).
    formatted = [[model.scorer.format(*samples[i]) for model in models] for i in text]
    if len(models) == 1:
        inputs = {i: f[0].ids for i, f in zip(text, formatted, strict=True)}
    else:
        inputs = {i: f[0].text for i, f in zip(text, formatted, strict=True) if len({e.text for e in f}) == 1}
    got: dict[int, float | None] = {}
    sent = list(inputs)
    for start in range(0, len(sent), MAX_SERVE_TEXTS):
        chunk = sent[start : start + MAX_SERVE_TEXTS]
        answer = post_json(url, {**base, "input": [inputs[i] for i in chunk]}, **options)
        got.update(zip(chunk, (item["probs"][0] for item in sorted(answer["data"], key=lambda d: d["index"])), strict=True))
    for i in chats:
        prompt, response = samples[i]
        answer = post_json(url, {**base, "messages": [*prompt, {"role": "assistant", "content": response}]}, **options)
        got[i] = answer["data"][0]["probs"][0]
    indices = sorted(got)
    unlike = len(text) - len(inputs)
    note = "; ".join(filter(None, [_skipped_note(samples, expected, indices, text_only=False),
                                   f"{unlike} text sample(s) not sent: the models format them differently" if unlike else ""]))
    return _compare("/classify", indices, [(expected[i].reward,) for i in indices], [(got[i],) for i in indices],
                    tolerance, note)


def _skipped_note(samples, expected, sent: list[int], *, text_only: bool) -> str:  # noqa: ANN001
    over = sum(1 for i, e in enumerate(expected) if e.reward is None and i not in sent
               and (isinstance(samples[i][0], str) or not text_only))
    return f"{over} sample(s) over max_length not sent" if over else ""


def _compare(endpoint: str, indices: list[int], expected: list[tuple], got: list[tuple], tolerance: float,
             note: str = "") -> EndpointParity:
    """Largest difference over every value of every sample, nulls that disagree, and the pairwise
    order agreement of the rewards (first value)."""
    worst, worst_at, nulls = 0.0, None, []
    for index, want, have in zip(indices, expected, got, strict=True):
        for a, b in zip(want, have, strict=True):
            if (a is None) != (b is None):
                nulls.append(index)
                break
            if a is not None and abs(a - b) > worst:
                worst, worst_at = abs(a - b), index
    pairs = [(want[0], have[0]) for want, have in zip(expected, got, strict=True)
             if want[0] is not None and have[0] is not None]
    agree = total = 0
    for i in range(len(pairs)):
        for j in range(i + 1, len(pairs)):
            d_want, d_have = pairs[i][0] - pairs[j][0], pairs[i][1] - pairs[j][1]
            total += 1
            agree += (abs(d_want) <= tolerance and abs(d_have) <= tolerance) or d_want * d_have > 0
    return EndpointParity(endpoint, len(indices), worst, worst_at, agree / total if total else None, total, nulls, note)
