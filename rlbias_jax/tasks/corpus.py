"""Text corpora for the natural-language prefix tasks (SPEC §6).

A corpus is a list of natural-English texts; a prompt is a feature-bearing prefix
followed by the first tokens of one text (`rlbias_jax.tasks.nl`). Sources
(`task.corpus`):

- ``"vader_movie_reviews"`` (the offline default): 10,605 sentence-level movie-review
  snippets (rottentomatoes.com, via Pang & Lee 2004) that ship in the `vaderSentiment`
  3.3.2 source distribution (MIT licence); bundled with this package, see
  `rlbias_jax/tasks/data/README.md` for the exact provenance.
- ``"imdb"``: the IMDb reviews of the paper (Maas et al. 2011), read through
  `datasets` from the local Hugging Face cache only (never downloaded here); train
  and test splits together, `<br />` markup removed.
- a path to a UTF-8 text file: one text per line.

Every source is cleaned the same way: whitespace collapsed, texts that do not start
with a letter dropped (so a text can never be mistaken for a feature prefix such as
"$ ", "# ", "- " or "7/10: "), exact duplicates dropped, order kept.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

BUNDLED_CORPORA = {"vader_movie_reviews": "vader_movie_review_snippets.txt.gz"}
IMDB_NAMES = ("imdb", "stanfordnlp/imdb")
DATA_DIR = Path(__file__).parent / "data"


class NLDataError(ValueError):
    """A corpus (or reward model) is missing or too small: the message names what is missing."""


def load_corpus(source: str) -> list[str]:
    """The cleaned texts of `source` (a bundled name, "imdb", or a text file path)."""
    if source in BUNDLED_CORPORA:
        path = DATA_DIR / BUNDLED_CORPORA[source]
        if not path.is_file():
            raise NLDataError(f"the bundled corpus {source!r} is missing: {path} does not exist (reinstall rlbias_jax)")
        with gzip.open(path, "rt", encoding="utf-8") as file:
            texts = file.read().splitlines()
    elif source in IMDB_NAMES:
        texts = _imdb_texts()
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            known = ", ".join([*BUNDLED_CORPORA, "imdb"])
            raise NLDataError(f"corpus {source!r} is neither a known corpus ({known}) nor an existing text file ({path})")
        texts = path.read_text(encoding="utf-8").splitlines()
    cleaned = clean_texts(texts)
    if not cleaned:
        raise NLDataError(f"corpus {source!r} has no usable text (texts must start with a letter)")
    return cleaned


_MARKUP = re.compile(r"<br\s*/?>", re.IGNORECASE)


def clean_texts(texts) -> list[str]:
    """Collapse whitespace and markup, keep texts that start with a letter, drop exact duplicates."""
    seen, cleaned = set(), []
    for text in texts:
        text = " ".join(_MARKUP.sub(" ", text).split())
        if text and text[0].isalpha() and text not in seen:
            seen.add(text)
            cleaned.append(text)
    return cleaned


def _imdb_texts() -> list[str]:
    """IMDb train + test reviews from the local `datasets` cache (offline: nothing is downloaded)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError as error:
        raise NLDataError("the IMDb corpus needs the `datasets` package (pip install datasets)") from error
    errors = []
    for name in ("stanfordnlp/imdb", "imdb"):
        try:
            splits = [datasets.load_dataset(name, split=split) for split in ("train", "test")]
            return [text for split in splits for text in split["text"]]
        except Exception as error:  # datasets raises several types for "not cached"
            errors.append(f"{name}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    cache = os.environ.get("HF_DATASETS_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    raise NLDataError(
        f"the IMDb corpus (stanfordnlp/imdb) is not in the local Hugging Face datasets cache ({cache}); "
        f"it is never downloaded here: {'; '.join(errors)}. Use task.corpus = \"vader_movie_reviews\" to run offline."
    )
