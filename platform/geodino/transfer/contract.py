"""The data contract weights carry, and the probes' inputs resolved against it.

A geodino backbone records what it was trained on (``teacher_backbone.json`` beside the weights, or a
checkpoint's ``args``): its bands in order, how pixels were scaled, its patch size and training crop
size. A probe, sweep, predict or visualize run then takes its bands, normalisation and image size from
what the user typed, else from the weights, else rgb / max / the data's own size; a typed value that
contradicts the weights (other bands or band order, another normalisation) is refused by name unless
``--force``. Data with another pixel scale is transfer, not a contradiction: it is said, not refused.

Foreign weights state what they assume: a timm ImageNet model takes R, G, B scaled to [0, 1] and
standardised with its own mean and std (which the feature extractor applies); a random init takes
anything; a plain state dict without a contract is taken as it is (nothing is known about it).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

from geodino.archive.bands import RGB_BANDS
from geodino.data.config import channel_names, chosen_are_rgb, pixel_range
from geodino.dino.checkpoint import BACKBONE_FILE, CONTRACT_FILE, data_contract, source_path_and_part
from geodino.errors import GeodinoError

DEFAULT_BANDS, DEFAULT_NORMALIZE = "rgb", "max"
TIMM_CONTRACT = {"bands": list(RGB_BANDS), "rgb": True, "normalize": "max",
                 "assumes": "R, G, B in [0, 1], standardised with the model's ImageNet mean and std"}


class ContractError(GeodinoError, ValueError):
    """Data or options that contradict what the weights were trained on."""


@dataclass
class ProbeInputs:
    bands: str  # as --bands takes it
    normalize: str
    image_size: int | None


def contract_file(source: str) -> str | None:
    """The contract beside a weights file or run folder (None when there is none)."""
    path = source_path_and_part(source)[0]
    if os.path.isdir(path):
        final = os.path.join(path, "final", CONTRACT_FILE)
        return final if os.path.exists(final) else os.path.join(path, CONTRACT_FILE)
    if os.path.basename(path) == BACKBONE_FILE:
        return os.path.join(os.path.dirname(path), CONTRACT_FILE)
    return os.path.splitext(path)[0] + ".json"


def contract_of(source: str) -> dict | None:
    """What the weights named by SOURCE expect of data; None when nothing is known (random init, plain files)."""
    if source.startswith("random:"):
        return None
    if source.startswith("timm:"):
        return dict(TIMM_CONTRACT)
    sidecar = contract_file(source)
    if sidecar and os.path.exists(sidecar):
        with open(sidecar, "rb") as handle:
            try:
                return json.loads(handle.read())
            except ValueError as error:  # not JSON, or not text
                raise ContractError(f"{sidecar}: the data contract beside the weights is not valid JSON ({error}); "
                                    "copy it again with the weights, or remove it to use the weights without "
                                    "one") from error
    path = source_path_and_part(source)[0]
    if os.path.isfile(path) and path.endswith(".pth"):
        import torch

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - not loadable: no contract; loading the weights names the problem
            return None
        if isinstance(state, dict) and isinstance(state.get("args"), dict) and state["args"].get("inputs"):
            return data_contract(state["args"])
    return None


def same_bands(contract: dict, card: dict, bands: tuple[str, ...]) -> bool:
    """R, G, B is R, G, B whichever archive it comes from; other bands must match by name and order (the names a
    user's GeoTIFFs give their channels, or the card's bandN of weights trained on such a table)."""
    if contract.get("rgb") and chosen_are_rgb(card, bands):
        return True
    return list(contract["bands"]) in (list(channel_names(card, bands)), list(bands))


def resolve_inputs(source: str, card: dict, bands: str | None, normalize: str | None, image_size: int | None,
                   force: bool, prog: str = "probe") -> ProbeInputs:
    """The inputs a probe of SOURCE uses on data with this card (see the module docstring)."""
    from geodino.data.config import resolve_bands

    contract = contract_of(source)
    if contract is None or contract.get("bands") is None:
        return ProbeInputs(bands or DEFAULT_BANDS, normalize or DEFAULT_NORMALIZE, image_size)
    if bands is None:
        rgb_by_name = contract.get("rgb") and set(RGB_BANDS) <= set(card.get("band_names") or ())
        bands = DEFAULT_BANDS if contract.get("rgb") and not rgb_by_name else ",".join(contract["bands"])
    chosen = resolve_bands(card, bands)
    problems = []
    if not same_bands(contract, card, chosen):
        problems.append(f"the weights take bands {contract['bands']}, the data gives {list(chosen)}")
    wanted = contract.get("normalize") or DEFAULT_NORMALIZE
    if normalize is None:
        normalize = wanted
    elif normalize != wanted:
        problems.append(f"the weights were trained with --normalize {wanted}, not {normalize}")
    if problems and not force:
        raise ContractError(f"{source}: {'; '.join(problems)} (from {contract_file(source) or 'the checkpoint'}). "
                            "Leave the flag out to use the weights' own, or pass --force to run anyway")
    if normalize == "max" and contract.get("pixel_max") and card.get("pixel_max"):
        trained, here = pixel_range(contract), pixel_range(card)
        if trained != here:
            print(f"{prog}: note: the weights saw pixels mapped from {trained[0]:g}..{trained[1]:g} to 0..1, this "
                  f"data's are mapped from {here[0]:g}..{here[1]:g} (its card's pixel scale)", file=sys.stderr)
    return ProbeInputs(bands, normalize, image_size or contract.get("image_size"))
