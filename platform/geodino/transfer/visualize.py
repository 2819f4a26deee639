"""Pictures: DINO self-attention maps of the last block, and the curves of a pretraining run."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def last_block_attention(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, heads, H/p, W/p): how much the CLS token of the last block attends to each patch.

    timm's attention uses fused kernels that never materialise the weights, so they
    are recomputed here from the last block's input and its qkv projection.
    """
    block = model.blocks[-1]
    captured = {}
    handle = block.norm1.register_forward_hook(lambda module, inputs, output: captured.update(x=output))
    model(images)
    handle.remove()
    x = captured["x"]
    batch, tokens, width = x.shape
    heads = block.attn.num_heads
    qkv = block.attn.qkv(x).reshape(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    q, k = block.attn.q_norm(qkv[0]), block.attn.k_norm(qkv[1])
    weights = ((q * block.attn.scale) @ k.transpose(-2, -1)).softmax(-1)
    prefix = getattr(model, "num_prefix_tokens", 1)
    patch = model.patch_embed.patch_size[0]
    grid = (images.shape[-2] // patch, images.shape[-1] // patch)
    return weights[:, :, 0, prefix:].reshape(batch, heads, *grid)


def rgb_view(image: np.ndarray) -> np.ndarray:
    """A displayable (H, W, 3) picture of a normalised patch: its first three bands, contrast-stretched."""
    rgb = image[:3] if image.shape[0] >= 3 else np.repeat(image[:1], 3, axis=0)
    low, high = np.percentile(rgb, 1), np.percentile(rgb, 99)
    return np.clip((rgb - low) / max(high - low, 1e-6), 0, 1).transpose(1, 2, 0)


def plot_attention(model, images: torch.Tensor, names: list[str], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = last_block_attention(model, images)
    upsampled = F.interpolate(maps, size=images.shape[-2:], mode="nearest").numpy()
    heads = maps.shape[1]
    figure, axes = plt.subplots(len(images), heads + 2, figsize=(2 * (heads + 2), 2.1 * len(images)), squeeze=False)
    for row, (image, name) in enumerate(zip(images.numpy(), names)):
        picture = rgb_view(image)
        axes[row, 0].imshow(picture)
        axes[row, 0].set_title(name[-18:], fontsize=7)
        axes[row, 1].imshow(picture)
        axes[row, 1].imshow(upsampled[row].mean(0), cmap="inferno", alpha=0.6)
        axes[row, 1].set_title("mean of heads", fontsize=7)
        for head in range(heads):
            axes[row, head + 2].imshow(upsampled[row, head], cmap="inferno")
            axes[row, head + 2].set_title(f"head {head}", fontsize=7)
    for axis in axes.ravel():
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_curves(run_folder: str, path: str) -> str:
    """Loss, learning rate and teacher entropy per epoch, from the run's log.txt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(os.path.join(run_folder, "log.txt")) as handle:
        log = [json.loads(line) for line in handle if line.strip()]
    epochs = [entry["epoch"] for entry in log]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    axes[0].plot(epochs, [e["loss"] for e in log], marker="o")
    axes[0].set_title("DINO loss")
    axes[1].plot(epochs, [e["lr"] for e in log], marker="o")
    axes[1].set_title("learning rate (end of epoch)")
    axes[2].plot(epochs, [e["teacher_entropy"] for e in log], marker="o", label="teacher entropy")
    axes[2].axhline(log[-1]["max_entropy"], color="grey", linestyle="--", label="log(out_dim): uniform collapse")
    axes[2].axhline(0, color="black", linestyle=":", label="0: one-hot collapse")
    axes[2].legend(fontsize=7)
    axes[2].set_title("teacher entropy (nats)")
    for axis in axes:
        axis.set_xlabel("epoch")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
