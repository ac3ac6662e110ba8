"""A ready-to-serve JOURNEY_HOME without running the whole loop: synthetic feature rows in the
Feast online store and trained policies in the MLflow registry, the first one promoted to
``champion``.

The decision service, its tests, its benchmarks and the README example start from here; every
step goes through the project's own functions (feature export, Feast apply/materialize,
reward-model training, MLflow logging and promotion), so what is served is what the batch
loop would produce from the same data.

    python -m journey_pipeline.serve.quickstart --contacts 2000
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from journey_pipeline.decide import registry
from journey_pipeline.decide.reward_model import TrainingConfig, train_reward_models
from journey_pipeline.decide.synthetic import synthetic_training_frame
from journey_pipeline.features import feature_store
from journey_pipeline.settings import Settings, load_settings


@dataclass(frozen=True)
class QuickstartHome:
    """What :func:`prepare_quickstart_home` put in place: the contacts that have online
    features and the registered model versions (the first is the champion)."""

    contact_ids: list[str]
    versions: list[str]

    @property
    def champion(self) -> str | None:
        return self.versions[0] if self.versions else None


def prepare_quickstart_home(
    settings: Settings,
    *,
    contacts: int = 2000,
    versions: int = 1,
    training_rows: int = 3000,
    seed: int = 0,
) -> QuickstartHome:
    """Fill ``settings.home`` with online features for ``contacts`` contacts and ``versions``
    trained policies (version i trained with seed ``seed + i``); promote the first.

    Out: the contact ids served and the registered versions, oldest first.
    """
    settings.ensure_dirs()
    rows = feature_store.synthetic_feature_rows(contacts, 1, seed=seed)
    feature_store.write_feature_export(rows, feature_store.export_path(settings))
    store = feature_store.build_store(settings)
    feature_store.apply_definitions(store)
    feature_store.materialize_latest(store, settings)
    registered: list[str] = []
    for i in range(versions):
        frame = synthetic_training_frame(training_rows, seed=seed + i)
        result = train_reward_models(frame, TrainingConfig(seed=seed + i))
        run = registry.log_training_run(result, settings, run_name=f"quickstart-{i + 1}")
        registered.append(run.version)
    if registered:
        registry.promote(
            registered[0],
            who="quickstart",
            why="initial champion of a quickstart home",
            settings=settings,
        )
    return QuickstartHome(contact_ids=rows.column("contact_id").to_pylist(), versions=registered)


def main(argv: list[str] | None = None) -> dict:
    """Prepare the home named by ``JOURNEY_HOME``; prints and returns a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=2000)
    parser.add_argument("--versions", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    settings = load_settings()
    home = prepare_quickstart_home(
        settings, contacts=args.contacts, versions=args.versions, seed=args.seed
    )
    summary = {
        "home": str(settings.home),
        "contacts": len(home.contact_ids),
        "first_contact": home.contact_ids[0] if home.contact_ids else None,
        "versions": home.versions,
        "champion": home.champion,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
