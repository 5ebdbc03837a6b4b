"""Hugging Face transformers back end: ``hf:HUB_ID`` or ``hf:/local/folder`` (alias ``transformers:``).

Supported model types (``config.model_type``):

==========================  =======  ==================================================  ==============
model type                  VLM      image embedding                                     prefix tokens
==========================  =======  ==================================================  ==============
``clip``                    yes      ``visual_projection(post_layernorm(CLS))``          1 (CLS)
``siglip``                  yes      attention-pooling head output                       0
``dinov2``                  no       final-LayerNorm CLS token                            1
``dinov2_with_registers``   no       final-LayerNorm CLS token                            1 + registers
``dinov3_vit``              no       final-LayerNorm CLS token                            1 + registers
==========================  =======  ==================================================  ==============

Preprocessing is read from the model's ``preprocessor_config.json`` (resize, crop, resample,
rescale factor, mean, std), a bare ``"size": 224`` read as the processor class reads it (the
shortest edge for CLIP and DINOv2; ``"do_resize": false`` is refused, as every image must reach
the network at one size); a folder without one falls back to the family's defaults at the model's
``image_size`` (CLIP mean/std for CLIP, 0.5 for SigLIP, ImageNet for DINO; SigLIP and DINOv3
squash to the square input, CLIP and DINOv2 crop the centre), with a warning. The centre crop
starts where the processors start it, ``(h - H) // 2``: torchvision's rounding (open_clip's and
timm's) is one pixel off that when the margin ``h - H`` is odd.

Options (``?key=value`` in the spec, or keyword arguments of ``create_encoder``): ``revision``
(a hub revision) and ``dense``, how ``encode_patches`` of a vision-language model puts patches
in the joint image-text space:

* CLIP: :func:`gpua.segment.dense_clip.dense_clip_features` with ``dense`` = ``"maskclip"``
  (the default: the last block's value path, then ``post_layernorm`` and
  ``visual_projection``, the standard training-free dense CLIP; the raw last-block tokens
  segment poorly), ``"sclip"`` (correlative self-attention in the last block) or ``"none"``
  (the unmodified last block's tokens through the same head);
* SigLIP: only ``"none"``, also its default: each final token through the attention-pooling
  head on its own (:func:`_siglip_head_per_token`). MaskCLIP/SCLIP surgery is defined for a
  class-token CLIP, so ``"maskclip"`` or ``"sclip"`` is an error;
* DINO models are vision-only and take only ``"none"`` (their normed patch tokens).

``encode_images`` is unaffected by ``dense``. For CLIP and SigLIP the method is recorded as
``metadata()["dense"]``, so feature caches keyed by the metadata tell the methods apart.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Any

import torch

from .._errors import GPUAError, warn_user
from .._optional import import_optional
from ._preprocess import CLIP_MEAN, CLIP_STD, HALF, IMAGENET_MEAN, IMAGENET_STD, PIL_RESAMPLE_NAMES, ImagePreprocess, _triple
from ._registry import cache_dir as _cache_dir
from ._registry import (bad_local_error, damaged_cache_error, file_fingerprint, hub_offline,
                        hub_snapshot_commit, layout_hint, missing_weights_error)
from ._torch import TorchEncoder, quiet_transformers_loading, resolve_dense, tokens_to_grid, torch_device, warn_truncated

__all__ = ["HFEncoder", "SUPPORTED_MODEL_TYPES"]

# model_type -> (is_vlm, default mean, default std); the defaults serve folders without a processor file
SUPPORTED_MODEL_TYPES: dict[str, tuple[bool, tuple, tuple]] = {
    "clip": (True, CLIP_MEAN, CLIP_STD),
    "siglip": (True, HALF, HALF),
    "dinov2": (False, IMAGENET_MEAN, IMAGENET_STD),
    "dinov2_with_registers": (False, IMAGENET_MEAN, IMAGENET_STD),
    "dinov3_vit": (False, IMAGENET_MEAN, IMAGENET_STD),
}

# model_type -> (resize mode, interpolation) of the family's image processor, for folders without a
# processor file: SigLIP's and DINOv3's processors resize to the square input (no crop), SigLIP
# bicubic, DINOv3 bilinear; CLIP and DINOv2 resize the shortest edge and crop the centre.
_FALLBACK_RESIZE = {"siglip": ("squash", "bicubic"), "dinov3_vit": ("squash", "bilinear")}

# Fewer tokens than this is no text vocabulary: transformers builds a CLIP tokenizer of only its
# special tokens (2) from a folder without tokenizer files, and every prompt then maps to UNK.
_MIN_VOCAB = 16


def _pooled(out) -> torch.Tensor:
    """``get_image_features`` returns a tensor in transformers 4 and an output object in 5."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _hw(v: Any) -> tuple[int, int] | None:
    if v is None:
        return None
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, dict):
        if "height" in v and "width" in v:
            return (int(v["height"]), int(v["width"]))
        if "shortest_edge" in v:
            return (int(v["shortest_edge"]),) * 2
    return None


def _normalised_sizes(d: dict[str, Any], name: str, kw: dict[str, Any]) -> dict[str, Any]:
    """``d`` with ``size`` / ``crop_size`` as the model's image-processor class reads them.

    A bare number means different things to different classes: CLIP's and DINOv2's processors
    (``CLIPImageProcessor``, ``BitImageProcessor``) read ``"size": 224`` (the format of the
    ``openai/clip-vit-*`` repositories) as the shortest edge, then centre-crop, where a
    ``height``/``width`` reading would squash the photo to a square. The processor itself is
    asked; when it cannot be built, ``d`` is returned unchanged.

    Parameters
    ----------
    d : dict
        The image-processor configuration as stored.
    name : str
        Local folder or hub id.
    kw : dict
        ``from_pretrained`` keyword arguments (cache folder, revision, offline flag).

    Returns
    -------
    dict
    """
    if not any(isinstance(d.get(k), (int, float, list, tuple)) for k in ("size", "crop_size")):
        return d  # already (height, width) / shortest_edge dicts: nothing to interpret
    # transformers' image processors need Pillow; without it the except below would keep a bare
    # "size": 224, squashing photos instead of resizing the shortest edge and cropping
    import_optional("PIL.Image", "reading an hf: checkpoint's image sizes")
    try:
        from transformers import AutoImageProcessor

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built = AutoImageProcessor.from_pretrained(name, **kw).to_dict()
    except Exception:  # a processor class this transformers lacks: keep the stored values
        return d
    out = dict(d)
    for key in ("size", "crop_size", "do_center_crop"):
        if built.get(key) is not None:
            out[key] = built[key]
    return out


def preprocess_from_processor_dict(d: dict[str, Any], fallback: ImagePreprocess, *, where: str = "the image-processor "
                                   "configuration (preprocessor_config.json)") -> ImagePreprocess:
    """An :class:`ImagePreprocess` equivalent to a Hugging Face image-processor configuration.

    Parameters
    ----------
    d : dict
        The configuration, with sizes as :func:`_normalised_sizes` gives them.
    fallback : ImagePreprocess
        Serves the input size, mean and std the configuration lacks.
    where : str
        The file (and model) the configuration comes from, for the messages.

    Returns
    -------
    ImagePreprocess
        ``do_rescale`` / ``rescale_factor`` (pixels times ``r`` before the normalisation, 1/255 by
        default) are folded into the mean and std, which :class:`ImagePreprocess` applies to
        pixels scaled to [0, 1]: ``(p * r - m) / s == (p / 255 - m / (255 r)) / (s / (255 r))``.
        A centre crop starts where the processors' ``center_crop`` starts it,
        ``(h - H) // 2`` (``crop_rounding="floor"``), not at torchvision's rounding.

    Raises
    ------
    GPUAError
        For ``"do_resize": false`` (the processor keeps each image's own size; every image must
        reach the network at one size here), or a size this function cannot read.
    """
    size = d.get("size")
    crop = _hw(d.get("crop_size")) if d.get("do_center_crop", "crop_size" in d) else None
    resample = d.get("resample", 3)
    interp = PIL_RESAMPLE_NAMES.get(resample, str(resample)) if isinstance(resample, int) else str(resample)
    if d.get("do_normalize", True):
        mean, std = d.get("image_mean", fallback.mean), d.get("image_std", fallback.std)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    try:
        factor = float(d.get("rescale_factor", 1 / 255)) if d.get("do_rescale", True) else 1.0
    except (TypeError, ValueError):
        factor = float("nan")
    if not factor > 0:
        raise GPUAError(f"{where} has rescale_factor={d.get('rescale_factor')!r}; it must be a positive number "
                        "(0.00392156862745098 = 1/255 for pixels in [0, 1]).")
    if abs(factor * 255 - 1) > 1e-9:  # was: ignored, pixels in [0, 1] fed to a model trained on 0-255 or [0, 2] ones
        k = 255 * factor
        mean, std = tuple(m / k for m in _triple(mean, "image_mean")), tuple(v / k for v in _triple(std, "image_std"))
    if not d.get("do_resize", True):
        # was: squashed to the crop size, while the processor keeps each image's size (and crops)
        raise GPUAError(
            f"{where} has \"do_resize\": false: the model's processor feeds each image at its own size (cropped to "
            f"crop_size when do_center_crop is set), but gpua feeds every image at one size. Set \"do_resize\": true "
            "there with the \"size\" the model was trained at (e.g. {\"shortest_edge\": 224} and crop_size 224).")
    if size is None:
        return ImagePreprocess(input_size=crop or fallback.input_size, resize=crop or fallback.input_size,
                               resize_mode="squash", interpolation=interp, mean=mean, std=std)
    if isinstance(size, dict) and "shortest_edge" in size:
        s = int(size["shortest_edge"])
        # Without a crop the outputs would differ in shape; crop the centre square, as CLIP does.
        return ImagePreprocess(input_size=crop or (s, s), resize=s, resize_mode="shortest", interpolation=interp, mean=mean,
                               std=std, crop_rounding="floor")
    hw = _hw(size)
    if hw is None:
        raise GPUAError(f"the image-processor size {size!r} is not supported; pass an onnx/timm model or a processor with height/width.")
    return ImagePreprocess(input_size=crop or hw, resize=hw, resize_mode="squash", interpolation=interp, mean=mean, std=std,
                           crop_rounding=_hf_crop(crop, hw))


def _hf_crop(crop: tuple[int, int] | None, resized: tuple[int, int]) -> str:
    """The ``crop_rounding`` of a squash to ``resized`` then a crop to ``crop``: ``"floor"`` (Hugging
    Face's ``center_crop``) when there is a crop; ``"round"``, the default, when nothing is cropped,
    so that the metadata (and feature-cache keys) of models such as SigLIP, whose features do not
    depend on it, stay as they were."""
    return "floor" if crop is not None and tuple(crop) != tuple(resized) else "round"


class HFEncoder(TorchEncoder):
    """A transformers vision(-language) model (see the module docstring for the table).

    ``encode_images`` is the model's own pooled embedding. For CLIP, ``encode_patches`` is
    :func:`gpua.segment.dense_clip.dense_clip_features` with method ``dense`` (default
    ``"maskclip"``); for SigLIP it is the attention-pooling head applied to each patch token
    (``dense="none"``, its default and only method); for DINO the normed patch tokens.

    Attributes
    ----------
    dense : str
        The dense method ``encode_patches`` uses: ``"maskclip"``, ``"sclip"`` or ``"none"``.
    """

    backend = "hf"

    def __init__(self, spec: str, model, config, preprocess: ImagePreprocess, *, name: str, tokenizer=None,
                 weights: dict[str, Any], device: Any = "cpu", dense: str | None = None):
        self.model_type = config.model_type
        self.is_vlm = SUPPORTED_MODEL_TYPES[self.model_type][0]
        vcfg = getattr(config, "vision_config", config)
        patch = vcfg.patch_size
        patch = int(patch[0] if isinstance(patch, (list, tuple)) else patch)
        if self.model_type == "clip":
            embed_dim = config.projection_dim
        elif self.model_type == "siglip":
            embed_dim = vcfg.hidden_size
        else:
            embed_dim = config.hidden_size
        super().__init__(spec, preprocess, embed_dim, model, device, patch_size=patch)
        self.n_prefix = {"clip": 1, "siglip": 0}.get(self.model_type, 1 + int(getattr(config, "num_register_tokens", 0) or 0))
        self.name = name
        self.tokenizer = tokenizer
        self._weights = weights
        self._text_max_len = int(getattr(getattr(config, "text_config", None), "max_position_embeddings", 77) or 77)
        self.dense = resolve_dense(dense, spec=spec, unsupported=_DENSE_UNSUPPORTED.get(self.model_type))

    @classmethod
    def from_spec(cls, body: str, *, device: Any = "cpu", cache_dir: str | os.PathLike | None = None,
                  spec: str | None = None, revision: str | None = None, dense: str | None = None,
                  **options: Any) -> "HFEncoder":
        transformers = import_optional("transformers", "the hf: encoders")
        AutoConfig, AutoModel = transformers.AutoConfig, transformers.AutoModel

        if options:
            raise GPUAError(f"hf encoder got unknown option(s) {sorted(options)}; known: revision, dense.")
        spec = spec or f"hf:{body}"
        # A bad value fails before any loading; whether the model type allows it is checked in
        # __init__, once the config is known.
        resolve_dense(dense, spec=spec, unsupported=None)
        torch_device(device)  # an unusable device is refused before minutes of loading, not after
        local = os.path.isdir(os.path.expanduser(body))
        name = os.path.expanduser(body) if local else body
        hub_cache = None if cache_dir is None else str(_cache_dir(cache_dir) / "hf")
        kw: dict[str, Any] = {"cache_dir": hub_cache, "revision": revision}
        if hub_offline():
            kw["local_files_only"] = True
        if os.path.isfile(os.path.expanduser(body)):
            raise GPUAError(f"{spec!r} names the file {body!r}; the hf back end takes a folder (save_pretrained output: "
                            f"config.json next to the weights) or a hub id 'org/name'.{layout_hint(body, 'hf')}")
        if local and revision is not None:  # from_pretrained ignores it for a folder: the folder's files are used
            raise GPUAError(f"revision={revision!r} applies to hub ids, but {spec!r} names the local folder {name!r}, whose "
                            "files are used as they are; leave revision out, or save that revision into its own folder.")
        if not local and (body.startswith(("/", ".", "~")) or body.count("/") > 1):
            raise GPUAError(f"hf model folder {body!r} does not exist; pass an existing folder (save_pretrained output) or a hub id 'org/name'.")
        try:
            config = AutoConfig.from_pretrained(name, **kw)
        except (OSError, ValueError) as exc:
            from huggingface_hub import constants

            if local:
                raise bad_local_error(f"the transformers config of {spec!r}", name, exc,
                                      "The folder must hold a transformers model saved with save_pretrained: config.json "
                                      "(with its 'model_type') and model.safetensors.", backend="hf") from None
            raise missing_weights_error(f"the transformers config of {spec!r}", hub_cache or constants.HF_HUB_CACHE, exc,
                                        "hf:/path/to/folder/with/config.json") from None
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            tower = re.fullmatch(r"(clip|siglip)_(vision|text)_model", config.model_type or "")
            if tower:  # a diffusion pipeline's image_encoder/ or text_encoder/: no other back end reads it either
                raise GPUAError(
                    f"{spec!r} is a {config.model_type!r}: the {tower.group(2)} tower of a {tower.group(1)!r} model alone. The hf "
                    f"back end reads the whole model (both towers, model_type {tower.group(1)!r}), whose text tower gives the "
                    "class prototypes: pass the folder (or hub id) of the full model."
                )
            raise GPUAError(
                f"{spec!r} is a {config.model_type!r} model; the hf back end supports {sorted(SUPPORTED_MODEL_TYPES)}. "
                "Use the timm:, open_clip: or onnx: back end for other models." + (layout_hint(name, "hf") if local else "")
            )
        try:
            # Missing and mismatched weights are refused below, by gpua's own message: transformers'
            # report is hidden, and with ignore_mismatched_sizes its RuntimeError (which points at that
            # report) gives way to the loading info's list of mismatched weights.
            with quiet_transformers_loading(logs=True):
                model, loading = AutoModel.from_pretrained(name, dtype=torch.float32, output_loading_info=True,
                                                           ignore_mismatched_sizes=True, **kw)
        except GPUAError:
            raise
        except Exception as exc:  # OSError: absent; SafetensorError, UnpicklingError...: a damaged or foreign file
            from huggingface_hub import constants

            if local:
                raise bad_local_error(f"the transformers weights of {spec!r}", name, exc,
                                      "Save the model there with model.save_pretrained(folder) (model.safetensors "
                                      "or pytorch_model.bin next to config.json); a damaged file (a transfer cut short) "
                                      "must be copied there again.", backend="hf") from None
            if not isinstance(exc, OSError):  # the file is cached (absent ones raise OSError) but does not load
                raise damaged_cache_error(f"transformers weights of {spec!r}", hub_cache or constants.HF_HUB_CACHE, body, exc,
                                          "hf:/path/to/folder") from None
            raise missing_weights_error(f"the transformers weights of {spec!r}", hub_cache or constants.HF_HUB_CACHE, exc,
                                        "hf:/path/to/folder/with/model.safetensors") from None
        mismatched = sorted(loading.get("mismatched_keys") or (), key=lambda m: str(m[0]))
        if mismatched:  # transformers re-initialised them at random: the features would be part noise
            shown = ", ".join(f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in mismatched[:3]) + (", ..." if len(mismatched) > 3 else "")
            raise GPUAError(f"{spec!r}: {len(mismatched)} weight(s) of its checkpoint have another shape than config.json "
                            f"makes them (checkpoint vs model: {shown}); the weights are another size of this architecture. "
                            "Save the config.json that came with these weights next to them (model.save_pretrained).")
        missing = sorted(loading.get("missing_keys") or ())
        if missing:  # transformers fills them at random and only prints a report: the features would be part noise
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise GPUAError(f"{spec!r}: {len(missing)} weight(s) of the {config.model_type} model are not in its checkpoint "
                            f"({shown}); transformers would initialise them at random, and features that use them would be "
                            "noise. Save the whole model there (model.save_pretrained) or pass the checkpoint this "
                            "architecture was trained as.")
        is_vlm, mean, std = SUPPORTED_MODEL_TYPES[config.model_type]
        vcfg = getattr(config, "vision_config", config)
        s = vcfg.image_size if isinstance(vcfg.image_size, int) else vcfg.image_size[0]
        mode, interp = _FALLBACK_RESIZE.get(config.model_type, ("shortest", "bicubic"))
        # Crops (CLIP's, DINOv2's) start where the family's processor starts them: (h - H) // 2.
        fallback = ImagePreprocess(input_size=s, resize=s if mode == "shortest" else (s, s), resize_mode=mode,
                                   interpolation=interp, mean=mean, std=std, crop_rounding="floor" if mode == "shortest" else "round")
        try:
            from transformers.image_processing_base import ImageProcessingMixin

            pdict, _ = ImageProcessingMixin.get_image_processor_dict(name, **kw)
            pp = preprocess_from_processor_dict(_normalised_sizes(pdict, name, kw), fallback,
                                                where=f"the preprocessor_config.json of {spec!r}")
        except OSError as exc:
            proc_file = os.path.join(name, "preprocessor_config.json")
            if local and os.path.isfile(proc_file):  # there but unreadable: its values must not give way to defaults
                raise bad_local_error(f"the image-processor file of {spec!r}", proc_file, exc,
                                      "Fix the JSON, or save the model's processor there again: AutoImageProcessor"
                                      ".from_pretrained(<the model's hub id>).save_pretrained(<folder>).") from None
            warn_user(f"{spec!r} has no preprocessor_config.json; using the {config.model_type} defaults {fallback.to_dict()}.")
            pp = fallback
        if config.model_type in ("clip", "siglip") and tuple(pp.input_size) != (s, s):
            # their position embeddings are fixed: transformers refuses any other size at the first batch
            raise GPUAError(
                f"{spec!r}: its preprocessing makes {pp.input_size[0]}x{pp.input_size[1]} images (preprocessor_config.json "
                f"size/crop_size), but the {config.model_type} vision tower takes {s}x{s} (config.json image_size) and "
                f"cannot resize its position embeddings. Make them agree: save the processor this model was released "
                f"with in the folder, or set its crop_size (and size) to {s}."
            )
        tokenizer = _load_tokenizer(name, spec, local, kw) if is_vlm else None
        if tokenizer is not None:
            _check_tokenizer_fits(tokenizer, config, spec, name if local else None)
        if local:
            weights = {"folder": file_fingerprint(name)}
        else:  # the snapshot's commit: a repository updated in the cache must change feature-cache keys
            weights = {"repo": body, "revision": revision, "commit": _hub_commit(body, config, kw)}
        return cls(spec, model, config, pp, name=name, tokenizer=tokenizer, weights=weights, device=device, dense=dense)

    # -- images --------------------------------------------------------------------------------
    def _embed_t(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_vlm:
            return _pooled(self.model.get_image_features(pixel_values=x))
        return self.model(pixel_values=x).pooler_output

    def _patches_t(self, x: torch.Tensor) -> torch.Tensor:
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        if self.model_type == "clip":
            from ..segment.dense_clip import dense_clip_features

            return dense_clip_features(self.model, x, method=self.dense)  # (B, h, w, d) already
        if self.model_type == "siglip":  # dense is "none" here (the only method SigLIP allows)
            vm = self.model.vision_model
            tokens = vm(pixel_values=x).last_hidden_state  # post-LayerNorm, no prefix tokens
            if getattr(vm, "head", None) is not None:
                tokens = _siglip_head_per_token(vm.head, tokens)
            return tokens_to_grid(tokens, 0, grid)
        return tokens_to_grid(self.model(pixel_values=x).last_hidden_state, self.n_prefix, grid)

    # -- text ----------------------------------------------------------------------------------
    def _text_t(self, texts: list[str]) -> torch.Tensor:
        # SigLIP was trained on max-length padded text; CLIP pools the EOS token, so padding is inert.
        padding = "max_length" if self.model_type == "siglip" else True
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=False, verbose=False)["input_ids"]]
        warn_truncated(self.spec, texts, [n > self._text_max_len for n in lengths], self._text_max_len)
        tok = self.tokenizer(texts, padding=padding, truncation=True, max_length=self._text_max_len, return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        if self.model_type == "siglip":
            tok.pop("attention_mask", None)  # SigLIP's reference text tower attends over the padding
        return _pooled(self.model.get_text_features(**tok))

    def _metadata(self) -> dict[str, Any]:
        import transformers

        meta = super()._metadata()
        meta["versions"]["transformers"] = transformers.__version__
        meta.update({"model": self.name, "model_type": self.model_type, "class": type(self.model).__name__,
                     "weights": self._weights, "prefix_tokens": self.n_prefix})
        if self.is_vlm:  # DINO metadata (and its feature-cache keys) stay as they were
            meta["dense"] = self.dense
        return meta


def _hub_commit(repo: str, config, kw: dict[str, Any]) -> str | None:
    """The commit of the cached hub snapshot ``repo`` was loaded from, or None.

    transformers 4 kept it as ``config._commit_hash``; transformers 5 no longer does, and the
    requested revision (``None``, ``"main"``) names no fixed weights. The snapshot folder of the
    cached ``config.json`` for that revision names the commit (:func:`hub_snapshot_commit`).

    Parameters
    ----------
    repo : str
        The hub id.
    config : PretrainedConfig
        The loaded configuration.
    kw : dict
        ``from_pretrained`` keyword arguments (cache folder, revision).

    Returns
    -------
    str or None
    """
    commit = getattr(config, "_commit_hash", None)
    if commit:
        return str(commit)
    return hub_snapshot_commit(repo, ["config.json"], cache_dir=kw.get("cache_dir"), revision=kw.get("revision"))


def _load_tokenizer(name: str, spec: str, local: bool, kw: dict[str, Any]):
    """The text tokenizer of a vision-language model, refusing one without a vocabulary.

    Parameters
    ----------
    name : str
        Local folder or hub id.
    spec : str
        The encoder spec, for the messages.
    local : bool
        Whether ``name`` is a local folder.
    kw : dict
        ``from_pretrained`` keyword arguments (cache folder, revision, offline flag).

    Raises
    ------
    GPUAError
        When the tokenizer cannot be loaded, or when it has fewer than ``_MIN_VOCAB`` tokens:
        transformers quietly builds an empty CLIP tokenizer for a folder without tokenizer
        files, which maps every prompt to the same tokens (and so the same embedding).
    """
    from transformers import AutoTokenizer

    fix = (f"Save the model's tokenizer there: AutoTokenizer.from_pretrained(<the model's hub id>).save_pretrained({name!r}) "
           "(tokenizer.json, or vocab.json + merges.txt, vocab.txt, spiece.model).")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kw)
    except (OSError, ValueError) as exc:
        if local:
            raise bad_local_error(f"the tokenizer of {spec!r}", name, exc, fix) from None
        raise missing_weights_error(f"the tokenizer of {spec!r}", name, exc, "hf:/path/to/folder/with/tokenizer.json") from None
    if len(tokenizer) < _MIN_VOCAB:
        where = f"folder {name!r}" if local else f"hub repository {name!r}"
        raise GPUAError(
            f"the tokenizer of {spec!r} has only {len(tokenizer)} tokens ({sorted(tokenizer.get_vocab())}): the {where} "
            f"has no tokenizer files, so every prompt would map to the same tokens and get the same embedding. "
            + (fix if local else "Save the model with its tokenizer in a local folder and pass 'hf:/path/to/folder'.")
        )
    return tokenizer


def _check_tokenizer_fits(tokenizer, config, spec: str, folder: str | None) -> None:
    """Refuse a tokenizer that is not the text tower's (another model's tokenizer files).

    Two mismatches give wrong text embeddings without an error of their own: token ids past
    the text tower's embedding table (an index error at the first prompt), and a CLIP
    tokenizer without the end token transformers' CLIP pools (``text_config.eos_token_id``;
    the legacy id 2 pools the largest id instead): every prompt then pools its first token,
    and all prompts get one and the same embedding.

    Parameters
    ----------
    tokenizer : PreTrainedTokenizerBase
    config : PretrainedConfig
        The CLIP or SigLIP configuration.
    spec : str
        The encoder spec, for the message.
    folder : str or None
        The local folder, or None for a hub repository.

    Raises
    ------
    GPUAError
    """
    tcfg = config.text_config
    ids = tokenizer(["a photo of a cat."])["input_ids"][0]
    problem = None
    if max(ids) >= int(tcfg.vocab_size):
        problem = (f"it gives token id {max(ids)} for 'a photo of a cat.', past the text tower's {tcfg.vocab_size}-token "
                   "embedding table")
    elif config.model_type == "clip" and tcfg.eos_token_id not in (None, 2) and tcfg.eos_token_id not in ids:
        problem = (f"its tokens for 'a photo of a cat.' ({list(ids)}) lack the end token {tcfg.eos_token_id} that the CLIP text "
                   "tower pools, so every prompt would get the same embedding")
    if problem:
        where = f"the folder {folder!r}" if folder else "the hub repository"
        raise GPUAError(
            f"the tokenizer of {spec!r} does not fit its text tower: {problem}. The tokenizer files in {where} are another "
            "model's; save this model's own tokenizer there: AutoTokenizer.from_pretrained(<the model's hub id>)"
            f".save_pretrained(<folder>)."
        )


# model_type -> why MaskCLIP/SCLIP surgery does not apply (types absent here support it)
_DENSE_UNSUPPORTED = {
    "siglip": "SigLIP has no class token and pools with an attention head, while MaskCLIP/SCLIP modify a "
              "class-token CLIP's last block; SigLIP patches go through its pooling head per token instead.",
    "dinov2": "DINOv2 is a vision-only model, with no image-text space for dense CLIP features.",
    "dinov2_with_registers": "DINOv2 is a vision-only model, with no image-text space for dense CLIP features.",
    "dinov3_vit": "DINOv3 is a vision-only model, with no image-text space for dense CLIP features.",
}


def _siglip_head_per_token(head, tokens: torch.Tensor) -> torch.Tensor:
    """SigLIP's attention-pooling head applied to each token on its own.

    Attention over a single key is the identity on its value, so this is exactly the embedding
    the head would give an image made of that one patch: value and output projections, then the
    head's residual MLP. It puts patches in the text space as the CLS path does for CLIP.
    """
    attn = head.attention
    d = tokens.shape[-1]
    v = torch.nn.functional.linear(tokens, attn.in_proj_weight[2 * d :], attn.in_proj_bias[2 * d :])
    h = attn.out_proj(v)
    return h + head.mlp(head.layernorm(h))
