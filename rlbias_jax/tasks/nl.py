"""The natural-language prefix tasks of Cruz et al. (SPEC §6) over any text corpus.

A prompt is a feature-bearing prefix followed by the start of a natural text, cut to
exactly `prompt_len` tokens of the policy's tokenizer. The features (s, t) of each
task, by id:

  1. t = a "$ " prefix, s = a "# " prefix; both = "$ # ".
  2. t = a high rating "7/10: " … "10/10: " (not t: "1/10: " … "4/10: "),
     s = the word "review" after the rating ("8/10 review: ").
  5. as task 1, but both = "# $ " (order reversed).
  22. t = the prompt's text after the optional s prefix has an even number of
      whitespace-separated words; a text of the wrong parity is flipped by
      inserting "So: " (one more word) in front of it; s = a "- " prefix.
  23. task 22 with t and s swapped: t = "- ", s = even word count.

`prompt_features(task_id, text)` reads (s, t) back from a prompt's text; every
constructed prompt is decoded and checked against it, so a partition holds exactly
the intended features whatever the tokenizer does. Prompts that do not re-tokenise
to exactly `prompt_len` tokens are dropped, as in the original; so are texts whose
parity cannot be flipped (the inserted "So:" can push a word out of the window).

Texts are drawn without replacement from a per-task shuffle of the corpus, in a
fixed order: the test sets, then the training pools, then the probing sets, so no
text is in two of them. Training sets for every s-only rate and seed come from the
same pools (SPEC §2): round(p · N) s-only examples, half the rest both, the remainder
neither, no t-only, in a seed-specific order.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Protocol, Sequence

import numpy as np

from rlbias_jax.partitions import PARTITION_FEATURES, PARTITION_LABELS, PARTITIONS
from rlbias_jax.tasks.corpus import NLDataError

TASK_NAMES = {
    1: "dollar-vs-hash",
    2: "high-rating-vs-review",
    5: "dollar-vs-hash-reversed",
    22: "even-words-vs-dash",
    23: "dash-vs-even-words",
}
PARITY_FLIP = "So: "
DASH = "- "
_SYMBOLS = re.compile(r"^((?:[$#] )*)")
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


def _even_words(text: str) -> bool:
    return len(text.split()) % 2 == 0


def prompt_features(task_id: int, text: str) -> tuple[bool, bool]:
    """(s, t) of a prompt text; ValueError if the text does not have the task's form."""
    if task_id in (1, 5):
        symbols = _SYMBOLS.match(text).group(1).split()
        return "#" in symbols, "$" in symbols
    if task_id == 2:
        match = _RATING.match(text)
        if match is None or not (1 <= int(match.group(1)) <= 4 or 7 <= int(match.group(1)) <= 10):
            raise ValueError(f"task 2 prompt without a rating prefix: {text!r}")
        return match.group(2) is not None, int(match.group(1)) >= 7
    if task_id in (22, 23):
        dash = text.startswith(DASH)
        even = _even_words(text[len(DASH):] if dash else text)
        return (dash, even) if task_id == 22 else (even, dash)
    raise ValueError(f"unknown NL task id {task_id}; known: {list(TASK_NAMES)}")


def prefix(task_id: int, s: bool, t: bool, rng: np.random.Generator) -> str:
    """The feature prefix of tasks 1, 2, 5 (and the dash of 22/23; parity is set on the text)."""
    if task_id in (1, 5):
        first, second = ("$ ", "# ") if task_id == 1 else ("# ", "$ ")
        if s and t:
            return first + second
        return "$ " if t else "# " if s else ""
    if task_id == 2:
        rating = int(rng.integers(7, 11)) if t else int(rng.integers(1, 5))
        return f"{rating}/10{' review' if s else ''}: "
    if task_id in (22, 23):
        dash = s if task_id == 22 else t
        return DASH if dash else ""
    raise ValueError(f"unknown NL task id {task_id}; known: {list(TASK_NAMES)}")


def _cut(text: str, tokenizer: TextTokenizer, prompt_len: int) -> tuple[list[int], str] | None:
    """The first `prompt_len` tokens of `text` if they re-tokenise to exactly themselves."""
    ids = tokenizer.encode(text)[:prompt_len]
    if len(ids) < prompt_len:
        return None
    decoded = tokenizer.decode(ids)
    if tokenizer.encode(decoded) != ids:
        return None
    return ids, decoded


def make_prompt(task_id: int, s: bool, t: bool, text: str, tokenizer: TextTokenizer, prompt_len: int,
                rng: np.random.Generator) -> tuple[list[int], str] | None:
    """Token ids and text of a prompt with features (s, t) built on `text`, or None (dropped)."""
    # parity tasks: the plain text if its parity is right, else the flipped one
    candidates = [text, PARITY_FLIP + text] if task_id in (22, 23) else [text]
    head = prefix(task_id, s, t, rng)
    for candidate in candidates:
        cut = _cut(head + candidate, tokenizer, prompt_len)
        if cut is not None and prompt_features(task_id, cut[1]) == (s, t):
            return cut
    return None


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


def build_partition(task_id: int, partition: str, count: int, stream: TextStream, tokenizer: TextTokenizer,
                    prompt_len: int, rng: np.random.Generator, purpose: str) -> PromptSet:
    """`count` prompts of one partition from the next texts of `stream`."""
    s, t = PARTITION_FEATURES[partition]
    tokens, texts, tried = [], [], 0
    while len(tokens) < count:
        text = stream.next()
        if text is None:
            raise NLDataError(
                f"corpus {stream.source!r} is too small for task {task_id} ({TASK_NAMES[task_id]}): the {purpose} set "
                f"needs {count} {partition} prompts of {prompt_len} tokens, but only {len(tokens)} could be built "
                f"before its {len(stream.texts)} usable texts ran out ({tried} tried for this set, the rest went to "
                f"earlier sets). Use a larger corpus or smaller task.train_size / test sizes / probe.probe_size."
            )
        tried += 1
        built = make_prompt(task_id, s, t, text, tokenizer, prompt_len, rng)
        if built is not None:
            tokens.append(built[0])
            texts.append(built[1])
    return PromptSet(np.asarray(tokens, np.int32).reshape(count, prompt_len), tuple(texts))


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

    def build(partition, count, purpose):
        return build_partition(task_id, partition, count, stream, tokenizer, prompt_len, rng, purpose)

    test = {partition: build(partition, test_sizes[partition], "test") for partition in PARTITIONS}
    largest = training_counts(0.0, train_size)
    pools = {
        "both": build("both", largest["both"], "training"),
        "neither": build("neither", largest["neither"], "training"),
        "s_only": build("s_only", max(training_counts(max_s_only_rate, train_size)["s_only"], 1), "training"),
    }
    half = probe_size // 2
    probing = {
        "both": build("both", half, "probing"),
        "neither": build("neither", probe_size - half, "probing"),
        "s_only": build("s_only", probe_size, "probing"),
    }
    return NLTaskData(task_id, test, pools, probing)
