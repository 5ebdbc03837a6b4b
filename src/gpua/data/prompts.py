"""Prompt templates and text prototypes.

A template is a sentence with a ``{}`` placeholder for the class name (``{c}``, the spelling of
open_clip and CLIP_benchmark, is accepted and normalised to ``{}``; ``{{`` and ``}}`` are
literal braces, as in ``str.format``). A template file is a JSON list, or text with one template
a line: blank lines and lines starting with ``#`` are skipped (``#{} of the day`` is a
template), and a line in quotes copied from Python (``'a bad photo of a {}.',``), f-strings
included (``f'a photo of a {c}.',``, whose ``{c}`` is the placeholder), is read without its
quotes, ``f`` and comma (a ``lambda c: f'...'`` line is refused: it is code, not a list's line).

A class's text prototype is the prompt-ensemble of CLIP (Radford et al., 2021): encode every
template filled with the class name, L2-normalise each embedding, average over templates,
L2-normalise again.

Shipped template sets (all data, copied from their sources):

* ``"openai_imagenet"``: the 80 ImageNet templates of CLIP's
  ``notebooks/Prompt_Engineering_for_ImageNet.ipynb`` (as in open_clip's
  ``zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES`` and CoOp's ``IMAGENET_TEMPLATES``).
* ``"imagenet_select"``: the 7 of them CLIP's notebook selected (CoOp's
  ``IMAGENET_TEMPLATES_SELECT``).
* ``"simple"``: ``["a photo of a {}."]``.
* one set per dataset (:data:`DATASET_TEMPLATES`): for the 11 CoOp datasets CoOp's single
  hand-written prompt (``CUSTOM_TEMPLATES`` in CoOp's ``trainers/zsclip.py``), for CIFAR-10 and
  CIFAR-100 the 18 templates of CLIP's ``data/prompts.md``.

**The default** (:data:`DEFAULT_TEMPLATES` = ``"auto"``, the same in every command and function
that builds prototypes: ``gpua extract``, ``classify``, ``benchmark``, ``demo``, ``fit-seg``,
``segment``, ``evaluate-seg``): a known benchmark's own templates (its name, or the dataset's),
as the published protocols use them (CoOp's prompt for its 11 datasets, CLIP's 18 for CIFAR),
and for any other data CLIP's 80 ImageNet templates, the general-purpose ensemble (CLIP's paper:
+3.5 points on ImageNet over the single "a photo of a {}."). Text prototypes are built once
per class, so 80 templates cost seconds, not a re-extraction of images.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Mapping, Sequence

import numpy as np

from .._errors import GPUAError, warn_user
from .._validation import check_matrix
from ._registry import KNOWN_DATASETS, canonical_name, dataset_info
from ._textfiles import clean_edges, read_located, warn_file_over_builtin
from .classnames import resolve_class_prompts

__all__ = [
    "OPENAI_IMAGENET_TEMPLATES",
    "IMAGENET_SELECT_TEMPLATES",
    "SIMPLE_TEMPLATES",
    "CIFAR_TEMPLATES",
    "DATASET_TEMPLATES",
    "TEMPLATE_SETS",
    "DEFAULT_TEMPLATES",
    "get_templates",
    "resolve_templates",
    "benchmark_named_by",
    "check_templates",
    "fill_template",
    "build_text_prototypes",
]

OPENAI_IMAGENET_TEMPLATES: tuple[str, ...] = (
    'a bad photo of a {}.',
    'a photo of many {}.',
    'a sculpture of a {}.',
    'a photo of the hard to see {}.',
    'a low resolution photo of the {}.',
    'a rendering of a {}.',
    'graffiti of a {}.',
    'a bad photo of the {}.',
    'a cropped photo of the {}.',
    'a tattoo of a {}.',
    'the embroidered {}.',
    'a photo of a hard to see {}.',
    'a bright photo of a {}.',
    'a photo of a clean {}.',
    'a photo of a dirty {}.',
    'a dark photo of the {}.',
    'a drawing of a {}.',
    'a photo of my {}.',
    'the plastic {}.',
    'a photo of the cool {}.',
    'a close-up photo of a {}.',
    'a black and white photo of the {}.',
    'a painting of the {}.',
    'a painting of a {}.',
    'a pixelated photo of the {}.',
    'a sculpture of the {}.',
    'a bright photo of the {}.',
    'a cropped photo of a {}.',
    'a plastic {}.',
    'a photo of the dirty {}.',
    'a jpeg corrupted photo of a {}.',
    'a blurry photo of the {}.',
    'a photo of the {}.',
    'a good photo of the {}.',
    'a rendering of the {}.',
    'a {} in a video game.',
    'a photo of one {}.',
    'a doodle of a {}.',
    'a close-up photo of the {}.',
    'a photo of a {}.',
    'the origami {}.',
    'the {} in a video game.',
    'a sketch of a {}.',
    'a doodle of the {}.',
    'a origami {}.',
    'a low resolution photo of a {}.',
    'the toy {}.',
    'a rendition of the {}.',
    'a photo of the clean {}.',
    'a photo of a large {}.',
    'a rendition of a {}.',
    'a photo of a nice {}.',
    'a photo of a weird {}.',
    'a blurry photo of a {}.',
    'a cartoon {}.',
    'art of a {}.',
    'a sketch of the {}.',
    'a embroidered {}.',
    'a pixelated photo of a {}.',
    'itap of the {}.',
    'a jpeg corrupted photo of the {}.',
    'a good photo of a {}.',
    'a plushie {}.',
    'a photo of the nice {}.',
    'a photo of the small {}.',
    'a photo of the weird {}.',
    'the cartoon {}.',
    'art of the {}.',
    'a drawing of the {}.',
    'a photo of the large {}.',
    'a black and white photo of a {}.',
    'the plushie {}.',
    'a dark photo of a {}.',
    'itap of a {}.',
    'graffiti of the {}.',
    'a toy {}.',
    'itap of my {}.',
    'a photo of a cool {}.',
    'a photo of a small {}.',
    'a tattoo of the {}.',
)

IMAGENET_SELECT_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

SIMPLE_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)

CIFAR_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low contrast photo of a {}.",
    "a high contrast photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a photo of the {}.",
    "a blurry photo of the {}.",
    "a black and white photo of the {}.",
    "a low contrast photo of the {}.",
    "a high contrast photo of the {}.",
    "a bad photo of the {}.",
    "a good photo of the {}.",
    "a photo of the small {}.",
    "a photo of the big {}.",
)

#: Per-dataset templates, keyed by canonical dataset name (aliases resolve in get_templates).
DATASET_TEMPLATES: dict[str, tuple[str, ...]] = {
    name: (CIFAR_TEMPLATES if name in ("cifar10", "cifar100") else (dataset_info(name).template,))  # type: ignore[union-attr]
    for name in KNOWN_DATASETS
}

#: Named template sets that are not tied to one dataset.
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "openai_imagenet": OPENAI_IMAGENET_TEMPLATES,
    "imagenet_select": IMAGENET_SELECT_TEMPLATES,
    "simple": SIMPLE_TEMPLATES,
}

#: The default of every ``templates=`` argument: see the module docstring and :func:`resolve_templates`.
DEFAULT_TEMPLATES = "auto"

# str.format's literal braces "{{" and "}}", or any {...} field; after normalisation only the bare {} may remain.
_TOKEN = re.compile(r"\{\{|\}\}|\{[^{}]*\}")
# What fill_template replaces: literal braces, and the placeholder.
_FILL = re.compile(r"\{\{|\}\}|\{\}")
# A template line copied from Python source in quotes: "'a photo of a {}.',", '"a photo of a {}."', or an
# f-string of open_clip's style "f'a photo of a {c}.'," (its {c} is our placeholder, its {{ }} our literal braces).
_QUOTED = re.compile(r"""^[fF]?(['"])(.*)\1\s*,?\s*(#.*)?$""")


def check_templates(templates: Sequence[str], source: str = "templates") -> list[str]:
    """Validate templates and normalise ``{c}`` to ``{}``.

    ``{{`` and ``}}`` are literal braces, as in ``str.format`` (:func:`fill_template` writes
    them as ``{`` and ``}``).

    Parameters
    ----------
    templates : sequence of str
    source : str
        Where they came from (a file name), for messages.

    Raises
    ------
    GPUAError
        When there are none, one is not a string, has no placeholder, or has a placeholder
        other than ``{}`` / ``{c}``.
    """
    if isinstance(templates, str):
        raise GPUAError(f"{source} is a single string; pass a list of templates (or a name/file to get_templates).")
    return _checked(list(enumerate(templates)), source)


def _checked(located: Sequence[tuple[int | str, object]], source: str) -> list[str]:
    """:func:`check_templates` of ``(i, template)`` pairs; ``i`` is an index or a file's ``"line 3"``."""
    out = []
    for n, (i, t) in enumerate(located):
        what = f"{source}: template {i}" if isinstance(i, int) else f"{source}, {i}: template {n}"
        if not isinstance(t, str):
            raise GPUAError(f"{what} is {t!r}, not a string.")
        fields: list[str] = []

        def field(m: re.Match) -> str:
            if m.group() in ("{{", "}}"):
                return m.group()
            fields.append(m.group())
            return "{}" if m.group() == "{c}" else m.group()

        t = _TOKEN.sub(field, t.strip())
        if not fields:
            hint = " ('%s' is printf style; write {} instead)" if "%s" in t else ""
            raise GPUAError(
                f"{what} {t!r} has no class-name placeholder{hint}; write {{}} (or {{c}}) where the "
                "class name goes, e.g. 'a photo of a {}.'"
            )
        unknown = [f for f in fields if f not in ("{}", "{c}")]
        if unknown:
            raise GPUAError(f"{what} {t!r} has the placeholder {unknown[0]}; use {{}} or {{c}} "
                            "({{ and }} for literal braces).")
        out.append(t)
    if not out:
        raise GPUAError(f"{source} is empty; give at least one template.")
    repeated = sorted({t for t in out if out.count(t) > 1}, key=out.index)
    if repeated:  # kept (a weighting may be meant), but said: the ensemble averages every line
        warn_user(f"{source} lists {len(repeated)} template(s) more than once (first: {repeated[0]!r}); each copy counts in the "
                  "ensemble's average, so it weighs more. Delete the copies unless that is meant.")
    return out


def _read_template_file(path: str, source: str) -> list[str]:
    """The templates of a file: a JSON list, or text with one template a line and ``#`` comment lines."""
    located, from_json = read_located(path, "templates")
    if from_json:
        return _checked(list(enumerate(e for _, e in located)), source)
    lines = []
    for where, line in located:
        if line.startswith("#") and not line.startswith("#{"):  # a comment; "#{} of the day" is a template
            continue
        if line.startswith("lambda ") or line.startswith("lambda:"):
            raise GPUAError(f"{source}, {where}: {line!r} is Python code; write the template itself, one a line "
                            "('a bad photo of a {}.').")
        quoted = _QUOTED.match(line)  # "'a bad photo of a {}.'," from CLIP's notebook (or f'...'), with its comment
        # a trailing " # ..." comment is dropped, as in class-name files; a '#' inside a word stays, and so
        # does a hashtag placeholder " #{}" (was cut as a comment: "a photo tagged #{}" lost its '{}')
        lines.append((where, quoted.group(2).strip() if quoted else clean_edges(re.split(r"\s#(?!\{)", line, maxsplit=1)[0])))
    if not lines:
        raise GPUAError(f"{source} holds only comments; write one template a line ('a photo of a {{}}.').")
    return _checked(lines, source)


def get_templates(name_or_path: str | os.PathLike | Sequence[str]) -> list[str]:
    """Prompt templates by set name, dataset name, file, or as a list to check.

    Parameters
    ----------
    name_or_path : str, path-like or sequence of str
        ``"openai_imagenet"`` (80), ``"imagenet_select"`` (7), ``"simple"`` (1); a dataset name
        or alias from :data:`DATASET_TEMPLATES` (``"oxford_pets"`` gives
        ``["a photo of a {}, a type of pet."]``); a file (JSON list, or text with one template a
        line and ``#`` comment lines) with ``{}`` or ``{c}`` placeholders; or a list of templates.

    Returns
    -------
    list of str
        Templates with ``{}`` placeholders.

    Raises
    ------
    GPUAError
        For an unknown name, a missing or empty file, or a template without a placeholder.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        return check_templates(list(name_or_path))
    text = os.fspath(name_or_path)
    if text.startswith("~") and os.path.exists(os.path.expanduser(text)):  # a Python caller's "~/t.txt", as the shell's
        text = os.path.expanduser(text)
    key = text.strip().lower().replace("-", "_")
    if os.path.isfile(text):
        if key in TEMPLATE_SETS or canonical_name(text) is not None:
            warn_file_over_builtin(text, "templates", "template set")
        return _read_template_file(text, f"template file {text!r}")
    if os.path.isdir(text):
        raise GPUAError(f"templates {text!r} is a folder; pass a file of templates (a JSON list, or one template a line), "
                        "or a template set's name.")
    if key in TEMPLATE_SETS:
        return list(TEMPLATE_SETS[key])
    canon = canonical_name(text)
    if canon is not None:
        return list(DATASET_TEMPLATES[canon])
    if "{" in text:  # a template itself, not a name
        raise GPUAError(f"templates {text!r} is a template, not a file or a template set's name; pass a list of templates "
                        "(templates=[...]) or, on the command line, a file with one template a line.")
    if os.sep in text or "/" in text or os.path.splitext(text)[1]:
        raise GPUAError(f"template file {text!r} does not exist.")
    raise GPUAError(
        f"unknown template set {text!r}; use one of {', '.join(TEMPLATE_SETS)}, a dataset name "
        f"({', '.join(DATASET_TEMPLATES)}), or a file of templates."
    )


def benchmark_named_by(classnames) -> str | None:
    """``classnames`` when it is a dataset's name (``"cifar10"``: a string that names no file), whose
    templates ``"auto"`` then takes; None for a class-name file, a list or a dict."""
    if isinstance(classnames, str) and not os.path.isfile(os.path.expanduser(classnames)):
        return classnames
    return None


def resolve_templates(templates: str | os.PathLike | Sequence[str] | None = DEFAULT_TEMPLATES, dataset: str | None = None) -> list[str]:
    """The templates a command uses: ``templates`` as :func:`get_templates` reads it, or the default.

    Parameters
    ----------
    templates : str, path-like, sequence of str or None
        ``None`` or ``"auto"`` (:data:`DEFAULT_TEMPLATES`) picks the default: the templates of
        ``dataset`` when it names a known benchmark (:data:`DATASET_TEMPLATES`, aliases such as
        ``"cifar10-mini"`` included), else the 80 ``"openai_imagenet"`` templates. Anything else
        goes to :func:`get_templates`.
    dataset : str, optional
        The data's name.

    Returns
    -------
    list of str
    """
    if templates is None or (isinstance(templates, str) and templates.strip().lower() == DEFAULT_TEMPLATES):
        canon = canonical_name(dataset) if dataset else None
        return list(DATASET_TEMPLATES[canon] if canon else OPENAI_IMAGENET_TEMPLATES)
    return get_templates(templates)


def fill_template(template: str, classname: str, *, underscores_to_spaces: bool = True) -> str:
    """The prompt for one class.

    Every ``{}`` becomes the class name, ``{{`` and ``}}`` become ``{`` and ``}`` (as in
    ``str.format``); other braces stay as they are, and the class name is inserted as written
    (never parsed), so braces in it or elsewhere in the template cannot break formatting. With
    ``underscores_to_spaces`` (CoOp's convention, whose class names keep the folder spelling
    ``"american_bulldog"``) ``_`` becomes a space.
    """
    name = classname.replace("_", " ") if underscores_to_spaces else classname
    return _FILL.sub(lambda m: name if m.group() == "{}" else m.group()[0], template)


def build_text_prototypes(
    encode_text: Callable[[list[str]], np.ndarray],
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
    *,
    underscores_to_spaces: bool = True,
    progress: bool = False,
    synonyms: Sequence[Sequence[str]] | None = None,
) -> np.ndarray:
    """Encode class prompts and ensemble them into one unit-norm prototype per class.

    Parameters
    ----------
    encode_text : callable
        ``encode_text(prompts: list[str]) -> array (len(prompts), d)``; numpy arrays or torch
        tensors. Called with at most ``batch_size`` prompts at a time.
    classnames : sequence of str, or str
        One name per class, unique; or a dataset name / class-name file (see
        :func:`gpua.data.classnames.resolve_classnames`).
    templates : sequence of str
        Templates with ``{}`` (or ``{c}``) placeholders, e.g. from :func:`get_templates`.
    batch_size : int
        Prompts per call of ``encode_text``; bounds memory (ImageNet x 80 templates = 80,000).
    underscores_to_spaces : bool
        Write ``"american bulldog"`` for the class ``"american_bulldog"`` (CoOp does).
    progress : bool
        Show a tqdm progress bar over batches.
    synonyms : sequence of sequence of str, optional
        The prompt words of each class (``[["car", "automobile"], ...]``, from a class-name
        file's ``automobile: car, automobile`` line, see :mod:`gpua.data.classnames`); default:
        each class's own name. A class-name file passed as ``classnames`` gives its own words.

    Returns
    -------
    ndarray of float32, shape (n_classes, d)
        Row k = normalise(mean over templates of normalise(encode_text(prompt(k, t)))); with
        several words per class, normalise(mean over words of that per-word prototype).

    Raises
    ------
    GPUAError
        For bad class names or templates, or when ``encode_text`` returns the wrong number of
        rows, a changing width, NaN/inf, or an all-zero embedding.
    """
    # A str is a dataset name or class-name file (as in load_dataset), never a list of letters.
    # A dict maps names to their prompt words (as in a class-name file).
    resolved = resolve_class_prompts(classnames if isinstance(classnames, (str, os.PathLike, Mapping)) else list(classnames))
    if not resolved or not resolved[0]:
        raise GPUAError("classnames is empty; give at least one class name.")
    names, words = resolved
    if synonyms is not None:
        words = [[str(w) for w in ws] for ws in synonyms]
        if len(words) != len(names) or any(not ws for ws in words):
            raise GPUAError(f"synonyms has {len(words)} entries for {len(names)} classes; give each class a non-empty list of words.")
    if any(ws != [n] for n, ws in zip(names, words)):
        flat = [w for ws in words for w in ws]
        per_word = build_text_prototypes(encode_text, flat, templates, batch_size, underscores_to_spaces=underscores_to_spaces,
                                         progress=progress) if len(set(flat)) == len(flat) else None
        if per_word is None:
            raise GPUAError("a prompt word is given to two classes; each word may stand for one class only.")
        owner = np.repeat(np.arange(len(names)), [len(ws) for ws in words])
        sums = np.zeros((len(names), per_word.shape[1]), dtype=np.float64)
        np.add.at(sums, owner, per_word.astype(np.float64))
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        if np.any(norms < 1e-12):
            raise GPUAError(f"the prompt words of class {names[int(np.argmin(norms))]!r} cancel out; use other words.")
        return (sums / norms).astype(np.float32)
    temps = check_templates(templates)
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise GPUAError(f"batch_size must be a positive integer, got {batch_size!r}.")
    n_t = len(temps)
    total = len(names) * n_t
    # Sum in float64: 80 templates of float16/32 embeddings would otherwise lose digits.
    sums: np.ndarray | None = None
    starts = range(0, total, int(batch_size))
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415  (optional display only)

        starts = tqdm(starts, desc="text prototypes", unit="batch")
    for s in starts:
        idx = np.arange(s, min(s + int(batch_size), total))
        prompts = [fill_template(temps[j % n_t], names[j // n_t], underscores_to_spaces=underscores_to_spaces) for j in idx]
        emb = check_matrix(
            encode_text(prompts),
            "encode_text output",
            n_rows=len(prompts),
            n_cols=None if sums is None else sums.shape[1],
        ).astype(np.float64)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        if sums is None:
            sums = np.zeros((len(names), emb.shape[1]), dtype=np.float64)
        np.add.at(sums, idx // n_t, emb)
    assert sums is not None  # total >= 1
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    if np.any(norms < 1e-12):
        k = int(np.argmin(norms))
        raise GPUAError(
            f"the prompt embeddings of class {names[k]!r} cancel out (their mean is zero); check encode_text "
            "or use other templates."
        )
    return (sums / norms).astype(np.float32)
