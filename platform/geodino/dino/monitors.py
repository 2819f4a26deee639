"""Is the run learning? Collapse of the teacher's output, told from its entropies.

DINO's two failure modes (its paper, section 5.3): the teacher's output concentrates on one dimension
or spreads evenly over all of them. Either way the loss can still look fine, so runs die silently.
"""

from __future__ import annotations

COLLAPSE_EPOCHS = 3  # consecutive epochs before a collapse warning
COLLAPSE_LOW = 0.1  # teacher entropy (nats) below this: every image maps to one prototype
COLLAPSE_HIGH = 0.98  # share of log(out_dim) above this: the teacher outputs a uniform distribution


class CollapseWarning(UserWarning):
    """The teacher's output distribution collapsed; training continues but is probably wasted."""


def collapse_state(history: list[dict]) -> str | None:
    """'one_prototype' or 'uniform' when the last COLLAPSE_EPOCHS epochs all collapsed the same way."""
    recent = history[-COLLAPSE_EPOCHS:]
    if len(recent) < COLLAPSE_EPOCHS:
        return None
    if all(m["teacher_entropy"] < COLLAPSE_LOW for m in recent):
        return "one_prototype"
    if all(m["teacher_entropy"] > COLLAPSE_HIGH * m["max_entropy"] for m in recent):
        return "uniform"
    return None
