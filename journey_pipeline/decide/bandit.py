"""The contextual bandit: LightGBM reward models, Thompson sampling and exact propensities.

Exploration scheme, and why
---------------------------
Thompson sampling over a bootstrap ensemble, mixed with epsilon-uniform exploration:

* The reward model is *two-part* (``reward_model="two_part"``, the default): each of
  ``n_members`` ensemble members holds one LightGBM conversion classifier per action, trained
  on its own Poisson bootstrap of that action's rows, and one pooled regressor gives the
  margin a conversion brings. The expected margin of action ``a`` is
  ``floor_a + P(conversion | a, x) * value(x) * scale_a`` (see *Why two parts* below).
  ``reward_model="regression"`` regresses the margins instead: a pooled *baseline* regressor
  plus one *residual* booster per member and action.
* The spread between members is the model's uncertainty: where data is thin the members
  disagree and the policy explores, where it is plentiful they agree and the policy exploits.
* For a contact, one member is drawn uniformly and its best action is taken; with probability
  ``epsilon`` a uniformly random action is taken instead.
* ``exploration_scale`` (default 0.5) pulls each member's predictions towards the ensemble mean
  before the argmax: 1 samples from the bootstrap spread as it is, 0 is greedy on the mean.
  With a few thousand 7-day margins, mostly 0 with an occasional order, the bootstrap spread
  is wide enough that plain Thompson sampling still sends the costliest offer to many contacts
  it does not suit; halving the spread keeps the exploration where the members disagree most
  and roughly halves its cost (``bench/bench_quality.py`` measures it against the oracle).
* ``pessimism`` (default 1.5) lowers each action's value, in every member, by that many standard
  deviations of the members' estimates of its advantage over the control action (the first
  action, ``no_offer``, unless ``control_action`` names another). An action is then taken
  where the ensemble is confident it beats doing nothing, not merely where its estimate is
  highest: the argmax over noisy estimates picks the actions whose errors happened to be
  positive (the optimizer's curse), and with offers that lose money for most contacts that
  is a steady loss. The penalty shrinks as the data grows and the members agree. It costs
  learning: fewer offers are sent, so their effects are learnt more slowly (the README's
  decision-quality section measures both sides with ``bench/bench_quality.py``).

Because the members' argmaxes are all computed, the probability of every action is known
exactly, never estimated::

    p(a | x) = (1 - epsilon) * #{members whose argmax is a} / n_members + epsilon / |A|

so the propensity is floored at ``epsilon / |A|`` (off-policy evaluation needs it > 0) and the
probabilities sum to one over the actions. Softmax over a point estimate would need a
temperature nobody can set well for margins in currency units; plain epsilon-greedy explores
where the model is already sure. The bootstrap ensemble explores where it is unsure.

Why two parts
-------------
A 7-day margin is the action's cost for most contacts (they buy nothing) and an order of tens
of dollars for a few; offers work by changing how many buy. Regressing such margins, the
variance of the order amounts drowns the differences between actions (a few dollars a
decision), and the trees split on the spending features that explain the amounts. A
classifier of "bought anything" per action sees a bounded label, and what a conversion is worth
hardly depends on the offer, so one regressor learns it from every action's conversions; a
per-action scale (the action's own ratio of realised to predicted value) carries what an offer
changes in the amount, such as its discount. A conversion is a reward above the action's
floor: the minimum reward, when at least ``FLOOR_SHARE`` of the action's rewards sit on it.
When an action's rewards have no floor (a continuous reward) the bandit falls back to the
regression model. Classifier leaves need 300 rows (or a tenth of the action's rows), as below.
``bench/bench_quality.py`` compares the policy with the oracle.

Regression: why a pooled baseline and per-action residuals
----------------------------------------------------------
Margins are dominated by what the contact would spend anyway (purchase propensity, order
value), and the differences between actions are a small part of them; a 7-day margin is
mostly 0 with an occasional order, so it is very noisy. Independent per-action regressors
each learn the large baseline from a third of the data, and their errors (not the effect of
the action) decide the argmax: such a policy behaves close to uniform random. Learning the
baseline once on all rows, and per action only a strongly regularised deviation from it,
makes the comparison between actions depend on the deviations alone (the baseline cancels in
the argmax) and shrinks them towards "no difference" until the data shows one. The deviations
are learnt from out-of-fold baseline predictions (two folds): a baseline predicting its own
training rows has fitted part of their noise, and of their actions' effects wherever the
logging policy chose actions by the features, and would hide exactly what the deviations must
find. A deviation needs 300 rows in a leaf (``DEFAULT_RESIDUAL_PARAMS``), or a tenth of its
action's rows when that is fewer: margins are noisy enough that smaller leaves mostly split on
noise in the spending features. With
``shared_baseline=False`` the bandit fits independent per-action regressors instead.

Cold start: until ``min_observations`` rewards have been seen, actions are uniform at random
with propensity ``1 / |A|``.

Determinism: training randomness derives from ``(seed, number of fits)``. Decision randomness
comes either from a generator seeded with ``seed`` (same seed and same sequence of calls ->
same actions), or, when ``draw_keys`` are given, from a keyed hash of each key, so a decision
is a pure function of (seed, models, features, key): a re-run reproduces it whatever else is in
the batch. The decision policy passes the decision ids as keys.

Scoring cost: the ensemble is ``n_members * |A|`` boosters. For batches of up to
``STACKED_MAX_ROWS`` rows (the real-time path) they are predicted by one stacked LightGBM model
holding all their trees, one call instead of one per booster, with bit-identical results (see
:func:`_stack_models`; the stacked model is checked against the boosters when it is built);
larger batches go booster by booster, which is faster there.

The bandit is the learner and explorer only: no holdout and no business rule live here.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

# Shallow trees and few rounds (20 at a learning rate of 0.2) keep batch scoring above 100k
# decisions/s with the whole ensemble evaluated (n_members * |A| models); rewards are noisy, so
# deeper or more trees would mostly fit noise anyway.
DEFAULT_LGBM_PARAMS: dict[str, Any] = {
    "objective": "regression",
    "learning_rate": 0.15,
    "num_leaves": 15,
    "max_depth": 4,
    "min_data_in_leaf": 20,
    "lambda_l2": 1.0,
    "feature_fraction": 0.9,
    "verbosity": -1,
    "deterministic": True,
    "force_col_wise": True,
}
# The per-action residual boosters on top of the pooled baseline: a deviation from the
# baseline needs many rows (min_data_in_leaf) and survives heavy shrinkage (lambda_l2, a
# small learning rate), so noise in the margins does not turn into differences between
# actions.
DEFAULT_RESIDUAL_PARAMS: dict[str, Any] = {
    **DEFAULT_LGBM_PARAMS,
    "learning_rate": 0.2,
    "num_leaves": 7,
    "max_depth": 3,
    "min_data_in_leaf": 300,
    "lambda_l2": 10.0,
}
# The pooled baseline sees every row: a little more capacity.
DEFAULT_BASELINE_PARAMS: dict[str, Any] = {
    **DEFAULT_LGBM_PARAMS,
    "learning_rate": 0.1,
    "num_leaves": 15,
    "max_depth": 4,
    "min_data_in_leaf": 50,
    "lambda_l2": 10.0,
}

# The two-part reward model: per-action conversion classifiers (on the members' bootstraps)
# and one pooled regressor of the margin above the action's floor given a conversion.
DEFAULT_CONVERSION_PARAMS: dict[str, Any] = {
    **DEFAULT_LGBM_PARAMS,
    "objective": "binary",
    "learning_rate": 0.2,
    "num_leaves": 3,
    "max_depth": 2,
    "min_data_in_leaf": 300,
    "lambda_l2": 10.0,
}
VALUE_BOOST_ROUND = 20
DEFAULT_VALUE_PARAMS: dict[str, Any] = {
    **DEFAULT_LGBM_PARAMS,
    "learning_rate": 0.15,
    "num_leaves": 15,
    "min_data_in_leaf": 100,
    "lambda_l2": 10.0,
}
REWARD_MODELS = ("two_part", "regression")
# An action's rewards have a floor when at least this share of them equal their minimum
# (the margin of a contact who bought nothing: minus the action's cost).
FLOOR_SHARE = 0.2

# Standard deviations of the members' estimates of an action's advantage over the control
# action taken off its value before the argmax (see the module docstring).
DEFAULT_PESSIMISM = 1.5

# Up to this many rows, the ensemble is predicted by its stacked model (one LightGBM call).
STACKED_MAX_ROWS = 256

_UNIT = 2.0**-53  # maps the top 53 bits of a uint64 hash onto [0, 1)


def _as_matrix(contexts: pd.DataFrame, feature_names: Sequence[str]) -> np.ndarray:
    """Numeric matrix of ``feature_names`` from ``contexts``; inf and -inf become NaN.

    LightGBM treats NaN as missing, which is what an infinite feature value really is.
    """
    missing = [name for name in feature_names if name not in contexts.columns]
    if missing:
        raise ValueError(f"contexts lack the feature columns {missing}")
    if not feature_names:
        return np.empty((len(contexts), 0), dtype=np.float64)
    return _finite_or_nan(contexts[list(feature_names)].to_numpy(dtype=np.float64, na_value=np.nan))


def _finite_or_nan(values: np.ndarray) -> np.ndarray:
    """A C-ordered float64 copy of ``values`` with every non-finite entry NaN."""
    matrix = np.array(values, dtype=np.float64, order="C", copy=True)
    matrix[~np.isfinite(matrix)] = np.nan
    return matrix


# Objectives whose prediction is the raw score (no link function): only their boosters can be
# summed tree by tree inside one stacked model and still predict bit for bit the same.
_IDENTITY_OBJECTIVES = frozenset(
    {"regression", "regression_l1", "huber", "fair", "quantile", "mape", "custom", "none"}
)
# Boosters whose raw score (before the link) is what the ensemble reads: stacked and one by one
# alike are predicted with raw_score=True, so the link does not matter for stacking.
_STACKABLE_OBJECTIVES = _IDENTITY_OBJECTIVES | {"binary"}
_TREE_HEADER = re.compile(r"^Tree=\d+\n", flags=re.MULTILINE)


def _constant_tree(value: float) -> str:
    """A one-leaf LightGBM tree (model-text body) predicting ``value``."""
    return (
        "num_leaves=1\nnum_cat=0\nsplit_feature=\nsplit_gain=\nthreshold=\ndecision_type=\n"
        f"left_child=\nright_child=\nleaf_value={value!r}\nleaf_weight=\nleaf_count=\n"
        "internal_value=\ninternal_weight=\ninternal_count=\nis_linear=0\nshrinkage=1\n\n\n"
    )


def _stack_models(models: Sequence[lgb.Booster | float], n_features: int) -> lgb.Booster | None:
    """One LightGBM model whose raw score ``k`` is the prediction of ``models[k]``.

    LightGBM predicts a model with several trees per iteration (a multiclass model) by adding,
    iteration after iteration, each tree's output to its own score, from 0: exactly the sums a
    separate regression booster per score makes. Stacking the trees of all the ensemble's
    boosters as the "classes" of one model therefore gives the same numbers bit for bit, from
    one call instead of one per booster. A constant member becomes a one-leaf tree; a booster
    with fewer iterations than the longest is padded with zero trees after its own. Returns
    None when a booster cannot be stacked (a link function, linear trees, an unexpected model
    text); the caller then predicts booster by booster.
    """
    trees: list[list[str]] = []
    header: dict[str, str] | None = None
    for model in models:
        if not isinstance(model, lgb.Booster):
            trees.append([_constant_tree(float(model))])
            continue
        text = model.model_to_string(num_iteration=None)
        start, end = text.find("\nTree="), text.find("end of trees")
        if start < 0 or end < 0:
            return None
        fields = dict(line.split("=", 1) for line in text[:start].splitlines() if "=" in line)
        objective = fields.get("objective", "").split()
        if (
            fields.get("num_tree_per_iteration") != "1"
            or fields.get("num_class") != "1"
            or fields.get("max_feature_idx") != str(n_features - 1)
            or not objective
            or objective[0] not in _STACKABLE_OBJECTIVES
            or "sqrt" in objective
            or "is_linear=1" in text[start:end]
        ):
            return None
        header = header or fields
        trees.append(_TREE_HEADER.split(text[start + 1 : end])[1:])
    if header is None or not all(trees):
        return None
    n_scores = len(models)
    n_iterations = max(len(model_trees) for model_trees in trees)
    zero = _constant_tree(0.0)
    parts = [
        "tree",
        f"version={header.get('version', 'v4')}",
        f"num_class={n_scores}",
        f"num_tree_per_iteration={n_scores}",
        "label_index=0",
        f"max_feature_idx={n_features - 1}",
        "objective=regression",
        f"feature_names={header['feature_names']}",
        f"feature_infos={header['feature_infos']}",
        "",
        "",
    ]
    body = "\n".join(parts)
    blocks = []
    for i in range(n_iterations):
        for k, model_trees in enumerate(trees):
            tree = model_trees[i] if i < len(model_trees) else zero
            blocks.append(f"Tree={i * n_scores + k}\n{tree}")
    text = body + "".join(blocks) + "end of trees\n\nparameters:\nend of parameters\n\n"
    try:
        return lgb.Booster(model_str=text)
    except lgb.basic.LightGBMError:
        return None


class ContextualBandit:
    """A contextual bandit over ``actions`` with exact propensities.

    ``ContextualBandit(actions=[...], seed=0, **options)``; options (keyword only):

    - ``n_members`` (8): bootstrap ensemble size; propensities are multiples of
      ``(1 - epsilon) / n_members`` plus the floor.
    - ``epsilon`` (0.05): share of uniform exploration, the propensity floor times ``|A|``.
    - ``min_observations`` (500): rewards needed before the models are trained (cold start).
    - ``reward_model`` ("two_part"): per-action conversion classifiers times a pooled value
      regressor; "regression" regresses the margins (see the module docstring).
      ``conversion_params`` and ``value_params`` are merged over
      ``DEFAULT_CONVERSION_PARAMS`` and ``DEFAULT_VALUE_PARAMS``.
    - ``exploration_scale`` (0.5): how much of the bootstrap spread the Thompson draw keeps.
    - ``pessimism`` (1.5): standard deviations of the members' spread of an action's advantage
      over ``control_action`` (default: the first action) taken off its value before the
      argmax; 0 compares the estimates as they are.
    - ``shared_baseline`` (True, regression only): a pooled baseline regressor plus per-action
      residual boosters; False fits independent per-action regressors.
    - ``num_boost_round`` (20) and ``lgbm_params``: LightGBM settings of the per-action models
      (merged over ``DEFAULT_RESIDUAL_PARAMS``, or ``DEFAULT_LGBM_PARAMS`` without the shared
      baseline); ``baseline_boost_round`` (50) and ``baseline_params`` for the baseline.
    - ``min_rows_per_model`` (30): below this many rows an action's member predicts the mean of
      its bootstrap sample instead of fitting trees.
    - ``max_history`` (200,000): only the latest observations are kept for retraining.
    - ``inverse_propensity_weights`` (False): weight training rows by 1/propensity (clipped at
      ``max_weight``), correcting for the logging policy at the cost of variance.
    - ``feature_names``: the numeric feature columns; by default the numeric columns of the
      first contexts passed to :meth:`update`.
    - ``num_threads`` (1) for LightGBM training and prediction. One thread per process is the
      fastest on a shared machine (OpenMP threads spin while waiting for a busy core) and for
      the one-contact calls of the real-time service; raise it on a dedicated host.
    - ``explain_members`` (1): how many ensemble members' SHAP values are averaged by
      :meth:`explain`. TreeSHAP costs far more than prediction, and one bootstrap member's
      attributions are already a faithful picture of the ensemble's; ``n_members`` gives the
      exact attribution of the ensemble mean.
    """

    def __init__(
        self,
        actions: Sequence[str],
        seed: int = 0,
        *,
        n_members: int = 8,
        epsilon: float = 0.05,
        min_observations: int = 500,
        num_boost_round: int = 20,
        lgbm_params: dict[str, Any] | None = None,
        shared_baseline: bool = True,
        baseline_boost_round: int = 50,
        baseline_params: dict[str, Any] | None = None,
        min_rows_per_model: int = 30,
        max_history: int = 200_000,
        inverse_propensity_weights: bool = False,
        max_weight: float = 20.0,
        feature_names: Sequence[str] | None = None,
        num_threads: int = 1,
        explain_members: int = 1,
        exploration_scale: float = 0.5,
        reward_model: str = "two_part",
        conversion_params: dict[str, Any] | None = None,
        value_params: dict[str, Any] | None = None,
        pessimism: float = DEFAULT_PESSIMISM,
        control_action: str | None = None,
    ) -> None:
        actions = list(actions)
        if len(actions) < 1 or len(set(actions)) != len(actions):
            raise ValueError(f"actions must be distinct and non-empty, got {actions}")
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        if n_members < 1:
            raise ValueError(f"n_members must be >= 1, got {n_members}")
        self.actions: list[str] = actions
        self.seed = int(seed)
        self.n_members = int(n_members)
        self.epsilon = float(epsilon)
        if not 0.0 <= exploration_scale <= 1.0:
            raise ValueError(f"exploration_scale must be in [0, 1], got {exploration_scale}")
        self.exploration_scale = float(exploration_scale)
        if not pessimism >= 0.0:
            raise ValueError(f"pessimism must be >= 0, got {pessimism}")
        self.pessimism = float(pessimism)
        control_action = actions[0] if control_action is None else control_action
        if control_action not in actions:
            raise ValueError(f"control_action {control_action!r} is not one of {actions}")
        self.control_action = control_action
        if reward_model not in REWARD_MODELS:
            raise ValueError(f"reward_model must be one of {REWARD_MODELS}, got {reward_model!r}")
        self.reward_model = reward_model
        self.conversion_params = {**DEFAULT_CONVERSION_PARAMS, **(conversion_params or {})}
        self.value_params = {**DEFAULT_VALUE_PARAMS, **(value_params or {})}
        self.min_observations = int(min_observations)
        self.num_boost_round = int(num_boost_round)
        self.shared_baseline = bool(shared_baseline)
        defaults = DEFAULT_RESIDUAL_PARAMS if self.shared_baseline else DEFAULT_LGBM_PARAMS
        self.lgbm_params = {**defaults, **(lgbm_params or {})}
        self.baseline_boost_round = int(baseline_boost_round)
        self.baseline_params = {**DEFAULT_BASELINE_PARAMS, **(baseline_params or {})}
        self.min_rows_per_model = int(min_rows_per_model)
        self.max_history = int(max_history)
        self.inverse_propensity_weights = bool(inverse_propensity_weights)
        self.max_weight = float(max_weight)
        self.feature_names: list[str] | None = (
            list(feature_names) if feature_names is not None else None
        )
        self.num_threads = int(num_threads)
        self.explain_members = max(1, min(int(explain_members), self.n_members))

        self._action_index = {name: i for i, name in enumerate(self.actions)}
        self._history_X = np.empty((0, 0), dtype=np.float64)
        self._history_action = np.empty(0, dtype=np.int64)
        self._history_propensity = np.empty(0, dtype=np.float64)
        self._history_reward = np.empty(0, dtype=np.float64)
        self._n_observed = 0
        self._n_fits = 0
        # members x actions; each a Booster or, with too few rows, a constant prediction.
        self._models: list[list[lgb.Booster | float]] | None = None
        # The pooled baseline (shared_baseline): a Booster, or a constant with too few rows.
        self._baseline: lgb.Booster | float | None = None
        # members x actions: each residual booster's own intercept (shared_baseline), added to
        # its trees' output; 0 for constants and without a shared baseline.
        self._intercepts: np.ndarray | None = None
        # Two-part model (None when the margins are regressed): each action's floor, the pooled
        # value regressor (a Booster or a constant) and each action's value scale.
        self._floors: np.ndarray | None = None
        self._value: lgb.Booster | float | None = None
        self._value_scales: np.ndarray | None = None
        self._decide_rng = np.random.default_rng([self.seed, 0])
        self._draw_hash_key = hashlib.sha256(f"bandit-draw:{self.seed}".encode()).hexdigest()[:16]
        # The residual models stacked into one LightGBM model (:func:`_stack_models`), built
        # on first use: None until then, False when they cannot be stacked. Never pickled.
        self._stacked: lgb.Booster | bool | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_stacked", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Bandits pickled before the pooled baseline existed hold independent regressors.
        state.setdefault("shared_baseline", False)
        state.setdefault("_baseline", None)
        state.setdefault("baseline_boost_round", 50)
        state.setdefault("baseline_params", dict(DEFAULT_BASELINE_PARAMS))
        state.setdefault("_intercepts", None)
        state.setdefault("exploration_scale", 1.0)
        state.setdefault("reward_model", "regression")
        state.setdefault("conversion_params", dict(DEFAULT_CONVERSION_PARAMS))
        state.setdefault("value_params", dict(DEFAULT_VALUE_PARAMS))
        state.setdefault("_floors", None)
        state.setdefault("_value", None)
        state.setdefault("_value_scales", None)
        # Bandits pickled before pessimism compared the estimates as they were.
        state.setdefault("pessimism", 0.0)
        state.setdefault("control_action", state["actions"][0])
        self.__dict__.update(state)
        self._stacked = None

    # ------------------------------------------------------------------ state
    @property
    def n_observations(self) -> int:
        """Rewards seen by :meth:`update` so far (all of them, not only those kept)."""
        return self._n_observed

    @property
    def is_cold(self) -> bool:
        """True while the policy is uniform random (no trained reward models yet)."""
        return self._models is None

    @property
    def n_fits(self) -> int:
        """How many times the reward models were (re)trained."""
        return self._n_fits

    def _matrix(self, contexts: pd.DataFrame) -> np.ndarray:
        return _as_matrix(contexts, self.feature_names or [])

    # --------------------------------------------------------------- learning
    def update(
        self,
        contexts: pd.DataFrame,
        actions: Sequence[str] | pd.Series | np.ndarray,
        propensities: Sequence[float] | pd.Series | np.ndarray,
        rewards: Sequence[float] | pd.Series | np.ndarray,
    ) -> ContextualBandit:
        """Add logged (context, action, propensity, reward) rows and retrain the ensemble.

        ``contexts`` rows align positionally with the three arrays. Rows with a non-finite
        reward are ignored. Retraining happens once ``min_observations`` rewards were seen.
        Returns ``self``.
        """
        if self.feature_names is None:
            self.feature_names = list(contexts.select_dtypes(include=["number", "bool"]).columns)
        features = self._matrix(contexts)
        action_names = np.asarray(actions, dtype=object)
        unknown = sorted({str(a) for a in action_names if a not in self._action_index})
        if unknown:
            raise ValueError(f"unknown actions {unknown}; the bandit knows {self.actions}")
        action_idx = np.array([self._action_index[a] for a in action_names], dtype=np.int64)
        propensity = np.asarray(propensities, dtype=np.float64)
        reward = np.asarray(rewards, dtype=np.float64)
        if not (len(features) == len(action_idx) == len(propensity) == len(reward)):
            raise ValueError("contexts, actions, propensities and rewards differ in length")
        keep = np.isfinite(reward)
        if np.any(keep & ~((propensity > 0) & (propensity <= 1))):
            raise ValueError("propensities must be in (0, 1]")

        if self._history_X.shape[1] != features.shape[1]:
            self._history_X = np.empty((0, features.shape[1]), dtype=np.float64)
        self._history_X = np.vstack([self._history_X, features[keep]])[-self.max_history :]
        self._history_action = np.concatenate([self._history_action, action_idx[keep]])[
            -self.max_history :
        ]
        self._history_propensity = np.concatenate([self._history_propensity, propensity[keep]])[
            -self.max_history :
        ]
        self._history_reward = np.concatenate([self._history_reward, reward[keep]])[
            -self.max_history :
        ]
        self._n_observed += int(keep.sum())
        if self._n_observed >= self.min_observations:
            self._fit()
        return self

    def _fit(self) -> None:
        """Train the pooled baseline (with ``shared_baseline``) and every (member, action)
        model on its own Poisson bootstrap of the action's rows."""
        rng = np.random.default_rng([self.seed, 1, self._n_fits])
        features, action_idx = self._history_X, self._history_action
        reward = self._history_reward
        weight_base = np.ones_like(reward)
        if self.inverse_propensity_weights:
            weight_base = np.minimum(1.0 / self._history_propensity, self.max_weight)
        floors = (
            self._reward_floors(reward, action_idx) if self.reward_model == "two_part" else None
        )
        if floors is not None:
            self._fit_two_part(features, action_idx, reward, weight_base, floors, rng)
            return
        self._floors = self._value = self._value_scales = None
        prior = float(reward.mean()) if len(reward) else 0.0
        feature_name = [f"f{i}" for i in range(features.shape[1])]
        # Residual boosters start from the baseline's prediction; without a shared baseline
        # they start from nothing and learn the whole margin.
        start = np.zeros_like(reward)
        baseline: lgb.Booster | float | None = None
        if self.shared_baseline:
            if features.shape[1] == 0 or len(reward) < 2 * self.baseline_params["min_data_in_leaf"]:
                baseline = float(np.average(reward, weights=weight_base)) if len(reward) else 0.0
                start = np.full_like(reward, baseline)
            else:
                params = {
                    **self.baseline_params,
                    "seed": int(rng.integers(0, 2**31 - 1)),
                    "num_threads": self.num_threads,
                }
                dataset = lgb.Dataset(
                    features, label=reward, weight=weight_base, feature_name=feature_name
                )
                baseline = lgb.train(params, dataset, num_boost_round=self.baseline_boost_round)
                start = self._cross_fitted_baseline(features, reward, weight_base, params, rng)
        rows_by_action = [np.flatnonzero(action_idx == a) for a in range(len(self.actions))]
        models: list[list[lgb.Booster | float]] = []
        intercepts = np.zeros((self.n_members, len(self.actions)), dtype=np.float64)
        for k in range(self.n_members):
            member_models: list[lgb.Booster | float] = []
            for a, rows in enumerate(rows_by_action):
                # Poisson(1) counts are the bootstrap of streaming data: same law as resampling
                # n of n with replacement, without materialising the resample.
                counts = rng.poisson(1.0, size=len(rows)).astype(np.float64)
                chosen = counts > 0
                if chosen.sum() < self.min_rows_per_model or features.shape[1] == 0:
                    # Too little data for trees: the bootstrap mean (of the residuals, with a
                    # baseline) still varies by member, so thin actions keep being explored.
                    if counts.sum():
                        value = float(np.average(reward[rows] - start[rows], weights=counts))
                    else:
                        value = 0.0 if self.shared_baseline else prior
                    member_models.append(value)
                    continue
                sel = rows[chosen]
                weight = counts[chosen] * weight_base[sel]
                init_score = None
                if self.shared_baseline:
                    # The action's average deviation from the baseline, shrunk towards 0 as
                    # if min_data_in_leaf more rows had deviated by nothing. Trees only split
                    # the rows by features, so an effect the action has on every contact
                    # alike would otherwise never be learned (no split has any gain).
                    shrink = float(self._min_leaf(len(sel)))
                    residual = reward[sel] - start[sel]
                    intercepts[k, a] = float(weight @ residual) / (float(weight.sum()) + shrink)
                    init_score = start[sel] + intercepts[k, a]
                member_models.append(
                    self._train_member(
                        self.lgbm_params, features[sel], reward[sel], weight, rng, init_score
                    )
                )
            models.append(member_models)
        self._baseline = baseline
        self._models = models
        self._intercepts = intercepts
        self._stacked = None
        self._n_fits += 1

    def _train_member(
        self,
        base_params: dict[str, Any],
        features: np.ndarray,
        label: np.ndarray,
        weight: np.ndarray,
        rng: np.random.Generator,
        init_score: np.ndarray | None = None,
    ) -> lgb.Booster:
        """One (member, action) booster on its bootstrap rows, with leaves sized by
        :meth:`_min_leaf` and a seed drawn from ``rng``."""
        params = {
            **base_params,
            "min_data_in_leaf": self._min_leaf(len(label)),
            "seed": int(rng.integers(0, 2**31 - 1)),
            "num_threads": self.num_threads,
        }
        dataset = lgb.Dataset(
            features,
            label=label,
            weight=weight,
            init_score=init_score,
            feature_name=[f"f{i}" for i in range(features.shape[1])],
            free_raw_data=True,
        )
        return lgb.train(params, dataset, num_boost_round=self.num_boost_round)

    def _reward_floors(self, reward: np.ndarray, action_idx: np.ndarray) -> np.ndarray | None:
        """Each action's floor (its minimum reward) when at least ``FLOOR_SHARE`` of its rewards
        sit on it, as a margin does when most contacts buy nothing; None when an action's
        rewards have no such floor (or it has none), and the margins are then regressed."""
        floors = np.empty(len(self.actions), dtype=np.float64)
        for a in range(len(self.actions)):
            rewards = reward[action_idx == a]
            if len(rewards) == 0:
                return None
            floors[a] = rewards.min()
            if np.mean(rewards <= floors[a] + 1e-9) < FLOOR_SHARE:
                return None
        return floors

    def _fit_two_part(
        self,
        features: np.ndarray,
        action_idx: np.ndarray,
        reward: np.ndarray,
        weight_base: np.ndarray,
        floors: np.ndarray,
        rng: np.random.Generator,
    ) -> None:
        """The two-part model: expected margin of action ``a`` for ``x`` is
        ``floor_a + P(conversion | a, x) * value(x) * scale_a``. A conversion is a reward above
        the action's floor; the per-(member, action) classifiers learn its probability on
        their own Poisson bootstraps (their spread is the exploration); ``value`` is one
        regressor of the margin above the floor given a conversion, pooled over the actions
        (what a contact spends hardly depends on the offer), and ``scale_a`` the action's own
        ratio of that margin to the pooled prediction (a discount lowers it)."""
        excess = reward - floors[action_idx]
        converted = excess > 1e-9
        feature_name = [f"f{i}" for i in range(features.shape[1])]
        value: lgb.Booster | float
        if features.shape[1] and converted.sum() >= 2 * self.value_params["min_data_in_leaf"]:
            params = {
                **self.value_params,
                "seed": int(rng.integers(0, 2**31 - 1)),
                "num_threads": self.num_threads,
            }
            dataset = lgb.Dataset(
                features[converted],
                label=excess[converted],
                weight=weight_base[converted],
                feature_name=feature_name,
            )
            value = lgb.train(params, dataset, num_boost_round=VALUE_BOOST_ROUND)
            predicted = value.predict(features, num_threads=self.num_threads)
        else:
            value = float(excess[converted].mean()) if converted.any() else 0.0
            predicted = np.full(len(reward), value)
        scales = np.ones(len(self.actions), dtype=np.float64)
        for a in range(len(self.actions)):
            rows = converted & (action_idx == a)
            if rows.sum() >= self.min_rows_per_model and predicted[rows].sum() > 0:
                scales[a] = float(excess[rows].sum() / predicted[rows].sum())
        models: list[list[lgb.Booster | float]] = []
        for _ in range(self.n_members):
            member_models: list[lgb.Booster | float] = []
            for a in range(len(self.actions)):
                rows = np.flatnonzero(action_idx == a)
                counts = rng.poisson(1.0, size=len(rows)).astype(np.float64)
                chosen = counts > 0
                sel = rows[chosen]
                label = converted[sel].astype(np.float64)
                weight = counts[chosen] * weight_base[sel]
                if (
                    len(sel) < self.min_rows_per_model
                    or not features.shape[1]
                    or label.min() == label.max()
                ):
                    # Too little (or one-sided) data for trees: the bootstrap's conversion
                    # rate, as log-odds (the classifiers' raw score), floored away from 0 and 1.
                    rate = float(weight @ label / weight.sum()) if len(sel) else 0.5
                    rate = min(max(rate, 1e-4), 1.0 - 1e-4)
                    member_models.append(float(np.log(rate / (1.0 - rate))))
                    continue
                member_models.append(
                    self._train_member(self.conversion_params, features[sel], label, weight, rng)
                )
            models.append(member_models)
        self._baseline = None
        self._intercepts = None
        self._floors, self._value, self._value_scales = floors, value, scales
        self._models = models
        self._stacked = None
        self._n_fits += 1

    def _value_prediction(self, features: np.ndarray) -> np.ndarray:
        """The two-part model's pooled value (margin above the floor given a conversion)."""
        if isinstance(self._value, lgb.Booster):
            return self._value.predict(features, num_threads=self.num_threads)
        return np.full(len(features), 0.0 if self._value is None else float(self._value))

    def _min_leaf(self, rows: int) -> int:
        """Rows a leaf of an action's model needs: the configured ``min_data_in_leaf``, but at
        most a tenth of the rows it learns from (at least 20), so a short history still
        learns its largest effects while a long one cannot split on noise."""
        configured = int(self.lgbm_params.get("min_data_in_leaf", 20))
        return max(1, min(configured, max(20, rows // 10)))

    def _cross_fitted_baseline(
        self,
        features: np.ndarray,
        reward: np.ndarray,
        weight: np.ndarray,
        params: dict[str, Any],
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Out-of-fold baseline predictions for the training rows (two folds): the residuals
        the per-action models learn from are then not shrunk by a baseline that has already
        fitted these rows' noise (and their actions' effects) in sample."""
        fold = rng.permutation(len(reward)) % 2
        start = np.empty_like(reward)
        for k in (0, 1):
            fit, held = fold != k, fold == k
            model = lgb.train(
                params,
                lgb.Dataset(features[fit], label=reward[fit], weight=weight[fit]),
                num_boost_round=self.baseline_boost_round,
            )
            start[held] = model.predict(features[held], num_threads=self.num_threads)
        return start

    # ---------------------------------------------------------------- scoring
    def _baseline_prediction(self, features: np.ndarray) -> np.ndarray | float:
        """The pooled baseline's margin per row (0 without a shared baseline)."""
        if isinstance(self._baseline, lgb.Booster):
            if len(features) == 0:
                return np.empty(0)
            return self._baseline.predict(features, num_threads=self.num_threads)
        return 0.0 if self._baseline is None else float(self._baseline)

    def _stacked_models(self) -> lgb.Booster | None:
        """The (member, action) models as one stacked LightGBM model, or None to predict them
        one by one. Built on first use and kept only if it predicts exactly what the models
        predict one by one on probe rows (logged rows, all-missing and all-zero rows)."""
        stacked = self._stacked
        if stacked is None:
            try:
                stacked = self._build_stacked() or False
            except Exception:  # the boosters one by one remain the reference
                logger.warning("could not stack the ensemble; predicting model by model")
                stacked = False
            self._stacked = stacked
        return stacked or None

    def _build_stacked(self) -> lgb.Booster | None:
        assert self._models is not None
        flat = [model for member_models in self._models for model in member_models]
        n_features = len(self.feature_names or [])
        if not n_features or not any(isinstance(model, lgb.Booster) for model in flat):
            return None  # constants only: nothing to gain
        candidate = _stack_models(flat, n_features)
        if candidate is None:
            return None
        history = self._history_X
        if history.ndim != 2 or history.shape[1] != n_features:
            history = np.empty((0, n_features))
        take = np.linspace(0, len(history) - 1, min(len(history), 256)).astype(int)
        probe = np.vstack(
            [history[take], np.full((1, n_features), np.nan), np.zeros((1, n_features))]
        )
        expected = self._one_by_one(probe).reshape(len(flat), -1).T
        got = candidate.predict(probe, raw_score=True, num_threads=self.num_threads)
        if not np.array_equal(np.reshape(got, expected.shape), expected):
            logger.warning(
                "the stacked ensemble differs from its models; predicting model by model"
            )
            return None
        return candidate

    def _one_by_one(self, features: np.ndarray) -> np.ndarray:
        """Every (member, action) model's prediction, one model at a time: (K, |A|, N)."""
        assert self._models is not None
        out = np.empty((self.n_members, len(self.actions), len(features)), dtype=np.float64)
        for k, member_models in enumerate(self._models):
            for a, model in enumerate(member_models):
                if isinstance(model, lgb.Booster):
                    out[k, a] = model.predict(
                        features, raw_score=True, num_threads=self.num_threads
                    )
                else:
                    out[k, a] = model
        return out

    def _member_predictions(self, features: np.ndarray, with_baseline: bool = True) -> np.ndarray:
        """Predicted margin of every (member, action) for every row: shape (K, |A|, N).

        ``with_baseline=False`` leaves out the pooled baseline, which is the same for every
        action and member: enough to rank the actions, at a model's less cost.
        """
        assert self._models is not None
        n = len(features)
        if n == 0:
            return np.empty((self.n_members, len(self.actions), 0), dtype=np.float64)
        # One call for the whole ensemble wins for small batches (the real-time path), where
        # each LightGBM call's fixed cost dominates; on large batches a booster at a time is
        # faster (its few trees stay in cache). Both give the same numbers.
        stacked = self._stacked_models() if n <= STACKED_MAX_ROWS else None
        if stacked is None:
            out = self._one_by_one(features)
        else:
            raw = stacked.predict(features, raw_score=True, num_threads=self.num_threads)
            out = np.reshape(raw, (n, -1)).T.reshape(self.n_members, len(self.actions), n)
        if self._floors is not None:
            # Two-part: raw scores are conversion log-odds.
            assert self._value_scales is not None
            value = self._value_prediction(features)[None, None, :]
            probability = 1.0 / (1.0 + np.exp(-out))
            out = (
                self._floors[None, :, None]
                + probability * value * self._value_scales[None, :, None]
            )
        if self._intercepts is not None:
            out += self._intercepts[:, :, None]
        if with_baseline:
            out += self._baseline_prediction(features)
        return out

    def _probabilities_from_argmax(self, member_best: np.ndarray) -> np.ndarray:
        """Exact action probabilities (N, |A|) from each member's argmax (K, N)."""
        n_actions = len(self.actions)
        counts = np.stack([(member_best == a).sum(axis=0) for a in range(n_actions)], axis=1)
        return (1.0 - self.epsilon) * counts / self.n_members + self.epsilon / n_actions

    def action_probabilities(self, contexts: pd.DataFrame) -> pd.DataFrame:
        """Exact probability of each action per context: DataFrame (contexts.index x actions).

        Rows sum to one; this is the target policy for off-policy evaluation.
        """
        if self._models is None:
            probs = np.full((len(contexts), len(self.actions)), 1.0 / len(self.actions))
        else:
            predictions = self._member_predictions(self._matrix(contexts), with_baseline=False)
            probs = self._probabilities_from_argmax(self._scored(predictions).argmax(axis=1))
        return pd.DataFrame(probs, index=contexts.index, columns=self.actions)

    def _tempered(self, predictions: np.ndarray) -> np.ndarray:
        """Member predictions (K, |A|, N) pulled towards their mean by ``exploration_scale``:
        1 leaves the bootstrap spread as it is, 0 makes every member the mean (greedy)."""
        scale = self.exploration_scale
        if scale == 1.0:
            return predictions
        mean = predictions.mean(axis=0, keepdims=True)
        return mean + scale * (predictions - mean)

    def _scored(self, predictions: np.ndarray) -> np.ndarray:
        """What each member's argmax reads: its predictions (K, |A|, N), tempered
        (:meth:`_tempered`), minus ``pessimism`` times the members' standard deviation of each
        action's advantage over the control action (0 for the control itself). The penalty is
        the same for every member, so the propensities stay exact."""
        scored = self._tempered(predictions)
        if self.pessimism == 0.0 or self.n_members < 2:
            return scored
        control = self._action_index[self.control_action]
        advantage = predictions - predictions[:, control : control + 1, :]
        return scored - self.pessimism * advantage.std(axis=0, ddof=1)[None, :, :]

    def _uniforms(self, n: int, draw_keys: Sequence[Any] | pd.Index | None) -> np.ndarray:
        if draw_keys is None:
            return self._decide_rng.random(n)
        if (
            isinstance(draw_keys, np.ndarray)
            and draw_keys.dtype == object
            and all(type(key) is str for key in draw_keys)
        ):
            keys = draw_keys  # already what the conversion below would make of them
        else:
            keys = np.asarray(pd.Index(draw_keys).astype(str), dtype=object)
        if len(keys) != n:
            raise ValueError(f"draw_keys has {len(keys)} entries for {n} contexts")
        hashes = pd.util.hash_array(keys, hash_key=self._draw_hash_key, categorize=False)
        return (hashes >> np.uint64(11)).astype(np.float64) * _UNIT

    def _feature_positions(self, columns: Sequence[str]) -> list[int]:
        """Where each of ``feature_names`` is among ``columns``: a matrix with those columns
        gives the bandit's matrix by ``_finite_or_nan(matrix[:, positions])``. ValueError
        naming the missing features, as for a DataFrame lacking them."""
        names = self.feature_names or []
        position = {name: i for i, name in enumerate(columns)}
        missing = [name for name in names if name not in position]
        if missing:
            raise ValueError(f"contexts lack the feature columns {missing}")
        return [position[name] for name in names]

    def _matrix_from(self, values: np.ndarray, columns: Sequence[str]) -> np.ndarray:
        """The feature matrix (as :meth:`_matrix` makes it of a DataFrame) of ``values``, a
        matrix whose columns are named ``columns``."""
        positions = self._feature_positions(columns)
        if not positions:
            return np.empty((len(values), 0), dtype=np.float64)
        return _finite_or_nan(values[:, positions])

    def _choose(
        self, contexts: pd.DataFrame, draw_keys: Sequence[Any] | pd.Index | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Chosen action indices, their exact propensities and, unless cold, the ensemble-mean
        expected margin per action (N, |A|), all from one pass over the ensemble."""
        u = self._uniforms(len(contexts), draw_keys)
        features = None if self._models is None else self._matrix(contexts)
        return self._choose_from(features, u)

    def _choose_from(
        self, features: np.ndarray | None, u: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """:meth:`_choose` from the feature matrix (``feature_names`` order, NaN for missing
        and non-finite values; unused under cold start) and one uniform draw per row."""
        n, n_actions = len(u), len(self.actions)
        if self._models is None:
            chosen = np.minimum((u * n_actions).astype(np.int64), n_actions - 1)
            return chosen, np.full(n, 1.0 / n_actions), None
        assert features is not None
        # (K, |A|, N) without the baseline: it is common to all actions, so the argmax is the
        # same; it is added once to the ensemble mean below.
        predictions = self._member_predictions(features, with_baseline=False)
        # Ties go to the earliest action in the catalogue, so the argmax is deterministic.
        member_best = self._scored(predictions).argmax(axis=1)  # (K, N)
        probs = self._probabilities_from_argmax(member_best)
        # One uniform drives the whole mixture: [0, eps) explores uniformly, the rest picks a
        # member uniformly; the law of the result is exactly the one the propensities describe.
        explore = u < self.epsilon
        explore_action = np.minimum(
            (u / max(self.epsilon, 1e-300) * n_actions).astype(np.int64), n_actions - 1
        )
        member = (u - self.epsilon) / max(1.0 - self.epsilon, 1e-300) * self.n_members
        member = np.clip(member.astype(np.int64), 0, self.n_members - 1)
        exploit_action = member_best[member, np.arange(n)]
        chosen = np.where(explore, explore_action, exploit_action)
        propensity = probs[np.arange(n), chosen]
        expected = predictions.mean(axis=0).T + np.reshape(
            self._baseline_prediction(features), (-1, 1)
        )
        return chosen, propensity, expected

    def decide(
        self, contexts: pd.DataFrame, *, draw_keys: Sequence[Any] | pd.Index | None = None
    ) -> pd.DataFrame:
        """Choose one action per context row.

        In: ``contexts``, numeric feature columns with any index; optionally ``draw_keys``, one
        hashable per row, making each row's random draw a pure function of its key.
        Out: DataFrame with the same index and columns ``action`` (name) and ``propensity``
        (the exact probability with which that action was drawn, never 0).
        """
        chosen, propensity, _ = self._choose(contexts, draw_keys)
        return pd.DataFrame(
            {"action": np.asarray(self.actions, dtype=object)[chosen], "propensity": propensity},
            index=contexts.index,
        )

    def decide_and_score(
        self, contexts: pd.DataFrame, *, draw_keys: Sequence[Any] | pd.Index | None = None
    ) -> pd.DataFrame:
        """:meth:`decide` plus the ensemble-mean expected margin of every action, in one pass.

        Out: columns ``action``, ``propensity`` and one ``expected_<action>`` per action (NaN
        under cold start), indexed like ``contexts``.
        """
        chosen, propensity, expected = self._choose(contexts, draw_keys)
        if expected is None:
            expected = np.full((len(contexts), len(self.actions)), np.nan)
        result = pd.DataFrame(
            {"action": np.asarray(self.actions, dtype=object)[chosen], "propensity": propensity},
            index=contexts.index,
        )
        for a, name in enumerate(self.actions):
            result[f"expected_{name}"] = expected[:, a]
        return result

    def expected_rewards(self, contexts: pd.DataFrame) -> pd.DataFrame:
        """Ensemble-mean expected margin per action: DataFrame (contexts.index x actions).

        NaN everywhere under cold start (there is no model to ask).
        """
        if self._models is None:
            return pd.DataFrame(np.nan, index=contexts.index, columns=self.actions)
        mean = self._member_predictions(self._matrix(contexts)).mean(axis=0).T
        return pd.DataFrame(mean, index=contexts.index, columns=self.actions)

    def _action_indices(self, actions: Sequence[str] | pd.Series | np.ndarray) -> np.ndarray:
        action_names = np.asarray(actions, dtype=object)
        unknown = sorted({str(a) for a in action_names if a not in self._action_index})
        if unknown:
            raise ValueError(f"unknown actions {unknown}; the bandit knows {self.actions}")
        return np.array([self._action_index[a] for a in action_names], dtype=np.int64)

    def feature_contributions(
        self, contexts: pd.DataFrame, actions: Sequence[str] | pd.Series | np.ndarray
    ) -> pd.DataFrame:
        """SHAP contributions (LightGBM ``pred_contrib``) of each feature to the predicted
        margin of the given action per row: DataFrame (contexts.index x feature_names).

        Averaged over the first ``explain_members`` members; contributions are additive, so
        with all members this is exactly the attribution of the ensemble mean. All zero under
        cold start.
        """
        names = self.feature_names or []
        if self._models is None or not names or len(contexts) == 0:
            out = np.zeros((len(contexts), len(names)), dtype=np.float64)
            return pd.DataFrame(out, index=contexts.index, columns=names)
        features = self._matrix(contexts)
        out = self._contributions(features, self._action_indices(actions))
        return pd.DataFrame(out, index=contexts.index, columns=names)

    def _contributions(self, features: np.ndarray, action_idx: np.ndarray) -> np.ndarray:
        """:meth:`feature_contributions` of a trained bandit as a matrix (N x features), from
        the feature matrix and the action indices: one ``pred_contrib`` call for the baseline
        and one per (explained member, action present)."""
        assert self._models is not None
        n_features = len(self.feature_names or [])
        if self._floors is not None:
            return self._two_part_contributions(features, action_idx, n_features)
        out = np.zeros((len(features), n_features), dtype=np.float64)
        if isinstance(self._baseline, lgb.Booster):
            # The baseline is part of every action's expected margin, once per member.
            contrib = self._baseline.predict(
                features, pred_contrib=True, num_threads=self.num_threads
            )
            out += self.explain_members * contrib[:, :n_features]
        single = len(action_idx) and (action_idx == action_idx[0]).all()
        for a in action_idx[:1] if single else np.unique(action_idx):
            rows = slice(None) if single else np.flatnonzero(action_idx == a)
            for member_models in self._models[: self.explain_members]:
                model = member_models[a]
                if isinstance(model, lgb.Booster):
                    contrib = model.predict(
                        features[rows], pred_contrib=True, num_threads=self.num_threads
                    )
                    out[rows] += contrib[:, :n_features]  # last column is the expected value
        out /= self.explain_members
        return out

    def _two_part_contributions(
        self, features: np.ndarray, action_idx: np.ndarray, n_features: int
    ) -> np.ndarray:
        """Contributions to the two-part margin ``floor + p * value * scale``, to first order:
        a feature's share of the conversion log-odds times ``dp/dlogit * value * scale``, plus
        its share of the value times ``p * scale``; averaged over ``explain_members``."""
        assert self._models is not None and self._value_scales is not None
        out = np.zeros((len(features), n_features), dtype=np.float64)
        value = self._value_prediction(features)
        value_contrib = None
        if isinstance(self._value, lgb.Booster):
            value_contrib = self._value.predict(
                features, pred_contrib=True, num_threads=self.num_threads
            )[:, :n_features]
        for a in np.unique(action_idx):
            rows = np.flatnonzero(action_idx == a)
            scale = self._value_scales[a]
            for member_models in self._models[: self.explain_members]:
                model = member_models[a]
                if isinstance(model, lgb.Booster):
                    contrib = model.predict(
                        features[rows], pred_contrib=True, num_threads=self.num_threads
                    )
                    logit = contrib.sum(axis=1)
                    contrib = contrib[:, :n_features]
                else:
                    logit = np.full(len(rows), float(model))
                    contrib = np.zeros((len(rows), n_features))
                p = 1.0 / (1.0 + np.exp(-logit))
                out[rows] += contrib * (p * (1.0 - p) * value[rows] * scale)[:, None]
                if value_contrib is not None:
                    out[rows] += value_contrib[rows] * (p * scale)[:, None]
        out /= self.explain_members
        return out

    def explain(
        self,
        contexts: pd.DataFrame,
        actions: Sequence[str] | pd.Series | np.ndarray,
        top_k: int = 3,
    ) -> pd.Series:
        """Top ``top_k`` feature contributions to the chosen action's expected margin.

        Out: Series aligned with ``contexts.index`` of lists ``[{"feature", "contribution"}]``
        ordered by absolute contribution; features contributing exactly 0 are left out (so the
        lists are empty under cold start).
        """
        contrib = self.feature_contributions(contexts, actions)
        explanations = _top_contributions(contrib.to_numpy(), list(contrib.columns), top_k)
        return pd.Series(explanations, index=contexts.index, dtype=object)

    def _explain_from(
        self, features: np.ndarray, action_idx: np.ndarray, top_k: int = 3
    ) -> list[list[dict[str, Any]]]:
        """:meth:`explain` from the feature matrix (as for :meth:`_choose_from`) and the
        chosen action indices: one list per row."""
        names = self.feature_names or []
        if self._models is None or not names or len(features) == 0:
            return [[] for _ in range(len(features))]
        return _top_contributions(self._contributions(features, action_idx), names, top_k)

    def feature_importance(self) -> pd.DataFrame:
        """Total split gain per feature and action over the ensemble (features x actions); the
        pooled baseline's gain counts towards every action."""
        names = self.feature_names or []
        table = pd.DataFrame(0.0, index=names, columns=self.actions)
        if self._models is None:
            return table
        for pooled in (self._baseline, self._value):
            if isinstance(pooled, lgb.Booster):
                gain = pooled.feature_importance(importance_type="gain")
                for a in range(len(self.actions)):
                    table.iloc[:, a] += gain
        for member_models in self._models:
            for a, model in enumerate(member_models):
                if isinstance(model, lgb.Booster):
                    table.iloc[:, a] += model.feature_importance(importance_type="gain")
        return table


def _top_contributions(
    values: np.ndarray, names: Sequence[str], top_k: int
) -> list[list[dict[str, Any]]]:
    """Per row of ``values`` (N x features), the ``top_k`` largest absolute contributions as
    ``[{"feature", "contribution"}]``, exact zeros left out."""
    if values.shape[1] == 0:
        return [[] for _ in range(len(values))]
    order = np.argsort(-np.abs(values), axis=1, kind="stable")[:, :top_k]
    top_values = np.take_along_axis(values, order, axis=1)
    top_names = np.asarray(names, dtype=object)[order]
    return [
        [
            {"feature": str(f), "contribution": float(c)}
            for f, c in zip(fs, cs, strict=True)
            if c != 0.0
        ]
        for fs, cs in zip(top_names, top_values, strict=True)
    ]
