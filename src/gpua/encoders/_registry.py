"""Encoder registry: spec strings ``"backend:name[?key=value&...]"`` -> :class:`Encoder`.

Two kinds of entries:

* a back end, registered as ``"open_clip:"`` (trailing colon): its factory gets the part after
  the colon (``"ViT-B-16/openai"``, a hub id, or a local path);
* a named encoder, registered as ``"offline:dinov2-s"``: its factory gets no name.

Factories are referenced as ``"module:attribute"`` strings so that importing
:mod:`gpua.encoders` does not import torch-side libraries (transformers, open_clip, timm,
onnxruntime); a back end's module is imported the first time one of its encoders is created.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable

from .._errors import GPUAError
from .._integrity import file_head
from ._base import Encoder

__all__ = ["create_encoder", "list_encoders", "register_encoder", "registry_entries", "parse_spec", "cache_dir", "file_fingerprint",
           "hub_snapshot_commit", "damaged_cache_error"]

Factory = Callable[..., Encoder]
_REGISTRY: dict[str, Factory | str] = {}


def register_encoder(name: str, factory: Factory | str | None = None, *, overwrite: bool = False):
    """Register a back end (``"name:"``) or a named encoder (``"backend:name"``).

    Parameters
    ----------
    name : str
        ``"mybackend:"`` for a back end whose factory is called as
        ``factory(body, device=..., cache_dir=..., **options)``, or a full name
        ``"mybackend:model"`` whose factory is called as ``factory(device=..., cache_dir=..., **options)``.
    factory : callable or "module:attribute" str, optional
        Omit it to use ``register_encoder`` as a decorator.
    overwrite : bool
        Replace an existing entry instead of raising.

    Examples
    --------
    >>> @register_encoder("toy:random")  # doctest: +SKIP
    ... def _toy(device="cpu", cache_dir=None, **options):
    ...     return MyEncoder(...)
    """
    if not isinstance(name, str) or ":" not in name or name.startswith(":"):
        raise GPUAError(f"encoder name {name!r} must look like 'backend:' or 'backend:model'.")

    def _add(f: Factory | str) -> Factory | str:
        key = name.strip().lower() if name.endswith(":") else name.strip()
        if key in _REGISTRY and not overwrite:
            raise GPUAError(f"encoder {key!r} is already registered; pass overwrite=True to replace it.")
        _REGISTRY[key] = f
        return f

    if factory is None:
        return _add
    _add(factory)
    return factory


def list_encoders() -> list[str]:
    """Known back ends (``"open_clip:"``...) and named encoders (``"offline:dinov2-s"``...), sorted."""
    return sorted(_REGISTRY)


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """Split ``"backend:body?key=value&..."`` into ``(backend, body, options)``.

    The query part is optional and is only split off when the text before ``?`` is not itself an
    existing path. Options are split on ``&`` and each on its first ``=``, without URL decoding:
    ``?checkpoint=/models/c++/vit.pth`` keeps its ``+`` and ``%`` characters (a path is passed as
    written). A key without ``=`` gets the value ``""``. Option values stay strings; back ends
    convert them.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise GPUAError(f"encoder spec {spec!r} must be a non-empty string 'backend:name'; known: {list_encoders()}.")
    spec = spec.strip()
    backend, sep, body = spec.partition(":")
    if not sep:
        raise GPUAError(
            f"encoder spec {spec!r} has no back end; write 'backend:name', e.g. 'open_clip:ViT-B-16/openai', "
            f"'hf:facebook/dinov2-small' or 'offline:dinov2-s'. Known: {list_encoders()}."
        )
    options: dict[str, str] = {}
    if "?" in body and not os.path.exists(body):
        body, _, query = body.partition("?")
        for item in query.split("&"):
            if not item:
                continue
            key, _, value = item.partition("=")
            if not key:
                raise GPUAError(f"encoder spec {spec!r} has an option {item!r} without a name; write '?key=value&key2=value2'.")
            options[key] = value
    return backend.strip().lower(), body, options


def _resolve(factory: Factory | str) -> Factory:
    if callable(factory):
        return factory
    module, _, attr = factory.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def create_encoder(spec: str | Encoder, device: str = "cpu", *, cache_dir: str | os.PathLike | None = None, **options: Any) -> Encoder:
    """Create an encoder from a spec string.

    Parameters
    ----------
    spec : str or Encoder
        ``"backend:name"``; see :func:`list_encoders`. Examples: ``"open_clip:ViT-B-16/openai"``,
        ``"open_clip:ViT-B-16/ckpt.pt"`` (a checkpoint file after the first ``/``, relative or absolute: ``"open_clip:ViT-B-16//abs/ckpt.pt"``), ``"hf:openai/clip-vit-base-patch16"``,
        ``"hf:/path/to/saved/model"``, ``"timm:vit_small_patch14_dinov2.lvd142m"``,
        ``"onnx:/path/model.onnx?input=pixel_values&output=last_hidden_state"``,
        ``"offline:dinov2-s"``. An :class:`Encoder`, or another object with ``encode_images`` (what
        a registered factory may return), is returned as is.
    device : str
        Torch device ("cpu", "cuda", "cuda:1"); ONNX models use the matching execution provider.
    cache_dir : str or path-like, optional
        Where downloads and derived model files go (default: ``$GPUA_CACHE_DIR`` or the user
        cache folder, see :func:`cache_dir`).
    **options
        Back-end options (they override ``?key=value`` options of the spec).

    Raises
    ------
    GPUAError
        For an unknown back end or name (listing the known ones), or weights that cannot be
        found offline (saying where it looked and how to pass a local path).
    """
    if isinstance(spec, Encoder):
        return spec
    if not isinstance(spec, (str, os.PathLike)) and hasattr(spec, "encode_images"):
        # an encoder already built: a registered factory may return any object with the encoder's interface
        lacks = [a for a in ("metadata", "embed_dim", "is_vlm") if not hasattr(spec, a)]
        if lacks:
            raise GPUAError(f"encoder {type(spec).__name__} has encode_images but no {', '.join(lacks)}; an encoder object "
                            "needs encode_images, metadata(), embed_dim and is_vlm (subclass gpua.encoders.Encoder).")
        return spec
    backend, body, spec_options = parse_spec(spec)
    spec_options.update(options)
    full = f"{backend}:{body}"
    if body and full in _REGISTRY:
        return _resolve(_REGISTRY[full])(device=device, cache_dir=cache_dir, **spec_options)
    if f"{backend}:" in _REGISTRY:
        if not body:
            raise GPUAError(f"encoder spec {spec!r} names no model after '{backend}:'; e.g. {_EXAMPLES.get(backend, backend + ':NAME')!r}.")
        return _resolve(_REGISTRY[f"{backend}:"])(body, device=device, cache_dir=cache_dir, spec=spec, **spec_options)
    close = difflib.get_close_matches(full, list_encoders(), n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise GPUAError(
        f"encoder {spec!r} is not known.{hint} Pass one of {list_encoders()} (back ends end in ':' "
        "and take a model name or local path, e.g. 'open_clip:ViT-B-16/openai'), or register your own "
        "with gpua.encoders.register_encoder."
    )


_EXAMPLES = {
    "open_clip": "open_clip:ViT-B-16/openai",
    "hf": "hf:openai/clip-vit-base-patch16",
    "transformers": "transformers:facebook/dinov2-small",
    "timm": "timm:vit_small_patch14_dinov2.lvd142m",
    "onnx": "onnx:/path/to/model.onnx",
}


def registry_entries(specs) -> dict[str, Factory | str]:
    """The registry entries ``specs`` resolve to here, to register on workers that lack them.

    A worker process starts with the built-in entries only; shipping these lets an encoder
    registered in the client's script (:func:`register_encoder`) be built there too.

    Parameters
    ----------
    specs : sequence of str

    Returns
    -------
    dict
        ``{registered name: factory}``, one entry per spec, in :func:`create_encoder`'s lookup order.
    """
    entries = {}
    for spec in specs:
        backend, body, _ = parse_spec(spec)
        for name in (f"{backend}:{body}", f"{backend}:"):  # create_encoder's lookup order
            if name in _REGISTRY:
                entries[name] = _REGISTRY[name]
                break
    return entries


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The folder for downloads and derived model files.

    ``override``, else ``$GPUA_CACHE_DIR``, else ``platformdirs.user_cache_dir("gpua")``.
    """
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get("GPUA_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("gpua"))


#: The field of :func:`file_fingerprint` that names the files themselves (status-change time and
#: inode), not their contents: two copies of one file differ in it, and the releases before it
#: recorded none (:func:`gpua.extract.extract_features` compares keys with and without it).
FILE_IDENTITY = "changed"


def file_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """Identity of a local weights file or folder: resolved path, size, modification time and
    status-change time and inode.

    Cheap (no hashing of gigabyte checkpoints). The path is part of it, so a file moved or copied
    elsewhere gets a new fingerprint (a needless re-extraction, never a stale cache hit).

    Size and modification time alone miss a file replaced by another of the same size and the
    same time (``touch -r``, ``rsync -a`` / ``cp -p`` of another fine-tune's weights, builds with
    ``SOURCE_DATE_EPOCH``): ``changed`` hashes each file's status-change time (which no tool can
    set back: every write, rename onto the file or ``utime`` renews it) and inode (a file
    replaced by a rename gets a new one); the image-cache keys of :mod:`gpua.extract` hold the
    status-change time for the same reason. It also changes on ``chmod`` or a hard link, and on
    a file system whose inodes are not stable (some network and FUSE mounts) on every mount: a
    needless re-extraction, never a stale hit.

    For a folder, ``bytes`` and ``mtime_ns`` are the total size and the newest modification time,
    and ``files`` hashes every file's relative name, size and modification time: one file
    replaced by another of the same size and an older time (``cp -p`` / ``rsync -a`` of another
    fine-tune's ``model.safetensors`` next to a newer ``config.json``) changes it, where the
    total and the newest time stay the same.

    Parameters
    ----------
    path : path-like
        A file or a folder.

    Returns
    -------
    dict
        ``path``, ``bytes``, ``mtime_ns`` and ``changed`` (16 hex digits), and ``files`` for a folder.
    """
    import hashlib
    import json

    p = Path(path).expanduser().resolve()
    files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
    stats = [q.stat() for q in files]
    out: dict[str, Any] = {
        "path": str(p),
        "bytes": int(sum(s.st_size for s in stats)),
        "mtime_ns": int(max((s.st_mtime_ns for s in stats), default=0)),
        # A separate key (not folded into "files"): callers that compare fingerprints across
        # machines holding copies of one file (gpua.extract's worker check) can leave it out.
        FILE_IDENTITY: hashlib.sha256(json.dumps([[int(s.st_ctime_ns), int(s.st_ino)] for s in stats]).encode()).hexdigest()[:16],
    }
    if not p.is_file():
        listing = [[q.relative_to(p).as_posix(), int(s.st_size), int(s.st_mtime_ns)] for q, s in zip(files, stats)]
        out["files"] = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]
    return out


# A hub commit as huggingface_hub writes it in refs/ and names snapshot folders by.
_COMMIT = re.compile(r"[0-9a-f]{40}")


def hub_snapshot_commit(repo_id: str, filenames: Iterable[str], *, cache_dir: str | os.PathLike | None = None,
                        revision: str | None = None) -> str | None:
    """The commit of the cached hub snapshot of ``repo_id`` at ``revision``, from the files it holds.

    huggingface_hub keeps each downloaded revision in ``models--org--name/snapshots/<commit>/``
    and the commit a branch or tag points at in ``refs/<revision>``; a download of a newer
    revision adds a snapshot and moves the ref. The commit of the snapshot a model was just
    loaded from therefore tells its weights apart from the repository's earlier or later
    weights, which the repository name and a revision such as ``"main"`` do not.

    Parameters
    ----------
    repo_id : str
        The hub id, ``"org/name"``.
    filenames : iterable of str
        Files of the repository, as the loading library names them (``"model.safetensors"``,
        ``"config.json"``...); the first one cached for ``revision`` names the snapshot. Give
        every name the library may have loaded the weights from: a snapshot holding none of
        them gives None.
    cache_dir : str or path-like, optional
        The hub cache folder the library was given (default: huggingface_hub's, ``HF_HUB_CACHE``).
    revision : str, optional
        A branch, tag or commit (default ``"main"``).

    Returns
    -------
    str or None
        The 40-hex-digit commit, or None when none of ``filenames`` is cached for ``revision``
        (or the snapshot folder is not named by a commit).
    """
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        path = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
        if isinstance(path, str):  # not None (not cached) nor _CACHED_NO_EXIST (cached as absent)
            # The path is <cache>/<repo folder>/snapshots/<commit>/<filename>, and filename may hold folders.
            snapshot = Path(path).parents[len(PurePosixPath(filename).parts) - 1]
            return snapshot.name if _COMMIT.fullmatch(snapshot.name) else None
    return None


def hub_offline() -> bool:
    """Whether Hugging Face hub access is switched off (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def error_summary(exc: BaseException, max_lines: int = 1, width: int = 300) -> str:
    """``"Type: text"`` of an exception for a message: its first ``max_lines`` non-blank lines.

    Parameters
    ----------
    exc : BaseException
    max_lines : int
        Lines of the exception's text to keep (joined with ``" / "``); a state-dict error needs
        three, its header and the first missing and unexpected keys.
    width : int
        Characters kept of each line.

    Returns
    -------
    str
    """
    lines = [ln.strip().rstrip(".") for ln in str(exc).splitlines() if ln.strip()][:max_lines]
    text = " / ".join(ln if len(ln) <= width else ln[:width] + "..." for ln in lines)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def missing_weights_error(what: str, looked: str, exc: BaseException, local_example: str) -> GPUAError:
    """The error for weights that cannot be fetched (offline, or a bad name).

    For a local file or folder that exists but cannot be loaded use :func:`bad_local_error`:
    there the offline advice would be wrong.
    """
    offline = " (HF_HUB_OFFLINE is set)" if hub_offline() else ""
    # Without the flag huggingface_hub retries an unreachable hub for half a minute before failing.
    retry = "" if hub_offline() else " Set HF_HUB_OFFLINE=1 to use the local cache at once, without network attempts."
    return GPUAError(
        f"could not load {what}: {error_summary(exc)}. "
        f"Looked in {looked}{offline}. Without internet access, download the weights elsewhere and pass "
        f"a local path, e.g. {local_example!r}; or set GPUA_CACHE_DIR / HF_HOME to a cache that has them.{retry}"
    )


def damaged_cache_error(what: str, looked: str, repo_id: str, exc: BaseException, local_example: str) -> GPUAError:
    """The error for hub weights that are in the cache but do not load (a cut-short download, a foreign file).

    The advice of :func:`missing_weights_error` (download them elsewhere) would be wrong: the
    file is there, and what helps is deleting the repository's cache folder.

    Parameters
    ----------
    what : str
        What was being loaded, naming the spec (``"transformers weights of 'hf:org/m'"``).
    looked : str
        The hub cache folder.
    repo_id : str
        The hub id, ``"org/name"`` (its cache folder is ``models--org--name``).
    exc : BaseException
        The loader's error.
    local_example : str
        A spec that loads a local copy instead.

    Returns
    -------
    GPUAError
    """
    return GPUAError(
        f"could not read the cached {what}: {error_summary(exc, max_lines=2)}. The copy in {looked} is damaged (an "
        f"interrupted download?) or not of this architecture: delete the folder models--{repo_id.replace('/', '--')} "
        f"there and download it again, or pass a local copy, e.g. {local_example!r}."
    )


def local_layout(path: str | os.PathLike) -> str | None:
    """The spec that loads the local file or folder ``path``, from what it holds, or None.

    An ``.onnx`` file (or a folder holding exactly one) is ``onnx:``; a folder with
    ``open_clip_config.json`` is ``open_clip:``; a ``config.json`` with timm's ``architecture``
    is ``timm:``, one with a ``model_type`` ``hf:``. A bare checkpoint file needs an architecture
    and gets None, as does anything unrecognised.
    """
    import json

    p = Path(path).expanduser()
    if p.is_file():
        return f"onnx:{p}" if p.suffix.lower() == ".onnx" else None
    if not p.is_dir():
        return None
    if (p / "open_clip_config.json").is_file():
        return f"open_clip:{p}"
    if (p / "config.json").is_file():
        try:
            cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cfg = None
        if isinstance(cfg, dict):
            if "architecture" in cfg and cfg.get("model_type") in (None, "timm_wrapper"):
                return f"timm:{p}"
            if "model_type" in cfg:
                return f"hf:{p}"
    graphs = sorted(p.glob("*.onnx"))
    return f"onnx:{graphs[0]}" if len(graphs) == 1 else None


#: Endings of a bare PyTorch checkpoint file (a state dict), loaded by the timm: and open_clip: back ends.
_CHECKPOINT_ENDINGS = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def _is_checkpoint_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file that reads as a PyTorch checkpoint: its ending, or torch.save's zip
    or pickle start."""
    p = Path(path).expanduser()
    if not p.is_file():
        return False
    if p.suffix.lower() in _CHECKPOINT_ENDINGS:
        return True
    head = file_head(p, 4)
    return head == b"PK\x03\x04" or head[:1] == b"\x80"


def layout_hint(path: str | os.PathLike, backend: str) -> str:
    """A sentence naming the back end that loads ``path`` when it is not ``backend``, else ``""``.

    Parameters
    ----------
    path : path-like
        A local file or folder given to the ``backend`` back end.
    backend : str
        ``"hf"``, ``"open_clip"``, ``"timm"`` or ``"onnx"``.

    Returns
    -------
    str
        E.g. ``" It holds a timm model: pass 'timm:/models/vit'."`` (with a leading space).
    """
    spec = local_layout(path)
    if spec is None and backend in ("hf", "onnx") and _is_checkpoint_file(path):
        return (f" It is a PyTorch checkpoint (weights without their architecture): pass 'timm:ARCH/{path}' or "
                f"'open_clip:ARCH/{path}' with the architecture it was saved from.")
    if spec is None or spec.partition(":")[0] == backend:
        return ""
    kind = {"onnx": "an ONNX model", "open_clip": "an open_clip model", "timm": "a timm model",
            "hf": "a transformers model"}[spec.partition(":")[0]]
    return f" It holds {kind}: pass {spec!r}."


def bad_local_error(what: str, path: str | os.PathLike, exc: BaseException, fix: str, *,
                    backend: str | None = None) -> GPUAError:
    """The error for a local file or folder that exists but does not hold what the spec needs.

    Parameters
    ----------
    what : str
        What was being loaded, naming the spec (``"the transformers config of 'hf:/m'"``).
    path : path-like
        The local file or folder.
    exc : BaseException
        The loader's error; its first meaningful lines (up to three: the header and the first
        missing / unexpected keys of a state-dict error) are kept.
    fix : str
        What the file or folder must be, or what to pass instead.
    backend : str, optional
        The back end that tried (``"hf"``...): when ``path`` holds another back end's model the
        message names the spec that loads it (:func:`layout_hint`).

    Returns
    -------
    GPUAError
    """
    hint = layout_hint(path, backend) if backend else ""
    return GPUAError(f"could not load {what} from the local {'folder' if os.path.isdir(path) else 'file'} "
                     f"{os.path.realpath(os.path.expanduser(path))!r}: {error_summary(exc, max_lines=3)}. {fix}{hint}")


for _name, _target in {
    "open_clip:": "gpua.encoders._open_clip:OpenCLIPEncoder.from_spec",
    "hf:": "gpua.encoders._hf:HFEncoder.from_spec",
    "transformers:": "gpua.encoders._hf:HFEncoder.from_spec",
    "timm:": "gpua.encoders._timm:TimmEncoder.from_spec",
    "onnx:": "gpua.encoders._onnx:OnnxEncoder.from_spec",
    "offline:dinov2-s": "gpua.encoders._offline:dinov2_s",
    "offline:efficientnet-lite0": "gpua.encoders._offline:efficientnet_lite0",
    "offline:efficientnet-lite2": "gpua.encoders._offline:efficientnet_lite2",
    "offline:semantic-lite0": "gpua.encoders._offline:semantic_lite0",
    "planted:": "gpua.segment.planted:planted_encoder",  # weight-free stand-ins of the planted world
}.items():
    register_encoder(_name, _target)
