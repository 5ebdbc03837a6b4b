"""Reading the small list files users hand us: class names and prompt templates."""

from __future__ import annotations

import json
import re
import os
from pathlib import Path

from .._errors import GPUAError

__all__ = ["read_string_list"]


def read_string_list(path: str | os.PathLike, what: str, *, index_dict: bool = False) -> list[str]:
    """Read a JSON list of strings, or a text file with one entry per line.

    Parameters
    ----------
    path : str or path-like
        ``.json`` files (or any file whose text starts with ``[`` or ``{``) are parsed as JSON;
        anything else is read line by line, surrounding white space stripped, blank lines
        skipped.
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
    p = Path(path)
    if not p.is_file():
        raise GPUAError(f"{what} file {str(p)!r} does not exist; pass the path of a text or JSON file.")
    try:
        # utf-8-sig: files saved by Windows editors start with a byte-order mark.
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise GPUAError(f"{what} file {str(p)!r} could not be read as UTF-8 text ({exc}).") from exc
    stripped = text.lstrip()
    # A JSON list or object; a text file of templates may start with a placeholder ("{} in the
    # wild.", "{c}, a type of pet."), which is not JSON: an object starts with '{"'.
    if p.suffix.lower() == ".json" or stripped[:1] == "[" or re.match(r'\{\s*("|$)', stripped):
        entries = _parse_json(text, p, what, index_dict)
    else:
        entries = [line.strip() for line in text.splitlines()]
        entries = [e for e in entries if e]
    if not entries:
        raise GPUAError(f"{what} file {str(p)!r} is empty; write one entry per line or a JSON list.")
    return entries


def _parse_json(text: str, p: Path, what: str, index_dict: bool) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GPUAError(f"{what} file {str(p)!r} is not valid JSON ({exc}); write a JSON list of strings.") from None
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
        if not isinstance(entry, str) or not entry.strip():
            raise GPUAError(f"{what} file {str(p)!r}: entry {i} is {entry!r}; every entry must be a non-empty string.")
        out.append(entry.strip())
    return out
