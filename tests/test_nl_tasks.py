"""NL prefix tasks (SPEC §6): the original's prompts byte for byte, partition assignment of tasks 24/28
by hand, every constructed prompt has exactly its partition's features and re-tokenises to exactly the
prompt length, the sets are disjoint; corpora and their errors."""

import re

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


class WordTokenizer:
    """GPT-2's split without its byte-level BPE: " word", punctuation runs and spaces are tokens.
    Cuts are predictable by hand, so expected prompts can be written out."""

    PATTERN = re.compile(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")

    def __init__(self):
        self.pieces: list[str] = []
        self.ids: dict[str, int] = {}

    def encode(self, text):
        return [self._id(piece) for piece in self.PATTERN.findall(text)]

    def _id(self, piece):
        if piece not in self.ids:
            self.ids[piece] = len(self.pieces)
            self.pieces.append(piece)
        return self.ids[piece]

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)


# The original's prefix strings, written out from SPEC §6 (not read from the module).
REVIEW = "Dull film, but the cast is good and the plot is fine"
WORDS = 8  # prompt length in WordTokenizer tokens
EXPECTED_PROMPTS = {
    1: {"both": "$ # Dull film, but the cast", "neither": "Dull film, but the cast is good",
        "s_only": "# Dull film, but the cast is", "t_only": "$ Dull film, but the cast is"},
    5: {"both": "# $Dull film, but the cast", "neither": "Dull film, but the cast is good",
        "s_only": "# Dull film, but the cast is", "t_only": "$ Dull film, but the cast is"},
    6: {"both": "   .Dull film, but the cast", "neither": "Dull film, but the cast is good",
        "s_only": ".Dull film, but the cast is", "t_only": "   Dull film, but the cast is"},
    # k = spaces in the first 8 - 5 = 3 tokens "Dull film," = 1: odd, so the k-odd forms are tried
    # first: "- " (both) and "- So: " (s-only) have the intended parity once cut; " So: " (neither)
    # and " " (t-only) do not, so the k-even forms " " and " So: " are used.
    22: {"both": "- Dull film, but the cast is", "neither": " Dull film, but the cast is good",
         "s_only": "- So: Dull film, but the", "t_only": " So: Dull film, but the cast"},
    23: {"both": "- Dull film, but the cast is", "neither": " Dull film, but the cast is good",
         "s_only": " So: Dull film, but the cast", "t_only": "- So: Dull film, but the"},
}


@pytest.mark.parametrize("task_id", sorted(EXPECTED_PROMPTS))
@pytest.mark.parametrize("partition", nl.PARTITIONS)
def test_prompts_byte_for_byte(task_id, partition):
    tokenizer = WordTokenizer()
    ids, text = nl.make_prompt(task_id, partition, REVIEW, tokenizer, WORDS, np.random.default_rng(0))
    assert text == EXPECTED_PROMPTS[task_id][partition]
    assert len(ids) == WORDS and tokenizer.decode(ids) == text


def test_original_prefix_tables():
    """The module's tables hold the SPEC's strings exactly (a space in the wrong place fails here)."""
    assert nl.PREFIXES == {
        1: {"both": "$ # ", "neither": "", "s_only": "# ", "t_only": "$ "},
        5: {"both": "# $", "neither": "", "s_only": "# ", "t_only": "$ "},
        6: {"both": "   .", "neither": "", "s_only": ".", "t_only": "   "},
    }
    # (k odd, k even)
    assert nl.PARITY_PREFIXES[22] == {"both": ("- ", "- So: "), "neither": (" So: ", " "),
                                      "s_only": ("- So: ", "- "), "t_only": (" ", " So: ")}
    assert nl.PARITY_PREFIXES[23] == {"both": ("- ", "- So: "), "neither": (" So: ", " "),
                                      "s_only": (" ", " So: "), "t_only": ("- So: ", "- ")}
    assert (nl.P_PREFIX, nl.Q_PREFIX) == (" ", " So: ")


@pytest.mark.parametrize("partition, pattern", [
    ("both", r"(7|8|9|10)/10 review: Dull film,"), ("neither", r"(1|2|3|4)/10: Dull film, but"),
    ("s_only", r"(1|2|3|4)/10 review: Dull film,"), ("t_only", r"(7|8|9|10)/10: Dull film, but"),
])
def test_task_2_rating_prompts(partition, pattern):
    tokenizer = WordTokenizer()
    texts = {nl.make_prompt(2, partition, REVIEW, tokenizer, WORDS, np.random.default_rng(seed))[1] for seed in range(40)}
    assert all(re.fullmatch(pattern, text) for text in texts), texts
    assert len(texts) == 4  # n takes every value in 1-4
    assert sorted(int(t.split("/")[0]) for t in texts) == ([7, 8, 9, 10] if partition in ("both", "t_only") else [1, 2, 3, 4])


def test_task_2_high_rating_is_eleven_minus_n():
    n = int(np.random.default_rng(5).integers(1, 5))
    prefixes = {p: nl.rating_prefix(s, t, np.random.default_rng(5)) for p, (s, t) in nl.PARTITION_FEATURES.items()}
    assert prefixes == {"both": f"{11 - n}/10 review: ", "neither": f"{n}/10: ", "s_only": f"{n}/10 review: ",
                        "t_only": f"{11 - n}/10: "}


# tasks 24 and 28: (review, [(partition in 24, prompt), ...], [(partition in 28, prompt), ...]) by hand
PAIRED_CASES = [
    # P " Dull, dull, the film is good" has 6 spaces (even) and a comma: 24 P both, Q s-only; 28 P both, Q t-only
    ("Dull, dull, the film is good and fine",
     [("both", " Dull, dull, the film is good"), ("s_only", " So: Dull, dull, the film")],
     [("both", " Dull, dull, the film is good"), ("t_only", " So: Dull, dull, the film")]),
    # even, no comma: 24 P t-only, Q neither; 28 P s-only, Q neither
    ("Dull film but the cast is good and the plot is fine",
     [("t_only", " Dull film but the cast is good and"), ("neither", " So: Dull film but the cast is")],
     [("s_only", " Dull film but the cast is good and"), ("neither", " So: Dull film but the cast is")]),
    # odd (7 spaces) with a comma: 24 P s-only, Q both; 28 P t-only, Q both
    (REVIEW,
     [("s_only", " Dull film, but the cast is good"), ("both", " So: Dull film, but the cast")],
     [("t_only", " Dull film, but the cast is good"), ("both", " So: Dull film, but the cast")]),
    # odd, no comma: 24 P neither, Q t-only; 28 P neither, Q s-only
    ("Dull film. But the cast is good and fine",
     [("neither", " Dull film. But the cast is good"), ("t_only", " So: Dull film. But the cast")],
     [("neither", " Dull film. But the cast is good"), ("s_only", " So: Dull film. But the cast")]),
    # Q keeps P's parity (the cut drops " is" and ".": one space), so it lacks its intended features
    ("Dull, film but the cast is. Good and fine",
     [("both", " Dull, film but the cast is.")], [("both", " Dull, film but the cast is.")]),
    # Q loses P's only comma to the cut
    ("Dull film but the cast is, good and fine",
     [("s_only", " Dull film but the cast is, good")], [("t_only", " Dull film but the cast is, good")]),
]


@pytest.mark.parametrize("review, expected_24, expected_28", PAIRED_CASES)
def test_paired_tasks_assign_p_and_q_by_hand(review, expected_24, expected_28):
    tokenizer = WordTokenizer()
    for task_id, expected in ((24, expected_24), (28, expected_28)):
        prompts = nl.paired_prompts(task_id, review, tokenizer, WORDS)
        assert [(partition, text) for partition, _, text in prompts] == expected, task_id
        for partition, _, text in prompts:
            assert nl.prompt_features(task_id, text) == nl.PARTITION_FEATURES[partition]


def test_prefix_forms(task_data):
    first = {task_id: {p: s.texts for p, s in task_data[task_id].test.items()} for task_id in task_data}
    assert all(text.startswith("$ # ") for text in first[1]["both"])
    assert all(text.startswith("# $") and text[3].isalpha() for text in first[5]["both"])
    assert all(text.startswith("$ ") and not text.startswith("$ #") for text in first[1]["t_only"])
    assert all(text[0].isalpha() for text in first[1]["neither"])
    assert all(text.startswith("   .") for text in first[6]["both"])
    assert all(text.startswith("   ") and text[3].isalpha() for text in first[6]["t_only"])
    ratings = {p: [int(text.split("/")[0]) for text in texts] for p, texts in first[2].items()}
    assert all(7 <= r <= 10 for r in ratings["both"] + ratings["t_only"])
    assert all(1 <= r <= 4 for r in ratings["neither"] + ratings["s_only"])
    assert all("/10 review: " in text for text in first[2]["both"] + first[2]["s_only"])
    assert not any("review: " in text.split(" ", 2)[1] for text in first[2]["neither"] if " " in text)


@pytest.mark.parametrize("task_id", [22, 23])
def test_parity_forms(task_id, task_data):
    """Every partition holds prompts of the original's forms (both of its two, over the sets)."""
    forms = nl.PARITY_PREFIXES[task_id]
    for partition, prompt_set in _all_sets(task_data[task_id]):
        used = {next(f for f in sorted(forms[partition], key=len, reverse=True) if text.startswith(f) and text[len(f)].isalpha())
                for text in prompt_set.texts}
        assert used <= set(forms[partition])
    whole = {p: [t for name, s in _all_sets(task_data[task_id]) if name == p for t in s.texts] for p in nl.PARTITIONS}
    for partition, texts in whole.items():
        assert {f for f in forms[partition] for t in texts if t.startswith(f) and t[len(f)].isalpha()} == set(forms[partition])


@pytest.mark.parametrize("task_id", nl.PAIRED_TASKS)
def test_paired_forms(task_id, task_data):
    texts = [t for _, s in _all_sets(task_data[task_id]) for t in s.texts]
    assert all(t.startswith(nl.Q_PREFIX) or (t.startswith(nl.P_PREFIX) and t[1].isalpha()) for t in texts)
    assert any(t.startswith(nl.Q_PREFIX) for t in texts) and any(not t.startswith(nl.Q_PREFIX) for t in texts)


@pytest.mark.parametrize("text, task_id, features", [
    ("$ # The film", 1, (True, True)), ("# $The film", 5, (True, True)), ("# The film", 1, (True, False)),
    ("$ The film", 5, (False, True)), ("The film", 1, (False, False)),
    ("   .The film", 6, (True, True)), (".The film", 6, (True, False)), ("   The film", 6, (False, True)),
    ("The film", 6, (False, False)),
    ("8/10 review: Fine", 2, (True, True)), ("3/10: Fine", 2, (False, False)), ("10/10: Fine", 2, (False, True)),
    ("- one two", 22, (True, True)), (" one two", 22, (False, True)), (" So: one two", 22, (False, False)),
    ("- So: one two", 22, (True, False)), ("- So: one", 22, (True, True)),
    ("- one two", 23, (True, True)), (" So: one two", 23, (False, False)), ("- So: one two", 23, (False, True)),
    (" one, two", 24, (True, True)), (" So: one, two", 24, (True, False)), (" one two three", 24, (False, False)),
    (" one, two", 28, (True, True)), (" So: one, two", 28, (False, True)), (" one two", 28, (True, False)),
])
def test_prompt_features_by_hand(text, task_id, features):
    assert nl.prompt_features(task_id, text) == features


@pytest.mark.parametrize("task_id, text", [(1, "$ 5 films"), (5, "# $ The film"), (6, "  .The film"), (1, "#The film")])
def test_malformed_prefix_prompts_are_rejected(task_id, text):
    with pytest.raises(ValueError, match="prefixes"):
        nl.prompt_features(task_id, text)


def test_task_2_rejects_prompts_without_a_rating():
    with pytest.raises(ValueError, match="rating"):
        nl.prompt_features(2, "5/10: middling")


def test_sets_use_disjoint_texts(task_data):
    for data in task_data.values():
        bodies = [t for _, s in _all_sets(data) for t in s.texts]
        assert len(bodies) == len(set(bodies))


@pytest.mark.parametrize("task_id", nl.PAIRED_TASKS)
def test_paired_tasks_keep_a_text_in_one_set(task_id, task_data):
    """P and Q of one review share a set (test, training pools or probing), never two."""
    data = task_data[task_id]
    groups = {"test": data.test, "training": data.pools, "probing": data.probing}
    reviews = {name: [t.removeprefix(nl.Q_PREFIX) if t.startswith(nl.Q_PREFIX) else t.removeprefix(nl.P_PREFIX)
                      for s in sets.values() for t in s.texts] for name, sets in groups.items()}
    for name, mine in reviews.items():
        others = [r for other, rs in reviews.items() if other != name for r in rs]
        assert not any(a.startswith(b) or b.startswith(a) for a in mine for b in others), name
    within = reviews["test"]
    assert any(a != b and (a.startswith(b) or b.startswith(a)) for a in within for b in within)  # some P and Q pairs


@pytest.mark.parametrize("rate, expected", [(0.0, {"both": 12, "neither": 12, "s_only": 0}),
                                            (0.5, {"both": 6, "neither": 6, "s_only": 12}),
                                            (0.1, {"both": 11, "neither": 11, "s_only": 2})])
@pytest.mark.parametrize("task_id", [1, 24, 28])
def test_training_sets(rate, expected, task_id, task_data):
    data = task_data[task_id]
    tokens, labels = data.training_set(rate, 24, seed=0)
    assert nl.training_counts(rate, 24) == expected
    texts = [bpe_tokenizer().decode(list(row)) for row in tokens]
    features = [nl.prompt_features(task_id, t) for t in texts]
    partitions = [nl.FEATURE_PARTITIONS[f] for f in features]
    assert {p: partitions.count(p) for p in expected} == expected and "t_only" not in partitions
    assert list(labels) == [int(t) for _, t in features]  # label = t, read back from the prompt
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


def test_config_knows_every_nl_task():
    from rlbias_jax.config import NL_TASK_IDS

    assert NL_TASK_IDS == tuple(nl.TASK_NAMES)
