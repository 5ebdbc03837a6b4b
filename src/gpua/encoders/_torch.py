"""Shared plumbing of the torch back ends (open_clip, transformers, timm, offline EfficientNets)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._backend import resolve_device
from ._base import Encoder
from ._preprocess import ImagePreprocess

__all__ = ["TorchEncoder", "tokens_to_grid"]


class TorchEncoder(Encoder):
    """An :class:`Encoder` around a torch module in eval mode, run under ``torch.inference_mode``.

    Subclasses implement ``_embed_t`` / ``_patches_t`` (and ``_text_t``) on tensors on
    ``self.device``; the numpy conversion happens here.
    """

    def __init__(self, spec: str, preprocess: ImagePreprocess, embed_dim: int, model: torch.nn.Module, device: Any = "cpu", **kw: Any):
        super().__init__(spec, preprocess, embed_dim, **kw)
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        for p in self.model.parameters():
            p.requires_grad_(False)

    def _embed_t(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _patches_t(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _text_t(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def _tensor(self, pixels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(pixels).to(self.device)

    def _embed(self, pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self._embed_t(self._tensor(pixels)).float().cpu().numpy()

    def _patches(self, pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self._patches_t(self._tensor(pixels)).float().cpu().numpy()

    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
        if not self.is_vlm:
            raise self._vision_only_error()
        with torch.inference_mode():
            return self._text_t(texts).float().cpu().numpy()

    def _metadata(self) -> dict[str, Any]:
        return {"versions": {"torch": torch.__version__}}


def tokens_to_grid(tokens: torch.Tensor, n_prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, n_prefix + h*w, d) ViT tokens -> (B, h, w, d) patch grid, prefix (CLS, registers) dropped.

    ViTs flatten the patch grid row-major (``conv.flatten(2)``), so a plain reshape restores it.
    """
    h, w = grid
    B, N, d = tokens.shape
    if N - n_prefix != h * w:
        raise RuntimeError(f"{N} tokens minus {n_prefix} prefix tokens is not a {h}x{w} patch grid")
    return tokens[:, n_prefix:].reshape(B, h, w, d)
