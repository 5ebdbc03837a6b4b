"""Safe writes: atomic files, and output paths checked before any work.

:func:`atomic_path` writes a temp file in the target's folder, fsyncs it and renames it over the
target: an interrupted write leaves the old file intact, never a half-written file under the
final name. The temp file is created with mode ``0o666`` less the process umask, so the output
gets the permissions any other program's output would get (not ``mkstemp``'s ``0o600``); a file
that is replaced keeps its own permission bits (and, where the system allows, its owner and
group), as a file rewritten in place would. A target that is a symbolic link is written through:
the file it points to is replaced (atomically, in that file's folder) and the link is kept.
A write that the system refuses (disk full, quota) raises an :class:`OSError` naming the target,
not the temp file, and leaves the old file as it was.

Temp files carry gpua's own name, ``.<target>.gpua-<host>-<pid>-<random>.tmp<suffix>``: a save
killed before its rename leaves one behind, and the next save in that folder removes it once its
writer is gone (same host and that process no longer runs) or it is older than
:data:`STALE_AFTER_S`. No other file is ever removed.

:func:`check_output` refuses, before a command does any work, an output path that would destroy
one of its inputs (the same file, through links too, or a file inside an input folder that the
command may read: an image, a feature or shard file), that would add a class folder to a labelled
image folder, that is a folder where a file is wanted (or the reverse), that lies under a file,
or whose folder cannot be written. Other files inside an input folder (last run's predictions
CSV or model) may be replaced.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import socket
import stat
import time
from pathlib import Path
from typing import Iterable, Iterator

from ._errors import GPUAError
from ._validation import as_path

__all__ = ["atomic_path", "atomic_write_text", "check_output", "check_writable", "clean_stale_temps", "gpua_temps", "STALE_AFTER_S", "TEMP_MARK"]

#: Temp files of a writer on another host (whose process cannot be checked) are stale after this.
STALE_AFTER_S = 24 * 3600
#: What every gpua temp file name holds (``.<target>.gpua-...``).
TEMP_MARK = ".gpua-"


def _host_tag() -> str:
    """Who can check a pid: the host name and, on Linux, the pid namespace (containers sharing a
    host name and a volume see different pids, so their temp files count as another host's)."""
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return hashlib.sha256(f"{socket.gethostname()}|{ns}".encode()).hexdigest()[:8]


_HOST = _host_tag()
_TEMP_RE = re.compile(r"^\..+\.gpua-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-z]+\.tmp")
_KINDS = ("file", "folder", "tree")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # someone else's process, or not a pid
        return pid > 0
    return True


def gpua_temps(folder: str | os.PathLike, *, now: float | None = None) -> list[tuple[Path, bool]]:
    """The temp files of gpua writers in ``folder``, each with whether it is stale: its writer is
    dead (same host) or it is older than :data:`STALE_AFTER_S` (another host's writer cannot be
    checked). Only names of gpua's own pattern count."""
    now = time.time() if now is None else now
    found = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return found
    for e in entries:
        if not (e.name.startswith(".") and TEMP_MARK in e.name):
            continue
        m = _TEMP_RE.match(e.name)
        if m is None:
            continue
        try:
            if not e.is_file(follow_symlinks=False):
                continue
            age = now - e.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        dead = m["host"] == _HOST and int(m["pid"]) != os.getpid() and not _pid_alive(int(m["pid"]))
        found.append((Path(e.path), dead or age > STALE_AFTER_S))
    return found


def clean_stale_temps(folder: str | os.PathLike, *, now: float | None = None) -> list[Path]:
    """Remove the temp files that killed gpua writers left in ``folder`` (:func:`gpua_temps`);
    return what was removed."""
    removed = []
    for path, stale in gpua_temps(folder, now=now):
        if stale:
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed.append(path)
    return removed


#: The longest file name (bytes) most file systems allow: a temp name is kept within it.
_NAME_MAX = 255


def _temp_name(target: Path, suffix: str) -> Path:
    """``.<target>.gpua-<host>-<pid>-<random>.tmp<suffix>``, the target's name shortened so that
    the whole name fits in :data:`_NAME_MAX` bytes (a target named near the limit stays writable)."""
    tail = f"{TEMP_MARK}{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp{suffix}"
    room = max(1, _NAME_MAX - 1 - len(os.fsencode(tail)))
    return target.parent / f".{os.fsdecode(os.fsencode(target.name)[:room])}{tail}"


def _umask() -> int:
    """The process umask, read without changing it where the platform allows (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every platform opens folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: numpy's message for a write the file system cut short (a full disk), given without an errno.
_SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$")


def _os_error_code(exc: BaseException) -> int | None:
    """The system error number inside a writer's non-OSError failure (safetensors reports a full
    disk as ``SafetensorError('... I/O error: No space left on device (os error 28)')``)."""
    if type(exc).__name__ != "SafetensorError":
        return None
    m = re.search(r"\(os error (\d+)\)", str(exc))
    return int(m[1]) if m else None


def _keep_owner_and_mode(tmp_path: Path, old: os.stat_result | None) -> None:
    """Give the temp file the permission bits of the file it replaces (the umask's for a new
    file), and that file's owner and group where the system allows (best effort)."""
    mode = 0o666 & ~_umask() if old is None else stat.S_IMODE(old.st_mode) & 0o777
    st = tmp_path.stat()
    if old is not None and hasattr(os, "chown"):
        # One at a time: a user may set the group (one of theirs) but not the owner.
        if st.st_gid != old.st_gid:
            with contextlib.suppress(OSError):
                os.chown(tmp_path, -1, old.st_gid)
        if st.st_uid != old.st_uid:
            with contextlib.suppress(OSError):
                os.chown(tmp_path, old.st_uid, -1)
    if st.st_mode & 0o7777 != mode:
        os.chmod(tmp_path, mode)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", *, name: str = "path") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    ``suffix`` keeps the extension some writers insist on (``np.savez`` appends ``.npz``). The
    temp file exists (empty) when the block starts, with the umask's permissions; the result
    gets those of the file it replaces, if any. ``~`` is expanded; a symbolic link is written
    through (its target is replaced, the link kept). A path that is a folder, lies under a
    file, sits in a folder that cannot be written or names a read-only file is refused
    (:class:`GPUAError` naming ``name``) before the block runs, so no work is spent on a write
    that would fail or replace a file its owner protected. A write the system refuses raises
    an :class:`OSError` naming ``path``; the old file is left as it was.
    """
    path = as_path(path, name)
    if path.is_symlink():
        # Replacing the link itself would turn it into a copy and leave the file it points to
        # (which other links may share) stale: write that file instead, as open() would.
        target = Path(os.path.realpath(path))
        if not target.parent.is_dir():
            raise GPUAError(
                f"{name} {str(path)!r} is a link to {str(target)!r}, whose folder does not exist; "
                "fix or remove the link, or choose another path."
            )
        path = target
    check_writable(path, name, "file")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    try:
        old = os.stat(path) if path.is_file() else None
    except OSError:
        old = None
    while True:
        tmp_path = _temp_name(path, suffix)
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
            break
        except FileExistsError:  # pragma: no cover - a 32-bit random clash
            continue
    os.close(fd)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:  # before the mode change, which may make it read-only
            os.fsync(fh.fileno())
        # Some writers replace the temp file with their own (safetensors writes 0o600 files):
        # give the result the mode of the file it replaces, or the one any program's new file has.
        _keep_owner_and_mode(tmp_path, old)
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        # A full disk surfaces deep inside the writer, naming the temp file or nothing; numpy's
        # tofile (np.save of a large array) says only "9600 requested and 7136 written", no errno.
        code = exc.errno if exc.errno is not None else errno.ENOSPC if _SHORT_WRITE.match(str(exc)) else None
        if code is not None and (exc.filename is None or str(exc.filename) == str(tmp_path)):
            raise OSError(code, exc.strerror or os.strerror(code), str(path)) from exc
        raise
    except Exception as exc:
        code = _os_error_code(exc)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# -- output paths checked before the work -------------------------------------------------------
def _resolve(p: str | os.PathLike) -> Path:
    return Path(os.path.abspath(Path(p).expanduser())).resolve()


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:
        return False


def _inside(p: Path, folder: Path) -> bool:
    return folder in p.parents


#: Files of an input folder that a command may read, beside its images: gpua's feature and shard
#: files (a shard set's ``shard-*`` files and ``index.json``, an extraction's parts
#: ``manifest.json``), the files that name a CoOp dataset folder's images and classes, and
#: Fashion-MNIST's idx files. A model (``.gpua``) is only ever read as a file argument, never
#: out of a folder, so the same-path test protects it: a ``--model-out`` inside the photo folder
#: may be replaced by the next run.
_INPUT_SUFFIXES = frozenset({".npz", ".npy", ".safetensors"})
_INPUT_NAMES = frozenset({"index.json", "manifest.json", "classnames.txt", "variants.txt"})
_INPUT_PREFIXES = ("shard-", "split_zhou_", "images_variant_")


def _may_be_input(p: Path) -> bool:
    """Whether a file inside an input folder may be one the command reads: an image of the
    folder (any image ending, case-insensitive, also the photo formats counted but not decoded)
    or a feature, shard or dataset-index file. Other files (a predictions CSV, a JSON
    report, notes) are never read as input, so an output may replace them. A photo saved without
    an extension is told by its content, as the folder's listing tells it."""
    from .data._loaders import _is_image_file

    name = p.name.lower()
    suffix = p.suffix.lower()
    return (_has_image_ending(p) or suffix in _INPUT_SUFFIXES
            or name in _INPUT_NAMES or name.startswith(_INPUT_PREFIXES) or "-ubyte" in name
            or (not suffix and _is_image_file(p.parent, p.name)))


#: What a file output may hold (:func:`check_output`'s ``holds``).
_HOLDS = ("report", "model", "features")
#: Endings of array files: a user's features (or gpua's), never replaced by a report or a model.
_ARRAY_SUFFIXES = (".npz", ".npy", ".safetensors")


def _held_data(p: Path) -> str | None:
    """What gpua data the existing file ``p`` holds ("model", "features", "arrays"; "model-named": a
    ``.gpua`` file gpua did not write, which no output replaces), or None for anything else.

    A model is recognised by its contents whatever its name ends in: ``fit --out`` and
    ``save`` accept any name (``cifar.model``, ``x.pt``), and a report written over one would lose it."""
    suffix = p.suffix.lower()
    if (suffix == ".gpua" and _starts_like_safetensors(p)) or _is_model_file(p) or _is_segmentation_sidecar(p):
        return "model"
    if suffix == ".gpua":  # named like a model, but not one gpua wrote: the user's, replaced by no output
        return "model-named"
    if suffix in _ARRAY_SUFFIXES:  # a user's own arrays (a dataset of images) are not features to re-extract over
        return "features" if _is_feature_file(p) else "arrays"
    return None


def _starts_like_safetensors(p: Path) -> bool:
    """Whether ``p`` is empty or opens as a safetensors file does (an 8-byte header length, then
    ``{``): a ``.gpua`` file gpua wrote, damaged further on perhaps, which a new model may replace;
    a user's own ``notes.gpua`` is not."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    return len(head) == 0 or (len(head) == 9 and head[8:9] == b"{")


def _is_segmentation_sidecar(p: Path) -> bool:
    """Whether ``p`` is the ``.seg.json`` file ``gpua fit-seg`` writes beside its model (part of the
    model: a report over it left the model unusable by ``segment``)."""
    if not p.name.lower().endswith(".seg.json"):
        return False
    import json

    from ._integrity import CHECKSUM_KEY

    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(meta, dict) and CHECKSUM_KEY in meta and meta.get("task") == "segmentation"


def _is_feature_file(p: Path) -> bool:
    """Whether ``p`` holds gpua features (a ``.npz`` or ``.safetensors`` with a feature key; read
    from its index only, not its arrays)."""
    from ._validation import FEATURE_KEYS

    try:
        if p.suffix.lower() == ".npz":
            import numpy as np

            with np.load(p, allow_pickle=False) as z:
                names = z.files
        elif p.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(p), framework="np") as f:
                names = list(f.keys())
        else:
            return False
    except Exception:  # noqa: BLE001 - damaged or not an archive: not features gpua can read
        return False
    return any(k in names for k in FEATURE_KEYS)


def _is_model_file(p: Path) -> bool:
    """Whether ``p`` is a model gpua saved (a safetensors file whose metadata holds gpua's)."""
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            return "gpua" in (f.metadata() or {})
    except Exception:  # noqa: BLE001 - not a safetensors file at all (npz, JSON, text...)
        return False


def _check_not_gpua_data(out: Path, path, name: str, kind: str, holds: str) -> None:
    """Refuse an output that would replace gpua data of another kind, or write inside a shard set."""
    from .data._loaders import _is_gpua_output

    enclosing = out.parent if kind == "file" else out
    for folder in (enclosing, *enclosing.parents):
        if folder.is_dir() and _is_gpua_output(os.fspath(folder)) and not (kind == "tree" and folder == out):
            raise GPUAError(
                f"{name} {str(path)!r} lies inside {str(folder)!r}, a folder gpua wrote and replaces whole (a shard set, an "
                f"extraction's parts): a file of another kind there would break it or stop the next extraction into it. "
                f"Choose a {name} outside it."
            )
    if kind != "file" or not out.is_file():
        return
    held = _held_data(out)
    if held != holds and (held is not None or holds == "model"):  # a model replaces a model only
        what = {"model": "a model", "features": "a feature or array file", "arrays": "an array file that holds no gpua features",
                "model-named": "named like a model but not one gpua saved", None: "not a model gpua saved"}[held]
        written = {"report": "a report", "model": "a model", "features": "features"}[holds]
        raise GPUAError(f"{name} {str(path)!r} is {what}, which this command would replace with {written}; nothing was "
                        f"written. Choose another {name}{' (models end in .gpua)' if holds == 'model' else ''}, or delete that "
                        "file first if it may go.")


#: The first columns of the predictions CSV gpua writes (:func:`gpua.report.write_predictions`, which
#: takes them from here), whatever the file's name: a file that starts with them is a report.
PREDICTIONS_COLUMNS = ("image", "prediction", "probability")
#: The first key of every JSON report gpua writes (:func:`gpua.report.mark_report`), its value
#: ``"gpua <version>"``: a JSON file that starts with it is a report gpua wrote.
REPORT_MARK_KEY = "written_by"
#: Reports of a gpua before this date carry no mark (named when one is refused).
_REPORT_MARK_SINCE = "2026-12-02"


def _written_by_gpua(head: bytes) -> bool:
    """Whether text starts as a report gpua writes: its predictions CSV's header, or a JSON object
    whose first key is :data:`REPORT_MARK_KEY` with a ``"gpua ..."`` value."""
    mark = rb'^\s*\{\s*"' + REPORT_MARK_KEY.encode() + rb'"\s*:\s*"gpua[ "]'
    return head.startswith(",".join(PREDICTIONS_COLUMNS).encode()) or re.match(mark, head) is not None


def check_report_target(out: Path, path, name: str) -> None:
    """Refuse a CSV or JSON report over an existing file that is not one: a photo (an extensionless
    ``IMG_0001`` too), any other binary file, or a text file of another kind (a script, a class file).

    Replaced: nothing there, an empty file, or one that starts as gpua's reports do (its
    predictions header, a JSON object marked :data:`REPORT_MARK_KEY`), whatever its ending. Was:
    ``--out IMG_0001`` replaced that photo with a CSV, and ``--out train.py`` that script, without
    a word; and until 2026-12-02 any file ending in .csv, .json or .tsv (a user's labels
    spreadsheet, a settings file) was taken for a report and replaced."""
    try:
        if not out.is_file() or out.stat().st_size == 0:
            return
        with open(out, "rb") as fh:
            head = fh.read(65536)
    except OSError:
        return  # what cannot be read is for the write to report
    what = None
    if b"\0" in head:
        from .data._loaders import _sniff_image

        what = "a photo" if _sniff_image(os.fspath(out)) else "a binary file, not a text report"
    elif not _written_by_gpua(head.lstrip(b"\xef\xbb\xbf")):
        ending = f"ending in {out.suffix!r}" if out.suffix else "with no ending"
        what = f"a text file {ending} that is not a report gpua wrote"
        if out.suffix.lower() == ".json" or head.lstrip(b"\xef\xbb\xbf").lstrip()[:1] in (b"{", b"["):
            what += (f" (its JSON reports start with the key {REPORT_MARK_KEY!r}; one written before {_REPORT_MARK_SINCE} "
                     "has none: delete it by hand)")
    if what is not None:
        raise GPUAError(f"{name} {str(path)!r} is {what}, which this command would replace with its report; nothing was "
                        f"written. Choose another {name} (ending in .csv or .json), or delete that file first if it may go.")


#: The text every plot gpua writes carries (:func:`plot_metadata`): a later run replaces only a file that holds it.
PLOT_MARK = "gpua plot"
#: The formats whose files can carry :data:`PLOT_MARK` -> the metadata key matplotlib writes it under
#: (a PNG text chunk; the Creator of a PDF, SVG or PostScript file). matplotlib writes no metadata
#: into the others (JPEG, TIFF, WebP, GIF, AVIF, raw, PGF).
_PLOT_MARK_KEYS = {"png": "gpua", "pdf": "Creator", "svg": "Creator", "svgz": "Creator", "eps": "Creator", "ps": "Creator"}
#: Plots larger than this are not read for the mark (then: not gpua's).
_PLOT_READ_LIMIT = 64 << 20


def plot_metadata(fmt: str) -> dict[str, str] | None:
    """The ``metadata=`` of ``Figure.savefig`` that marks a plot of format ``fmt`` as gpua's (None where it cannot)."""
    key = _PLOT_MARK_KEYS.get(fmt)
    return None if key is None else {key: PLOT_MARK}


def written_by_gpua_plot(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a plot gpua wrote: a file holding :data:`PLOT_MARK` (an .svgz's once unpacked)."""
    try:
        p = Path(path)
        if not p.is_file() or p.stat().st_size > _PLOT_READ_LIMIT:
            return False
        data = p.read_bytes()
        if data[:2] == b"\x1f\x8b":
            import gzip

            data = gzip.decompress(data)
    except (OSError, EOFError, ValueError):
        return False
    return PLOT_MARK.encode() in data


def check_plot_target(out: Path, path, name: str) -> None:
    """Refuse a plot over an existing file that is not a plot gpua wrote (a photo, a script, a
    user's own figure): was replaced by the plot without a word, whatever it held."""
    try:
        if not out.is_file() or out.stat().st_size == 0 or written_by_gpua_plot(out):
            return
    except OSError:
        return  # what cannot be read is for the write to report
    suffix = out.suffix.lower().lstrip(".")
    if suffix and suffix not in _PLOT_MARK_KEYS:  # a .jpg of gpua's own is not told from a photo
        raise GPUAError(f"{name} {str(path)!r} exists, and a .{suffix} file cannot carry gpua's mark, so a plot gpua wrote there "
                        f"is not told from a file of yours; nothing was written. Delete it first if it may go, or write a .png, "
                        ".pdf or .svg plot (marked: the next run replaces it).")
    raise GPUAError(f"{name} {str(path)!r} is a file gpua did not write, which this command would replace with its plot; nothing "
                    f"was written. Choose another {name}, or delete that file first if it may go (gpua marks its .png, .pdf, "
                    ".svg, .svgz, .eps and .ps plots since 2026-12-02: earlier ones carry no mark).")


def _has_image_ending(p: Path) -> bool:
    """Whether a file name ends like an image's (any case; also the photo formats counted but not decoded)."""
    from .data._datasets import IMAGE_EXTENSIONS
    from .data._loaders import _UNREAD_PHOTO_EXTENSIONS

    return not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS + tuple(_UNREAD_PHOTO_EXTENSIONS)


#: Inputs read as an image folder whose sub-folders are classes (``classify --images``,
#: ``extract --data``): a new sub-folder written there would be a new class on the next run.
_CLASS_FOLDER_INPUTS = frozenset({"--images", "--data", "--datasets", "images", "data", "dataset"})
#: How many directory entries the labelled-folder test looks at before giving up (then: not known).
_LABELLED_SCAN_LIMIT = 20000


def _is_labelled_folder(folder: Path) -> bool:
    """Whether ``folder`` reads as a labelled image folder: no loose images, and a sub-folder (not
    hidden, not one gpua wrote) with an image somewhere below it. Stops at the first image found
    (or after :data:`_LABELLED_SCAN_LIMIT` entries: then False, not known)."""
    from .data._loaders import _is_image_file, _subdirs

    try:
        if any(e.is_file() and _is_image_file(folder, e.name) for e in os.scandir(folder)):
            return False  # loose images: a flat (unlabelled) folder
        subs = _subdirs(folder)
    except OSError:
        return False
    seen = 0
    for sub in subs:
        for dirpath, dirnames, filenames in os.walk(folder / sub):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            if any(_is_image_file(dirpath, f) for f in filenames):
                return True
            seen += len(filenames) + len(dirnames)
            if seen > _LABELLED_SCAN_LIMIT:
                return False
    return False


def _new_class_folder(out: Path, src: Path, kind: str) -> str | None:
    """The sub-folder of input folder ``src`` that writing ``out`` would create directly inside
    it, and that the folder's loader would read as a class (not hidden); None when there is none.
    A folder output replaced whole (a shard set) directly inside ``src`` is one gpua marks as its
    own, which the loader skips."""
    rel = out.relative_to(src).parts
    if not rel or (kind in ("file", "tree") and len(rel) == 1):
        return None
    first = rel[0]
    if first.startswith(".") or (src / first).exists() or (src / first).is_symlink():
        return None
    return first


def _special_file_kind(path: Path) -> str | None:
    """``"a character device"`` (``/dev/null``), a block device, a FIFO or a socket at ``path``
    (links followed); None for a regular file, a folder or nothing."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, what in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return None


def check_writable(path: Path, name: str, kind: str) -> None:
    """Refuse an output (resolved ``path``) that cannot be written as ``kind`` says: a folder where a
    file goes or the reverse, a read-only file, a folder this process may not create files in."""
    if kind == "file" and path.is_dir():
        raise GPUAError(f"{name} {str(path)!r} is an existing folder, but a file is written there; give a file name.")
    special = _special_file_kind(path)
    if special is not None:
        # The rename would put a regular file in its place (was: as root, `--out /dev/null`
        # replaced the machine's /dev/null with a model file).
        raise GPUAError(f"{name} {str(path)!r} is {special}, not a regular file, and writing there would replace it with "
                        "one; nothing was written. Give a file name (to discard the output, write it to a temporary "
                        "folder).")
    # The rename would replace a read-only file as readily as any other: its owner's protection
    # is honoured here instead (root passes os.access, as it passes the permission itself).
    if kind == "file" and path.is_file() and not os.access(path, os.W_OK):
        raise GPUAError(f"{name} {str(path)!r} is a read-only file; make it writable (chmod u+w) if it may be replaced, or choose another path.")
    if kind != "file" and path.exists() and not path.is_dir():
        raise GPUAError(f"{name} {str(path)!r} is an existing file, but a folder is written there; give a folder name.")
    folder = path if kind != "file" else path.parent
    anc = folder
    while not anc.exists() and not anc.is_symlink():
        anc = anc.parent
    if not anc.is_dir():
        raise GPUAError(f"{name} {str(path)!r} lies under {str(anc)!r}, which is a file, not a folder; choose another path.")
    probe = _temp_name(anc / "write-probe", "")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as exc:
        why = {errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EROFS: "read-only file system"}
        raise GPUAError(
            f"{name} {str(path)!r} cannot be written: {str(anc)!r} is not writable ({why.get(exc.errno, exc.strerror)}); "
            "choose a folder you can write to."
        ) from None


def check_output(
    path: str | os.PathLike,
    name: str,
    *,
    kind: str = "file",
    inputs: Iterable[tuple[str, str | os.PathLike | None]] = (),
    distinct_from: Iterable[tuple[str, str | os.PathLike | None]] = (),
    writable: bool = True,
    holds: str = "report",
) -> Path:
    """Refuse an output path that would destroy an input or cannot be written; call before the work.

    Parameters
    ----------
    path : str or Path
        The output.
    name : str
        The argument that gave it (``"--out"``), used in the messages.
    kind : {"file", "folder", "tree"}
        ``"file"``: one file, replaced. ``"folder"``: a folder that files are written into.
        ``"tree"``: a folder replaced as a whole (a shard set, a parts folder).
    inputs : iterable of (name, path)
        What the command reads. ``None`` paths and paths that do not exist (dataset names,
        template set names) are skipped.
    distinct_from : iterable of (name, path)
        Other outputs of the same command: the output may not be any of them.
    writable : bool, default=True
        Also check that the output can be written (:func:`check_writable`). False leaves that
        check to the caller: an up-to-date output on read-only storage may need no writing.
    holds : {"report", "model", "features"}, default="report"
        What a file output holds. An existing file of gpua data (a model, a feature or array
        file: ``.gpua``, ``.npz``, ``.npy``, ``.safetensors``) is replaced only by an output
        holding the same (a CSV or JSON report never replaces one), and a model replaces
        nothing but a model (a user's ``notes.txt`` in its way is refused); no file or folder output is
        written inside a folder gpua replaces whole (a shard set, an extraction's parts) unless
        it is that folder itself (``kind="tree"``).

    Returns
    -------
    Path
        ``path``, resolved.

    Raises
    ------
    GPUAError
        When the output is an input (also through links), when a file output would replace an
        existing file inside an input folder that the command may read (an image, a feature,
        shard or dataset-index file; a CSV, JSON or model file there may be replaced), when a
        folder output is an input or (a tree) holds one, when the output would create a new
        sub-folder (a new class) directly inside a labelled ``--images`` / ``--data`` folder,
        or when the output is a folder where a file is wanted (or the reverse), lies under a
        file, or cannot be written.
    """
    from .data._loaders import _is_gpua_output

    if kind not in _KINDS:
        raise ValueError(f"kind={kind!r}; use one of {_KINDS}.")
    if holds not in _HOLDS:
        raise ValueError(f"holds={holds!r}; use one of {_HOLDS}.")
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else ""
    if kind == "file" and text.endswith(("/", os.sep)) and text.strip("/" + os.sep):
        # was: Path() drops the slash, so `--out results/` wrote a file named results
        raise GPUAError(f"{name} {text!r} ends with '/', a folder, but this command writes one file there; give a file name "
                        f"({text.rstrip('/' + os.sep)}/<name>).")
    out = _resolve(path)
    for other_name, value in distinct_from:
        if value is not None and str(value) != "" and _same(out, _resolve(value)):
            raise GPUAError(f"{name} {str(path)!r} is the same path as {other_name} {str(value)!r}; give each output its own path.")
    for in_name, value in inputs:
        if value is None or str(value) == "":
            continue
        src = Path(value).expanduser()
        if not (src.exists() or src.is_symlink()):
            continue
        src = _resolve(src)
        clash = None
        if _same(out, src):
            clash = "is the same path as"
        elif kind == "file" and src.is_dir() and _inside(out, src) and out.exists() and _may_be_input(out):
            clash = "would overwrite a file inside"
        elif kind == "tree" and _inside(src, out):
            clash = "is a folder that would be replaced with everything in it, including"
        if clash:
            raise GPUAError(
                f"{name} {str(path)!r} {clash} {in_name} {str(value)!r}; writing there would destroy the input. "
                f"Choose another {name}."
            )
        if (kind == "file" and src.is_dir() and _inside(out, src) and not out.exists() and _has_image_ending(out)
                and not _is_gpua_output(os.fspath(src))):  # a shard set is not read for images: said below, as gpua's folder
            raise GPUAError(
                f"{name} {str(path)!r} would write a file with an image's ending inside {in_name} {str(value)!r}: the next "
                f"run would read it as one of its images. Write {name} outside {in_name} (or give it an ending no image "
                "file has)."
            )
        if in_name in _CLASS_FOLDER_INPUTS and src.is_dir() and _inside(out, src):
            new = _new_class_folder(out, src, kind)
            if new is not None and _is_labelled_folder(src):
                raise GPUAError(
                    f"{name} {str(path)!r} would create the folder {new!r} inside {in_name} {str(value)!r}, whose sub-folders "
                    f"are its classes: the next run would read {new!r} as a class. Write {name} outside {in_name}, "
                    f"directly beside its class folders, or under a hidden folder ('.{new}')."
                )
    _check_not_gpua_data(out, path, name, kind, holds)
    if writable:
        check_writable(out, name, kind)
    return out
