"""NL prefix tasks (SPEC §6): every constructed prompt has exactly its partition's features,
re-tokenises to exactly the prompt length, and the sets are disjoint; corpora and their errors."""

import numpy as np
import pytest
from test_nl_fixtures import bpe_tokenizer, corpus_sample

from rlbias_jax.tasks import nl
from rlbias_jax.tasks.corpus import NLDataError, clean_texts, load_corpus

PROMPT_LEN = 12
SIZES = {"both": 12, "neither": 12, "s_only": 12, "t_only": 12}


@pytest.fixture(scope="module")
def tokenizer():
    return nl.HFTokenizer(bpe_tokenizer())


@pytest.fixture(scope="module")
def task_data(tokenizer):
    return {task_id: nl.build_task_data(task_id, list(corpus_sample()), tokenizer, PROMPT_LEN, test_sizes=SIZES,
                                        train_size=24, max_s_only_rate=0.5, probe_size=22, seed=3)
            for task_id in nl.TASK_NAMES}


def _all_sets(data: nl.NLTaskData):
    for name, prompt_set in data.test.items():
        yield name, prompt_set
    for name, prompt_set in data.pools.items():
        yield name, prompt_set
    for name, prompt_set in data.probing.items():
        yield name, prompt_set


@pytest.mark.parametrize("task_id", list(nl.TASK_NAMES))
def test_every_prompt_has_exactly_its_partition_features(task_id, task_data, tokenizer):
    for partition, prompt_set in _all_sets(task_data[task_id]):
        assert prompt_set.tokens.shape == (len(prompt_set.texts), PROMPT_LEN)
        for ids, text in zip(prompt_set.tokens, prompt_set.texts):
            assert tokenizer.decode(ids) == text
            assert tokenizer.encode(text) == list(ids)  # re-tokenises to exactly PROMPT_LEN tokens
            assert nl.prompt_features(task_id, text) == nl.PARTITION_FEATURES[partition], (partition, text)


def test_prefix_forms(task_data):
    first = {task_id: {p: s.texts for p, s in task_data[task_id].test.items()} for task_id in task_data}
    assert all(text.startswith("$ # ") for text in first[1]["both"])
    assert all(text.startswith("# $ ") for text in first[5]["both"])
    assert all(text.startswith("$ ") and not text.startswith("$ #") for text in first[1]["t_only"])
    assert all(text[0].isalpha() for text in first[1]["neither"])
    ratings = {p: [int(text.split("/")[0]) for text in texts] for p, texts in first[2].items()}
    assert all(7 <= r <= 10 for r in ratings["both"] + ratings["t_only"])
    assert all(1 <= r <= 4 for r in ratings["neither"] + ratings["s_only"])
    assert all("/10 review: " in text for text in first[2]["both"] + first[2]["s_only"])
    assert not any("review: " in text.split(" ", 2)[1] for text in first[2]["neither"] if " " in text)


@pytest.mark.parametrize("task_id", [22, 23])
def test_parity_flipping(task_id, task_data):
    """Both parities occur with and without the inserted "So:", and the flip sets the parity."""
    texts = [t for _, s in _all_sets(task_data[task_id]) for t in s.texts]
    flipped = [t for t in texts if t.removeprefix(nl.DASH).startswith(nl.PARITY_FLIP)]
    plain = [t for t in texts if not t.removeprefix(nl.DASH).startswith(nl.PARITY_FLIP)]
    assert flipped and plain
    for group in (flipped, plain):
        parities = {len(t.removeprefix(nl.DASH).split()) % 2 for t in group}
        assert parities == {0, 1}


@pytest.mark.parametrize("text, task_id, features", [
    ("$ # The film", 1, (True, True)), ("# $ The film", 5, (True, True)), ("# The film", 1, (True, False)),
    ("$ The film", 5, (False, True)), ("The film", 1, (False, False)),
    ("8/10 review: Fine", 2, (True, True)), ("3/10: Fine", 2, (False, False)), ("10/10: Fine", 2, (False, True)),
    ("- one two", 22, (True, True)), ("one two three", 22, (False, False)), ("- So: one two", 22, (True, False)),
    ("- one two", 23, (True, True)), ("one two three", 23, (False, False)), ("- So: one two", 23, (False, True)),
])
def test_prompt_features_by_hand(text, task_id, features):
    assert nl.prompt_features(task_id, text) == features


def test_task_2_rejects_prompts_without_a_rating():
    with pytest.raises(ValueError, match="rating"):
        nl.prompt_features(2, "5/10: middling")


def test_sets_use_disjoint_texts(task_data):
    for data in task_data.values():
        bodies = [t for _, s in _all_sets(data) for t in s.texts]
        assert len(bodies) == len(set(bodies))


@pytest.mark.parametrize("rate, expected", [(0.0, {"both": 12, "neither": 12, "s_only": 0}),
                                            (0.5, {"both": 6, "neither": 6, "s_only": 12}),
                                            (0.1, {"both": 11, "neither": 11, "s_only": 2})])
def test_training_sets(rate, expected, task_data):
    data = task_data[1]
    tokens, labels = data.training_set(rate, 24, seed=0)
    assert nl.training_counts(rate, 24) == expected
    texts = [bpe_tokenizer().decode(list(row)) for row in tokens]
    partitions = [next(p for p, f in nl.PARTITION_FEATURES.items() if f == nl.prompt_features(1, t)) for t in texts]
    assert {p: partitions.count(p) for p in expected} == expected and "t_only" not in partitions
    assert list(labels) == [nl.PARTITION_LABELS[p] for p in partitions]
    # the same pools for every rate and seed; a different order per seed
    assert not np.array_equal(tokens, data.training_set(rate, 24, seed=1)[0])


def test_probing_sets_are_balanced_and_labelled(task_data):
    data = task_data[2]
    s_tokens, s_labels = data.probing_set("s", 22)
    t_tokens, t_labels = data.probing_set("t", 22)
    assert s_labels.sum() == 11 and t_labels.sum() == 11
    decode = lambda row: bpe_tokenizer().decode(list(row))  # noqa: E731
    assert all(nl.prompt_features(2, decode(r)) == (True, False) for r in s_tokens[:11])  # s-probe: s_only = 1
    assert all(nl.prompt_features(2, decode(r)) == (False, False) for r in s_tokens[11:])
    assert all(nl.prompt_features(2, decode(r)) == (True, True) for r in t_tokens[:11])  # t-probe: both = 1
    assert all(nl.prompt_features(2, decode(r)) == (True, False) for r in t_tokens[11:])
    assert not {tuple(r) for r in s_tokens[:11]} & {tuple(r) for r in t_tokens[11:]}  # different s-only texts


def test_bundled_corpus_and_cleaning():
    texts = load_corpus("vader_movie_reviews")
    assert len(texts) > 10_000 and all(t[0].isalpha() for t in texts)
    assert clean_texts(["  Good <br /> film ", "- dash", "$5", "Good film", "1/10"]) == ["Good film"]


def test_missing_corpus_names_it(tmp_path):
    with pytest.raises(NLDataError, match="missing.txt"):
        load_corpus(str(tmp_path / "missing.txt"))


def test_imdb_not_cached_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(NLDataError, match="stanfordnlp/imdb.*not in the local"):
        load_corpus("imdb")


def test_too_small_corpus_names_task_set_and_sizes(tmp_path, tokenizer):
    path = tmp_path / "tiny.txt"
    path.write_text("\n".join(corpus_sample()[:30]))
    with pytest.raises(NLDataError, match=r"too small for task 1 .*training set needs 12 \w+ prompts of 12 tokens.*30 usable texts"):
        nl.build_task_data(1, load_corpus(str(path)), tokenizer, PROMPT_LEN, test_sizes={p: 4 for p in SIZES},
                           train_size=24, max_s_only_rate=0.5, probe_size=22, seed=0, source=str(path))
