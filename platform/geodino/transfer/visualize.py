"""Pictures: DINO self-attention maps of the last block, and the curves of a pretraining run."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from geodino import storage
from geodino.archive.bands import RGB_BANDS
from geodino.archive.splits import SPLITS
from geodino.cli import flag
from geodino.data.config import NORMALIZATIONS
from geodino.dino.checkpoint import CHECKPOINT_FILE, read_checkpoint
from geodino.errors import ConfigError


@dataclass
class VisualizeConfig:
    """visualize.py's flags: attention maps of a backbone over real patches, curves of a run, or both."""

    pretrained_weights: str | None = flag(None, "Backbone SOURCE to draw attention maps of (the same SOURCE as "
                                          "linear_probe.py's); needs --metadata_dir")
    metadata_dir: str | None = flag(None, "Metadata parquet (or its folder) of the patches to show")
    data_dir: str | None = flag(None, "The pixel archive or pack, if it moved since prepare")
    images: list[str] = flag([], "Patch names to show (the metadata's name column); default: the first --count "
                             "patches")
    count: int = flag(4, "Patches to show when --images is not given")
    split: str = flag("test", "Split the patches come from", choices=SPLITS)
    bands: str | None = flag(None, "Input bands; default: the weights' own (their data contract), else rgb")
    normalize: str | None = flag(None, "max or stats; default: the weights' own, else max", choices=NORMALIZATIONS)
    force: bool = flag(False, "Run even when --bands/--normalize contradict the weights")
    image_size: int | None = flag(None, "Input side in pixels (a multiple of the patch size); default: the weights' "
                                  "training crop size, else the data's size")
    arch: str | None = flag(None, "Architecture of weights that do not record it (vit_tiny, vit_small, vit_base)")
    patch_size: int | None = flag(None, "Patch size of weights that do not record it")
    run: str | None = flag(None, "A pretraining run to plot the curves of: its folder (--storage_path/--run_name, "
                           "which holds log.txt), or the --output_dir it was copied to")
    output_dir: str = flag("runs/pictures", "Where the PNGs go (pretraining_curves.png, attention.png)")

    def validate(self) -> None:
        """Nothing to draw, or a drawing without its inputs, named before weights, data or Ray are touched."""
        if not (self.run or self.pretrained_weights):
            raise ConfigError("nothing to draw: give --pretrained_weights (attention maps), --run (curves), or both")
        if self.pretrained_weights and not self.metadata_dir:
            raise ConfigError("--pretrained_weights needs --metadata_dir: the patches whose attention maps to draw")
        if self.count < 1:
            raise ConfigError(f"--count {self.count}: draw at least 1 patch")
        if self.image_size is not None and self.image_size < 1:
            raise ConfigError(f"--image_size must be greater than 0, not {self.image_size}")
        problem = storage.first_location_problem({"--output_dir": self.output_dir}, folders=("--output_dir",),
                                                 local=("--output_dir",))
        if problem:
            raise ConfigError(problem)


RUN_LOG = "log.txt"


def run_log_folder(run: str) -> str:
    """The folder holding a run's log.txt: --run itself, or the run's folder found from the --output_dir a user
    knows the run by (pretrain.py prints final/checkpoint.pth there, whose settings say where the run was stored;
    the run's log stays there, on S3 too). A storage folder of several runs is named with them."""
    if storage.exists(storage.join(run, RUN_LOG)):
        return run
    for final in (run, storage.join(run, "final")):
        if os.path.isfile(os.path.join(final, CHECKPOINT_FILE)):
            try:
                settings = read_checkpoint(final).get("args", {})
            except RuntimeError as error:  # damaged or not a checkpoint: named, not a traceback
                raise ConfigError(f"--run {run}: {error}") from None
            stored = storage.join(settings.get("storage_path") or "", settings.get("run_name") or "")
            if settings.get("storage_path") and settings.get("run_name") and storage.exists(
                    storage.join(stored, RUN_LOG)):
                return stored
            raise ConfigError(f"--run {run}: its checkpoint says the run was stored at {stored}, which holds no "
                              f"{RUN_LOG}; give the run's folder")
    runs = sorted(name for name in os.listdir(run) if os.path.isfile(os.path.join(run, name, RUN_LOG))
                  ) if os.path.isdir(run) else []
    if runs:
        raise ConfigError(f"--run {run}: a folder of runs ({', '.join(runs[:4])}"
                          f"{', ...' if len(runs) > 4 else ''}); give one: --run {os.path.join(run, runs[0])}")
    raise ConfigError(f"--run {run}: no {RUN_LOG} there; give a pretraining run's folder (--storage_path/--run_name, "
                      "it holds log.txt) or the --output_dir it was copied to")


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


def display_channels(band_names: tuple[str, ...]) -> list[int]:
    """Which bands to show as red, green, blue: Sentinel-2's B04, B03, B02 where the input has them (a 12-band
    BigEarthNet input starts with B01, a Sentinel-2 GeoTIFF's with B02), else the first three."""
    if set(RGB_BANDS) <= set(band_names):
        return [band_names.index(band) for band in RGB_BANDS]
    return first_three(len(band_names))


def first_three(count: int) -> list[int]:
    """The first three of `count` bands as red, green, blue; one band as grey."""
    return [0, 1, 2] if count >= 3 else [0, 0, 0]


def rgb_view(image: np.ndarray, channels: list[int] | None = None) -> np.ndarray:
    """A displayable (H, W, 3) picture of a normalised patch: `channels` (default: the first three bands),
    contrast-stretched."""
    rgb = image[channels or first_three(image.shape[0])]
    low, high = np.percentile(rgb, 1), np.percentile(rgb, 99)
    return np.clip((rgb - low) / max(high - low, 1e-6), 0, 1).transpose(1, 2, 0)


def plot_attention(model, images: torch.Tensor, names: list[str], path: str, channels: list[int] | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = last_block_attention(model, images)
    upsampled = F.interpolate(maps, size=images.shape[-2:], mode="nearest").numpy()
    heads = maps.shape[1]
    figure, axes = plt.subplots(len(images), heads + 2, figsize=(2 * (heads + 2), 2.1 * len(images)), squeeze=False)
    for row, (image, name) in enumerate(zip(images.numpy(), names)):
        picture = rgb_view(image, channels)
        axes[row, 0].imshow(picture)
        axes[row, 0].set_title(short_name(name), fontsize=7)
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


def short_name(name: str, width: int = 36) -> str:
    """A patch name that fits above its picture: whole up to `width` characters (a BigEarthNet name is 31, with
    its tile and date), else its end marked as cut. Cut to 18 before, EuroSAT's Crop_AnnualCrop_66 read as a name."""
    return name if len(name) <= width else "…" + name[-(width - 1):]


def plot_curves(run_folder: str, path: str) -> str:
    """Loss, learning rate and teacher entropy per epoch, from the run's log.txt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    text = storage.read_bytes(storage.join(run_folder, RUN_LOG)).decode()
    log = [json.loads(line) for line in text.splitlines() if line.strip()]
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
