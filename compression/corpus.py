"""A deterministic corpus of real English sentences that ships offline.

Owns: collecting prose from text that is installed with Python and the project's own
dependencies (scikit-learn's dataset descriptions, the docstrings of standard-library modules),
splitting it into sentences, and filtering out markup, code and fragments. The same
installation always yields the same sentences in the same order. Used as calibration and
evaluation text for sentence encoders; nothing here reaches the network.
"""

from __future__ import annotations

import importlib
import importlib.resources
import inspect
import re
import warnings
from collections.abc import Iterable, Iterator
from types import ModuleType

# Modules whose docstrings are written as prose; the order fixes the corpus order.
STDLIB_MODULES: tuple[str, ...] = (
    "argparse",
    "asyncio",
    "base64",
    "bisect",
    "calendar",
    "collections",
    "concurrent.futures",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email",
    "enum",
    "fractions",
    "functools",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "http.client",
    "http.cookies",
    "imaplib",
    "inspect",
    "ipaddress",
    "json",
    "locale",
    "logging",
    "mailbox",
    "mimetypes",
    "multiprocessing",
    "netrc",
    "numbers",
    "operator",
    "optparse",
    "pathlib",
    "pickle",
    "pprint",
    "queue",
    "random",
    "sched",
    "secrets",
    "shelve",
    "shlex",
    "shutil",
    "smtplib",
    "socketserver",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "trace",
    "typing",
    "unittest",
    "urllib.parse",
    "uuid",
    "warnings",
    "weakref",
    "zipfile",
)

MIN_CHARS = 40
MAX_CHARS = 280
MIN_WORDS = 7

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_MARKUP = re.compile(r"(::|>>>|\.\.\s|https?:|www\.|`|\||\*\*|__|\$|\\|=|\{|\}|\[|\]|<|>|#|@|~|\^)")
_ABBREVIATION_TAIL = re.compile(r"\b(e\.g|i\.e|etc|vs|al|Dr|Mr|Mrs|Fig|No|cf)\.$", re.IGNORECASE)


def sklearn_descr_texts() -> Iterator[str]:
    """scikit-learn's bundled dataset descriptions (reStructuredText), sorted by file name."""
    try:
        root = importlib.resources.files("sklearn.datasets.descr")
    except ModuleNotFoundError:
        return
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".rst"):
            yield entry.read_text(encoding="utf-8")


def stdlib_docstrings(modules: Iterable[str] = STDLIB_MODULES) -> Iterator[str]:
    """Module docstrings, then the docstrings of their public classes and functions, by name."""
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if module.__doc__:
            yield module.__doc__
        with warnings.catch_warnings():
            # deprecated aliases (typing.io, ...) warn when touched; their text is not wanted anyway
            warnings.simplefilter("ignore", DeprecationWarning)
            docs = [_public_doc(module, name) for name in sorted(vars(module)) if not name.startswith("_")]
        yield from (doc for doc in docs if doc)


def _public_doc(module: ModuleType, name: str) -> str | None:
    member = vars(module)[name]
    if not (inspect.isclass(member) or inspect.isfunction(member)):
        return None
    if getattr(member, "__module__", None) != module.__name__:
        return None
    return inspect.getdoc(member)


def paragraphs(text: str) -> Iterator[str]:
    """Prose paragraphs of a docstring or rst text: blank-line separated, markup lines dropped."""
    block: list[str] = []
    for raw in [*text.splitlines(), ""]:
        line = raw.strip()
        if not line or _is_markup_line(line):
            if block:
                yield " ".join(block)
            block = []
            continue
        block.append(line)


def _is_markup_line(line: str) -> bool:
    if line[0] in "=-~*:.|+#>-":
        return True
    if re.fullmatch(r"[\W_]+", line):
        return True
    # "name : type" parameter lines and indented code both read badly as sentences
    return bool(re.match(r"^\w+\s*:\s", line) and len(line.split()) < 6)


def split_sentences(paragraph: str) -> list[str]:
    """Split on sentence ends, rejoining after common abbreviations ("e.g.", "et al.")."""
    pieces = _SENTENCE_END.split(re.sub(r"\s+", " ", paragraph).strip())
    sentences: list[str] = []
    for piece in pieces:
        if sentences and _ABBREVIATION_TAIL.search(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return sentences


def is_prose_sentence(sentence: str) -> bool:
    if not MIN_CHARS <= len(sentence) <= MAX_CHARS:
        return False
    if not sentence[0].isupper() or sentence[-1] not in ".!?":
        return False
    if len(sentence.split()) < MIN_WORDS or _MARKUP.search(sentence):
        return False
    letters = sum(ch.isalpha() or ch.isspace() for ch in sentence)
    if letters / len(sentence) < 0.9:
        return False
    # identifiers such as read_csv or camelCase names mark code, not prose
    return not any("_" in word or re.search(r"[a-z][A-Z]", word) for word in sentence.split())


def sentences_from(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        for paragraph in paragraphs(text):
            for sentence in split_sentences(paragraph):
                if is_prose_sentence(sentence):
                    yield sentence


def deduplicated(sentences: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    unique: list[str] = []
    for sentence in sentences:
        key = re.sub(r"\W+", " ", sentence.lower()).strip()
        if key not in seen:
            seen.add(key)
            unique.append(sentence)
    return unique


def spread(items: list[str], limit: int) -> list[str]:
    """``limit`` items evenly spaced over ``items`` (every source gets its share), in order."""
    if limit >= len(items):
        return list(items)
    return [items[(i * len(items)) // limit] for i in range(limit)]


def english_sentences(limit: int | None = None) -> list[str]:
    """Deduplicated prose sentences from scikit-learn dataset descriptions and stdlib docs.

    With ``limit``, a deterministic selection spread evenly over all the sources.
    """
    found = deduplicated(sentences_from([*sklearn_descr_texts(), *stdlib_docstrings()]))
    return found if limit is None else spread(found, limit)


def held_out_split(eval_count: int, calibration_count: int) -> tuple[list[str], list[str]]:
    """Evaluation sentences spread over the corpus; calibration sentences from the rest, also
    spread, so that a model is never judged on the sentences it was calibrated on."""
    everything = english_sentences()
    evaluation = spread(everything, eval_count)
    held_out = set(evaluation)
    rest = [s for s in everything if s not in held_out]
    step = max(len(rest) // calibration_count, 1)
    return evaluation, rest[::step][:calibration_count]
