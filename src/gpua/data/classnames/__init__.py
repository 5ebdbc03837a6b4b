"""Class names of the CoOp benchmark datasets and of CIFAR, class-name files, and class matching.

The lists ship as text files beside this module (one name per line, in label order); their
sources are in ``SOURCES.md`` there. For the CoOp datasets the names are those CoOp stores in its
split files (``split_zhou_<Dataset>.json``), underscores included: CoOp, and
:func:`gpua.data.prompts.build_text_prototypes`, replace ``_`` with a space only when writing the
prompt. ImageNet's are CLIP's cleaned names, except that the two pairs CLIP names identically get
their WordNet lemma (index 744 ``"projectile"``, 836 ``"sunglass"``), because gpua refuses
duplicate class names.

**The class-name file** (one format for every ``gpua`` command; :func:`load_class_prompts`): a
text file with one class per line, in label order (blank lines and lines starting with ``#`` are
skipped). A line is

* ``cat``: the class ``cat``, prompted as "cat";
* ``automobile: car, automobile``: the class ``automobile`` (a class folder's name, the name in
  results) prompted by the words after the colon, here "car" and "automobile";
* ``background, sky, wall``: shorthand for ``background: background, sky, wall`` (the first
  word names the class, every word is a prompt).

A prompt word belongs to one class only. Classification averages a class's prompts into one
text prototype (each word ensembled over the templates, then the words averaged);
segmentation keeps one prototype per word and scores a class by its best word. A JSON list of
such lines, a JSON object ``{"automobile": ["car", "automobile"], ...}``, a JSON object keyed
by class index (Flowers-102's ``cat_to_name.json``) and CoOp's ImageNet ``classnames.txt``
(``n01440764 tench``; :func:`gpua.data.load_dataset` labels class folders named by those ids
through their lines, in any order) are read too. Names cannot contain ``,`` or ``:`` in the text form (a
``:`` inside a name, ``12:00 clock`` or a URL, is refused rather than split); a JSON object
takes its names, and the words of its lists, as written.

Files are UTF-8, or UTF-16/UTF-32 with a byte-order mark (Windows Notepad's "Unicode"); other
encodings are refused naming the line. Quotes around a line or a word (a Python list copied
line by line, ``'cat',``; a spreadsheet's CSV, ``"cat, kitten"``) are not part of the names; a
tab inside a name (spreadsheet columns saved as text) is refused. Two names, or two words of
different classes, that differ only in case, ``_`` versus space, white space or Unicode form
give the same prompt, and are refused as duplicates; within a class they count once.

:func:`match_classes` is the one place where two class lists are matched (a model's and a test
file's): by name whenever both sides have names.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Mapping, Sequence

import numpy as np

from ..._errors import GPUAError
from ..._validation import check_classnames
from .._registry import COOP_DATASETS, KNOWN_DATASETS, canonical_name
from .._textfiles import clean_edges, is_json, load_json, read_located, read_text, warn_file_over_builtin

__all__ = [
    "COOP_DATASETS",
    "KNOWN_DATASETS",
    "ClassMatch",
    "get_classnames",
    "load_classnames",
    "load_class_prompts",
    "parse_class_entries",
    "resolve_classnames",
    "resolve_class_prompts",
    "match_classes",
    "classes_by_name",
]

# CoOp's ImageNet classnames.txt prefixes every line with the WordNet id: "n01440764 tench".
_WNID_LINE = re.compile(r"^(n\d{8})\s+(\S.*)$")


@lru_cache(maxsize=None)
def _read_shipped(name: str) -> tuple[str, ...]:
    text = resources.files(__name__).joinpath(f"{name}.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


def get_classnames(dataset_name: str) -> list[str]:
    """The class names of a benchmark dataset, in label order.

    Parameters
    ----------
    dataset_name : str
        One of :data:`KNOWN_DATASETS` (``imagenet``, ``caltech101``, ``oxford_pets``,
        ``stanford_cars``, ``oxford_flowers``, ``food101``, ``fgvc_aircraft``, ``sun397``,
        ``dtd``, ``eurosat``, ``ucf101``, ``cifar10``, ``cifar100``) or an alias such as CoOp's
        class names (``"OxfordPets"``, ``"DescribableTextures"``) or ``"flowers102"``; case,
        ``-`` and ``_`` are ignored.

    Returns
    -------
    list of str
        A fresh list (safe to modify).

    Raises
    ------
    GPUAError
        For an unknown name; the message lists the known ones.
    """
    canon = canonical_name(dataset_name)
    if canon is None:
        raise GPUAError(
            f"no class-name list is shipped for dataset {dataset_name!r}; known: {', '.join(KNOWN_DATASETS)}. "
            "For another dataset pass a file to load_classnames, or let load_dataset read them from the data."
        )
    return list(_read_shipped(canon))


def parse_class_entries(entries: Sequence[str], source: str = "class names") -> tuple[list[str], list[list[str]]]:
    """Lines of the class-name format -> class names and each class's prompt words.

    Parameters
    ----------
    entries : sequence of str
        One class per entry: ``"cat"``, ``"automobile: car, automobile"`` or
        ``"background, sky, wall"`` (see the module docstring).
    source : str
        Where the entries came from, for messages.

    Returns
    -------
    names : list of str
        One per class, unique.
    prompts : list of list of str
        The prompt words of each class, none shared between classes.

    Raises
    ------
    GPUAError
        For an entry without a name, a ``:`` inside a name (a time, a URL), a tab inside a name or
        word, a duplicate class name (also up to case, ``_`` versus space, white space and Unicode
        form: such names give the same prompt), or a word given to two classes.
    """
    return _parse_located([(f"entry {k}", str(e)) for k, e in enumerate(entries)], source)


# A ':' that cannot be the name/words separator: a time ("12:00 clock"), a ratio ("16:9"), a URL.
_INNER_COLON = re.compile(r"\d:\d|://")
# Quotes around a name or word: a Python list copied line by line ("'cat',"), a spreadsheet's CSV
# export ('"cat, kitten"'). A double quote cannot be part of a Windows folder name.
_QUOTES = "\"\u201c\u201d"


def _unquote(text: str) -> str:
    text = clean_edges(text)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = clean_edges(text[1:-1])
    return clean_edges(text.strip(_QUOTES))


def _parse_located(located: Sequence[tuple[str, str]], source: str) -> tuple[list[str], list[list[str]]]:
    """:func:`parse_class_entries` of ``(where, line)`` pairs (``where``: "line 3", "entry 2") for messages."""
    parsed: list[tuple[str, str, list[str]]] = []
    for where, entry in located:
        text = clean_edges(entry)
        if text.endswith(",") and text[:-1].rstrip()[-1:] in ("'", '"'):  # "'cat'," from a Python list
            text = text[:-1]
        text = _unquote(text)  # a whole line in quotes ('"cat, kitten"')
        if ":" in text:
            if _INNER_COLON.search(text) or text.count(":") > 1:
                raise GPUAError(
                    f"{source}, {where}: {entry!r} has a ':' inside a name or word (a time, a URL?), but ':' separates a "
                    f"class name from its prompt words. Write such classes in a JSON object file, "
                    f'{{"12:00 clock": ["12:00 clock"]}}, whose names and words are taken as written.'
                )
            name, _, rest = text.partition(":")
            name = _unquote(name)
            words = [w for w in (_unquote(w) for w in rest.split(",")) if w] or [name]
        else:
            words = [w for w in (_unquote(w) for w in text.split(",")) if w]
            name = words[0] if words else ""
        if not name:
            raise GPUAError(f"{source}, {where}: {entry!r} holds no class name; write 'name' or 'name: word, word'.")
        tabbed = next((w for w in [name, *words] if "\t" in w), None)
        if tabbed is not None:
            raise GPUAError(
                f"{source}, {where}: {entry!r} has a tab inside {tabbed!r} (a spreadsheet's columns saved as text?); "
                "write 'name' or 'name: word, word', with ':' after the class name and ',' between its words."
            )
        parsed.append((where, name, words))
    return _checked_classes(parsed, source)


def _prompt_key(text: str) -> str:
    # Spellings that give one prompt: case (CLIP's tokenizer, and most others, lower-case), "_"
    # (written as a space), runs of white space, Unicode form (macOS's decomposed accents).
    return " ".join(unicodedata.normalize("NFC", text).replace("_", " ").casefold().split())


def _checked_classes(parsed: Sequence[tuple[str, str, list[str]]], source: str) -> tuple[list[str], list[list[str]]]:
    """Names and words of ``(where, name, words)`` classes, refusing names and words that collide."""
    first: dict[str, tuple[str, str, list[str]]] = {}
    for where, name, words in parsed:
        key = _prompt_key(name)
        if key in first:
            where0, name0, words0 = first[key]
            if name0 == name:
                raise GPUAError(f"{source}: the duplicate name {name!r} ({where0} and {where}); class names must be unique.")
            if {_prompt_key(w) for w in words0} == {_prompt_key(w) for w in words}:
                why = "so their prompts are the same and the two classes cannot be told apart; merge them or rename one."
            else:  # "Sky: sky" and "sky: blue sky": other prompts, but one name wherever names are matched
                why = ("so, though their prompt words differ, the two would be taken for one class wherever class names "
                       "are matched (a model's classes to a test file's, which ignores such differences); rename one (its "
                       "prompt words can stay).")
            raise GPUAError(
                f"{source}: the class names {name0!r} ({where0}) and {name!r} ({where}) differ only in case, '_' versus "
                f"space, white space or Unicode form, {why}"
            )
        first[key] = (where, name, words)
    names = [n for _, n, _ in parsed]
    try:
        check_classnames(names, len(names))
    except GPUAError as exc:
        raise GPUAError(f"{source}: {exc}") from None
    prompts: list[list[str]] = []
    owner: dict[str, tuple[int, str]] = {}
    for k, (where, name, words) in enumerate(parsed):
        unique = []
        for w in words:
            k0, w0 = owner.setdefault(_prompt_key(w), (k, w))
            if k0 != k:
                where0, name0 = parsed[k0][0], parsed[k0][1]
                said = f"prompt word {w!r} stands" if w0 == w else f"prompt words {w0!r} and {w!r} (the same prompt) stand"
                raise GPUAError(
                    f"{source}: the {said} for class {k0} and class {k} ({name0!r}, {where0}; {name!r}, {where}); "
                    "a word may belong to one class only."
                )
            if w0 == w and w not in unique:  # "cat, Cat" is one word, spelled as first written
                unique.append(w)
        prompts.append(unique)
    return names, prompts


def load_class_prompts(path: str | os.PathLike) -> tuple[list[str], list[list[str]]]:
    """Read a class-name file (the format of the module docstring): names and prompt words.

    Returns
    -------
    names : list of str
    prompts : list of list of str

    Raises
    ------
    GPUAError
        When the file is missing, empty or malformed, names a class twice, or gives a word to
        two classes; the message names the line.
    """
    names, prompts, _ = _read_class_file(path)
    return names, prompts


def _read_class_file(path: str | os.PathLike) -> tuple[list[str], list[list[str]], list[str] | None]:
    """:func:`load_class_prompts`, with the WordNet id of each class when every line starts with one
    (CoOp's ImageNet ``n01440764 tench``; else None): an image folder whose class folders are named
    by those ids is labeled through them, not by position (:func:`gpua.data.load_dataset`).

    Raises
    ------
    GPUAError
        As :func:`load_class_prompts`, and for two lines with one id (one folder, two classes).
    """
    source = f"class-name file {str(path)!r}"
    text = read_text(path, "class names")
    if is_json(path, text):
        data = load_json(text, path, "class names")
        if isinstance(data, dict) and data and not all(str(k).strip().lstrip("-").isdigit() for k in data):
            return (*_checked_classes(_mapping_entries(data, source), source), None)
    located, from_json = read_located(path, "class names", index_dict=True)
    if not from_json:
        # "# ..." lines and trailing " # ..." comments are dropped ("cat  # my pet" is the class cat);
        # a '#' inside a word stays ("C#"), and so does one inside quotes ('"No. #9 bus"'). JSON has
        # no comments: its strings are taken whole.
        located = [(w, clean_edges(_without_comment(e))) for w, e in located if not e.startswith("#")]
        located = [(w, e) for w, e in located if e]
        if not located:
            raise GPUAError(f"{source} holds only comments; write one class per line.")
        if len(located) >= 2 and not any(":" in e for _, e in located):  # the `name: words` form is never checked
            _refuse_spreadsheet_columns(located, source)
            _refuse_numbered_lines(located, source)
    matches = [_WNID_LINE.match(e) for _, e in located]
    if not all(matches):
        return (*_parse_located(located, source), None)
    ids = [m.group(1) for m in matches]  # type: ignore[union-attr]
    line_of: dict[str, str] = {}
    for (where, _), wnid in zip(located, ids):
        where0 = line_of.setdefault(wnid, where)
        if where0 != where:
            raise GPUAError(f"{source}: {where0} and {where} both name the folder {wnid!r}, which would be two classes of "
                            "one folder; give each WordNet id one line.")
    # CoOp's own ImageNet file (CLIP's names) calls two pairs of classes alike: the shipped names there
    names = _dedupe_clip_imagenet([m.group(2).strip() for m in matches])  # type: ignore[union-attr]
    return (*_parse_located([(w, n) for (w, _), n in zip(located, names)], source), ids)


def _dedupe_clip_imagenet(names: list[str]) -> list[str]:
    """CLIP's ImageNet names (copied into CoOp's classnames.txt) call two pairs of classes alike;
    the shipped list differs from them exactly there, so use it when that is the only difference."""
    if len(set(names)) == len(names):
        return names
    shipped = get_classnames("imagenet")
    dup = {n for n in names if names.count(n) > 1}
    if len(names) == len(shipped) and all(a == b or a in dup for a, b in zip(names, shipped)):
        return shipped
    return names  # the caller reports the duplicate


#: Column headers a class-name file saved from a spreadsheet starts with (compared lower-case, "_" as " ").
_HEADER_FIELD = re.compile(r"(?:class|classes|category|categories|label|labels|name|names|id|ids|index|idx|count|n|"
                           r"(?:class|category|label) ?(?:name|names|id|index|idx)|description|synonyms|words|prompts?)")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def _refuse_spreadsheet_columns(located: Sequence[tuple[str, str]], source: str) -> None:
    """Refuse a class-name file that is a spreadsheet's columns saved as text (``.csv``): a header
    row (``class``, ``id,name``) would be a class, and a column of numbers (an index, a count) a
    class name or a prompt word, both without a word otherwise ("0,cat" is the class ``0``
    prompted by "0" and "cat"). The caller passes two lines or more, none of the ``name: words`` form."""
    rows = [[_unquote(clean_edges(f)) for f in e.split(",")] for _, e in located]
    where, first = located[0]
    if all(_HEADER_FIELD.fullmatch(f.lower().replace("_", " ")) for f in rows[0] if f) and any(rows[0]):
        raise GPUAError(f"{source}, {where}: {first!r} reads as a spreadsheet's column header, not a class; delete that "
                        "line (a class of that name: write it as 'name: words', or in a JSON file).")
    body = rows[1:] if len(rows) > 2 else rows  # the first line may be a header of other words
    widths = {len(r) for r in body}
    if len(widths) == 1 and widths.pop() >= 2:
        numeric = [j for j in range(len(body[0])) if all(_NUMBER.fullmatch(r[j]) for r in body)]
        if numeric:
            raise GPUAError(f"{source}: every line has {len(body[0])} comma-separated fields and field {numeric[0] + 1} is a "
                            f"number on each (line {located[-1][1]!r}): a spreadsheet's columns (an index, a count), not a "
                            "class and its prompt words; give the class names alone, one per line (or 'name: word, word'; classes "
                            "named by a number: '0: zero').")


_NUMBERED_LINE = re.compile(r"(\d+)[.)]?\s+\S")
_BULLET_LINE = re.compile(r"[-*\u2022]\s+\S")


def _refuse_numbered_lines(located: Sequence[tuple[str, str]], source: str) -> None:
    """Refuse a class-name file whose lines are numbered 0, 1, 2... or 1, 2, 3... (UCF101's
    ``classInd.txt``: ``1 ApplyEyeMakeup``; a list ``1. cat``) or bulleted (``- cat``): the number or
    the bullet would be part of every class name and of its prompts ("a photo of a 1 cat."), without
    a word otherwise. The caller passes two lines or more, none of the ``name: words`` form."""
    numbers = [_NUMBERED_LINE.match(e) for _, e in located]
    if all(numbers):
        index = [int(m.group(1)) for m in numbers]  # type: ignore[union-attr]
        if index in (list(range(len(index))), list(range(1, len(index) + 1))):
            where, first = located[0]
            raise GPUAError(f"{source}: every line starts with its number ({where}: {first!r}), which would be part of each class "
                            "name and its prompts; give the class names alone, one per line, in class order (e.g. "
                            "cut -d' ' -f2- FILE), or, for classes named so, 'name: words' lines.")
    if all(_BULLET_LINE.match(e) for _, e in located):
        where, first = located[0]
        raise GPUAError(f"{source}: every line starts with a bullet ({where}: {first!r}), which would be part of each class "
                        "name; give the class names alone, one per line.")


def _without_comment(line: str) -> str:
    """``line`` without a trailing `` # ...`` comment, outside the quotes a line may be wrapped in."""
    quote = line[:1]
    end = line.find(quote, 1) if quote in ('"', "'") else -1
    head, tail = (line[: end + 1], line[end + 1:]) if end > 0 else ("", line)
    return head + re.split(r"\s#", tail, maxsplit=1)[0]


def _mapping_entries(data: Mapping, source: str) -> list[tuple[str, str, list[str]]]:
    """``{"name": ["word", ...] | "word, word", ...}`` (a JSON object in a file, or a dict passed as
    ``classnames=``) as ``(where, name, words)``.

    Names and the words of a list are taken as written (``:`` and ``,`` included); a string value
    is the words part of a line (``"car, automobile"``).
    """
    out = []
    for i, (name, words) in enumerate(data.items()):
        words = [w for w in words.split(",") if clean_edges(w)] if isinstance(words, str) else words  # "car, automobile"
        if (not isinstance(words, (list, tuple)) or not words
                or not all(isinstance(w, str) and clean_edges(w) for w in words)):
            raise GPUAError(f"{source}: class {name!r} maps to {words!r}; give a word or a list of words.")
        if not clean_edges(str(name)):
            raise GPUAError(f"{source}: entry {i} ({name!r}) holds no class name; give each class a name.")
        out.append((f"entry {i}", clean_edges(str(name)), [clean_edges(w) for w in words]))
    return out


def load_classnames(path: str | os.PathLike) -> list[str]:
    """Read the class names of a class-name file, in label order (see :func:`load_class_prompts`).

    Parameters
    ----------
    path : str or path-like
        A text file with one class per line (``automobile: car, automobile`` gives the name
        ``automobile``; blank lines and ``#`` comments skipped; CoOp's ImageNet
        ``classnames.txt`` lines ``"n01440764 tench"`` lose their WordNet id when every line has
        one, though :func:`gpua.data.load_dataset` labels class folders named by those ids
        through them), a JSON list of such lines, or a JSON object keyed by class name or by class index
        (Flowers-102's ``cat_to_name.json``).

    Raises
    ------
    GPUAError
        When the file is missing, empty or malformed, or names a class twice.
    """
    return load_class_prompts(path)[0]


def resolve_class_prompts(
    classnames: Sequence[str] | Mapping[str, Sequence[str]] | str | os.PathLike | None,
) -> tuple[list[str], list[list[str]]] | None:
    """Turn a user's ``classnames=`` argument into class names and prompt words (or None).

    A list holds literal names (each its own prompt); a dict maps each name to its prompt words;
    a path to an existing file is read with :func:`load_class_prompts`; any other string is
    taken as a dataset name for :func:`get_classnames`.
    """
    resolved = _resolve_classes(classnames)
    return None if resolved is None else (resolved[0], resolved[1])


def _resolve_classes(
    classnames: Sequence[str] | Mapping[str, Sequence[str]] | str | os.PathLike | None,
) -> tuple[list[str], list[list[str]], list[str] | None] | None:
    """:func:`resolve_class_prompts`, with the WordNet ids of a class-name file that gives them
    (:func:`_read_class_file`; None for every other argument)."""
    if classnames is None:
        return None
    if isinstance(classnames, (str, os.PathLike)):
        if os.path.isfile(os.path.expanduser(classnames)):  # "~/classes.txt" from Python, as the shell expands it
            if canonical_name(str(classnames)) is not None:
                warn_file_over_builtin(str(classnames), "classnames", "class list")
            classnames = os.path.expanduser(classnames)
            return _read_class_file(classnames)
        if canonical_name(str(classnames)) is not None:
            names = get_classnames(str(classnames))
            return names, [[n] for n in names], None
        raise GPUAError(
            f"classnames={str(classnames)!r} is neither a file nor a known dataset ({', '.join(KNOWN_DATASETS)}); "
            "pass a list of names, a class-name file, or a dataset name."
        )
    if isinstance(classnames, Mapping):  # read as the same object in a class-name file is
        return (*_checked_classes(_mapping_entries(classnames, "classnames"), "classnames"), None)
    names = [str(c) for c in classnames]
    if any(not n.strip() for n in names):
        raise GPUAError("classnames holds an empty name; every class needs a non-empty name.")
    # Checked as a file's or a dict's names are (was: exact duplicates only, so ['Cat', 'cat'] went
    # on to a tokenizer that read them as one prompt, and its error blamed the characters).
    return (*_checked_classes([(f"entry {i}", n, [n]) for i, n in enumerate(names)], "classnames"), None)


def resolve_classnames(classnames: Sequence[str] | Mapping[str, Sequence[str]] | str | os.PathLike | None) -> list[str] | None:
    """Turn a user's ``classnames=`` argument into a checked list of names (or None).

    A list is used as given; a dict gives its keys; a path to an existing file is read with
    :func:`load_classnames`; any other string is taken as a dataset name for
    :func:`get_classnames`.
    """
    resolved = resolve_class_prompts(classnames)
    return None if resolved is None else resolved[0]


# ------------------------------------------------------------------------------- matching
def _name_key(name: str) -> str:
    # "american_bulldog" (CoOp's folders) and "American bulldog" name one class; so do "café"
    # typed (composed, NFC) and "café" from a macOS folder name (decomposed, NFD).
    return " ".join(unicodedata.normalize("NFC", str(name)).replace("_", " ").lower().split())


@dataclass(frozen=True)
class ClassMatch:
    """How the classes of some data map onto a model's classes (:func:`match_classes`).

    Attributes
    ----------
    index : int array of shape (n_classes,) or None
        ``index[k]`` is the model's class for the data's class ``k``; None means the identity.
    by_name : bool
        Whether the classes were matched by name (else by index).
    note : str or None
        What the caller should tell the user (classes matched by index only), or None.
    """

    index: np.ndarray | None
    by_name: bool
    note: str | None = None

    @property
    def reordered(self) -> bool:
        return self.index is not None

    def map_labels(self, labels) -> np.ndarray:
        """The data's labels as the model's class indices."""
        y = np.asarray(labels, dtype=np.int64)
        return y if self.index is None else self.index[y]


def match_classes(
    model_classnames: Sequence[str] | None,
    data_classnames: Sequence[str] | None,
    *,
    n_model: int | None = None,
    n_data: int | None = None,
    model_source: str = "the model",
    data_source: str = "the data",
) -> ClassMatch:
    """Match the classes of some data (a test file) to a model's classes, by name when possible.

    Parameters
    ----------
    model_classnames, data_classnames : sequence of str or None
        The two class lists, in each side's label order (None: that side has no names).
    n_model, n_data : int, optional
        Class counts (default: the lengths of the lists); a side without names needs its count.
    model_source, data_source : str
        How to call the two sides in messages (``"model 'cifar.gpua'"``, ``"test file 'test.npz'"``).

    Returns
    -------
    ClassMatch
        The data-to-model class index (None when the orders already agree), and a ``note`` when
        the classes could only be matched by index (one side, or both, has no names).

    Raises
    ------
    GPUAError
        When the class counts differ, or both sides name their classes and the names differ
        (the message lists the names found on one side only). Names are compared ignoring case,
        ``_`` versus space, repeated white space and Unicode form (composed or decomposed accents).
    """
    n_model = len(model_classnames) if n_model is None and model_classnames is not None else n_model
    n_data = len(data_classnames) if n_data is None and data_classnames is not None else n_data
    if n_model is None or n_data is None:
        raise GPUAError("match_classes needs class names or a class count for both sides (n_model=, n_data=).")
    both = model_classnames is not None and data_classnames is not None
    if both:
        m_keys, d_keys = _match_keys(model_classnames, data_classnames)  # type: ignore[arg-type]
        only_data = [c for c, k in zip(data_classnames, d_keys) if k not in set(m_keys)]  # type: ignore[arg-type]
        only_model = [c for c, k in zip(model_classnames, m_keys) if k not in set(d_keys)]  # type: ignore[arg-type]
        if only_data or only_model or n_model != n_data:
            raise GPUAError(
                f"{data_source} has {n_data} classes and {model_source} {n_model}, named differently: "
                f"only in {data_source}: {_shown(only_data)}; only in {model_source}: {_shown(only_model)}. "
                f"Scores would compare unrelated classes; use {data_source} extracted with the class names of {model_source}."
            )
        if m_keys == d_keys:
            return ClassMatch(None, True)
        pos = {k: i for i, k in enumerate(m_keys)}
        return ClassMatch(np.asarray([pos[k] for k in d_keys], dtype=np.int64), True)
    if n_model != n_data:
        raise GPUAError(
            f"{data_source} has {n_data} classes but {model_source} has {n_model}; scores would compare unrelated "
            "classes. Evaluate on data with the model's classes."
        )
    missing = [s for s, names in ((model_source, model_classnames), (data_source, data_classnames)) if names is None]
    note = (
        f"{' and '.join(missing)} {'name' if len(missing) > 1 else 'names'} no classes, so class k of {data_source} is "
        f"taken to be class k of {model_source} (matched by index, unchecked); store class names to match them by name."
    )
    return ClassMatch(None, False, note)


def classes_by_name(model_classnames: Sequence[str], data_classnames: Sequence[str]) -> np.ndarray:
    """Each class of some data as one of a model's classes by name, where the two lists need not
    be the same classes (a test file of a subset of the model's classes, or with classes it lacks).

    Names are compared as :func:`match_classes` compares them (case, ``_``, white space, Unicode
    form), or exactly when that would merge two names of one list.

    Returns
    -------
    int array of shape (len(data_classnames),)
        The model's class index of each data class, -1 where the model has no class of that name.
    """
    m_keys, d_keys = _match_keys(model_classnames, data_classnames)
    pos = {k: i for i, k in enumerate(m_keys)}
    return np.asarray([pos.get(k, -1) for k in d_keys], dtype=np.int64)


def _match_keys(model_classnames: Sequence[str], data_classnames: Sequence[str]) -> tuple[list[str], list[str]]:
    """The two lists' names as compared (:func:`_name_key`), or exactly when that would merge two
    names of one list (names that differ only in spelling)."""
    m_keys = [_name_key(c) for c in model_classnames]
    d_keys = [_name_key(c) for c in data_classnames]
    if len(set(m_keys)) != len(m_keys) or len(set(d_keys)) != len(d_keys):
        return [str(c) for c in model_classnames], [str(c) for c in data_classnames]
    return m_keys, d_keys


def _shown(names: Sequence[str], n: int = 8) -> str:
    names = list(names)
    return "none" if not names else ", ".join(repr(c) for c in names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
