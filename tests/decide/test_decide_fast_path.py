"""The small-batch paths give exactly the general path's decisions.

Two places take a shortcut for small batches: the bandit predicts its whole ensemble with one
stacked LightGBM model up to ``STACKED_MAX_ROWS`` rows (one model at a time above), and the
real-time service decides on typed columns (``DecisionPolicy.decide_columns``) instead of
the feature frame the batch path hands to ``DecisionPolicy.decide``. Both must change nothing:
same actions, propensities, holdout, rules, expected margins and explanations, bit for bit.
"""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pandas as pd
import pytest

from journey_pipeline.actions import ACTION_NAMES
from journey_pipeline.decide.bandit import STACKED_MAX_ROWS, ContextualBandit
from journey_pipeline.decide.policy import DecisionPolicy, PolicyRules, decisions_frame
from journey_pipeline.decide.synthetic import synthetic_contexts
from journey_pipeline.features.contract import FEATURES, LIFECYCLE_STAGES, MODEL_FEATURES
from journey_pipeline.features.feature_store import _typed_frame
from journey_pipeline.serve.core import (
    DecisionRequest,
    _apply_request_context,
    _feature_columns,
    decision_responses,
)


def _noisy_contexts(n: int, seed: int) -> pd.DataFrame:
    """Synthetic contexts with missing rows, NaN, inf and -inf sprinkled in."""
    contexts = synthetic_contexts(n, seed=seed, missing_share=0.1)
    rng = np.random.default_rng(seed)
    values = contexts.to_numpy()
    draw = rng.random(values.shape)
    values[draw < 0.03] = np.inf
    values[(draw >= 0.03) & (draw < 0.06)] = -np.inf
    values[(draw >= 0.06) & (draw < 0.1)] = np.nan
    return pd.DataFrame(values, index=contexts.index, columns=contexts.columns)


def _bandits(
    trained_bandit: ContextualBandit,
    training_frame: pd.DataFrame,
    regression_bandit: ContextualBandit | None = None,
):
    yield trained_bandit
    if regression_bandit is not None:
        yield regression_bandit
    # Some members constant (too few rows for trees), and all members explained.
    mixed = copy.deepcopy(trained_bandit)
    mixed._models[1][2] = 0.25
    mixed._models[5][0] = -1.5
    mixed.explain_members = 3
    yield mixed
    independent = ContextualBandit(
        ACTION_NAMES, seed=3, n_members=3, shared_baseline=False, feature_names=MODEL_FEATURES
    )
    frame = training_frame.iloc[:2000]
    yield independent.update(
        frame[MODEL_FEATURES], frame["action"], frame["propensity"], frame["reward"]
    )


def test_stacked_ensemble_predicts_exactly_what_its_models_predict(
    trained_bandit, training_frame, regression_bandit
):
    features = trained_bandit._matrix(_noisy_contexts(STACKED_MAX_ROWS, seed=1))
    for bandit in _bandits(trained_bandit, training_frame, regression_bandit):
        model = bandit._stacked_models()
        assert model is not None
        raw = model.predict(features, raw_score=True)
        raw = np.reshape(raw, (len(features), -1)).T.reshape(bandit._one_by_one(features).shape)
        assert np.array_equal(raw, bandit._one_by_one(features))
        stacked = bandit._member_predictions(features, with_baseline=False)
        one_by_one = copy.deepcopy(bandit)
        one_by_one._stacked = False  # predict model by model
        assert np.array_equal(
            one_by_one._member_predictions(features, with_baseline=False), stacked
        )
        # Not pickled: rebuilt after loading, with the same numbers.
        loaded = pickle.loads(pickle.dumps(bandit))
        assert loaded._stacked is None
        assert np.array_equal(loaded._member_predictions(features, with_baseline=False), stacked)


def test_small_batches_decide_like_large_ones(trained_bandit, training_frame):
    contexts = _noisy_contexts(STACKED_MAX_ROWS + 150, seed=2)[MODEL_FEATURES]
    keys = pd.Index([f"decision-{i}" for i in range(len(contexts))])
    actions = np.random.default_rng(3).choice(ACTION_NAMES, len(contexts))
    for bandit in _bandits(trained_bandit, training_frame):
        whole = bandit.decide_and_score(contexts, draw_keys=keys)  # one model at a time
        singles = pd.concat(
            [
                bandit.decide_and_score(contexts.iloc[i : i + 1], draw_keys=keys[i : i + 1])
                for i in range(0, len(contexts), 7)
            ]
        )
        pd.testing.assert_frame_equal(whole.iloc[::7], singles, check_exact=True)
        chunks = pd.concat(
            [
                bandit.decide_and_score(contexts.iloc[i : i + 50], draw_keys=keys[i : i + 50])
                for i in range(0, len(contexts), 50)
            ]
        )
        pd.testing.assert_frame_equal(whole, chunks, check_exact=True)
        explained = bandit.explain(contexts, actions)
        assert explained.iloc[:40].tolist() == bandit.explain(contexts[:40], actions[:40]).tolist()
        probabilities = bandit.action_probabilities(contexts)
        pd.testing.assert_frame_equal(
            probabilities.iloc[:9], bandit.action_probabilities(contexts.iloc[:9]), check_exact=True
        )


def _plain_values(contexts: pd.DataFrame, ids: list[str]) -> dict[str, list]:
    """What the online reader returns for ``ids``: plain values, None where absent."""
    values: dict[str, list] = {name: [None] * len(ids) for name in FEATURES}
    for i, contact_id in enumerate(ids):
        if contact_id not in contexts.index:
            continue
        row = contexts.loc[contact_id]
        for name, typ in FEATURES.items():
            if name == "lifecycle_stage":
                rank = row["lifecycle_stage_rank"]
                values[name][i] = LIFECYCLE_STAGES[int(rank)] if np.isfinite(rank) else None
            elif name in row.index and np.isfinite(row[name]):
                values[name][i] = int(row[name]) if typ == "INTEGER" else float(row[name])
            elif name in row.index and typ == "DOUBLE" and not np.isnan(row[name]):
                values[name][i] = float(row[name])  # a DOUBLE can be infinite
    return values


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_service_columns_decide_like_the_batch_frame(trained_bandit, seed):
    rng = np.random.default_rng([seed, 11])
    contexts = _noisy_contexts(60, seed=seed)
    known = list(contexts.index)
    pick = [str(c) for c in rng.choice(known, 12, replace=False)]  # the rules' contacts
    ids = [*pick, *(str(c) for c in rng.choice(known, 52)), "C-unknown-1", "C-unknown-2"]
    ids += ["C-unknown-3", ids[20], ids[20]]  # a contact triggering three times: in-batch cap
    rng.shuffle(ids)
    start = pd.Timestamp("2026-02-10T09:30:00Z")
    decided_at = [start + pd.Timedelta(days=float(d)) for d in rng.choice([0, 0.5, 3, 9], len(ids))]
    triggers = pd.DataFrame(
        {
            "contact_id": ids,
            "trigger_event_id": [f"evt-{i}" for i in range(len(ids))],
            "trigger_type": "cart.abandoned",
            "decided_at": decided_at,
        }
    )
    policy = DecisionPolicy(
        trained_bandit,
        model_version="3",
        rules=PolicyRules(holdout_share=0.2, ineligible_stages=("churned", "lead")),
        overrides={pick[0]: "offer_b", pick[1]: "no_offer"},
        erased_contacts=pick[2:6],
        last_offer_at={c: (start - pd.Timedelta(days=2)).tz_localize(None) for c in pick[6:]},
        autonomy=seed != 2,  # the kill switch in one run
    )
    requests = [DecisionRequest(c) for c in ids]
    requests[5] = DecisionRequest(ids[5], context={"cart_abandons_14d": 2.7, "spend_30d": None})
    values = _plain_values(contexts, ids)

    # The batch path: the contract-typed frame the online read makes, context written over it.
    frame = _typed_frame(ids, values)
    frame = frame[~frame.index.duplicated(keep="last")].copy()
    frame["cart_abandons_14d"] = frame["cart_abandons_14d"].astype("float64")
    frame["spend_30d"] = frame["spend_30d"].astype("float64")
    frame.loc[ids[5], ["cart_abandons_14d", "spend_30d"]] = [2.0, np.nan]
    reference = policy.decide(frame, triggers)

    # The service path: typed columns, context applied in place, decided on columns.
    features = _feature_columns(values)
    _apply_request_context(features, ids, requests)
    at = np.array([t.value for t in decided_at], dtype="datetime64[ns]")
    columns = policy.decide_columns(
        ids,
        list(triggers["trigger_event_id"]),
        at,
        features,
        trigger_types=["cart.abandoned"] * len(ids),
    )
    pd.testing.assert_frame_equal(decisions_frame(columns), reference, check_exact=True)
    assert decision_responses(columns) == decision_responses(reference)

    rules = set().union(*reference["rules_applied"].map(json.loads))
    if seed == 2:  # the kill switch claims every row the holdout does not
        assert rules == {"holdout", "kill_switch"}
    else:
        expected = {"holdout", "erased", "override", "ineligible_churned", "fallback"}
        assert expected | {"frequency_cap"} <= rules
        assert (reference["explanation"] != "[]").any()
        free = reference["rules_applied"] == "[]"
        assert free.any() and (reference.loc[free, "propensity"] < 1).any()

    # A flush builds one frame from the buffered columns: the same rows as the frames.
    halves = [{name: column[:30] for name, column in columns.items()}]
    halves.append({name: column[30:] for name, column in columns.items()})
    merged = decisions_frame(
        {name: np.concatenate([half[name] for half in halves]) for name in columns}
    )
    pd.testing.assert_frame_equal(merged, reference, check_exact=True)
