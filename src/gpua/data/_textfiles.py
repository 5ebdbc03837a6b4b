"""Reading the small list files users hand us: class names and prompt templates."""

from __future__ import annotations

import codecs
import json
import re
import os
from pathlib import Path

from .._errors import GPUAError, warn_user

__all__ = ["warn_file_over_builtin", "read_string_list", "read_located", "read_text", "load_json", "is_json", "clean_edges"]

# White space and the invisible characters editors leave at a line's ends: a byte-order mark
# (two Windows-saved files concatenated put one before a line), zero-width spaces and word joiners.
_EDGES = re.compile(r"^[\s\ufeff\u200b\u2060]+|[\s\ufeff\u200b\u2060]+$")


def clean_edges(text: str) -> str:
    """``text`` without white space, byte-order marks or zero-width spaces at either end."""
    return _EDGES.sub("", text)


def read_text(path: str | os.PathLike, what: str) -> str:
    """The text of a user's list file: UTF-8, or UTF-16/UTF-32 with a byte-order mark.

    Parameters
    ----------
    path : str or path-like
    what : str
        What the file holds ("class names", "templates"), for messages.

    Returns
    -------
    str
        The decoded text, without a leading byte-order mark.

    Raises
    ------
    GPUAError
        When the file is missing, not UTF-8 (the message names the line and says to save it as
        UTF-8), or holds NUL characters (UTF-16 without a byte-order mark, or not text).
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise GPUAError(f"{what} file {str(p)!r} is a folder; pass the path of a text or JSON file.")
    if not p.is_file():
        raise GPUAError(f"{what} file {str(p)!r} does not exist; pass the path of a text or JSON file.")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise GPUAError(f"{what} file {str(p)!r} could not be read ({exc}).") from exc
    # Windows Notepad's "Unicode" and Excel's "Unicode Text" are UTF-16 with a byte-order mark;
    # utf-8-sig drops the mark Windows editors put before UTF-8. (UTF-32's mark begins with UTF-16's.)
    if raw.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        encoding = "utf-32"
    elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        if encoding != "utf-8-sig":
            raise GPUAError(f"{what} file {str(p)!r} starts with a {encoding.upper()} byte-order mark but is not valid "
                            f"{encoding.upper()} ({exc.reason}); save it again as UTF-8.") from None
        line = raw[: exc.start].count(b"\n") + 1
        raise GPUAError(
            f"{what} file {str(p)!r} is not UTF-8 text: line {line} holds the byte 0x{raw[exc.start]:02x} ({exc.reason}), "
            "as a file saved as Latin-1 / Windows-1252 ('ANSI') would. Save it as UTF-8 (Notepad: Save as, Encoding "
            "UTF-8; Excel: 'CSV UTF-8'; iconv -f cp1252 -t utf-8)."
        ) from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise GPUAError(
            f"{what} file {str(p)!r} holds NUL characters (first on line {line}): it is UTF-16 without a byte-order mark, "
            "or not a text file. Save it as UTF-8."
        )
    return text


def is_json(path: str | os.PathLike, text: str) -> bool:
    """Whether a list file is read as JSON: a ``.json`` name, or text starting with ``[`` or ``{"``."""
    stripped = text.lstrip()
    # A text file of templates may start with a placeholder ("{} in the wild.", "{c}, a type of
    # pet."), which is not JSON: an object starts with '{"'.
    return Path(path).suffix.lower() == ".json" or stripped[:1] == "[" or bool(re.match(r'\{\s*("|$)', stripped))


def load_json(text: str, path: str | os.PathLike, what: str):
    """``json.loads(text)``, with a file's errors (bad JSON, absurd nesting) as a :class:`GPUAError`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        text_hint = (" (or, for a text file of one entry a line whose first line starts with '[', begin it with a "
                     "'# ...' comment line)" if text.lstrip()[:1] == "[" and Path(path).suffix.lower() != ".json" else "")
        raise GPUAError(f"{what} file {str(path)!r} is not valid JSON ({exc}); write a JSON list of strings{text_hint}.") from None
    except RecursionError:
        raise GPUAError(f"{what} file {str(path)!r} holds JSON nested too deeply to read; write a JSON list of strings.") from None


def read_located(path: str | os.PathLike, what: str, *, index_dict: bool = False) -> tuple[list[tuple[str, str]], bool]:
    """Like :func:`read_string_list`, with where each entry stands in the file.

    Returns
    -------
    entries : list of (str, str)
        ``(where, entry)`` pairs: ``where`` is ``"line 3"`` (text files, counting every line)
        or ``"entry 2"`` (JSON lists, from 0).
    from_json : bool
        Whether the file was read as JSON (text files may hold comments; JSON files never do).
    """
    text = read_text(path, what)
    p = Path(path)
    if is_json(p, text):
        located = [(f"entry {i}", e) for i, e in enumerate(_json_strings(load_json(text, p, what), p, what, index_dict))]
        from_json = True
    else:
        located = [(f"line {i + 1}", clean_edges(line)) for i, line in enumerate(text.splitlines())]
        located = [(w, e) for w, e in located if e]
        from_json = False
    if not located:
        raise GPUAError(f"{what} file {str(p)!r} is empty; write one entry per line or a JSON list.")
    return located, from_json


def read_string_list(path: str | os.PathLike, what: str, *, index_dict: bool = False) -> list[str]:
    """Read a JSON list of strings, or a text file with one entry per line.

    Parameters
    ----------
    path : str or path-like
        ``.json`` files (or any file whose text starts with ``[`` or ``{"``) are parsed as JSON;
        anything else is read line by line, surrounding white space stripped, blank lines
        skipped. UTF-8, or UTF-16/UTF-32 with a byte-order mark (:func:`read_text`).
    what : str
        What the entries are ("class names", "templates"), for messages.
    index_dict : bool
        Also accept a JSON object whose keys are integers (``{"1": "pink primrose", ...}``, the
        form of Flowers-102's ``cat_to_name.json``): the entries are taken in key order.

    Returns
    -------
    list of str
        Non-empty entries, in file order.
    """
    return [e for _, e in read_located(path, what, index_dict=index_dict)[0]]


def _json_strings(data, p: Path, what: str, index_dict: bool) -> list[str]:
    if isinstance(data, dict):
        keys = list(data)
        if index_dict and keys and all(str(k).strip().lstrip("-").isdigit() for k in keys):
            data = [data[k] for k in sorted(keys, key=lambda k: int(k))]
        else:
            raise GPUAError(
                f"{what} file {str(p)!r} holds a JSON object (keys {keys[:5]}{'...' if len(keys) > 5 else ''}); "
                f"save one JSON list of {what} instead."
            )
    if not isinstance(data, list):
        raise GPUAError(f"{what} file {str(p)!r} holds a JSON {type(data).__name__}; write a JSON list of strings.")
    out = []
    for i, entry in enumerate(data):
        if not isinstance(entry, str) or not clean_edges(entry):
            raise GPUAError(f"{what} file {str(p)!r}: entry {i} is {entry!r}; every entry must be a non-empty string.")
        out.append(clean_edges(entry))
    return out


def warn_file_over_builtin(text: str, argument: str, builtin: str) -> None:
    """Say that a bare name (no folder part) read as a file of the working folder is not the built-in
    ``builtin`` of that name (was: a file ``simple`` beside the user replaced the template set
    ``simple`` without a word). The caller has found both."""
    if "/" in text or os.sep in text:
        return  # "./simple": the file is meant
    warn_user(f"{argument}={text!r} reads the file {text!r} in the working folder, not the built-in {builtin} of that name; "
              f"write ./{text} to mean the file (and silence this), or rename the file to use the built-in {builtin}.")
