"""The action catalogue: what the policy can do to a customer and what each action costs.

Reward (margin) of a decision = revenue attributed to it within the attribution window minus
the action's fixed cost. A discount's cost shows up as lower order amounts, so it is already
inside the revenue; a perk costs a fixed amount once it is delivered.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Action:
    name: str
    description: str
    fixed_cost: float = 0.0  # currency units, charged when the action is delivered
    discount_rate: float = 0.0  # fraction taken off orders it influences


ACTIONS: dict[str, Action] = {
    a.name: a
    for a in (
        Action("no_offer", "Do nothing: the control action and the default/fallback."),
        Action("offer_a", "15% discount on the next order.", discount_rate=0.15),
        Action("offer_b", "Free-shipping perk worth a fixed 5.00.", fixed_cost=5.0),
    )
}
ACTION_NAMES: list[str] = list(ACTIONS)
DEFAULT_ACTION = "no_offer"


def validate_action(name: str) -> str:
    """Return ``name`` if it is a known action, else raise ``ValueError`` naming the choices."""
    if name not in ACTIONS:
        raise ValueError(f"unknown action {name!r}; known actions: {', '.join(ACTIONS)}")
    return name
