"""Dense (per-patch) CLIP image features: MaskCLIP and SCLIP last-block surgery.

CLIP is trained to align one pooled vector per image with text, so its patch tokens after the
last block are poorly localised: the last block's attention mixes every token with a few global
ones. Two training-free fixes change only that last block, and both are implemented here on the
model's own weights, for an ``open_clip`` CLIP (``model.visual`` a ``VisionTransformer``) and for
a ``transformers`` ``CLIPModel`` / ``CLIPVisionModelWithProjection``:

``"maskclip"`` (Zhou et al., ECCV 2022)
    Keep only the value path of the last block: ``out_proj(v_proj(ln_1(x)))`` for every token,
    with no attention mixing, no residual and no MLP, then the final LayerNorm and the image
    projection. (The mmseg MaskCLIP code also adds the residual and the MLP back onto the value
    path; the simpler form is the one the paper describes and most follow-up work compares
    against.)
``"sclip"`` (Wang et al., 2023)
    Correlative self-attention in the last block: ``softmax(q q^T s) + softmax(k k^T s)`` replaces
    ``softmax(q k^T s)``; the residual and the MLP are kept, as in the SCLIP code.
``"none"``
    The unmodified model; its pooled output equals the model's own image embedding, which is
    what the tests use to pin the plumbing down.

Images whose grid differs from the model's training grid get bicubically interpolated
position embeddings (as DINO, SCLIP and ``transformers``' ``interpolate_pos_encoding`` do).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .._errors import GPUAError

__all__ = ["DENSE_METHODS", "dense_clip_features", "dense_support"]

DENSE_METHODS = ("maskclip", "sclip", "none")


@dataclass
class _LastBlock:
    """The parts of a ViT block the dense methods need, in one back-end-neutral shape."""

    full: Callable[[torch.Tensor], torch.Tensor]  # the unmodified block, (B, L, D) -> (B, L, D)
    ln_1: Callable[[torch.Tensor], torch.Tensor]
    qkv: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    out_proj: Callable[[torch.Tensor], torch.Tensor]
    ls_1: Callable[[torch.Tensor], torch.Tensor]  # layer scale after attention (identity in CLIP)
    mlp_branch: Callable[[torch.Tensor], torch.Tensor]  # x -> ls_2(mlp(ln_2(x)))
    num_heads: int


@dataclass
class _ViT:
    """A CLIP vision tower reduced to: tokens in, blocks, last block, token head, pooled head."""

    embed: Callable[[torch.Tensor], tuple[torch.Tensor, int, int]]  # pixels -> (B, 1+hw, D), h, w
    body: Callable[[torch.Tensor], torch.Tensor]  # all blocks but the last, batch first
    last: _LastBlock
    head: Callable[[torch.Tensor], torch.Tensor]  # (B, L, D) -> (B, L, d_out): final LN + proj
    pooled: Callable[[torch.Tensor], torch.Tensor]  # (B, L, D) -> (B, d_out), as the model pools
    dtype: torch.dtype


def dense_clip_features(
    model,
    pixel_values: torch.Tensor,
    method: str = "maskclip",
    *,
    return_pooled: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-patch CLIP image features in the joint image-text space.

    Parameters
    ----------
    model : open_clip CLIP, open_clip VisionTransformer, or transformers CLIPModel /
        CLIPVisionModelWithProjection
        A ViT-based CLIP (ResNet CLIPs have no patch tokens to modify).
    pixel_values : torch.Tensor of shape (B, 3, H, W)
        Images already normalised the way the model expects. H and W need not be the training
        size: position embeddings are interpolated to the grid ``(H // p, W // p)``.
    method : {"maskclip", "sclip", "none"}
        How the last block is run (see the module docstring).
    return_pooled : bool
        Also return the pooled image embedding computed from the same last-block output (for
        ``"none"`` it equals the model's own image embedding).

    Returns
    -------
    features : torch.Tensor of shape (B, h, w, d)
        Projected patch features (not L2-normalised), ``h = H // p``, ``w = W // p``, ``d`` the
        joint embedding width.
    pooled : torch.Tensor of shape (B, d), only with ``return_pooled``

    Raises
    ------
    GPUAError
        Unknown ``method``, a model that is not a supported ViT CLIP, or bad ``pixel_values``.
    """
    if method not in DENSE_METHODS:
        raise GPUAError(f"method={method!r} is not a dense CLIP method; use one of {', '.join(DENSE_METHODS)}.")
    vit = _adapt(model)
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
        shape = tuple(pixel_values.shape) if hasattr(pixel_values, "shape") else type(pixel_values).__name__
        raise GPUAError(f"pixel_values must be a torch tensor of shape (B, 3, H, W), got {shape}; preprocess the images first.")
    with torch.no_grad():
        x, h, w = vit.embed(pixel_values.to(vit.dtype))
        x = vit.body(x)
        x = _run_last_block(vit.last, x, method)
        tokens = vit.head(x[:, 1:])
        feats = tokens.reshape(tokens.shape[0], h, w, tokens.shape[-1])
        if return_pooled:
            return feats, vit.pooled(x)
        return feats


def _run_last_block(blk: _LastBlock, x: torch.Tensor, method: str) -> torch.Tensor:
    if method == "none":
        return blk.full(x)
    y = blk.ln_1(x)
    q, k, v = blk.qkv(y)
    if method == "maskclip":
        # Each token keeps its own value: attention mixing, residual and MLP are all dropped.
        return blk.ls_1(blk.out_proj(v))
    x = x + blk.ls_1(blk.out_proj(_correlative_attention(q, k, v, blk.num_heads)))
    return x + blk.mlp_branch(x)


def _correlative_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """SCLIP's attention: softmax(q q^T s) + softmax(k k^T s) applied to v, per head.

    q, k, v are (B, L, D); the result is (B, L, D) before the output projection.
    """
    B, L, D = q.shape
    hd = D // num_heads
    scale = hd**-0.5

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(B, L, num_heads, hd).transpose(1, 2)  # (B, heads, L, hd)

    qh, kh, vh = heads(q), heads(k), heads(v)
    attn = torch.softmax(qh @ qh.transpose(-1, -2) * scale, dim=-1)
    attn = attn + torch.softmax(kh @ kh.transpose(-1, -2) * scale, dim=-1)
    return (attn @ vh).transpose(1, 2).reshape(B, L, D)


# --------------------------------------------------------------------------- back ends


def _adapt(model) -> _ViT:
    if hasattr(model, "vision_model") and hasattr(model, "visual_projection"):
        return _adapt_hf(model)
    visual = getattr(model, "visual", model)
    if all(hasattr(visual, a) for a in ("conv1", "transformer", "class_embedding", "ln_post")):
        return _adapt_open_clip(visual)
    raise GPUAError(
        f"model is a {type(model).__name__}, not a ViT CLIP this function knows; pass an open_clip "
        "CLIP (ViT) or a transformers CLIPModel / CLIPVisionModelWithProjection."
    )


def dense_support(model) -> str | None:
    """Why :func:`dense_clip_features` cannot run ``model``, or None when it can (no forward pass).

    Parameters
    ----------
    model : open_clip CLIP or transformers CLIPModel / CLIPVisionModelWithProjection

    Returns
    -------
    str or None
        The reason, worded as the error :func:`dense_clip_features` would raise.
    """
    try:
        _adapt(model)
    except GPUAError as exc:
        return str(exc)
    return None


def _check_patch(px: torch.Tensor, patch: tuple[int, int]) -> None:
    if px.shape[-2] < patch[0] or px.shape[-1] < patch[1]:
        raise GPUAError(
            f"pixel_values are {px.shape[-2]}x{px.shape[-1]} pixels, smaller than one {patch[0]}x{patch[1]} "
            "patch; use larger images."
        )


def _interpolate_pos(pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """(1 + gh*gw, D) position table -> (1 + h*w, D), bicubic on the patch part."""
    if tuple(old) == tuple(new):
        return pos
    cls_pos, grid = pos[:1], pos[1:]
    D = grid.shape[-1]
    grid = grid.reshape(1, old[0], old[1], D).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=new, mode="bicubic", align_corners=False).to(pos.dtype)
    return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(-1, D)], dim=0)


def _adapt_open_clip(visual) -> _ViT:
    import torch.nn as nn

    if getattr(visual, "attn_pool", None) is not None:
        raise GPUAError("model uses attentional pooling (CoCa-style); dense features need a CLS-token ViT CLIP.")
    blocks = visual.transformer.resblocks
    last = blocks[-1]
    if not isinstance(getattr(last, "attn", None), nn.MultiheadAttention):
        raise GPUAError(
            f"model's last block is a {type(last).__name__} with custom attention; dense features "
            "support the standard open_clip ResidualAttentionBlock (the OpenAI/LAION ViT CLIPs)."
        )
    batch_first = getattr(visual.transformer, "batch_first", True)
    D = last.attn.embed_dim
    grid0 = tuple(int(g) for g in visual.grid_size)
    patch = visual.conv1.kernel_size

    def embed(px: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        _check_patch(px, patch)
        x = visual.conv1(px)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + _interpolate_pos(visual.positional_embedding, grid0, (h, w)).to(x.dtype)
        return visual.ln_pre(visual.patch_dropout(x)), int(h), int(w)

    def body(x: torch.Tensor) -> torch.Tensor:
        if not batch_first:
            x = x.transpose(0, 1)
        for blk in blocks[:-1]:
            x = blk(x)
        return x if batch_first else x.transpose(0, 1)

    def full(x: torch.Tensor) -> torch.Tensor:
        return last(x) if batch_first else last(x.transpose(0, 1)).transpose(0, 1)

    def qkv(y: torch.Tensor):
        return F.linear(y, last.attn.in_proj_weight, last.attn.in_proj_bias).split(D, dim=-1)

    def head(tokens: torch.Tensor) -> torch.Tensor:
        out = visual.ln_post(tokens)
        return out @ visual.proj if visual.proj is not None else out

    def pooled(x: torch.Tensor) -> torch.Tensor:
        p, _ = visual._pool(x)  # the model's own pooling (token / avg, LN before or after)
        return p @ visual.proj if visual.proj is not None else p

    return _ViT(
        embed=embed,
        body=body,
        last=_LastBlock(
            full=full,
            ln_1=last.ln_1,
            qkv=qkv,
            out_proj=last.attn.out_proj,
            ls_1=last.ls_1,
            mlp_branch=lambda x: last.ls_2(last.mlp(last.ln_2(x))),
            num_heads=last.attn.num_heads,
        ),
        head=head,
        pooled=pooled,
        dtype=visual.conv1.weight.dtype,
    )


def _adapt_hf(model) -> _ViT:
    vm = model.vision_model
    layers = vm.encoder.layers
    last = layers[-1]
    attn = last.self_attn
    # transformers 4.x layers take (hidden, attention_mask, causal_attention_mask) and return a
    # tuple; 5.x take (hidden, attention_mask, **kwargs) and return the tensor.
    takes_causal = "causal_attention_mask" in inspect.signature(last.forward).parameters
    patch = vm.embeddings.patch_size

    def call(layer, x: torch.Tensor) -> torch.Tensor:
        out = layer(x, None, None) if takes_causal else layer(x, None)
        return out[0] if isinstance(out, (tuple, list)) else out

    def embed(px: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        _check_patch(px, (patch, patch))
        x = vm.embeddings(px, interpolate_pos_encoding=True)
        return vm.pre_layrnorm(x), px.shape[-2] // patch, px.shape[-1] // patch

    def body(x: torch.Tensor) -> torch.Tensor:
        for layer in layers[:-1]:
            x = call(layer, x)
        return x

    def head(tokens: torch.Tensor) -> torch.Tensor:
        return model.visual_projection(vm.post_layernorm(tokens))

    return _ViT(
        embed=embed,
        body=body,
        last=_LastBlock(
            full=lambda x: call(last, x),
            ln_1=last.layer_norm1,
            qkv=lambda y: (attn.q_proj(y), attn.k_proj(y), attn.v_proj(y)),
            out_proj=attn.out_proj,
            ls_1=lambda t: t,
            mlp_branch=lambda x: last.mlp(last.layer_norm2(x)),
            num_heads=attn.num_heads,
        ),
        head=head,
        pooled=lambda x: head(x[:, 0]),
        dtype=vm.embeddings.patch_embedding.weight.dtype,
    )

