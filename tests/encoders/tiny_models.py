"""Tiny random models of the encoder tests, shared by the back ends' test modules and
``test_enc_audit_fixes.py`` (their fixtures, which call these builders, are in ``conftest.py``).

Nothing is downloaded: each builder makes a model small enough to build in well under a second
and saves it where a user's downloaded model would be (a checkpoint file or an .onnx graph).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

# A DINOv2-style ViT with 4 register tokens, shrunk: the prefix (CLS + registers) must be stripped.
REG_ARCH = "vit_small_patch14_reg4_dinov2"
REG_KW = dict(img_size=28, patch_size=7, depth=1, embed_dim=32, num_heads=2)

# open_clip's ViT CLIP, shrunk; registered as "gpua-tiny-vit" (and a QuickGELU twin) by save_open_clip_tiny.
TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


class TinyTokens(torch.nn.Module):
    """8x8 patches of a 32x32 image -> CLS + 16 tokens -> per-token MLP -> LayerNorm -> CLS @ proj."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 8, 8)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, 16))
        self.pos = torch.nn.Parameter(torch.randn(1, 17, 16) * 0.1)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 16))
        self.norm = torch.nn.LayerNorm(16)
        self.proj = torch.nn.Linear(16, 8)

    def forward(self, x):
        t = self.conv(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1) + self.pos
        t = self.norm(t + self.mlp(t))
        return self.proj(t[:, 0])


def export_tiny_onnx(folder: Path) -> tuple[str, str, str]:
    """:class:`TinyTokens` exported to ``folder/tiny.onnx`` (static 32x32 input, dynamic batch).

    Returns the path, the final token node (``/norm/...``, ``(B, 17, 16)``) and the conv feature
    map node (``/conv/...``, ``(B, 16, 4, 4)``).
    """
    import onnx

    torch.manual_seed(0)
    path = Path(folder) / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(TinyTokens().eval(), (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                          input_names=["pixel_values"], output_names=["embedding"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "embedding": {0: "batch"}})
    nodes = [o for n in onnx.load(str(path)).graph.node for o in n.output]
    tokens = [o for o in nodes if o.startswith("/norm/")][-1]
    fmap = [o for o in nodes if o.startswith("/conv/")][0]
    return str(path), tokens, fmap


def save_open_clip_tiny(folder: Path) -> str:
    """Register ``gpua-tiny-vit`` (and a QuickGELU twin) with open_clip and save random weights for it."""
    import open_clip

    d = Path(folder)
    (d / "gpua-tiny-vit.json").write_text(json.dumps(TINY))
    (d / "gpua-tiny-vit-quickgelu.json").write_text(json.dumps({**TINY, "quick_gelu": True}))
    open_clip.add_model_config(d / "gpua-tiny-vit.json")
    open_clip.add_model_config(d / "gpua-tiny-vit-quickgelu.json")
    torch.manual_seed(0)
    model = open_clip.create_model("gpua-tiny-vit")
    ckpt = d / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    return str(ckpt)


def save_timm_reg_ckpt(folder: Path) -> str:
    """A state dict of the shrunk :data:`REG_ARCH` (create it with ``**REG_KW``), with a classifier head."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(REG_ARCH, pretrained=False, num_classes=10, **REG_KW)  # with a head: it must be ignored
    path = Path(folder) / "reg.pth"
    torch.save(model.state_dict(), path)
    return str(path)
