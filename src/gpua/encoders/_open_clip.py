"""open_clip back end: ``open_clip:ARCH/PRETRAINED``.

Spec bodies:

* ``ViT-B-16/openai`` — built-in architecture and pretrained tag (downloaded to the hub cache);
* ``ViT-B-16//abs/path/ckpt.pt`` or ``ViT-B-16?pretrained=ckpt.pt`` — a local checkpoint;
* ``hf-hub:org/repo`` — a hub repository with ``open_clip_config.json``;
* ``/path/to/folder`` (or ``local-dir:/path``) — such a repository saved locally.

Options (``?key=value`` in the spec, or keyword arguments of ``create_encoder``):
``pretrained`` (a tag or checkpoint path, instead of the ``/TAG`` part), ``force_quick_gelu``
and ``dense``.

``dense`` picks how ``encode_patches`` turns the last block into per-patch features in the
joint image-text space (:func:`gpua.segment.dense_clip.dense_clip_features`):

* ``"maskclip"`` — the default for class-token ViT CLIPs: the last block's value path only,
  then the final LayerNorm and the image projection (MaskCLIP, the standard training-free dense
  CLIP; the raw last-block tokens are dominated by a few global tokens and segment poorly);
* ``"sclip"`` — correlative self-attention in the last block (SCLIP);
* ``"none"`` — the unmodified last block's patch tokens through the same LayerNorm and
  projection. It is the default (and the only choice) for towers the surgery does not apply
  to: non-ViT towers (ResNet, timm) and ViTs with attentional pooling (CoCa-style); asking
  those for ``"maskclip"`` or ``"sclip"`` is an error.

``encode_images`` is unaffected by ``dense``: it is always the model's own pooled embedding.

Preprocessing is the model's own (``open_clip.get_model_preprocess_cfg``). A checkpoint file
gets the mean, std, interpolation and resize mode its architecture's pretrained tags share
(mean = std = 0.5 and a squash resize for SigLIP), not open_clip's generic CLIP defaults.

The exact architecture and pretrained strings are recorded verbatim in the metadata with the
model's ``quick_gelu`` flag: ``ViT-B-16`` with OpenAI weights and ``ViT-B-16-quickgelu`` are
different functions, and open_clip only warns about the mismatch (the warning is kept too).
The dense method is recorded as ``metadata()["dense"]``, so feature caches keyed by the
metadata tell the methods apart. Weights from the hub (``hf-hub:`` specs, and pretrained tags
with an ``hf_hub`` entry, which open_clip prefers to their ``url``) record the commit of the
cached snapshot beside the tag (``metadata()["weights"]["commit"]``): an update of the repository
changes it; local checkpoints and folders record their file fingerprints.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

from .._errors import GPUAError, warn_user
from .._optional import import_optional
from ._preprocess import ImagePreprocess
from ._registry import cache_dir as _cache_dir
from ._registry import (bad_local_error, error_summary, file_fingerprint, hub_offline, hub_snapshot_commit, layout_hint,
                        missing_weights_error)
from ._torch import TorchEncoder, held_open_clip_errors, resolve_dense, tokens_to_grid, torch_device, warn_truncated

__all__ = ["OpenCLIPEncoder"]


def _preprocess_from_cfg(cfg: dict[str, Any]) -> ImagePreprocess:
    size = cfg.get("size", 224)
    hw = (size, size) if isinstance(size, int) else tuple(size)
    mode = cfg.get("resize_mode", "shortest") or "shortest"
    interp = cfg.get("interpolation", "bicubic") or "bicubic"
    interp = "bicubic" if interp == "random" else interp  # open_clip's eval transform does the same
    resize: Any = hw[0] if mode == "shortest" and hw[0] == hw[1] else hw
    return ImagePreprocess(
        input_size=hw, resize=resize, resize_mode=mode, interpolation=interp,
        mean=tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        std=tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
        fill=int(cfg.get("fill_color", 0) or 0),
    )


_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def _tags_preprocess(open_clip, arch: str, spec: str) -> dict[str, Any]:
    """The preprocessing the pretrained tags of ``arch`` agree on, for a checkpoint file of it.

    ``open_clip.create_model(arch, pretrained=<file>)`` preprocesses with open_clip's generic
    defaults (OpenAI CLIP's mean/std, shortest-edge resize and crop), while SigLIP, PE-Core,
    MobileCLIP or CLIPA weights were trained with their own (SigLIP: mean = std = 0.5, squash
    to the square input). A checkpoint file of such an architecture is one of those weights, so
    the values all its tags share are used.

    Parameters
    ----------
    open_clip : module
    arch : str
        The architecture name (``"ViT-B-16-SigLIP"``).
    spec : str
        The encoder spec, for the warning.

    Returns
    -------
    dict
        ``mean``, ``std``, ``interpolation``, ``resize_mode`` where every tag of ``arch`` gives the
        same value; empty without tags. Where the tags disagree the architecture's defaults
        stay, with a warning naming the variants.
    """
    cfgs = {t: open_clip.get_pretrained_cfg(arch, t) for t in open_clip.list_pretrained_tags_by_model(arch)}
    agreed: dict[str, Any] = {}
    differ: dict[str, dict[str, Any]] = {}
    for key in _PREPROCESS_KEYS:
        values = {tuple(v) if isinstance(v, (list, tuple)) else v for v in (c.get(key) for c in cfgs.values()) if v is not None}
        if len(values) == 1:
            agreed[key] = values.pop()
        elif len(values) > 1:
            differ[key] = {t: c.get(key) for t, c in cfgs.items()}
    if differ:
        warn_user(f"{spec!r}: the pretrained tags of {arch} preprocess differently ({differ}); the checkpoint file gets "
                  f"open_clip's default {', '.join(differ)}. If it holds the weights of one of these tags, check that "
                  "metadata()['preprocess'] is what they were trained with.")
    return agreed



def _check_tokenizer_fits(model, tokenizer, spec: str) -> None:
    """Refuse a tokenizer whose ids run past the text tower's embedding table.

    A folder or checkpoint whose config names no tokenizer gets open_clip's default CLIP one
    (49,408 tokens); a text tower trained with a smaller vocabulary then fails at the first
    prompt with an index error from inside torch. Towers without a token table of their own
    (a Hugging Face text model) are not checked here.
    """
    table = getattr(model, "token_embedding", None) or getattr(getattr(model, "text", None), "token_embedding", None)
    if table is None or not hasattr(table, "num_embeddings"):
        return
    ids = tokenizer(["a photo of a cat."])
    top = int(ids.max())
    if top >= int(table.num_embeddings):
        raise GPUAError(f"{spec!r}: its tokenizer gives token id {top} for 'a photo of a cat.', past the text tower's "
                        f"{table.num_embeddings}-token embedding table, so it is not this model's tokenizer (open_clip "
                        "gives a config naming none its default CLIP tokenizer). Name the model's own tokenizer in its "
                        "config (text_cfg.hf_tokenizer_name).")

class OpenCLIPEncoder(TorchEncoder):
    """A CLIP-family model from open_clip: image and text towers in one space.

    ``encode_images`` is ``model.encode_image`` (the projected pooled token), whatever ``dense``
    is. ``encode_patches`` is :func:`gpua.segment.dense_clip.dense_clip_features` with method
    ``dense``, so the patches live in the text space too: by default ``"maskclip"`` (the last
    block's value path, then the final LayerNorm and projection) for class-token ViT towers, and
    ``"none"`` (the unmodified last block's tokens through the same LayerNorm and projection)
    for towers the surgery does not apply to (see the module docstring). ``encode_text`` is
    ``model.encode_text`` on open_clip's own tokenizer.

    Attributes
    ----------
    dense : str
        The dense method ``encode_patches`` uses: ``"maskclip"``, ``"sclip"`` or ``"none"``.
    """

    backend = "open_clip"
    is_vlm = True

    def __init__(self, spec: str, model, tokenizer, preprocess: ImagePreprocess, *, model_name: str,
                 pretrained: str | None, weights: dict[str, Any], device: Any = "cpu", notes: list[str] | None = None,
                 dense: str | None = None):
        visual = model.visual
        embed_dim = getattr(visual, "output_dim", None)
        if embed_dim is None:  # towers without the attribute: measure it
            with torch.inference_mode():
                embed_dim = model.eval().encode_image(torch.zeros(1, 3, *preprocess.input_size)).shape[-1]
        patch = getattr(visual, "patch_size", None)
        patch = int(patch[0] if isinstance(patch, (tuple, list)) else patch) if patch else None
        super().__init__(spec, preprocess, embed_dim, model, device, patch_size=patch)
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.pretrained = pretrained
        self._weights = weights
        self._notes = notes or []
        # Checked once: dense_clip_features handles this tower, or why not (None when it does).
        self._dense_unsupported = _dense_unsupported(model)
        self.dense = resolve_dense(dense, spec=spec, unsupported=self._dense_unsupported)

    @classmethod
    def from_spec(cls, body: str, *, device: Any = "cpu", cache_dir: str | os.PathLike | None = None,
                  spec: str | None = None, pretrained: str | None = None, force_quick_gelu: Any = False,
                  dense: str | None = None, **options: Any) -> "OpenCLIPEncoder":
        open_clip = import_optional("open_clip", "the open_clip: encoders")

        if options:
            raise GPUAError(f"open_clip encoder got unknown option(s) {sorted(options)}; known: pretrained, force_quick_gelu, dense.")
        spec = spec or f"open_clip:{body}"
        # Reject a bad value before loading weights; whether the tower supports it is checked
        # once the model exists (in __init__).
        resolve_dense(dense, spec=spec, unsupported=None)
        torch_device(device)  # an unusable device is refused before minutes of loading, not after
        quick = str(force_quick_gelu).lower() in ("1", "true", "yes")
        if os.path.isfile(os.path.expanduser(body)):  # a checkpoint without its architecture: open_clip needs both
            hint = layout_hint(body, "open_clip")
            raise GPUAError(f"{spec!r} names the file {body!r} but no architecture;"
                            + (hint or f" write 'open_clip:ARCH/{body}' with the architecture it was trained as (see open_clip.list_models())."))
        if body.startswith(("hf-hub:", "local-dir:")) or os.path.isdir(os.path.expanduser(body)):
            model_name = body if body.startswith(("hf-hub:", "local-dir:")) else "local-dir:" + os.path.expanduser(body)
            if pretrained is not None:  # it would be ignored: the folder or hub model holds its own weights
                raise GPUAError(f"pretrained={pretrained!r} applies to 'open_clip:ARCH' specs, but {spec!r} names a model that "
                                "holds its own weights; leave pretrained out (or write 'open_clip:ARCH?pretrained=TAG').")
            tag = None
        else:
            arch, _, tag = body.partition("/")
            if pretrained is not None and tag and pretrained != tag:
                raise GPUAError(f"spec {spec!r} names the weights twice, {tag!r} after the '/' and pretrained={pretrained!r}; "
                                "give one of them.")
            tag = pretrained or tag or None
            model_name = arch
            if arch not in open_clip.list_models():
                import difflib

                close = difflib.get_close_matches(arch, open_clip.list_models(), n=5)
                raise GPUAError(
                    f"open_clip has no architecture {arch!r} (in spec {spec!r}); close names: {close}. "
                    "See open_clip.list_models(), or register a config with open_clip.add_model_config."
                )
            if not tag:
                raise GPUAError(
                    f"spec {spec!r} names no weights; write 'open_clip:{arch}/TAG' with a tag from "
                    f"{open_clip.list_pretrained_tags_by_model(arch) or ['(none known)']} or a local checkpoint "
                    f"'open_clip:{arch}/PATH' (PATH the checkpoint file, relative or absolute: 'open_clip:{arch}//abs/ckpt.pt')."
                )
            if not os.path.isfile(os.path.expanduser(tag)) and tag not in open_clip.list_pretrained_tags_by_model(arch):
                raise GPUAError(
                    f"pretrained {tag!r} of spec {spec!r} is neither a known open_clip tag for {arch} "
                    f"({open_clip.list_pretrained_tags_by_model(arch)}) nor an existing checkpoint file."
                )
        ckpt = os.path.expanduser(tag) if tag and os.path.isfile(os.path.expanduser(tag)) else None
        where = _cache_dir(cache_dir) / "open_clip" if cache_dir is not None else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                # open_clip logs "ERROR:root:..." before it raises; gpua's own error below says it better
                with held_open_clip_errors():
                    model, _, _ = open_clip.create_model_and_transforms(
                        model_name, pretrained=ckpt or tag,
                        device="cpu", force_quick_gelu=quick, cache_dir=None if where is None else str(where),
                        # Without it a hub or folder model whose weights file is missing is built with
                        # random weights, and open_clip only logs "Model initialized randomly".
                        require_pretrained=True,
                    )
            except GPUAError:
                raise
            except Exception as exc:  # download failures surface as RuntimeError/OSError/HF errors
                from huggingface_hub import constants

                local = ckpt or (model_name[len("local-dir:"):] if model_name.startswith("local-dir:") else None)
                if local:  # an existing file or folder: what is wrong is the file, not the network
                    raise bad_local_error(
                        f"open_clip weights for {spec!r}", local, exc,
                        f"Pass the checkpoint of this exact architecture ({model_name!r}; an architecture's QuickGELU "
                        "variant is ARCH-quickgelu), a state dict saved from open_clip.create_model(...)."
                        if ckpt else
                        "An open_clip model folder holds open_clip_config.json and open_clip_pytorch_model.bin "
                        "(or open_clip_model.safetensors), as open_clip's push_to_hf_hub writes.",
                        backend="open_clip",
                    ) from None
                raise missing_weights_error(
                    f"open_clip weights for {spec!r}", str(where or constants.HF_HUB_CACHE), exc,
                    f"open_clip:{model_name}/PATH (PATH the checkpoint file, relative or absolute)",
                ) from None
            # An hf-hub model's tokenizer is named in its open_clip_config.json, which lies in `where`
            # like its weights; without cache_dir open_clip looks in huggingface_hub's default cache.
            hub_kw = {"cache_dir": str(where)} if where is not None and model_name.startswith("hf-hub:") else {}
            try:
                tokenizer = open_clip.get_tokenizer(model_name, **hub_kw)
            except Exception as exc:  # a Hugging Face tokenizer not in the cache fails deep inside transformers
                offline = " (HF_HUB_OFFLINE is set)" if hub_offline() else ""
                raise GPUAError(
                    f"could not load the text tokenizer of {spec!r}: {error_summary(exc)}. open_clip takes it from the "
                    f"Hugging Face tokenizer the model's config names (text_cfg.hf_tokenizer_name), from the hub or its "
                    f"cache{offline}: put that tokenizer in the hub cache (HF_HOME), or, for a model folder, set "
                    "hf_tokenizer_name in its open_clip_config.json to a local folder holding the tokenizer."
                ) from None
        _check_tokenizer_fits(model, tokenizer, spec)
        notes = [str(w.message) for w in caught if "gelu" in str(w.message).lower()]
        for w in caught:  # let the user see them as well
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if ckpt:
            weights = {"checkpoint": file_fingerprint(ckpt)}
        elif model_name.startswith("local-dir:"):
            weights = {"checkpoint": file_fingerprint(model_name[len("local-dir:"):])}
        else:
            weights = {"tag": tag or model_name}
            hub = _hub_files(open_clip, model_name, tag)
            if hub is not None:  # the repository's name stays when it is updated: its snapshot commit does not
                weights["commit"] = hub_snapshot_commit(*hub, cache_dir=None if where is None else str(where))
        pp_cfg = dict(open_clip.get_model_preprocess_cfg(model))
        if ckpt:  # open_clip gives a checkpoint file its generic CLIP preprocessing: take the tags' own
            pp_cfg.update(_tags_preprocess(open_clip, model_name, spec))
        pp = _preprocess_from_cfg(pp_cfg)
        return cls(spec, model, tokenizer, pp, model_name=model_name, pretrained=tag, weights=weights, device=device, notes=notes,
                   dense=dense)

    def _embed_t(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)

    def _patches_t(self, x: torch.Tensor) -> torch.Tensor:
        if self._dense_unsupported is None:
            from ..segment.dense_clip import dense_clip_features

            return dense_clip_features(self.model, x, method=self.dense)  # (B, h, w, d) already
        # Towers the surgery does not apply to (dense is "none" there): the last block's tokens.
        visual = self.model.visual
        if not hasattr(visual, "forward_intermediates") or not hasattr(visual, "ln_post"):
            raise GPUAError(
                f"encode_patches supports open_clip VisionTransformer towers; {self.model_name!r} has a "
                f"{type(visual).__name__}. Use a ViT model, or the timm: back end for patch features."
            )
        if getattr(visual, "attn_pool", None) is not None:
            # Its ln_post is sized for the pooled queries, not for the width of the patch tokens.
            raise GPUAError(
                f"encode_patches does not support {self.model_name!r}: its ViT pools with attentional pooling "
                "(CoCa-style), which gives no per-patch features in the text space. Use a class-token ViT CLIP."
            )
        out = visual.forward_intermediates(x, indices=1, normalize_intermediates=True, output_fmt="NLC", intermediates_only=True)
        tokens = out["image_intermediates"][-1]  # (B, h*w, width), ln_post applied, CLS removed
        if visual.proj is not None:
            tokens = tokens @ visual.proj
        H, W = x.shape[-2:]
        return tokens_to_grid(tokens, 0, (H // visual.patch_size[0], W // visual.patch_size[1]))

    def _text_t(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(texts)
        self._warn_truncated(texts, ids)
        return self.model.encode_text(ids.to(self.device))

    def _warn_truncated(self, texts: list[str], ids: torch.Tensor) -> None:
        """Warn about prompts the tokenizer cut at the context length (open_clip does it silently).

        A prompt that fits is tokenized the same with one more position; one that was cut is not
        (its last kept token becomes the end token, or the next token appears).
        """
        L = int(ids.shape[-1])
        try:
            longer = self.tokenizer(texts, context_length=L + 1)
        except TypeError:  # a tokenizer without the context_length argument: nothing to compare
            return
        warn_truncated(self.spec, texts, (ids != longer[:, :L]).any(dim=-1).tolist(), L)

    def _metadata(self) -> dict[str, Any]:
        import open_clip

        meta = super()._metadata()
        meta["versions"]["open_clip"] = open_clip.__version__
        meta.update({
            "model": self.model_name,
            "pretrained": self.pretrained,
            "weights": self._weights,
            "quick_gelu": _uses_quick_gelu(self.model),
            "dense": self.dense,
        })
        if self._notes:
            meta["warnings"] = self._notes
        return meta


def _hub_files(open_clip, model_name: str, tag: str | None) -> tuple[str, list[str]] | None:
    """The hub repository open_clip loads ``model_name`` / ``tag`` from and the files it reads there.

    An ``hf-hub:org/repo`` spec reads ``open_clip_config.json`` and the default weights file; a
    pretrained tag whose config has an ``hf_hub`` entry (``"org/repo/"``, or ``"org/repo/FILE"``
    naming the weights file) is downloaded from there in preference to its ``url``, as
    ``open_clip.pretrained.download_pretrained`` does with huggingface_hub installed. The weights
    file is ``open_clip_pytorch_model.bin`` unless named, its safetensors alternative
    (``open_clip_model.safetensors``) preferred.

    Parameters
    ----------
    open_clip : module
    model_name : str
        The architecture, or an ``hf-hub:`` / ``local-dir:`` model name.
    tag : str, optional
        The pretrained tag of an architecture.

    Returns
    -------
    (str, list of str) or None
        The hub id and the file names, or None for weights not from the hub (a tag with only a
        ``url``, a local file or folder).
    """
    from open_clip.constants import HF_CONFIG_NAME, HF_WEIGHTS_NAME
    from open_clip.pretrained import _get_safe_alternatives

    if model_name.startswith("hf-hub:"):
        repo, filename, extra = model_name[len("hf-hub:"):], HF_WEIGHTS_NAME, [HF_CONFIG_NAME]
    else:
        cfg = open_clip.get_pretrained_cfg(model_name, tag) if tag else {}
        if not cfg.get("hf_hub") or cfg.get("file"):
            return None
        repo, filename = os.path.split(cfg["hf_hub"])  # open_clip's own split of "org/repo/FILE"
        filename, extra = filename or HF_WEIGHTS_NAME, []
    return repo, [*_get_safe_alternatives(filename), filename, *extra]


def _dense_unsupported(model) -> str | None:
    """Why :func:`~gpua.segment.dense_clip.dense_clip_features` cannot run ``model``, or None if it can."""
    from ..segment.dense_clip import dense_support  # the function's own model check, without a forward pass

    visual = getattr(model, "visual", model)
    if not all(hasattr(visual, a) for a in ("conv1", "transformer", "class_embedding", "ln_post")):
        return f"its vision tower is a {type(visual).__name__}, not a class-token open_clip VisionTransformer."
    return dense_support(model)


def _uses_quick_gelu(model) -> bool:
    from open_clip.transformer import QuickGELU

    return any(isinstance(m, QuickGELU) for m in model.modules())
