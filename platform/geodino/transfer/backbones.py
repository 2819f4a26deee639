"""Load a frozen backbone from a SOURCE string, checking it fits the data it will see.

SOURCE is one of:

* ``random:ARCH`` - the untrained baseline (seeded), e.g. ``random:vit_small``;
* ``timm:NAME`` - a timm model with its pretrained weights, e.g. ``timm:vit_small_patch16_224.dino``
  (the ImageNet DINO ViT-S/16); needs hub access;
* a file: a facebookresearch/dino or geodino ``checkpoint.pth`` (its ``teacher`` by default,
  ``PATH#student`` for the student), an exported ``teacher_backbone.pth``, or any plain state dict;
* a geodino run folder (its ``final/teacher_backbone.pth``).

Files load with ``torch.load(weights_only=True)``: a pickle that would run code is refused.
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass

import torch
from torch import nn

from geodino.dino.checkpoint import BACKBONE_FILE, WEIGHT_PARTS, source_path_and_part, strip_prefixes
from geodino.dino.models import create_backbone
from geodino.errors import ConfigError, GeodinoError, MissingInputError

EMBED_DIM_TO_ARCH = {192: "vit_tiny", 384: "vit_small", 768: "vit_base"}


class WeightsUnavailableError(GeodinoError, RuntimeError):
    """A timm: source this machine cannot have: no such model, or its weights not on the hub or in the cache."""


class BackboneMismatchError(GeodinoError, ValueError):
    """Weights that do not fit the requested architecture or the data's band count."""


@dataclass
class Backbone:
    model: nn.Module
    arch: str
    patch_size: int
    in_chans: int
    source: str
    input_mean: tuple[float, ...] | None = None  # what the weights standardise [0, 1] input with (timm ImageNet)
    input_std: tuple[float, ...] | None = None

    def standardise(self, images: torch.Tensor) -> torch.Tensor:
        """The weights' own input standardisation, when they have one (foreign ImageNet weights); else as is."""
        if self.input_mean is None:
            return images
        mean = torch.tensor(self.input_mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.input_std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        return (images - mean) / std


def parse_named(spec: str) -> tuple[str, str]:
    """'NAME=SOURCE' -> (NAME, SOURCE); a bare SOURCE (also a file whose name holds '=') is named after itself."""
    name, equals, source = spec.partition("=")
    if equals and not os.path.exists(spec) and not any(c in name for c in ":/"):
        if not name.strip() or not source.strip():
            raise ConfigError(f"--backbone {spec!r}: give NAME=SOURCE, a name for the table and the weights "
                              "(e.g. ours=runs/dino_vit_small_p16)")
        return name.strip(), source.strip()
    return os.path.basename(spec.rstrip("/")) or spec, spec


def load_state_dict_file(path: str, which: str = "teacher") -> dict:
    if "://" in path:  # s3://, https://: said as such, not as a file that is missing
        raise MissingInputError(f"{path}: weights are read from a local file or run folder; copy them here first "
                                f"(e.g. aws s3 cp {path} .) and give that path")
    if os.path.isdir(path):
        candidates = [os.path.join(path, "final", BACKBONE_FILE), os.path.join(path, BACKBONE_FILE)]
        found = next((candidate for candidate in candidates if os.path.exists(candidate)), None)
        if found is None:
            newest = sorted(glob.glob(os.path.join(glob.escape(path), "checkpoint_*", BACKBONE_FILE)))[-1:]
            if newest:  # Ray Train's checkpoint_<time> folders sort by time
                raise MissingInputError(f"{path}: the run has no final/{BACKBONE_FILE} yet (it is still running, or "
                                        f"stopped before its last epoch); to probe its newest checkpoint, give "
                                        f"--pretrained_weights {newest[0]}")
            raise MissingInputError(f"{path}: a folder without weights (no final/{BACKBONE_FILE} or {BACKBONE_FILE} "
                                    "in it); give a pretraining run's folder or a .pth file")
        path = found
    if not os.path.exists(path):
        hint = f"; after '#' only {' or '.join(WEIGHT_PARTS)} is read" if "#" in path else ""
        raise MissingInputError(f"{path}: no such weights file or run folder{hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise BackboneMismatchError(f"{path}: {why_unloadable(path, error)}") from error
    if isinstance(state, dict) and which in state and isinstance(state[which], dict):
        state = state[which]  # a DINO checkpoint: student/teacher wrappers
    elif isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BackboneMismatchError(f"{path}: not a state dict (got {type(state).__name__})")
    state = strip_prefixes(state)
    return {k: v for k, v in state.items() if not k.startswith("head.") and torch.is_tensor(v)}


def why_unloadable(path: str, error: Exception) -> str:
    """What a user can do about a weights file torch.load refused: an empty or cut-off file is copied again, a
    pickle that would run code is not loaded at all, anything else is not a PyTorch checkpoint."""
    if os.path.getsize(path) == 0:
        return "the file is empty (0 bytes); copy or download it again"
    if "GLOBAL" in str(error):  # torch names the class or function the pickle would call
        return (f"refused to load ({type(error).__name__}): unpickling it would run code or build objects other "
                "than tensors, and geodino loads weights with weights_only=True; save a plain state dict")
    if isinstance(error, EOFError) or "central directory" in str(error) or "failed reading zip" in str(error):
        return f"refused to load ({type(error).__name__}): the file is cut off or damaged; copy or download it again"
    return (f"refused to load ({type(error).__name__}): not a PyTorch checkpoint (torch.save) that loads with "
            "weights_only=True")


def describe(state: dict, path: str) -> tuple[str, int, int]:
    """(arch, patch size, band count) read off the weights themselves."""
    weight = state.get("patch_embed.proj.weight")
    if weight is None:
        raise BackboneMismatchError(f"{path}: no patch_embed.proj.weight: not a ViT backbone state dict")
    embed_dim, in_chans, patch, _ = weight.shape
    if embed_dim not in EMBED_DIM_TO_ARCH:
        raise BackboneMismatchError(f"{path}: embedding width {embed_dim} matches none of {list(EMBED_DIM_TO_ARCH.values())}")
    return EMBED_DIM_TO_ARCH[embed_dim], patch, in_chans


def trained_size(state: dict, patch: int, path: str) -> int:
    """The image size the position embeddings were made for (224 for DINO's, 64 for a ViT trained on 64-px
    crops): the model is built at that size, and timm interpolates them to whatever size it is then given."""
    position = state.get("pos_embed")
    if position is None:
        return 224
    side = math.isqrt(position.shape[1] - 1)  # one class token
    if side * side != position.shape[1] - 1:
        raise BackboneMismatchError(f"{path}: its position embedding holds {position.shape[1]} tokens, not a class "
                                    "token and a square grid of patches as geodino's ViTs have")
    return side * patch


def first_line(error: BaseException, containing: str) -> str:
    """The line of a long PyTorch message that says what is wrong (load_state_dict lists every tensor)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return next((line for line in lines if containing in line), lines[0] if lines else type(error).__name__)


def adapt_bands(state: dict, in_chans: int) -> dict:
    """RGB weights on N bands: timm's adapt_input_conv repeats the RGB filters and scales them by 3/N,
    so a band-averaged input gives the same activation as the original grey image."""
    from timm.models import adapt_input_conv

    state = dict(state)
    state["patch_embed.proj.weight"] = adapt_input_conv(in_chans, state["patch_embed.proj.weight"])
    return state


def load_backbone(source: str, arch: str | None = None, patch_size: int | None = None, in_chans: int = 3,
                  adapt_rgb: bool = True, seed: int = 0) -> Backbone:
    """Build the frozen backbone named by `source`; arch/patch_size, when given, must match the weights."""
    if source.startswith("random:"):
        name = source.split(":", 1)[1]
        random_arch, _, patch = name.partition("/")
        if patch and not (patch.isdigit() and 0 < int(patch) <= 64):
            raise ConfigError(f"{source}: after '/' comes the patch side in pixels, such as 8 or 16 "
                              f"(random:vit_small/16), not {patch!r}")
        torch.manual_seed(seed)
        patch_size = int(patch) if patch else (patch_size or 16)
        model = create_backbone(random_arch, patch_size, in_chans)
        return _frozen(Backbone(model, random_arch, patch_size, in_chans, source))
    if source.startswith("timm:"):
        return _frozen(_from_timm(source, in_chans))

    path, which = source_path_and_part(source)
    state = load_state_dict_file(path, which)
    found_arch, found_patch, found_chans = describe(state, path)
    problems = []
    if arch and arch != found_arch:
        problems.append(f"arch is {found_arch}, not {arch}")
    if patch_size and patch_size != found_patch:
        problems.append(f"patch size is {found_patch}, not {patch_size}")
    if found_chans != in_chans:
        if adapt_rgb and found_chans == 3:
            state = adapt_bands(state, in_chans)
        else:
            problems.append(f"it takes {found_chans} bands but the data has {in_chans}")
    if problems:
        raise BackboneMismatchError(f"{path}: " + "; ".join(problems))
    model = create_backbone(found_arch, found_patch, in_chans, img_size=trained_size(state, found_patch, path))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a tensor of another shape: another depth of MLP, other prefix tokens, ...
        raise BackboneMismatchError(f"{path}: does not fit a {found_arch}/{found_patch} "
                                    f"({first_line(error, 'size mismatch')})") from error
    if missing or unexpected:
        raise BackboneMismatchError(f"{path}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    return _frozen(Backbone(model, found_arch, found_patch, in_chans, source))


def check_timm_name(source: str, name: str) -> None:
    """A typo in a timm name, named before the hub is asked (offline, the hub's answer hides it)."""
    import difflib

    import timm

    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        raise WeightsUnavailableError(f"{source}: timm has no model {arch!r}" + (f" (did you mean {', '.join(close)}?)"
                                      if close else "") + "; see timm.list_models(pretrained=True)")
    tagged = timm.list_pretrained(f"{arch}.*")
    if tag and name not in tagged:
        raise WeightsUnavailableError(f"{source}: timm has no weights {tag!r} for {arch} (it has: "
                                      f"{', '.join(t.partition('.')[2] for t in tagged[:6]) or 'none'})")


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached from here, or None. Asked once with a short timeout: on a machine
    without network huggingface_hub retries each file 5 times (52 s of 22 'Retrying' lines, measured) before the
    same answer. Not asked behind a proxy (a direct connection says nothing there) or when already offline."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    proxied = any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
    if constants.HF_HUB_OFFLINE or proxied:
        return None
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=5).close()
    except OSError as error:
        return f"{endpoint.hostname}:{port}: {error.strerror or error}"
    return None


def _from_timm(source: str, in_chans: int) -> Backbone:
    import timm
    from huggingface_hub import constants

    name = source.split(":", 1)[1]
    check_timm_name(source, name)
    unreachable = hub_unreachable()
    if unreachable:
        constants.HF_HUB_OFFLINE = True  # the local cache alone is asked, as HF_HUB_OFFLINE=1 would have it
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0, in_chans=in_chans, dynamic_img_size=True)
    except Exception as error:
        reason = (f"the hub cannot be reached ({unreachable}) and they are not in the local cache" if unreachable
                  else f"{type(error).__name__}: {error}")
        raise WeightsUnavailableError(
            f"{source}: could not fetch pretrained weights ({reason}). Without hub access, "
            f"download the weights on a connected machine (e.g. timm.create_model('{name}', pretrained=True) and "
            f"torch.save(model.state_dict(), 'weights.pth')) and pass the file path as the backbone instead."
        ) from error
    arch = EMBED_DIM_TO_ARCH.get(model.embed_dim, name)
    config = getattr(model, "pretrained_cfg", {}) or {}
    mean, std = config.get("mean"), config.get("std")
    if mean is None or len(mean) != in_chans:
        mean = std = None
    return Backbone(model, arch, model.patch_embed.patch_size[0], in_chans, source, mean, std)


def _frozen(backbone: Backbone) -> Backbone:
    backbone.model.eval()
    for parameter in backbone.model.parameters():
        parameter.requires_grad = False
    return backbone
