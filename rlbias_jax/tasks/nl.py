"""The natural-language prefix tasks of Cruz et al. (SPEC §6) over any text corpus.

A prompt is a feature-bearing prefix followed by the start of a natural text r, cut to
exactly `prompt_len` tokens of the policy's tokenizer. The prefix strings are the
original code's, byte for byte (SPEC §6, "Exact prefixes"). Partitions both / neither /
s-only / t-only of each task, by id:

  1. "$ # "+r / r / "# "+r / "$ "+r           (t = "$ ", s = "# ")
  2. "{11-n}/10 review: "+r / "{n}/10: "+r / "{n}/10 review: "+r / "{11-n}/10: "+r, n from 1-4
  5. "# $"+r / r / "# "+r / "$ "+r            (as 1, both reversed and without a space after "$")
  6. "   ."+r / r / "."+r / "   "+r           (t = three leading spaces, s = a leading ".")
  22. t = the prompt has an even number of space characters, s = a "- " prefix; k = the spaces
      of the text's first tokens: k odd: "- "+r / " So: "+r / "- So: "+r / " "+r;
      k even: "- So: "+r / " "+r / "- "+r / " So: "+r
  23. task 22 with t and s swapped (t = "- ", s = even spaces): k odd: "- "+r / " So: "+r /
      " "+r / "- So: "+r; k even: "- So: "+r / " "+r / " So: "+r / "- "+r
  24. two prompts per text, P = " "+r and Q = " So: "+r; t = even spaces, s = a comma. Both go to
      partitions by P's (even, comma): P to the partition of its own features, Q to the one with
      the parity flipped (even+comma: P both, Q s-only; even: P t-only, Q neither; odd+comma:
      P s-only, Q both; odd: P neither, Q t-only).
  28. as 24 with t = a comma and s = even spaces.

`prompt_features(task_id, text)` reads (s, t) back from a prompt's text; every constructed
prompt is decoded and checked against it, so a partition holds exactly the intended
features whatever the tokenizer does. Prompts that do not re-tokenise to exactly
`prompt_len` tokens are dropped, as in the original. Where the original assigned a label
that the cut prompt does not have, we keep its prefix strings but not its label:

  - 22/23: the original chose the form from k counted on the raw review's first 11 GPT-2
    tokens (of 16), whatever the cut prompt's own count was. Here k is counted on the
    text's first `prompt_len - 5` tokens (11 of 16) and its form is tried first; if the cut
    prompt does not have the partition's features, the other form is tried, then the text
    is dropped;
  - 24/28: Q is cut to the full length too, so its review part is shorter than P's and its
    parity (or comma) need not be P's flipped; a Q without its intended features is dropped.

Texts are drawn without replacement from a per-task shuffle of the corpus, in a fixed
order: the test sets, then the training pools, then the probing sets, so no text is in two
of them (for 24/28 a text's P and Q stay in one set; prompts left over when a set is full
are discarded: the original's "sections cut to equal size"). Training sets for every s-only
rate and seed come from the same pools (SPEC §2): round(p · N) s-only examples, half the
rest both, the remainder neither, no t-only, in a seed-specific order.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Protocol, Sequence

import numpy as np

from rlbias_jax.partitions import PARTITION_FEATURES, PARTITION_LABELS, PARTITIONS
from rlbias_jax.tasks.corpus import NLDataError

FEATURE_PARTITIONS = {features: name for name, features in PARTITION_FEATURES.items()}
TASK_NAMES = {
    1: "dollar-vs-hash",
    2: "high-rating-vs-review",
    5: "dollar-vs-hash-reversed",
    6: "spaces-vs-period",
    22: "even-spaces-vs-dash",
    23: "dash-vs-even-spaces",
    24: "even-spaces-vs-comma",
    28: "comma-vs-even-spaces",
}
# The original prefix strings (SPEC §6); r follows each directly.
PREFIXES = {
    1: {"both": "$ # ", "neither": "", "s_only": "# ", "t_only": "$ "},
    5: {"both": "# $", "neither": "", "s_only": "# ", "t_only": "$ "},
    6: {"both": "   .", "neither": "", "s_only": ".", "t_only": "   "},
}
# Tasks 22/23: (the form when k is odd, the form when k is even) per partition.
PARITY_PREFIXES = {
    22: {"both": ("- ", "- So: "), "neither": (" So: ", " "), "s_only": ("- So: ", "- "), "t_only": (" ", " So: ")},
    23: {"both": ("- ", "- So: "), "neither": (" So: ", " "), "s_only": (" ", " So: "), "t_only": ("- So: ", "- ")},
}
# Tasks 24/28: every text gives P = P_PREFIX + r and Q = Q_PREFIX + r.
P_PREFIX, Q_PREFIX = " ", " So: "
PAIRED_TASKS = (24, 28)
DASH = "- "
# the original counted k on the first 11 of 16 prompt tokens
PARITY_WINDOW_OFFSET = 5
_RATING = re.compile(r"^(\d+)/10( review)?: ")


class TextTokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class HFTokenizer:
    """A transformers tokenizer as a `TextTokenizer`: no special tokens added, decoding verbatim."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)


# FEATURES OF A PROMPT


def _even_spaces(text: str) -> bool:
    return text.count(" ") % 2 == 0


def _fixed_prefix_features(task_id: int, text: str) -> tuple[bool, bool]:
    """Tasks 1, 5, 6: the partition of the longest original prefix the text starts with."""
    matches = [(len(head), name) for name, head in PREFIXES[task_id].items() if text.startswith(head)]
    length, partition = max(matches)
    if not text[length:length + 1].isalpha():
        raise ValueError(f"task {task_id} prompt without one of its prefixes before the text: {text!r}")
    return PARTITION_FEATURES[partition]


def prompt_features(task_id: int, text: str) -> tuple[bool, bool]:
    """(s, t) of a prompt text; ValueError if the text does not have the task's form."""
    if task_id in PREFIXES:
        return _fixed_prefix_features(task_id, text)
    if task_id == 2:
        match = _RATING.match(text)
        if match is None or not (1 <= int(match.group(1)) <= 4 or 7 <= int(match.group(1)) <= 10):
            raise ValueError(f"task 2 prompt without a rating prefix: {text!r}")
        return match.group(2) is not None, int(match.group(1)) >= 7
    if task_id in (22, 23):
        dash, even = text.startswith(DASH), _even_spaces(text)
        return (dash, even) if task_id == 22 else (even, dash)
    if task_id in PAIRED_TASKS:
        comma, even = "," in text, _even_spaces(text)
        return (comma, even) if task_id == 24 else (even, comma)
    raise ValueError(f"unknown NL task id {task_id}; known: {list(TASK_NAMES)}")


def rating_prefix(s: bool, t: bool, rng: np.random.Generator) -> str:
    """Task 2: "{11-n}/10" if t else "{n}/10", n uniform in 1-4, then " review" if s, then ": "."""
    n = int(rng.integers(1, 5))
    return f"{11 - n if t else n}/10{' review' if s else ''}: "


def _cut(text: str, tokenizer: TextTokenizer, prompt_len: int) -> tuple[list[int], str] | None:
    """The first `prompt_len` tokens of `text` if they re-tokenise to exactly themselves."""
    ids = tokenizer.encode(text)[:prompt_len]
    if len(ids) < prompt_len:
        return None
    decoded = tokenizer.decode(ids)
    if tokenizer.encode(decoded) != ids:
        return None
    return ids, decoded


def odd_k(text: str, tokenizer: TextTokenizer, prompt_len: int) -> bool:
    """Tasks 22/23: whether the text's first prompt_len - 5 tokens hold an odd number of spaces."""
    window = max(prompt_len - PARITY_WINDOW_OFFSET, 1)
    return tokenizer.decode(tokenizer.encode(text)[:window]).count(" ") % 2 == 1


def prompt_candidates(task_id: int, partition: str, text: str, tokenizer: TextTokenizer, prompt_len: int,
                      rng: np.random.Generator) -> list[str]:
    """Prefixed texts to try, in order, for a prompt of `partition` (tasks other than 24/28)."""
    if task_id in PREFIXES:
        return [PREFIXES[task_id][partition] + text]
    if task_id == 2:
        return [rating_prefix(*PARTITION_FEATURES[partition], rng) + text]
    if task_id in PARITY_PREFIXES:
        odd_form, even_form = PARITY_PREFIXES[task_id][partition]
        first, second = (odd_form, even_form) if odd_k(text, tokenizer, prompt_len) else (even_form, odd_form)
        return [first + text, second + text]
    raise ValueError(f"NL task {task_id} has no per-partition prefixes; known: {list(TASK_NAMES)}")


def make_prompt(task_id: int, partition: str, text: str, tokenizer: TextTokenizer, prompt_len: int,
                rng: np.random.Generator) -> tuple[list[int], str] | None:
    """Token ids and text of a prompt of `partition` built on `text`, or None (dropped); not 24/28."""
    for candidate in prompt_candidates(task_id, partition, text, tokenizer, prompt_len, rng):
        cut = _cut(candidate, tokenizer, prompt_len)
        if cut is not None and prompt_features(task_id, cut[1]) == PARTITION_FEATURES[partition]:
            return cut
    return None


def paired_prompts(task_id: int, text: str, tokenizer: TextTokenizer, prompt_len: int) -> list[tuple[str, list[int], str]]:
    """Tasks 24/28: [(partition, ids, text)] of P = " "+r and Q = " So: "+r, partitions by P's features.

    Q's intended features are P's with the parity flipped; a Q (or P) that cannot be cut, or a
    Q without its intended features, is left out."""
    p_cut = _cut(P_PREFIX + text, tokenizer, prompt_len)
    if p_cut is None:
        return []
    s, t = prompt_features(task_id, p_cut[1])
    prompts = [(FEATURE_PARTITIONS[(s, t)], *p_cut)]
    q_features = (s, not t) if task_id == 24 else (not s, t)  # the parity is t in 24, s in 28
    q_cut = _cut(Q_PREFIX + text, tokenizer, prompt_len)
    if q_cut is not None and prompt_features(task_id, q_cut[1]) == q_features:
        prompts.append((FEATURE_PARTITIONS[q_features], *q_cut))
    return prompts


# SETS OF PROMPTS


@dataclasses.dataclass(frozen=True)
class PromptSet:
    tokens: np.ndarray  # int32[n, prompt_len]
    texts: tuple[str, ...]

    def __len__(self) -> int:
        return self.tokens.shape[0]


class TextStream:
    """The texts of one task in a fixed shuffled order, each handed out at most once."""

    def __init__(self, texts: Sequence[str], rng: np.random.Generator, source: str = "corpus"):
        self.texts = texts
        self.order = rng.permutation(len(texts))
        self.position = 0
        self.source = source

    def next(self) -> str | None:
        if self.position >= len(self.order):
            return None
        self.position += 1
        return self.texts[self.order[self.position - 1]]


def _too_small(task_id: int, stream: TextStream, purpose: str, short: dict[str, tuple[int, int]], prompt_len: int,
               tried: int) -> NLDataError:
    """short: partition -> (needed, built)."""
    needed = ", ".join(f"{count} {partition}" for partition, (count, _) in short.items())
    built = ", ".join(str(have) if len(short) == 1 else f"{have} {partition}" for partition, (_, have) in short.items())
    return NLDataError(
        f"corpus {stream.source!r} is too small for task {task_id} ({TASK_NAMES[task_id]}): the {purpose} set "
        f"needs {needed} prompts of {prompt_len} tokens, but only {built} could be built "
        f"before its {len(stream.texts)} usable texts ran out ({tried} tried for this set, the rest went to "
        f"earlier sets). Use a larger corpus or smaller task.train_size / test sizes / probe.probe_size."
    )


def build_partition(task_id: int, partition: str, count: int, stream: TextStream, tokenizer: TextTokenizer,
                    prompt_len: int, rng: np.random.Generator, purpose: str) -> PromptSet:
    """`count` prompts of one partition from the next texts of `stream` (tasks other than 24/28)."""
    tokens, texts, tried = [], [], 0
    while len(tokens) < count:
        text = stream.next()
        if text is None:
            raise _too_small(task_id, stream, purpose, {partition: (count, len(tokens))}, prompt_len, tried)
        tried += 1
        built = make_prompt(task_id, partition, text, tokenizer, prompt_len, rng)
        if built is not None:
            tokens.append(built[0])
            texts.append(built[1])
    return PromptSet(np.asarray(tokens, np.int32).reshape(count, prompt_len), tuple(texts))


def build_paired_set(task_id: int, counts: dict[str, int], stream: TextStream, tokenizer: TextTokenizer,
                     prompt_len: int, purpose: str) -> dict[str, PromptSet]:
    """Tasks 24/28: `counts[partition]` prompts of each partition from the P and Q of the next
    texts; a prompt whose partition is already full is discarded (sections cut to size)."""
    built: dict[str, list[tuple[list[int], str]]] = {partition: [] for partition in counts}
    tried = 0
    while any(len(built[partition]) < count for partition, count in counts.items()):
        text = stream.next()
        if text is None:
            short = {p: (count, len(built[p])) for p, count in counts.items() if len(built[p]) < count}
            raise _too_small(task_id, stream, purpose, short, prompt_len, tried)
        tried += 1
        for partition, ids, prompt in paired_prompts(task_id, text, tokenizer, prompt_len):
            if partition in built and len(built[partition]) < counts[partition]:
                built[partition].append((ids, prompt))
    return {partition: PromptSet(np.asarray([ids for ids, _ in prompts], np.int32).reshape(len(prompts), prompt_len),
                                 tuple(prompt for _, prompt in prompts))
            for partition, prompts in built.items()}


def build_set(task_id: int, counts: dict[str, int], stream: TextStream, tokenizer: TextTokenizer, prompt_len: int,
              rng: np.random.Generator, purpose: str) -> dict[str, PromptSet]:
    """The prompts of one set (test, training pools or probing): `counts[partition]` of each."""
    if task_id in PAIRED_TASKS:
        return build_paired_set(task_id, counts, stream, tokenizer, prompt_len, purpose)
    return {partition: build_partition(task_id, partition, count, stream, tokenizer, prompt_len, rng, purpose)
            for partition, count in counts.items()}


@dataclasses.dataclass(frozen=True)
class NLTaskData:
    """Everything one task draws from the corpus: held-out test sets, training pools, probing sets."""

    task_id: int
    test: dict[str, PromptSet]  # partition -> prompts
    pools: dict[str, PromptSet]  # both, neither, s_only -> training pools
    probing: dict[str, PromptSet]  # both, neither, s_only (probe_size // 2 each, s_only twice as many)

    def training_set(self, s_only_rate: float, train_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens int32[N, P], labels int32[N]) for one rate and seed: round(p·N) s-only, no t-only."""
        counts = training_counts(s_only_rate, train_size)
        rng = np.random.default_rng([seed, self.task_id, 7])
        tokens, labels = [], []
        for partition, count in counts.items():
            pool = self.pools[partition]
            if count > len(pool):
                raise NLDataError(f"task {self.task_id}: the {partition} training pool has {len(pool)} prompts, {count} needed")
            chosen = rng.permutation(len(pool))[:count]
            tokens.append(pool.tokens[chosen])
            labels.append(np.full(count, PARTITION_LABELS[partition], np.int32))
        order = rng.permutation(train_size)
        return np.concatenate(tokens)[order], np.concatenate(labels)[order]

    def probing_set(self, probe: str, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The s- or t-probing set (SPEC §5): tokens int32[size, P], labels (size // 2 positives first)."""
        positive, negative = {"s": ("s_only", "neither"), "t": ("both", "s_only")}[probe]
        half = size // 2
        # s_only serves both probes: the t-probe takes its first part, the s-probe its second
        take = {"both": slice(0, half), "neither": slice(0, size - half),
                "s_only": slice(0, size - half) if probe == "t" else slice(size - half, size - half + half)}
        pos, neg = self.probing[positive].tokens[take[positive]], self.probing[negative].tokens[take[negative]]
        labels = np.concatenate([np.ones(len(pos), np.int32), np.zeros(len(neg), np.int32)])
        return np.concatenate([pos, neg]), labels


def training_counts(s_only_rate: float, train_size: int) -> dict[str, int]:
    """Examples per partition in a training set (the toy rule: round(p·N) s-only, half the rest both)."""
    s_only = int(round(s_only_rate * train_size))
    both = (train_size - s_only) // 2
    return {"both": both, "neither": train_size - s_only - both, "s_only": s_only}


def build_task_data(task_id: int, texts: Sequence[str], tokenizer: TextTokenizer, prompt_len: int, *,
                    test_sizes: dict[str, int], train_size: int, max_s_only_rate: float, probe_size: int,
                    seed: int, source: str = "corpus") -> NLTaskData:
    """Test sets, training pools and probing sets of one task, from disjoint texts."""
    if task_id not in TASK_NAMES:
        raise ValueError(f"unknown NL task id {task_id}; known: {list(TASK_NAMES)}")
    rng = np.random.default_rng([seed, task_id])
    stream = TextStream(texts, rng, source)

    def build(counts: dict[str, int], purpose: str) -> dict[str, PromptSet]:
        return build_set(task_id, counts, stream, tokenizer, prompt_len, rng, purpose)

    test = build({partition: test_sizes[partition] for partition in PARTITIONS}, "test")
    largest = training_counts(0.0, train_size)
    pools = build({"both": largest["both"], "neither": largest["neither"],
                   "s_only": max(training_counts(max_s_only_rate, train_size)["s_only"], 1)}, "training")
    half = probe_size // 2
    probing = build({"both": half, "neither": probe_size - half, "s_only": probe_size}, "probing")
    return NLTaskData(task_id, test, pools, probing)
