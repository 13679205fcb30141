"""Both NL rewards on hand-written texts, and the reward model's logits against transformers + torch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_nl_fixtures import tiny_classifier_folder

from rlbias_jax.models.loading import ModelLoadError
from rlbias_jax.rl import sentiment

VOCAB = ["<eos>", " this", " movie", " is", " great", " not", " bad", " awful", " never", " boring", " the", " plot",
         "ge", " good", " very", " love", " it", "'t", " don", " was"]


class WordTokenizer:
    """One token per listed piece, so that hand-written texts have known token ids."""

    def encode(self, text):
        ids, rest = [], text
        while rest:
            piece = max((p for p in VOCAB if rest.startswith(p)), key=len)
            ids.append(VOCAB.index(piece))
            rest = rest[len(piece):]
        return ids

    def decode(self, ids):
        return "".join(VOCAB[i] for i in ids)


@pytest.fixture(scope="module")
def lexicon_reward():
    return sentiment.LexiconReward.for_tokenizer(WordTokenizer().decode, len(VOCAB))


def _score(reward, texts, labels, length=8):
    tokenizer = WordTokenizer()
    ids = [tokenizer.encode(text) for text in texts]
    responses = np.zeros((len(texts), length), np.int32)
    masks = np.zeros((len(texts), length), bool)
    for row, seq in enumerate(ids):
        responses[row, : len(seq)] = seq
        masks[row, : len(seq)] = True
    score = jax.jit(reward.score_fn(reward.params()))
    return np.asarray(score(responses, masks, jnp.asarray(labels), jnp.zeros((len(texts), 2), jnp.int32)))


@pytest.mark.parametrize("text", [" this movie is great", " this movie is not great", " the plot was boring",
                                  " the plot was never boring", " awful movie", " this movie is good but"[:-4],
                                  " love it", " this is the movie"])
def test_lexicon_reward_matches_vader_where_the_rules_agree(text, lexicon_reward):
    """Lower-case sentences without boosters, caps or punctuation: VADER's compound exactly, times 2.8."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    expected = sentiment.REWARD_SCALE * SentimentIntensityAnalyzer().polarity_scores(text.strip())["compound"]
    positive, negative = _score(lexicon_reward, [text, text], [1, 0])
    np.testing.assert_allclose(positive, expected, atol=2e-4)  # VADER rounds its compound to 4 places
    np.testing.assert_allclose(negative, -expected, atol=2e-4)


def test_lexicon_reward_by_hand(lexicon_reward):
    great, good, bad = 3.1, 1.9, -2.5  # vader_lexicon.txt
    compound = lambda x: x / np.sqrt(x * x + 15)  # noqa: E731
    texts = [" great", " great good", " bad", " badge movie", " not bad", " don't great", ""]
    scores = _score(lexicon_reward, texts, [1] * len(texts))
    expected = [compound(great), compound(great + good), compound(bad), 0.0, compound(-0.74 * bad),
                compound(-0.74 * great), 0.0]
    np.testing.assert_allclose(scores, 2.8 * np.asarray(expected), rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(scores) < 2.8)


def test_lexicon_reward_ignores_masked_tokens(lexicon_reward):
    tokenizer = WordTokenizer()
    responses = jnp.asarray([tokenizer.encode(" this movie great awful")], jnp.int32)
    masks = jnp.asarray([[True, True, True, False]])
    score = sentiment.LexiconReward.score_fn(lexicon_reward, lexicon_reward.params())
    full = score(responses, jnp.ones_like(masks), jnp.asarray([1]), None)
    cut = score(responses, masks, jnp.asarray([1]), None)
    np.testing.assert_allclose(cut, 2.8 * 3.1 / np.sqrt(3.1**2 + 15), rtol=1e-5)
    assert float(full[0]) < float(cut[0])


def test_normalised_score_range():
    assert sentiment.normalised_score(2.8) == 1.0 and sentiment.normalised_score(-2.8) == 0.0
    assert sentiment.normalised_score(0.0) == 0.5


# THE CLASSIFIER REWARD MODEL


@pytest.fixture(scope="module", params=["bert", "distilbert"])
def classifier(request, tmp_path_factory):
    return tiny_classifier_folder(tmp_path_factory.mktemp(request.param), request.param)


TEXTS = ["this movie is great", "the plot was boring and awful", "$ # it was not bad", "never good , never"]


def test_classifier_logits_match_transformers(classifier):
    import torch

    from rlbias_jax.models.bert import load_classifier

    folder, model, tokenizer = classifier
    ours = load_classifier(folder)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits.numpy()
    logits = ours.logits(ours.params, jnp.asarray(batch["input_ids"].numpy()), jnp.asarray(batch["attention_mask"].numpy().astype(bool)))
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4, rtol=1e-4)
    assert ours.positive_index == 1


def test_classifier_reward_is_signed_positive_logit_of_prompt_plus_response(classifier):
    import torch

    folder, model, tokenizer = classifier
    words = WordTokenizer()
    reward = sentiment.classifier_reward(str(folder), words.decode, 0, max_len=16)
    prompts = np.asarray([words.encode(" this movie")] * 2, np.int32)
    responses = np.asarray([words.encode(" is great<eos><eos>"), words.encode(" was boring the plot")], np.int32)
    masks = np.asarray([[True, True, True, False], [True, True, True, True]])
    labels = np.asarray([1, 0])
    scores = jax.jit(reward.score_fn(reward.params()))(jnp.asarray(responses), jnp.asarray(masks), jnp.asarray(labels), jnp.asarray(prompts))
    texts = [" this movie is great<eos>", " this movie was boring the plot"]
    assert reward.texts(prompts, responses, masks) == texts
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.numpy()
    np.testing.assert_allclose(np.asarray(scores), [logits[0, 1], -logits[1, 1]], atol=1e-4)
    # vmapped over runs (as in the sweep), the host callback sees every run's batch
    batched = jax.jit(jax.vmap(reward.score_fn(reward.params()), in_axes=(0, 0, 0, 0)))(
        *(jnp.stack([jnp.asarray(x)] * 3) for x in (responses, masks, labels, prompts)))
    np.testing.assert_allclose(np.asarray(batched), np.stack([np.asarray(scores)] * 3), atol=1e-5)


def test_missing_reward_model_names_it(tmp_path):
    with pytest.raises(ModelLoadError, match="reward model .*no_such_model"):
        sentiment.classifier_reward(str(tmp_path / "no_such_model"), WordTokenizer().decode, 0, 16)


# THE POSITIVE CONTROL (reward.condition = "always_positive")


def test_always_positive_rewards_positive_sentiment_for_every_label():
    positive = sentiment.LexiconReward.for_tokenizer(WordTokenizer().decode, len(VOCAB), condition="always_positive")
    by_label = sentiment.LexiconReward.for_tokenizer(WordTokenizer().decode, len(VOCAB))
    texts = [" this movie is great", " this movie is great", " awful movie", " awful movie"]
    labels = [1, 0, 1, 0]
    great = 2.8 * 3.1 / np.sqrt(3.1**2 + 15)
    awful = 2.8 * -2.0 / np.sqrt(2.0**2 + 15)  # vader_lexicon.txt: awful -2.0
    np.testing.assert_allclose(_score(positive, texts, labels), [great, great, awful, awful], rtol=1e-5)
    np.testing.assert_allclose(_score(by_label, texts, labels), [great, -great, awful, -awful], rtol=1e-5)


def test_always_positive_classifier_reward(classifier):
    folder, _, _ = classifier
    words = WordTokenizer()
    rewards = {condition: sentiment.classifier_reward(str(folder), words.decode, 0, max_len=16, condition=condition)
               for condition in sentiment.CONDITIONS}
    prompts = np.asarray([words.encode(" this movie")] * 2, np.int32)
    responses = np.asarray([words.encode(" is great the plot")] * 2, np.int32)
    masks, labels = np.ones((2, 4), bool), np.asarray([1, 0])
    scores = {condition: np.asarray(reward.score_fn(reward.params())(responses, masks, labels, prompts))
              for condition, reward in rewards.items()}
    np.testing.assert_allclose(scores["always_positive"], [scores["label"][0]] * 2, atol=1e-6)
    np.testing.assert_allclose(scores["label"], [scores["label"][0], -scores["label"][0]], atol=1e-6)


def test_unknown_reward_condition_is_one_line():
    with pytest.raises(ValueError, match=r"^reward.condition: unknown value 'sometimes'; known: label, always_positive$"):
        sentiment.LexiconReward.for_tokenizer(WordTokenizer().decode, len(VOCAB), condition="sometimes")
