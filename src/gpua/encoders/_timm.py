"""timm back end: ``timm:MODEL`` for any timm image backbone (vision only).

Spec bodies:

* ``vit_small_patch14_dinov2.lvd142m`` — architecture and pretrained tag (downloaded to the hub cache);
* ``vit_small_patch14_dinov2//abs/path/weights.pth`` or ``...?checkpoint=weights.pth`` — a local
  state dict, timm's or the original release's (converted by timm's checkpoint filter, as timm
  does for hub weights; classifier weights in it are ignored; any backbone weight missing is an
  error);
* ``hf-hub:timm/repo``, ``/path/to/folder`` or ``local-dir:/path`` — a timm hub layout
  (``config.json`` + weights).

The image embedding is the model's pooled pre-logits feature (``num_classes=0``): the CLS token
after the final norm for DINOv2-style ViTs, the average-pooled map for CNNs. Patches are the
final feature map; for ViTs the prefix tokens (CLS and registers, ``model.num_prefix_tokens``)
are dropped. Preprocessing follows the model's ``pretrained_cfg`` (input size, ``crop_pct``,
interpolation, mean, std).

Every ``timm.create_model`` option the encoder was built with (from the spec's ``?key=value``
part or from keyword arguments of ``create_encoder``) is recorded as ``metadata()["options"]``,
so feature caches keyed by the metadata tell differently configured models apart. Hub weights
(a tag whose ``pretrained_cfg`` has an ``hf_hub_id``, and ``hf-hub:`` specs) record the commit
of the cached snapshot they were loaded from as ``metadata()["weights"]["commit"]``: an update of
the repository changes it; local checkpoints and folders record their file fingerprints.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .._errors import GPUAError, warn_user
from .._optional import import_optional
from ._preprocess import ImagePreprocess
from ._registry import cache_dir as _cache_dir
from ._registry import (bad_local_error, damaged_cache_error, error_summary, file_fingerprint, hub_snapshot_commit,
                        layout_hint, missing_weights_error)
from ._torch import TorchEncoder, tokens_to_grid, torch_device

__all__ = ["TimmEncoder"]


def _preprocess_from_model(model) -> ImagePreprocess:
    import timm.data

    cfg = timm.data.resolve_model_data_config(model)
    _, H, W = cfg["input_size"]
    pe = getattr(model, "patch_embed", None)
    fixed = getattr(pe, "img_size", None)
    if fixed and not getattr(pe, "dynamic_img_size", False) and tuple(fixed) != (H, W):
        H, W = fixed  # created with img_size=...: the pretrained_cfg still names the original size
    mode = cfg.get("crop_mode") or "center"
    common = {"interpolation": cfg.get("interpolation", "bicubic"), "mean": cfg["mean"], "std": cfg["std"]}
    if mode == "border":  # timm: longest edge to size / crop_pct, then pad; crop_pct is ~1 for these models
        return ImagePreprocess(input_size=(H, W), resize_mode="longest", fill=round(255 * cfg["mean"][0]), **common)
    pp = ImagePreprocess.from_crop_pct((H, W), cfg.get("crop_pct"), **common)
    if mode == "squash" and pp.resize_mode == "shortest":
        return ImagePreprocess(input_size=(H, W), resize=(pp.resize, pp.resize), resize_mode="squash", **common)
    return pp


class TimmEncoder(TorchEncoder):
    """A timm backbone with its classifier removed (``num_classes=0``)."""

    backend = "timm"
    is_vlm = False

    def __init__(self, spec: str, model, *, name: str, weights: dict[str, Any], device: Any = "cpu",
                 options: dict[str, Any] | None = None):
        pp = _preprocess_from_model(model)
        with torch.inference_mode():
            embed_dim = int(model.eval()(torch.zeros(1, 3, *pp.input_size)).shape[-1])
        pe = getattr(model, "patch_embed", None)
        if pe is not None and hasattr(pe, "patch_size"):
            ps = pe.patch_size
            patch = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        else:
            info = getattr(model, "feature_info", None)
            patch = int(info[-1]["reduction"]) if info else None
        super().__init__(spec, pp, embed_dim, model, device, patch_size=patch)
        self.name = name
        self.n_prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self._weights = weights
        # create_model options other than the fixed ones: they change the numbers, not the spec
        self._options = {k: _json_safe(v) for k, v in sorted((options or {}).items()) if k not in ("num_classes", "cache_dir")}

    @classmethod
    def from_spec(cls, body: str, *, device: Any = "cpu", cache_dir: str | os.PathLike | None = None,
                  spec: str | None = None, checkpoint: str | None = None, **model_kwargs: Any) -> "TimmEncoder":
        """Options other than ``checkpoint`` go to ``timm.create_model`` (``img_size=518``,
        ``dynamic_img_size=True``...); numbers and booleans written in a spec string are parsed."""
        timm = import_optional("timm", "the timm: encoders")

        spec = spec or f"timm:{body}"
        torch_device(device)  # an unusable device is refused before minutes of loading, not after
        kw: dict[str, Any] = {k: _literal(v) for k, v in model_kwargs.items()}
        kw["num_classes"] = 0
        if cache_dir is not None:
            kw["cache_dir"] = str(_cache_dir(cache_dir) / "timm")
        if os.path.isfile(os.path.expanduser(body)):  # a state dict without its architecture: timm needs both
            hint = layout_hint(body, "timm")
            raise GPUAError(f"{spec!r} names the file {body!r} but no architecture;"
                            + (hint or f" write 'timm:ARCH/{body}' with the timm model it was saved from (see timm.list_models())."))
        if os.path.isdir(os.path.expanduser(body)):
            body = "local-dir:" + os.path.expanduser(body)
        if body.startswith(("hf-hub:", "local-dir:")):
            if checkpoint is not None:  # it would be ignored: the folder or hub model holds its own weights
                raise GPUAError(f"checkpoint={checkpoint!r} applies to 'timm:ARCH' specs, but {spec!r} names a model that "
                                "holds its own weights; leave checkpoint out (or write 'timm:ARCH?checkpoint=PATH').")
            name = body
        else:
            name, _, path = body.partition("/")
            checkpoint = checkpoint or path or None
            if not timm.is_model(name):
                import difflib

                close = difflib.get_close_matches(name, timm.list_models(), n=5)
                raise GPUAError(f"timm has no model {name!r} (in spec {spec!r}); close names: {close}. See timm.list_models().")
        if checkpoint:
            ckpt = os.path.expanduser(checkpoint)
            if not os.path.isfile(ckpt):
                raise GPUAError(f"checkpoint {checkpoint!r} of spec {spec!r} does not exist; pass a state-dict file (.pth/.safetensors).")
            model = _create(timm, name, spec, pretrained=False, **kw)
            _load_backbone_weights(model, ckpt, spec)
            if "." not in name:  # no tag named: the preprocessing is the default tag's, which may not be the file's
                _warn_if_tags_disagree(timm, name, spec, checkpoint)
            weights: dict[str, Any] = {"checkpoint": file_fingerprint(ckpt)}
        else:
            try:
                # Built with its pretrained classifier, then the head removed: with num_classes=0 timm drops
                # the head's weights and loads the rest with strict=False, so a backbone weight the file
                # lacks stays at random with an INFO log line (features part noise); with the head it
                # loads strictly, as timm.create_model(name, pretrained=True) does.
                model = _create(timm, name, spec, pretrained=True, **{k: v for k, v in kw.items() if k != "num_classes"})
                model.reset_classifier(0)
            except GPUAError:
                raise
            except Exception as exc:  # offline hub errors, missing files
                from huggingface_hub import constants

                if name.startswith("local-dir:"):  # an existing folder: what is wrong is the folder, not the network
                    raise bad_local_error(
                        f"the timm model of {spec!r}", name[len("local-dir:"):], exc,
                        "A timm model folder holds config.json (with 'architecture') and model.safetensors or "
                        "pytorch_model.bin, as timm's save_for_hf writes; for a bare state dict pass "
                        "'timm:ARCH/PATH' instead (PATH the weights file, relative or absolute: 'timm:ARCH//abs/w.pth').",
                        backend="timm",
                    ) from None
                looked, local = kw.get("cache_dir") or constants.HF_HUB_CACHE, f"timm:{name.split(':')[-1]}/PATH (PATH the weights file, relative or absolute)"
                repo = _hub_repo(timm, name)
                if repo is not None and not isinstance(exc, OSError):  # cached (absent files raise OSError) but not loadable
                    raise damaged_cache_error(f"timm weights for {spec!r}", looked, repo, exc, local) from None
                raise missing_weights_error(f"timm weights for {spec!r}", looked, exc, local) from None
            cfg = getattr(model, "pretrained_cfg", {}) or {}
            if name.startswith("local-dir:"):
                weights = {"folder": file_fingerprint(name[len("local-dir:"):])}
            else:
                weights = {k: cfg.get(k) for k in ("architecture", "tag", "hf_hub_id", "url") if cfg.get(k)}
                if cfg.get("hf_hub_id"):  # the repository's name stays when it is updated: its snapshot commit does not
                    weights["commit"] = _hub_commit(cfg, kw.get("cache_dir"))
        return cls(spec, model, name=name, weights=weights, device=device, options=kw)

    def _embed_t(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _patches_t(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_features(x)
        if feats.ndim == 3:  # ViT tokens (B, prefix + h*w, d)
            pe = self.model.patch_embed
            grid = tuple(pe.dynamic_feat_size(x.shape[-2:])) if hasattr(pe, "dynamic_feat_size") else tuple(pe.grid_size)
            return tokens_to_grid(feats, self.n_prefix, grid)
        if feats.ndim == 4:
            fmt = str(getattr(self.model, "output_fmt", "NCHW"))
            return feats if fmt == "NHWC" else feats.permute(0, 2, 3, 1)
        raise GPUAError(f"timm model {self.name!r} returned features of shape {tuple(feats.shape)}; no patch grid to return.")

    def _metadata(self) -> dict[str, Any]:
        import timm

        meta = super()._metadata()
        meta["versions"]["timm"] = timm.__version__
        meta.update({"model": self.name, "weights": self._weights, "prefix_tokens": self.n_prefix})
        if self._options:  # absent without options: the metadata (and cache keys) of plain specs stay as they were
            meta["options"] = self._options
        return meta


def _hub_repo(timm, name: str) -> str | None:
    """The hub repository timm loads the weights of ``name`` (a tag or ``hf-hub:`` name) from, or None (a URL)."""
    from timm.models._hub import hf_split

    if name.startswith("hf-hub:"):
        return hf_split(name[len("hf-hub:"):])[0]
    cfg = timm.models.get_pretrained_cfg(name)
    return hf_split(cfg.hf_hub_id)[0] if cfg is not None and cfg.hf_hub_id else None


def _hub_commit(pretrained_cfg: dict[str, Any], hub_cache: str | None) -> str | None:
    """The commit of the cached hub snapshot timm loaded the weights of ``pretrained_cfg`` from, or None.

    timm loads hub weights (``load_state_dict_from_hf``) from ``pretrained_cfg["hf_hub_filename"]``,
    by default ``pytorch_model.bin``, preferring its safetensors alternative (``model.safetensors``);
    the ``hf_hub_id`` may name a revision after an ``@``.

    Parameters
    ----------
    pretrained_cfg : dict
        The model's ``pretrained_cfg``, with ``hf_hub_id``: a pretrained tag's or an ``hf-hub:`` spec's.
    hub_cache : str, optional
        The ``cache_dir`` given to ``timm.create_model`` (None: huggingface_hub's cache).

    Returns
    -------
    str or None
    """
    from timm.models._hub import HF_WEIGHTS_NAME, _get_safe_alternatives, hf_split

    repo, revision = hf_split(pretrained_cfg["hf_hub_id"])
    filename = pretrained_cfg.get("hf_hub_filename") or HF_WEIGHTS_NAME
    return hub_snapshot_commit(repo, [*_get_safe_alternatives(filename), filename], cache_dir=hub_cache, revision=revision)


def _warn_if_tags_disagree(timm, arch: str, spec: str, checkpoint: str) -> None:
    """Warn when the pretrained tags of ``arch`` preprocess differently (a checkpoint file gets the default tag's).

    ``timm.create_model(arch)`` takes its ``pretrained_cfg`` (mean, std, crop) from the
    architecture's default tag; ``vit_base_patch16_224``'s tags use mean 0.5, CLIP's and
    ImageNet's mean, so a checkpoint of another tag would be fed the wrong normalisation. Naming
    the tag (``timm:ARCH.TAG/PATH``) picks its preprocessing.
    """
    from timm.models import get_pretrained_cfg

    keys = ("mean", "std", "crop_pct", "interpolation", "crop_mode")
    variants: dict[tuple, list[str]] = {}
    for full in timm.list_pretrained(f"{arch}.*"):
        cfg = get_pretrained_cfg(full)
        if cfg is not None:
            variants.setdefault(tuple(tuple(v) if isinstance(v, (list, tuple)) else v
                                      for v in (getattr(cfg, k, None) for k in keys)), []).append(full.partition(".")[2])
    if len(variants) > 1:
        shown = "; ".join(f"{', '.join(tags[:3])}{', ...' if len(tags) > 3 else ''}: mean {v[0]}, std {v[1]}, crop_pct {v[2]}"
                          for v, tags in variants.items())
        warn_user(f"{spec!r}: the pretrained tags of {arch} preprocess differently ({shown}); the checkpoint file gets "
                  f"the default tag's. Name the tag its weights were trained as, 'timm:{arch}.TAG/{checkpoint}', to "
                  "use that tag's preprocessing (metadata()['preprocess'] shows what is used).")


def _json_safe(v: Any) -> Any:
    """A ``timm.create_model`` option value as JSON, for the metadata.

    Numbers, strings, booleans and None stay as they are, sequences become lists, mappings get
    string keys, a class or function (``act_layer=nn.GELU``) is named by its qualified name and
    anything else by its ``repr``.
    """
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
    name = getattr(v, "__qualname__", None)
    return f"{getattr(v, '__module__', None)}.{name}" if name else repr(v)


def _literal(v: Any) -> Any:
    """'518' -> 518, '0.5' -> 0.5, 'true' -> True; anything else unchanged (spec options are strings)."""
    if not isinstance(v, str):
        return v
    low = v.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def _create(timm, name: str, spec: str, **kw: Any):
    try:
        return timm.create_model(name, **kw)
    except TypeError as exc:  # an option the architecture does not take
        raise GPUAError(f"timm model of {spec!r} rejected an option: {exc}; check the spec's ?key=value options.") from None


def _timm_filter(model, sd: dict[str, Any]) -> dict[str, Any]:
    """``sd`` through the ``checkpoint_filter_fn`` of the model's timm module, as timm loads weights.

    The filter converts the released checkpoints of the original code bases to timm's layout
    (DINOv2's ``mask_token`` / ``register_tokens`` / class-token position, OpenAI CLIP's
    ``visual.*``, SwiGLU ``w12``/``w3``) and resamples position embeddings to the model's grid;
    a state dict saved from timm passes through it unchanged, as timm's own hub weights do.
    Without a filter, or when it fails, ``sd`` is returned as is (the key check names the misfit).
    """
    import sys

    filt = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filt is None:
        return sd
    try:
        out = filt(dict(sd), model)
    except Exception:  # not a layout this filter knows: the strict key check reports what does not fit
        return sd
    return out if isinstance(out, dict) and out else sd


def _load_backbone_weights(model, path: str, spec: str) -> None:
    """Load a state dict, ignoring classifier weights but refusing any missing backbone weight.

    It goes through timm's ``checkpoint_filter_fn`` first (:func:`_timm_filter`), so the original
    releases of e.g. DINOv2 load as they do with ``timm.create_model(..., pretrained=True)``.
    """
    from timm.models import load_state_dict

    try:
        sd = load_state_dict(path)
    except Exception as exc:  # not a checkpoint at all: a config, an archive of something else, a pickled module
        raise GPUAError(
            f"checkpoint {path!r} of spec {spec!r} could not be read as a state dict ({error_summary(exc)}); "
            "pass a file of parameter tensors (.pth/.pt from torch.save(model.state_dict()), or .safetensors)."
        ) from None
    odd = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if odd:  # e.g. a training checkpoint of epochs and optimizer states without a 'state_dict'/'model' entry
        raise GPUAError(
            f"checkpoint {path!r} of spec {spec!r} is not a state dict: entries {odd[:5]} are not tensors; "
            "pass a file of parameter tensors (.pth/.pt from torch.save(model.state_dict()), or .safetensors)."
        )
    sd = _timm_filter(model, sd)
    heads = model.pretrained_cfg.get("classifier") or "head"
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    sd = {k: v for k, v in sd.items() if not any(k == h or k.startswith(h + ".") for h in heads)}
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even when not strict
        raise GPUAError(
            f"checkpoint {path!r} does not fit the model of {spec!r} ({error_summary(exc, max_lines=3)}); "
            "pass the state dict of this exact architecture, with the same size options."
        ) from None
    if missing or unexpected:
        raise GPUAError(
            f"checkpoint {path!r} does not fit the model of {spec!r}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}; pass the state dict of this exact architecture."
        )
