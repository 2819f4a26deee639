"""Backbones from timm, the DINO projection head, and the wrapper that runs both on multi-crop input.

State-dict keys follow facebookresearch/dino: ``backbone.*`` (timm's ViT uses the
same parameter names as DINO's own ViT) and ``head.mlp.*``, ``head.last_layer.weight_g``,
``head.last_layer.weight_v``, so DINO's evaluation scripts load geodino checkpoints.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from geodino.errors import ConfigError

ARCHS = ("vit_tiny", "vit_small", "vit_base")
VIT_DEPTH = 12  # blocks in each of them (timm's vit_*_patch16_224)


def create_backbone(arch: str, patch_size: int = 16, in_chans: int = 3, drop_path_rate: float = 0.0,
                    img_size: int = 224) -> nn.Module:
    """A timm ViT with no classifier, any band count, and any input size (position embeddings interpolated)."""
    if arch not in ARCHS:
        raise ConfigError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
    return timm.create_model(
        f"{arch}_patch16_224",
        pretrained=False,
        num_classes=0,
        patch_size=patch_size,
        in_chans=in_chans,
        img_size=img_size,
        dynamic_img_size=True,
        drop_path_rate=drop_path_rate,
    )


class WeightNormLinear(nn.Module):
    """Linear layer without bias whose weight is g * v / ||v|| per output unit (DINO's last layer).

    Written out rather than taken from torch.nn.utils so that the parameters keep DINO's
    names (weight_g, weight_v) and fixing g = 1 (norm_last_layer) is one requires_grad flag.
    """

    def __init__(self, in_features: int, out_features: int, fix_norm: bool):
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.trunc_normal_(self.weight_v, std=0.02)
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))
        self.weight_g.requires_grad = not fix_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_g * F.normalize(self.weight_v, dim=1)
        return F.linear(x, weight)


class DINOHead(nn.Module):
    """3-layer MLP -> L2-normalised bottleneck -> weight-normalised projection to out_dim."""

    def __init__(self, in_dim: int, out_dim: int = 65536, norm_last_layer: bool = True,
                 hidden_dim: int = 2048, bottleneck_dim: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_norm=norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class MultiCropWrapper(nn.Module):
    """Run the backbone once per crop resolution (crops of one size are batched together), then the head."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: list[torch.Tensor], with_features: bool = False):
        """Head outputs of every crop, in order; with_features also returns the backbone's (CLS) features."""
        features, start = [], 0
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape[-1] == crops[start].shape[-1]:
                end += 1
            features.append(self.backbone(torch.cat(crops[start:end])))
            start = end
        features = torch.cat(features)
        output = self.head(features)
        return (output, features) if with_features else output


def build_student_teacher(arch: str, patch_size: int, in_chans: int, out_dim: int, norm_last_layer: bool,
                          drop_path_rate: float) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    """Student and teacher start identical; the teacher never gets gradients, only the student's EMA."""
    student_backbone = create_backbone(arch, patch_size, in_chans, drop_path_rate)
    student = MultiCropWrapper(student_backbone, DINOHead(student_backbone.embed_dim, out_dim, norm_last_layer))
    teacher_backbone = create_backbone(arch, patch_size, in_chans)
    teacher = MultiCropWrapper(teacher_backbone, DINOHead(teacher_backbone.embed_dim, out_dim))
    teacher.load_state_dict(student.state_dict())
    for parameter in teacher.parameters():
        parameter.requires_grad = False
    return student, teacher

