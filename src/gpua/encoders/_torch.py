"""Shared plumbing of the torch back ends (open_clip, transformers, timm, offline EfficientNets)."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Sequence

import numpy as np
import torch

from .._backend import resolve_device
from .._errors import GPUAError, warn_user
from ._base import Encoder
from ._preprocess import ImagePreprocess

__all__ = ["TorchEncoder", "resolve_dense", "tokens_to_grid", "warn_truncated"]


def resolve_dense(dense: Any, *, spec: str, unsupported: str | None) -> str:
    """The dense-feature method an encoder will use, from its ``dense`` option.

    Parameters
    ----------
    dense : str or None
        The option as given (``None`` when it was not given): ``"maskclip"``, ``"sclip"`` or
        ``"none"``, case-insensitive.
    spec : str
        The encoder spec, for the error messages.
    unsupported : str or None
        ``None`` when :func:`~gpua.segment.dense_clip.dense_clip_features` handles the model,
        else one sentence saying why it does not.

    Returns
    -------
    str
        ``"maskclip"`` by default where supported, ``"none"`` by default elsewhere, else the
        requested method.

    Raises
    ------
    GPUAError
        For a value that is not a method, or ``"maskclip"`` / ``"sclip"`` on a model the
        surgery does not apply to.
    """
    from ..segment.dense_clip import DENSE_METHODS

    if dense is None:
        return "none" if unsupported else "maskclip"
    method = dense.strip().lower() if isinstance(dense, str) else dense
    if method not in DENSE_METHODS:
        raise GPUAError(
            f"dense={dense!r} (encoder {spec!r}) must be one of {', '.join(map(repr, DENSE_METHODS))}; "
            "e.g. '?dense=maskclip' in the spec or create_encoder(spec, dense='sclip')."
        )
    if method != "none" and unsupported:
        raise GPUAError(
            f"dense={method!r} is not available for encoder {spec!r}: {unsupported} "
            "Pass dense='none' (or leave the option out) to use the model's own per-patch features, "
            "or use a class-token ViT CLIP for MaskCLIP/SCLIP features."
        )
    return method


def torch_device(device: Any) -> torch.device:
    """The device a :class:`TorchEncoder` runs on: :func:`gpua._backend.resolve_device`, MPS allowed.

    The torch back ends call it before loading any weights, so that an unusable device
    (``"cuda"`` without a GPU, ``"gpu"``) is refused at once, not after minutes of loading.
    """
    return resolve_device(device, allow_mps=True)


@contextlib.contextmanager
def quiet_transformers_loading(*, logs: bool = False):
    """Hide transformers' per-load "Loading weights" progress bars: gpua shows its own progress.

    Parameters
    ----------
    logs : bool
        Also hide transformers' log records below ERROR while the block runs: the "LOAD REPORT"
        table (80 lines for a folder of another architecture's weights, ending in "newly
        initialized ... Consider training", and one on every load of a classification checkpoint
        for its unused head). Only for callers that check the loading info themselves
        (``output_loading_info=True``) and refuse missing weights with their own message, as the
        ``hf:`` back end does; the level is restored afterwards.
    """
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    if logs:
        hf_logging.set_verbosity(max(level, hf_logging.ERROR))
    try:
        yield
    finally:
        if logs:
            hf_logging.set_verbosity(level)
        if was:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def held_open_clip_errors():
    """Hold the ERROR records open_clip logs to the root logger while gpua loads a model with it.

    open_clip logs ``ERROR:root:Failed to download weights for tag ...`` just before it raises.
    The records are held while the block runs and dropped if it raises an exception, which the
    caller turns into its own GPUAError; if it does not raise they are passed on to the root
    logger's handlers. The filter that holds them is on the root logger for the block only.
    ``logging.error`` on a root logger without handlers also calls :func:`logging.basicConfig`,
    which would leave a stderr handler on the user's root logger for good (every later INFO or
    WARNING record of any library then printed): a handler added during the block is removed.
    """
    import open_clip

    package = os.path.dirname(os.path.abspath(open_clip.__file__)) + os.sep
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:  # open_clip logs with logging.error(...): the root logger
        if record.levelno >= logging.ERROR and os.path.abspath(record.pathname).startswith(package):
            held.append(record)
            return False
        return True

    root = logging.getLogger()
    handlers = list(root.handlers)
    root.addFilter(hold)
    try:
        yield
    except Exception:
        held.clear()  # the caller reports the failure itself
        raise
    finally:
        root.removeFilter(hold)
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        for record in held:
            root.handle(record)


class TorchEncoder(Encoder):
    """An :class:`Encoder` around a torch module in eval mode, run under ``torch.inference_mode``.

    Subclasses implement ``_embed_t`` / ``_patches_t`` (and ``_text_t``) on tensors on
    ``self.device``; the numpy conversion happens here.
    """

    def __init__(self, spec: str, preprocess: ImagePreprocess, embed_dim: int, model: torch.nn.Module, device: Any = "cpu", **kw: Any):
        super().__init__(spec, preprocess, embed_dim, **kw)
        self.device = torch_device(device)
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


def warn_truncated(spec: str, texts: Sequence[str], cut: Sequence[bool], context_length: int) -> None:
    """Warn that prompts were cut at the text tower's context length (tokenizers do it silently).

    Parameters
    ----------
    spec : str
        The encoder spec, for the message.
    texts : sequence of str
        The prompts of one batch.
    cut : sequence of bool
        Which of ``texts`` did not fit.
    context_length : int
        Tokens the text tower reads, special tokens included.
    """
    idx = [i for i, c in enumerate(cut) if c]
    if idx:
        warn_user(f"{spec!r}: {len(idx)} of {len(texts)} prompt(s) are longer than the text tower's {context_length}-token "
                  f"context and were cut to it, so the words past it do not count (first: {texts[idx[0]]!r}); shorten "
                  "the template or the class name.")


def tokens_to_grid(tokens: torch.Tensor, n_prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, n_prefix + h*w, d) ViT tokens -> (B, h, w, d) patch grid, prefix (CLS, registers) dropped.

    ViTs flatten the patch grid row-major (``conv.flatten(2)``), so a plain reshape restores it.
    """
    h, w = grid
    B, N, d = tokens.shape
    if N - n_prefix != h * w:
        raise RuntimeError(f"{N} tokens minus {n_prefix} prefix tokens is not a {h}x{w} patch grid")
    return tokens[:, n_prefix:].reshape(B, h, w, d)
