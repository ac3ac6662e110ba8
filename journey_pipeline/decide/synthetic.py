"""A small synthetic response world for the decision library: contexts shaped like the feature
contract, heterogeneous action effects with known expected margins, and logged training
frames. Tests, benchmarks and notebooks use it where the full simulator would be too slow.

Ground truth: a contact converts within the attribution window with a probability depending
on their features and the action. The discount (``offer_a``) lifts price-sensitive contacts
(cart abandoners with small baskets) and gives away 15% of the order; the free-shipping perk
(``offer_b``) lifts engaged high-value contacts and costs 5.00; offers annoy recent buyers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from journey_pipeline.actions import ACTIONS
from journey_pipeline.decide.log import decision_ids
from journey_pipeline.features.contract import (
    ACQUISITION_CHANNELS,
    LIFECYCLE_STAGES,
    MODEL_FEATURES,
)


def synthetic_contexts(n: int, seed: int = 0, *, missing_share: float = 0.0) -> pd.DataFrame:
    """``n`` contacts' feature rows (MODEL_FEATURES, plus ``lifecycle_stage``), indexed by
    contact_id ``C-000001``...; NULL where the contract says a value is undefined.
    ``missing_share`` of the rows are entirely null (contacts without features)."""
    rng = np.random.default_rng([seed, 7])
    orders_90d = rng.poisson(1.2, n)
    orders_30d = rng.binomial(orders_90d, 0.4)
    aov = np.where(orders_90d > 0, rng.gamma(4.0, 15.0, n), np.nan)
    spend_90d = np.nan_to_num(aov) * orders_90d
    spend_30d = np.nan_to_num(aov) * orders_30d
    ever_bought = (orders_90d > 0) | (rng.random(n) < 0.3)
    days_since_purchase = np.where(ever_bought, rng.integers(0, 200, n), np.nan)
    days_since_purchase = np.where(orders_30d > 0, rng.integers(0, 30, n), days_since_purchase)
    stage_rank = rng.choice(len(LIFECYCLE_STAGES), n, p=[0.2, 0.2, 0.15, 0.1, 0.15, 0.15, 0.05])
    offers_30d = rng.poisson(0.6, n)
    open_rate = np.where(offers_30d > 0, rng.beta(2, 3, n), np.nan)
    click_rate = np.where(offers_30d > 0, open_rate * rng.beta(2, 5, n), np.nan)
    days_since_action = np.where(offers_30d > 0, rng.integers(7, 30, n), np.nan)
    channel_rank = rng.choice(len(ACQUISITION_CHANNELS), n, p=[0.4, 0.3, 0.15, 0.15])
    frame = pd.DataFrame(
        {
            "spend_30d": spend_30d,
            "spend_90d": spend_90d,
            "orders_30d": orders_30d.astype(np.int64),
            "orders_90d": orders_90d.astype(np.int64),
            "avg_order_value_90d": aov,
            "product_views_7d": rng.poisson(3.0, n).astype(np.int64),
            "cart_abandons_14d": rng.poisson(0.7, n).astype(np.int64),
            "days_since_last_purchase": days_since_purchase,
            "lifecycle_stage_rank": stage_rank.astype(np.int64),
            "days_in_stage": rng.integers(0, 120, n).astype(np.int64),
            "tenure_days": rng.integers(0, 900, n).astype(np.int64),
            "offers_received_30d": offers_30d.astype(np.int64),
            "offer_open_rate_30d": open_rate,
            "offer_click_rate_30d": click_rate,
            "days_since_last_action": days_since_action,
            "acquisition_channel_rank": channel_rank.astype(np.int64),
            "loyalty_member": (rng.random(n) < 0.2).astype(np.int64),
        },
        index=pd.Index([f"C-{i:06d}" for i in range(1, n + 1)], name="contact_id"),
    )[MODEL_FEATURES].astype(np.float64)
    if missing_share > 0:
        frame.loc[rng.random(n) < missing_share] = np.nan
    frame["lifecycle_stage"] = np.asarray(LIFECYCLE_STAGES, dtype=object)[stage_rank]
    return frame


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def conversion_probabilities(contexts: pd.DataFrame) -> pd.DataFrame:
    """True conversion probability per action (contexts.index x action names)."""
    f = contexts[MODEL_FEATURES].fillna(0.0)
    base = (
        -2.2
        + 0.5 * np.log1p(f["orders_90d"])
        + 0.15 * f["cart_abandons_14d"]
        + 0.04 * f["product_views_7d"]
        + 0.3 * (f["lifecycle_stage_rank"] >= 4)
    )
    price_sensitive = (f["cart_abandons_14d"] >= 1) & (f["avg_order_value_90d"] < 60)
    engaged = (f["product_views_7d"] >= 4) | (f["spend_90d"] > 150)
    recent_buyer = contexts["days_since_last_purchase"].fillna(999) < 14
    lift_a = np.where(price_sensitive, 1.3, -0.1) - 0.6 * recent_buyer
    lift_b = np.where(engaged, 0.9, -0.2) - 0.6 * recent_buyer
    return pd.DataFrame(
        {
            "no_offer": _sigmoid(base.to_numpy()),
            "offer_a": _sigmoid((base + lift_a).to_numpy()),
            "offer_b": _sigmoid((base + lift_b).to_numpy()),
        },
        index=contexts.index,
    )


def _order_value(contexts: pd.DataFrame) -> np.ndarray:
    return contexts["avg_order_value_90d"].fillna(55.0).clip(lower=10.0).to_numpy()


def expected_margins(contexts: pd.DataFrame) -> pd.DataFrame:
    """True expected margin per action: P(convert) * order value * (1 - discount) - cost."""
    conversion = conversion_probabilities(contexts)
    value = _order_value(contexts)
    return pd.DataFrame(
        {
            name: conversion[name].to_numpy() * value * (1 - ACTIONS[name].discount_rate)
            - ACTIONS[name].fixed_cost
            for name in conversion.columns
        },
        index=contexts.index,
    )


def draw_outcomes(
    contexts: pd.DataFrame, actions: np.ndarray | pd.Series, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Sample (converted, reward) for the given actions: reward = revenue - fixed cost."""
    rng = np.random.default_rng([seed, 11])
    actions = np.asarray(actions, dtype=object)
    conversion = conversion_probabilities(contexts)
    columns = list(conversion.columns)
    codes = np.array([columns.index(a) for a in actions])
    p = conversion.to_numpy()[np.arange(len(actions)), codes]
    converted = rng.random(len(actions)) < p
    amount = _order_value(contexts) * rng.lognormal(0.0, 0.25, len(actions))
    discount = np.array([ACTIONS[a].discount_rate for a in actions])
    cost = np.array([ACTIONS[a].fixed_cost for a in actions])
    reward = np.where(converted, amount * (1 - discount), 0.0) - cost
    return converted, reward


def synthetic_training_frame(
    n: int, seed: int = 0, *, start: str = "2026-01-01", days: int = 28
) -> pd.DataFrame:
    """A training frame logged by the uniform policy over ``days`` days: decision_id,
    contact_id, decided_at, action, propensity, reward, converted and MODEL_FEATURES."""
    rng = np.random.default_rng([seed, 13])
    contexts = synthetic_contexts(n, seed)
    actions = np.asarray(list(ACTIONS), dtype=object)[rng.integers(0, len(ACTIONS), n)]
    converted, reward = draw_outcomes(contexts, actions, seed)
    decided_at = pd.Timestamp(start) + pd.to_timedelta(rng.random(n) * days * 86_400, unit="s")
    frame = contexts[MODEL_FEATURES].reset_index()
    frame.insert(0, "decision_id", decision_ids(frame["contact_id"], frame["contact_id"], "log"))
    frame.insert(2, "decided_at", decided_at)
    frame.insert(3, "action", actions)
    frame.insert(4, "propensity", 1.0 / len(ACTIONS))
    frame.insert(5, "reward", reward)
    frame.insert(6, "converted", converted)
    return frame.sort_values("decided_at", ignore_index=True)
