"""Off-policy estimators against the naive logged mean, on synthetic logs with a known truth.

For several worlds (how small the logging propensities of the target's actions are), draws
``reps`` independent logs of ``n`` decisions, estimates the target policy's value with IPS,
SNIPS, DR (and IPS with clipped weights), and reports per estimator the bias, RMSE, the
coverage of its 95% interval and the mean interval width. The baseline, measured in the same
run, is the naive estimate: the unweighted mean reward of the log (what a dashboard shows),
with its normal interval. Ratios printed are ``baseline RMSE / estimator RMSE`` (above 1: the
estimator is that many times more accurate) and the estimator's time per log.

Usage: ``python bench/bench_ope.py [--quick] [--reps R] [--n N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import json
import time
from statistics import NormalDist

import numpy as np

from journey_pipeline.learn.ope import estimate_policy_value
from journey_pipeline.learn.synthetic import SyntheticLog, make_world, sample_logs

ESTIMATORS: dict[str, dict[str, object]] = {
    "ips": {"method": "ips"},
    "ips_clip20": {"method": "ips", "clip": 20.0},
    "snips": {"method": "snips"},
    "dr": {"method": "dr"},
}


def _estimate(
    log: SyntheticLog, i: int, method: str, clip: float | None
) -> tuple[float, float, float]:
    dr = method == "dr"
    est = estimate_policy_value(
        log.rewards[i],
        log.logged_propensities[i],
        log.target_propensities[i],
        method,
        reward_predictions=log.reward_predictions[i] if dr else None,
        target_action_probs=log.target_action_probs[i] if dr else None,
        logged_actions=log.actions[i] if dr else None,
        clip=clip,
    )
    return est.value, est.ci_low, est.ci_high


def _scores(values: np.ndarray, lows: np.ndarray, highs: np.ndarray, truth: float) -> dict:
    errors = values - truth
    return {
        "bias": float(errors.mean()),
        "rmse": float(np.sqrt((errors**2).mean())),
        "coverage": float(((lows <= truth) & (truth <= highs)).mean()),
        "mean_width": float((highs - lows).mean()),
    }


def run_world(min_propensity: float, n: int, reps: int, seed: int) -> dict[str, dict]:
    """Score every estimator and the naive baseline on ``reps`` logs of one world."""
    world = make_world(min_propensity=min_propensity, seed=seed)
    log = sample_logs(world, n=n, reps=reps, seed=seed + 1)
    truth = world.true_target_value
    z = NormalDist().inv_cdf(0.975)

    start = time.perf_counter()
    naive = log.rewards.mean(axis=1)
    half = z * log.rewards.std(axis=1, ddof=1) / np.sqrt(n)
    naive_seconds = (time.perf_counter() - start) / reps
    results = {
        "naive": {
            **_scores(naive, naive - half, naive + half, truth),
            "seconds_per_log": naive_seconds,
        }
    }
    for name, spec in ESTIMATORS.items():
        start = time.perf_counter()
        triples = np.array(
            [_estimate(log, i, str(spec["method"]), spec.get("clip")) for i in range(reps)]
        )
        seconds = (time.perf_counter() - start) / reps
        results[name] = {
            **_scores(triples[:, 0], triples[:, 1], triples[:, 2], truth),
            "seconds_per_log": seconds,
        }
    for figures in results.values():
        figures["rmse_ratio_vs_naive"] = results["naive"]["rmse"] / figures["rmse"]
    results["truth"] = {"target_value": truth, "logging_value": world.true_logging_value}
    return results


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns ``{world: {estimator: figures}}`` and prints a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--n", type=int, default=None, help="decisions per log")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    reps = args.reps or (30 if args.quick else 500)
    n = args.n or (500 if args.quick else 5000)

    report: dict[str, object] = {"reps": reps, "n": n, "worlds": {}}
    for min_propensity in (0.02, 0.05, 0.2):
        world_name = f"min_propensity={min_propensity}"
        results = run_world(min_propensity, n, reps, args.seed)
        report["worlds"][world_name] = results
        truth = results["truth"]
        print(
            f"\n{world_name}  n={n} reps={reps}  true value {truth['target_value']:.3f} "
            f"(logging policy {truth['logging_value']:.3f})"
        )
        print(
            f"{'estimator':<12}{'bias':>9}{'rmse':>9}{'coverage':>10}{'width':>9}"
            f"{'rmse naive/est':>16}{'ms/log':>9}"
        )
        for name in ["naive", *ESTIMATORS]:
            f = results[name]
            print(
                f"{name:<12}{f['bias']:>9.3f}{f['rmse']:>9.3f}{f['coverage']:>10.1%}"
                f"{f['mean_width']:>9.3f}{f['rmse_ratio_vs_naive']:>16.2f}"
                f"{f['seconds_per_log'] * 1e3:>9.3f}"
            )
    print("\n" + json.dumps({"bench": "ope", "reps": reps, "n": n}))
    return report


if __name__ == "__main__":
    main()
