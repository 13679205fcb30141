"""Sentiment rewards for the natural-language experiment (SPEC §6).

The policy must write positively iff the target feature holds (label 1). Two rewards:

(a) `ClassifierReward`: a BERT/DistilBERT sentiment classifier from a Hugging Face
    folder (the paper: `lvwerra/distilbert-imdb`) scores prompt + response; the reward
    is its positive-class logit, times +1 for label 1 and −1 for label 0. The policy's
    tokens are decoded and re-tokenised with the classifier's own tokenizer on the host
    (`jax.pure_callback`), and the classifier runs inside the compiled program.

(b) `LexiconReward` (offline, fully jittable): VADER's lexicon (`vader_lexicon.txt`,
    shipped by vaderSentiment, MIT) mapped once onto the policy's vocabulary. For every
    token id: its lexicon valence if the decoded token — stripped, lower-cased, its
    leading-space marker removed — is a VADER lexicon entry, else 0. A response's raw
    sentiment is the sum of the valences of its valid, whole-word tokens, each multiplied
    by VADER's negation factor −0.74 when one of the three tokens before it is a negator
    ("not", "never", "n't", … VADER's NEGATE list). It is normalised with VADER's compound
    formula x / sqrt(x² + 15) ∈ (−1, 1) and scaled by 2.8, so that the reward lies in
    (−2.8, 2.8) like the paper's logit reward and the normalised score (reward + 2.8) / 5.6
    is comparable. Differences from VADER's full rule set (vaderSentiment.SentimentIntensityAnalyzer):
      - only single-token words count: a word the tokenizer splits into pieces ("amaz"+"ing")
        contributes nothing, and a lexicon word must be a whole token at a word boundary
        (a token followed by a continuation piece, e.g. " bad"+"ge", does not count);
      - no multi-word lexicon entries or idioms ("kind of", "the bomb"), no booster or
        dampener words ("very", "slightly"), no ALL-CAPS emphasis, no "!"/"?" emphasis,
        no "but" re-weighting, no emoji descriptions;
      - negation looks back three tokens, not three words, and ignores "least"/"never so";
      - it scores the response only (not the prompt), so the prompt's own sentiment and
        its feature prefix do not enter the reward.

Both expose `score(responses, masks, labels, prompts) -> float32[B]` (the `ScoreFn` of
`rlbias_jax.rl.train`) through `score_fn(params)`, where `params` are the reward model's
parameters (None for the lexicon), passed in as an argument so that a sweep shares them.

Both take a `condition` (`reward.condition`): "label" (the experiment: the sign follows the
label) or "always_positive" (the positive control: every response is rewarded for positive
sentiment, as if its label were 1; the labels themselves, the partitions and the evaluation
rows are unchanged). It is the pipeline's learning check: positive sentiment is learnable
without reading the prefix, so a pipeline that cannot raise it cannot learn the task either.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

REWARD_SCALE = 2.8  # the paper's normalised score is (reward + 2.8) / 5.6
VADER_ALPHA = 15.0  # VADER's compound normalisation constant
VADER_NEGATION = -0.74  # VADER's N_SCALAR
NEGATION_WINDOW = 3


def normalised_score(reward):
    """(reward + 2.8) / 5.6 (SPEC §6)."""
    return (reward + REWARD_SCALE) / (2 * REWARD_SCALE)


CONDITIONS = ("label", "always_positive")


def signed(value: jax.Array, labels: jax.Array) -> jax.Array:
    """+value for label 1, −value for label 0."""
    return jnp.where(labels == 1, value, -value)


def check_condition(condition: str) -> None:
    if condition not in CONDITIONS:
        raise ValueError(f"reward.condition: unknown value {condition!r}; known: {', '.join(CONDITIONS)}")


def rewarded_labels(labels: jax.Array, condition: str) -> jax.Array:
    """The labels the reward reads: the labels ("label"), or all 1 ("always_positive")."""
    check_condition(condition)
    return jnp.ones_like(labels) if condition == "always_positive" else labels


# (b) THE LEXICON REWARD


def vader_lexicon_path() -> Path:
    import vaderSentiment

    return Path(vaderSentiment.__file__).parent / "vader_lexicon.txt"


def read_vader_lexicon(path: Path | None = None) -> dict[str, float]:
    """{word: mean valence} from VADER's lexicon file (tab-separated: token, mean, std, ratings)."""
    path = path or vader_lexicon_path()
    lexicon = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        parts = line.strip().split("\t")
        if len(parts) >= 2 and parts[0]:
            lexicon[parts[0].lower()] = float(parts[1])
    return lexicon


def vader_negators() -> frozenset[str]:
    from vaderSentiment.vaderSentiment import NEGATE

    return frozenset(word.lower() for word in NEGATE) | {"n't", "'t", "no"}


@flax.struct.dataclass
class LexiconTable:
    """Per-token-id tables over the policy's vocabulary."""

    valence: jax.Array  # float32[V]
    negator: jax.Array  # bool[V]
    continues: jax.Array  # bool[V]: the token continues the previous word (no leading space, starts alphanumeric)


def build_lexicon_table(decode: Callable[[list[int]], str], vocab_size: int,
                        lexicon: dict[str, float] | None = None, negators: frozenset[str] | None = None) -> LexiconTable:
    """Decode every token id once and look it up (host side)."""
    lexicon = read_vader_lexicon() if lexicon is None else lexicon
    negators = vader_negators() if negators is None else negators
    valence = np.zeros(vocab_size, np.float32)
    negator = np.zeros(vocab_size, bool)
    continues = np.zeros(vocab_size, bool)
    for token_id in range(vocab_size):
        text = decode([token_id])
        word = text.strip().lower()
        valence[token_id] = lexicon.get(word, 0.0)
        negator[token_id] = word in negators
        continues[token_id] = bool(text) and text[0].isalnum()
    return LexiconTable(jnp.asarray(valence), jnp.asarray(negator), jnp.asarray(continues))


def lexicon_sentiment(response: jax.Array, mask: jax.Array, table: LexiconTable) -> jax.Array:
    """VADER-style compound sentiment in (−1, 1) of one response int32[N] (mask bool[N])."""
    valence = table.valence[response] * mask
    # a lexicon token counts only as a whole word: it starts one and the next token starts another
    starts_word = ~table.continues[response]
    next_continues = jnp.concatenate([table.continues[response[1:]] & mask[1:], jnp.zeros(1, bool)])
    valence = valence * (starts_word & ~next_continues)
    negated = jnp.zeros_like(mask)
    negators = table.negator[response] & mask
    for shift in range(1, NEGATION_WINDOW + 1):
        negated = negated | jnp.concatenate([jnp.zeros(shift, bool), negators[:-shift]])
    total = jnp.sum(jnp.where(negated, VADER_NEGATION * valence, valence))
    return total / jnp.sqrt(total * total + VADER_ALPHA)


@dataclasses.dataclass(frozen=True, eq=False)
class LexiconReward:
    table: LexiconTable
    name: str = "vader_lexicon"
    condition: str = "label"  # or "always_positive" (the positive control)

    def __post_init__(self):
        check_condition(self.condition)  # fails at construction, not inside a trace

    @classmethod
    def for_tokenizer(cls, decode: Callable[[list[int]], str], vocab_size: int, condition: str = "label") -> "LexiconReward":
        return cls(build_lexicon_table(decode, vocab_size), condition=condition)

    def params(self):
        return self.table

    def score_fn(self, table: LexiconTable):
        def score(responses, masks, labels, prompts):
            del prompts
            sentiment = jax.vmap(lexicon_sentiment, in_axes=(0, 0, None))(responses, masks, table)
            return signed(REWARD_SCALE * sentiment, rewarded_labels(labels, self.condition))

        return score


# (a) THE CLASSIFIER REWARD


@dataclasses.dataclass(frozen=True, eq=False)
class ClassifierReward:
    """± the positive-class logit of a sequence classifier on prompt + response."""

    classifier: object  # rlbias_jax.models.bert.LoadedClassifier
    policy_decode: Callable[[list[int]], str]
    policy_pad_id: int
    max_len: int  # classifier tokens per text (longer texts are truncated)
    name: str = "classifier"
    condition: str = "label"  # or "always_positive" (the positive control)

    def __post_init__(self):
        check_condition(self.condition)  # fails at construction, not inside a trace

    def params(self):
        return self.classifier.params

    def texts(self, prompts: np.ndarray, responses: np.ndarray, masks: np.ndarray) -> list[str]:
        return [self.policy_decode(list(prompt) + [int(t) for t, m in zip(response, mask) if m])
                for prompt, response, mask in zip(prompts, responses, masks)]

    def tokenize(self, prompts, responses, masks):
        """Host side: policy tokens -> text -> classifier tokens int32[B, L] and mask (padded right)."""
        prompts, responses, masks = np.asarray(prompts), np.asarray(responses), np.asarray(masks)
        batch_shape = prompts.shape[:-1]
        flat = self.texts(prompts.reshape(-1, prompts.shape[-1]), responses.reshape(-1, responses.shape[-1]),
                          masks.reshape(-1, masks.shape[-1]))
        encoded = self.classifier.tokenizer(flat, padding="max_length", truncation=True, max_length=self.max_len,
                                            return_tensors="np")
        ids = encoded["input_ids"].astype(np.int32).reshape(*batch_shape, self.max_len)
        attention = encoded["attention_mask"].astype(bool).reshape(*batch_shape, self.max_len)
        return ids, attention

    def score_fn(self, params):
        def score(responses, masks, labels, prompts):
            batch = responses.shape[0]
            shapes = (jax.ShapeDtypeStruct((batch, self.max_len), jnp.int32), jax.ShapeDtypeStruct((batch, self.max_len), jnp.bool_))
            ids, attention = jax.pure_callback(self.tokenize, shapes, prompts, responses, masks, vmap_method="expand_dims")
            logits = self.classifier.logits(params, ids, attention)
            return signed(logits[:, self.classifier.positive_index], rewarded_labels(labels, self.condition))

        return score


def classifier_reward(source: str, policy_decode, policy_pad_id: int, max_len: int, condition: str = "label") -> ClassifierReward:
    """Load the reward model at `source` (a local HF folder or a repo id in the local HF cache)."""
    from rlbias_jax.models.bert import load_classifier
    from rlbias_jax.models.loading import ModelLoadError, resolve_source

    try:
        folder = resolve_source(source)
    except ModelLoadError as error:
        raise ModelLoadError(f"reward model {source!r} is missing: {error}") from None
    if folder.suffix == ".gguf":
        raise ModelLoadError(f"reward model {source!r}: a GGUF file is not a sequence classifier")
    return ClassifierReward(load_classifier(folder), policy_decode, policy_pad_id, max_len, condition=condition)


def compound_to_reward(compound: float) -> float:
    """A compound sentiment in (−1, 1) as a label-1 reward in (−2.8, 2.8) (for reports and tests)."""
    return REWARD_SCALE * compound


def vader_compound(total: float) -> float:
    return total / math.sqrt(total * total + VADER_ALPHA)
