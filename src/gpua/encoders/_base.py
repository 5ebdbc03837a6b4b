"""The :class:`Encoder` interface every back end implements.

A back end supplies three small hooks that take an already preprocessed float32 batch
``(B, 3, H, W)``: :meth:`Encoder._embed` (pooled embedding), :meth:`Encoder._patches` (patch grid)
and, for vision-language models, :meth:`Encoder._encode_text_batch`. Input conversion, batching,
progress bars and the output contract (float32 numpy, never L2-normalised) live here, once.
"""

from __future__ import annotations

import abc
from typing import Any, Sequence

import numpy as np

from .._errors import GPUAError
from ._preprocess import ImagePreprocess, as_image_list

__all__ = ["Encoder", "check_batch_size"]


def check_batch_size(batch_size: int) -> int:
    """``batch_size`` as an int, or a GPUAError when it is not a positive integer."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise GPUAError(f"batch_size must be a positive integer, got {batch_size!r}.")
    return int(batch_size)


class Encoder(abc.ABC):
    """An image (and, for vision-language models, text) encoder with numpy in and out.

    Create encoders with :func:`gpua.encoders.create_encoder` from a spec string
    ``"backend:name"``; subclasses implement the ``_embed`` / ``_patches`` /
    ``_encode_text_batch`` hooks on preprocessed batches.

    Attributes
    ----------
    spec : str
        The spec the encoder was created from (``"open_clip:ViT-B-16/openai"``).
    preprocess : ImagePreprocess
        Resize / crop / normalisation, from the model's own configuration.
    embed_dim : int
        Width ``d`` of :meth:`encode_images` (and :meth:`encode_patches`, :meth:`encode_text`).
    is_vlm : bool
        Whether :meth:`encode_text` is available (image and text share one space).
    patch_size : int or None
        Pixels per patch-grid cell at the network input (None when not a regular grid).
    """

    backend: str = ""
    is_vlm: bool = False

    def __init__(self, spec: str, preprocess: ImagePreprocess, embed_dim: int, *, patch_size: int | None = None):
        self.spec = spec
        self.preprocess = preprocess
        self._embed_dim = int(embed_dim)
        self.patch_size = patch_size

    # -- hooks ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def _embed(self, pixels: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 -> (B, d) pooled image embedding."""

    @abc.abstractmethod
    def _patches(self, pixels: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 -> (B, h, w, d) patch grid, row-major."""

    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
        """list of B prompts -> (B, d); only vision-language models implement it."""
        raise self._vision_only_error()

    def _vision_only_error(self) -> GPUAError:
        return GPUAError(
            f"encoder {self.spec!r} is vision-only and has no text tower, so encode_text is not "
            "available; use a vision-language model (e.g. 'open_clip:ViT-B-16/openai', "
            "'hf:openai/clip-vit-base-patch16' or 'offline:semantic-lite0') for text prototypes."
        )

    def _metadata(self) -> dict[str, Any]:
        """Back-end specific provenance (model name, weights tag/path, versions)."""
        return {}

    # -- public API ----------------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        return self._embed_dim

    def encode_images(self, images: Any, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Pooled image embeddings (CLS token, projected CLS, or average-pooled map).

        Parameters
        ----------
        images : sequence of PIL images or uint8 arrays (H, W[, 3|4]), or uint8 array (N, H, W, 3)
            Grey and RGBA images are converted to RGB.
        batch_size : int
            Images per forward pass (only memory and speed depend on it).
        progress : bool
            Show a tqdm progress bar.

        Returns
        -------
        ndarray of float32, shape (n_images, embed_dim)
            Not L2-normalised.
        """
        return self._run(images, batch_size, progress, self._embed, "encode_images")

    def encode_prepared(self, pixels: np.ndarray) -> np.ndarray:
        """Pooled image embeddings of images already prepared by ``self.preprocess``: what
        :meth:`encode_images` does after it, for callers that prepare images in other threads
        (:func:`gpua.extract_features` with ``workers``).

        Parameters
        ----------
        pixels : float32 array of shape (B, 3, H, W)
            ``np.stack([self.preprocess.transform_one(im) for im in images])``.

        Returns
        -------
        ndarray of float32, shape (B, embed_dim)
            The rows :meth:`encode_images` gives for those images in one batch.
        """
        return self._as_output(self._embed(pixels), None, n_rows=len(pixels))

    def encode_patches(self, images: Any, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Patch-level features on the model's grid.

        Parameters
        ----------
        images : as in :meth:`encode_images`
        batch_size : int
        progress : bool

        Returns
        -------
        ndarray of float32, shape (n_images, h, w, embed_dim)
            ``out[:, i, j]`` is the patch in grid row ``i`` (top to bottom), column ``j`` (left to
            right) of the preprocessed (resized, cropped) input. Prefix tokens (CLS, registers)
            are removed. Not L2-normalised.
        """
        return self._run(images, batch_size, progress, self._patches, "encode_patches")

    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Text embeddings in the image-embedding space (vision-language models only).

        Parameters
        ----------
        texts : sequence of str (a single str is treated as one prompt)
        batch_size : int

        Returns
        -------
        ndarray of float32, shape (n_texts, embed_dim)
            Not L2-normalised.

        Raises
        ------
        GPUAError
            For a vision-only encoder, or an empty / non-string input.
        """
        if not self.is_vlm:
            raise self._vision_only_error()
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise GPUAError("texts is empty; pass at least one prompt.")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise GPUAError(f"texts[{bad[0]}] is {texts[bad[0]]!r}, not a string; pass a list of prompts.")
        bs = check_batch_size(batch_size)
        out = [self._as_output(self._encode_text_batch(texts[i : i + bs]), (min(bs, len(texts) - i), self.embed_dim))
               for i in range(0, len(texts), bs)]
        return np.concatenate(out)

    def metadata(self) -> dict[str, Any]:
        """Provenance: exact back end, model, weights, preprocessing and library versions.

        Everything that changes the numbers is here, so feature files can be matched to the
        encoder that made them (and caches keyed by it).
        """
        meta = {
            "spec": self.spec,
            "backend": self.backend,
            "embed_dim": self.embed_dim,
            "is_vlm": self.is_vlm,
            "patch_size": self.patch_size,
            "preprocess": self.preprocess.to_dict(),
        }
        meta.update(self._metadata())
        return meta

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, embed_dim={self.embed_dim}, is_vlm={self.is_vlm})"

    # -- plumbing ------------------------------------------------------------------------------
    def _run(self, images, batch_size, progress, hook, what: str) -> np.ndarray:
        bs = check_batch_size(batch_size)
        if isinstance(images, np.ndarray) and images.ndim == 4:
            n = images.shape[0]  # keep big arrays as arrays: convert one batch at a time
        else:
            images = as_image_list(images)
            n = len(images)
        if n == 0:
            raise GPUAError("images is empty; pass at least one image.")
        chunks = []
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc=f"{what} [{self.spec}]", unit="img")
        try:
            for start in range(0, n, bs):
                batch = as_image_list(images[start : start + bs])
                out = self._as_output(hook(self.preprocess(batch)), None, n_rows=len(batch))
                chunks.append(out)
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        return np.concatenate(chunks)

    def _as_output(self, out, shape: tuple | None, n_rows: int | None = None) -> np.ndarray:
        if hasattr(out, "detach"):
            out = out.detach().float().cpu().numpy()
        out = np.ascontiguousarray(out, dtype=np.float32)
        if shape is not None and out.shape != shape:
            raise GPUAError(f"encoder {self.spec!r} returned shape {out.shape}, expected {shape}.")
        if n_rows is not None and (out.shape[0] != n_rows or out.shape[-1] != self.embed_dim):
            raise GPUAError(f"encoder {self.spec!r} returned shape {out.shape} for {n_rows} images of width {self.embed_dim}.")
        return out
