"""The customer world: contacts with latent traits, simulated one day at a time, with ground
truth for every decision.

State is a set of numpy arrays indexed by contact number ``i`` (contact id ``C-{i+1:07d}``),
about 130 bytes a contact, so a million contacts take about 130 MB, and a day is a handful of
vectorised draws. Randomness comes from generators seeded by ``[seed, day, purpose]`` (one
stream per purpose: lifecycle, carts, purchases, ...), so the generator state is a function
of the saved seed and day: the same seed gives byte-identical output, and :meth:`World.save`
/ :meth:`World.load` (``world_state.npz``, plus a readable ``world_state.json``) continue a
simulation across processes exactly as if it had never stopped. Per-contact draws are made
for every contact and indexed by contact, so two copies of a world that differ only in the
decisions applied share their luck (common random numbers): policy comparisons are paired.

Latent traits (never emitted) and what they drive
-------------------------------------------------
- ``segment``: 0 indifferent, 1 price sensitive, 2 perk lover, 3 put off by offers.
- ``price_sensitivity``, ``perk_affinity``, ``annoyance`` in [0, 1]: the effect of each offer
  on purchase probability (see *Actions* below); also click-through on offers.
- ``engagement`` (mean 1): product views, stage progression, offer opens.
- ``base_hazard``: the daily purchase probability of a customer with no recent cart.
- ``order_value``: the contact's mean order amount (USD).

What is observable, and so learnable by a model on the features: price-sensitive contacts
abandon carts twice as often and spend less per order; perk lovers browse and buy more often;
contacts put off by offers spend more per order, abandon fewer carts and rarely open or click
offers; every contact clicks more on the offer that works on them. Two CRM contact properties,
set when the contact signs up, lean on the segment without giving it away:
``acquisition_channel`` (most price-sensitive contacts came through a coupon site, most perk
lovers through a referral, most contacts put off by offers found the shop organically;
``CHANNEL_MIX``) and ``loyalty_member`` (mostly perk lovers; ``LOYALTY_RATE``).

A day (:meth:`World.step`)
--------------------------
1. Decision windows open. A contact triggered yesterday (see below) gets a 7-day *decision
   window* starting today with no new offer: its purchase schedule is frozen from its state
   now, as for a decision that sent nothing (the holdout, ``no_offer``). A contact triggered
   inside an earlier offer's window keeps that offer: it works to the end of its own window
   and is still the one a purchase redeems. Then open CRM tasks created before the end of the
   day are applied (status ``applied``; tasks whose contact was erased or whose action is
   unknown become ``skipped``). Each applied offer opens a window with its offer, replacing
   the contact's current one; a ``no_offer`` task takes nothing back, like a trigger.
2. Erasure requests (``contact.deleted``, 0.03% of contacts a day), new contacts
   (``contact.created``, 0.2% of the initial population a day; more after drift).
3. Lifecycle: subscriber -> lead -> mql -> sql -> opportunity (by daily transition
   probabilities scaled by engagement); any purchase makes a contact a customer (also from
   churned, a reactivation); customers churn at 0.2% a day.
4. Product views (Poisson), cart abandonment (Bernoulli, with the abandoned product viewed
   first), purchases (Bernoulli with the daily purchase probability described below).
5. Offer events due today: ``offer.delivered`` (the day the task is applied, or the next
   day for 15%), ``offer.opened`` within 0-3 days of delivery, ``offer.clicked`` right after
   an open.

Decision triggers are ``cart.abandoned`` and a ``contact.updated`` whose lifecycle stage
becomes ``opportunity``: about 3-4% of active contacts a day.

Purchase probability and actions
--------------------------------
On day ``t`` a contact's purchase probability is::

    p(t) = base_hazard * STAGE_PURCHASE[stage] * (1 + CART_BOOST * exp(-(t - c - 1) / CART_DECAY))

where ``c`` is the day of the last cart abandon (the boost applies from the day after; 1 if
there is none). A decision applied on day ``t0`` freezes this schedule for days
``t0 .. t0+6`` (its window) and, from the day the offer is delivered, multiplies it by the
contact's *lift* for the action (capped at 0.9):

- regime before drift: ``lift(offer_a) = (1 + 1.2 * price_sensitivity**1.5) * (1 - 0.6 * annoyance)``,
  ``lift(offer_b) = (1 + 1.4 * perk_affinity**1.5) * (1 - 0.6 * annoyance)``, ``lift(no_offer) = 1``;
- from ``drift_day`` on, the roles swap: offer_a works on perk lovers and offer_b on price
  sensitive contacts; new contacts arrive three times as fast and 40% of them are price
  sensitive; browsing and cart abandonment rise by 25%.

The first purchase after delivery redeems the offer: its ``payment.succeeded`` carries the
``decision_id``, and for ``offer_a`` its amount is 15% lower. Order amounts are the contact's
``order_value`` times log-normal noise with mean 1.

Oracle
------
:meth:`World.expected_margin` is the exact expectation, under the model above, of the revenue
from the contact's payments during the 7-day window of a decision applied on ``day``, minus
the action's fixed cost (``journey_pipeline.actions``): a sum over the frozen schedule, with
the delivery delay and the daily erasure probability integrated out. It uses the contact's
state as it is now (stage, last cart); for the day about to be simulated
(``day == world.day``) it is exactly the value of a task applied in the next step, and, for
``no_offer``, exactly the value of the window a trigger opens without a task, an offer the
contact still holds included (a second trigger within 7 days, or the frequency cap). A later
trigger restarts the window from the new state, and the decision it brings owns the days from
then on: ``horizon`` counts a decision's days up to the contact's next decision, as the
outcomes credit each payment to the latest decision before it. Each
applied task's expected margins for every action are also logged
(:meth:`World.decision_oracle`), so regret of logged decisions is measurable afterwards.

Output
------
One file per day, ``events-YYYY-MM-DD.jsonl``: canonical events sorted by time, one JSON
object per line::

    {"event_id": "<uuid>", "timestamp": "2026-01-17T12:34:56Z", "type": "...",
     "source": "local_crm" | "web" | "billing", "payload": {"contact_id": "C-0000042", ...}}

``contact.created``/``contact.updated`` payloads: ``contact_id, email, phone, first_name,
lifecycle_stage, status, acquisition_channel, loyalty_member`` (raw PII, as a CRM sends it;
``loyalty_member`` a JSON boolean); ``contact.deleted``: ``contact_id``.
``product.viewed``: ``product_id``; ``cart.abandoned``: ``product_id, cart_value``;
``payment.succeeded``: ``amount, currency ("USD"), order_id`` and ``decision_id`` when it
redeemed an offer; ``offer.delivered|opened|clicked``: ``decision_id, action``.

With ``debezium=True`` each ``contact.*`` line is instead a Debezium change envelope of the
CRM ``contacts`` table, taken from the CRM ``change_log``::

    {"before": <row or null>, "after": <row or null>, "op": "c" | "u" | "d",
     "ts_ms": <change time, ms since epoch>,
     "source": {"version": "2.7.0.Final", "connector": "sqlite", "name": "local_crm",
                "ts_ms": <same>, "snapshot": "false", "db": "crm", "table": "contacts",
                "lsn": <change_log.seq>}}

A row has every column of ``contacts``: ``contact_id, email, phone, first_name, last_name,
lifecycle_stage, status, acquisition_channel, loyalty_member, created_at, updated_at`` (timestamps as ISO-8601 strings with Z).
``op`` ``c`` maps to ``contact.created`` (from ``after``), ``u`` to ``contact.updated``
(``after``), ``d`` to ``contact.deleted`` (``before``). Envelopes carry no ``event_id``;
``(source.name, source.table, source.lsn)`` identifies a change uniquely.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from journey_pipeline.actions import ACTION_NAMES, ACTIONS
from journey_pipeline.features.contract import ACQUISITION_CHANNELS, LIFECYCLE_STAGES
from journey_pipeline.sim.crm import ContactChange, LocalCrmStore

# ---------------------------------------------------------------------------------------
# World parameters. Rates are per contact per day.

SEGMENTS = ("indifferent", "price_sensitive", "perk_lover", "offer_averse")
SEGMENT_MIX = np.array([0.50, 0.20, 0.18, 0.12])
SEGMENT_MIX_AFTER_DRIFT = np.array([0.35, 0.40, 0.15, 0.10])
SEGMENT_CART = np.array([1.0, 2.0, 1.0, 0.6])  # cart abandonment multiplier
SEGMENT_ORDER_VALUE = np.array([1.0, 0.75, 0.95, 1.3])
SEGMENT_VIEWS = np.array([1.0, 1.1, 1.4, 0.8])
SEGMENT_BASE_HAZARD = np.array([1.0, 0.9, 1.3, 1.0])
# CRM properties drawn at sign-up. Rows: segment; columns: ACQUISITION_CHANNELS
# (paid_search, organic, coupon_site, referral).
CHANNEL_MIX = np.array(
    [
        [0.50, 0.38, 0.06, 0.06],
        [0.15, 0.05, 0.75, 0.05],
        [0.15, 0.07, 0.03, 0.75],
        [0.25, 0.70, 0.02, 0.03],
    ]
)
LOYALTY_RATE = np.array([0.15, 0.10, 0.70, 0.05])

(SUBSCRIBER, LEAD, MQL, SQL, OPPORTUNITY, CUSTOMER, CHURNED) = range(7)
if LIFECYCLE_STAGES[OPPORTUNITY : CHURNED + 1] != ["opportunity", "customer", "churned"]:
    raise ImportError("features.contract.LIFECYCLE_STAGES changed order; update the simulator")
INITIAL_STAGE_MIX = np.array([0.30, 0.20, 0.12, 0.08, 0.05, 0.22, 0.03])
STAGE_ADVANCE = np.array([0.012, 0.010, 0.012, 0.020, 0.0, 0.0, 0.0])
STAGE_PURCHASE = np.array([0.15, 0.30, 0.50, 0.80, 1.60, 1.00, 0.25])
STAGE_VIEWS = np.array([0.5, 0.8, 1.0, 1.2, 1.5, 1.0, 0.3])
STAGE_CART = np.array([0.3, 0.6, 0.9, 1.1, 1.4, 1.0, 0.3])
CHURN_RATE = 0.002

MEAN_VIEWS = 0.35
CART_RATE = 0.045
CART_BOOST = 8.0
CART_DECAY = 2.5  # days
MEAN_BASE_HAZARD = 0.008
MEAN_ORDER_VALUE = 70.0
ORDER_NOISE_SIGMA = 0.35
HAZARD_CAP = 0.9

ERASURE_RATE = 0.0003
ARRIVAL_RATE = 0.002  # new contacts a day, as a fraction of the initial population
DRIFT_ARRIVAL_FACTOR = 3.0
DRIFT_ACTIVITY_FACTOR = 1.25

WINDOW_DAYS = 7  # attribution window of a decision
DELIVERED_SAME_DAY = 0.85
OPEN_DELAY_PROBS = np.array([0.5, 0.25, 0.15, 0.10])  # days after delivery

N_PRODUCTS = 200
CURRENCY = "USD"

ACTION_CODE = {name: code for code, name in enumerate(ACTION_NAMES)}
_NO_OFFER = ACTION_CODE["no_offer"]
_DISCOUNT = np.array([ACTIONS[a].discount_rate for a in ACTION_NAMES])
_FIXED_COST = np.array([ACTIONS[a].fixed_cost for a in ACTION_NAMES])

FIRST_NAMES = [
    "Ada",
    "Alan",
    "Alice",
    "Amara",
    "Anna",
    "Ben",
    "Carla",
    "Chen",
    "Chloe",
    "Daniel",
    "David",
    "Diego",
    "Elena",
    "Emma",
    "Farah",
    "Felix",
    "Grace",
    "Hana",
    "Hugo",
    "Ines",
    "Ivan",
    "Jack",
    "Jana",
    "Jonas",
    "Julia",
    "Kai",
    "Karim",
    "Lara",
    "Leo",
    "Lina",
    "Lucas",
    "Maya",
    "Mia",
    "Mohamed",
    "Nadia",
    "Noah",
    "Nora",
    "Omar",
    "Paula",
    "Priya",
    "Rafael",
    "Rosa",
    "Sam",
    "Sara",
    "Sofia",
    "Tariq",
    "Theo",
    "Uma",
    "Victor",
    "Yuki",
    "Zoe",
]
LAST_NAMES = [
    "Adams",
    "Alvarez",
    "Andersen",
    "Baker",
    "Becker",
    "Brown",
    "Chen",
    "Cohen",
    "Costa",
    "Dubois",
    "Evans",
    "Fischer",
    "Garcia",
    "Gomez",
    "Hansen",
    "Ito",
    "Jensen",
    "Kim",
    "Kowalski",
    "Lee",
    "Lopez",
    "Martin",
    "Meyer",
    "Moreau",
    "Muller",
    "Nakamura",
    "Nguyen",
    "Novak",
    "Okafor",
    "Olsen",
    "Patel",
    "Perez",
    "Petrov",
    "Rossi",
    "Santos",
    "Schmidt",
    "Silva",
    "Smith",
    "Suzuki",
    "Tanaka",
    "Taylor",
    "Torres",
    "Wagner",
    "Walker",
    "Wang",
    "Weber",
    "Wilson",
    "Wong",
    "Yilmaz",
    "Zhang",
]

# Event type codes, also the tie-break order for events at the same second.
EVENT_TYPES = (
    "contact.created",
    "contact.updated",
    "offer.delivered",
    "offer.opened",
    "offer.clicked",
    "product.viewed",
    "cart.abandoned",
    "payment.succeeded",
    "contact.deleted",
)
_SOURCE = {
    "contact.created": "local_crm",
    "contact.updated": "local_crm",
    "contact.deleted": "local_crm",
    "offer.delivered": "local_crm",
    "offer.opened": "local_crm",
    "offer.clicked": "local_crm",
    "product.viewed": "web",
    "cart.abandoned": "web",
    "payment.succeeded": "billing",
}
# Pending offer events are stored with these codes.
_OFFER_EVENT = ("offer.delivered", "offer.opened", "offer.clicked")

DEBEZIUM_SOURCE = {
    "version": "2.7.0.Final",
    "connector": "sqlite",
    "name": "local_crm",
    "snapshot": "false",
    "db": "crm",
    "table": "contacts",
}

_STREAMS = [
    "population",
    "new_contacts",
    "arrivals",
    "erasure",
    "lifecycle",
    "views",
    "carts",
    "purchases",
    "tasks",
    "event_ids",
]
_CHANGE_TYPE = {"c": "contact.created", "u": "contact.updated", "d": "contact.deleted"}
_CHANGE_KIND = {op: EVENT_TYPES.index(name) for op, name in _CHANGE_TYPE.items()}
_COLUMNS = ("kind", "second", "contact", "ref", "value", "decision")
CONTACT_PAYLOAD = (
    "contact_id",
    "email",
    "phone",
    "first_name",
    "lifecycle_stage",
    "status",
    "acquisition_channel",
    "loyalty_member",
)
_PRODUCT_IDS = [f"P-{k + 1:04d}" for k in range(N_PRODUCTS)]
_CHUNK = 50_000  # lines encoded (and CRM rows written) at a time
_NEVER = -(10**6)  # day index meaning "never happened"
_DAY_SECONDS = 86_400
_ACTIVITY_START = 3_600  # initial CRM sync happens in the first hour of day 0
_DELIVERY_START, _DELIVERY_END = 8 * 3_600, 9 * 3_600
STATE_FILE = "world_state.npz"
META_FILE = "world_state.json"

_CLOCK = [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(_DAY_SECONDS)]


def contact_id_of(index: int) -> str:
    """The CRM id of contact number ``index`` (0-based)."""
    return f"C-{index + 1:07d}"


@lru_cache(maxsize=64)
def _midnight_epoch(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())


@lru_cache(maxsize=4096)
def _day_text(start: date, day: int) -> str:
    return (start + timedelta(days=day)).isoformat() + "T"


def _iso(day: date, second: int) -> str:
    return f"{day.isoformat()}T{_CLOCK[second]}Z"


def _uuid_strings(raw: bytes) -> list[str]:
    """Version-4-shaped UUID strings from 16 random bytes each (deterministic, unlike
    ``uuid4``, because the bytes come from the world's generator)."""
    b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 16).copy()
    b[:, 6] = (b[:, 6] & 0x0F) | 0x40
    b[:, 8] = (b[:, 8] & 0x3F) | 0x80
    hx = b.tobytes().hex()
    return [
        f"{hx[o : o + 8]}-{hx[o + 8 : o + 12]}-{hx[o + 12 : o + 16]}-{hx[o + 16 : o + 20]}-"
        f"{hx[o + 20 : o + 32]}"
        for o in range(0, len(hx), 32)
    ]


@dataclass
class DayReport:
    """What one :meth:`World.step` did."""

    date: date
    day: int
    events_path: Path
    counts: dict[str, int]
    tasks_applied: int
    tasks_skipped: int
    contacts_live: int
    triggers: int

    @property
    def n_events(self) -> int:
        return sum(self.counts.values())


# The per-contact arrays that make up the state, with their dtypes.
_CONTACT_ARRAYS: dict[str, type] = {
    "segment": np.int8,
    "price_sensitivity": np.float64,
    "perk_affinity": np.float64,
    "annoyance": np.float64,
    "engagement": np.float64,
    "base_hazard": np.float64,
    "order_value": np.float64,
    "first_name": np.int16,
    "last_name": np.int16,
    "created_ts": np.int64,  # seconds since epoch
    "updated_ts": np.int64,
    "created_day": np.int32,
    "stage": np.int8,
    "stage_day": np.int32,
    "alive": np.bool_,  # False once erased
    "in_crm": np.bool_,  # False until the CRM holds the contact
    "last_cart_day": np.int32,
    "last_purchase_day": np.int32,
    "win_start": np.int32,  # decision window: first day, _NEVER if none
    "win_action": np.int8,
    "win_delivery": np.int8,  # offset of the delivery day inside the window
    "win_offer_end": np.int8,  # offset the window's offer stops working at (exclusive)
    "win_lift": np.float64,  # the offer's multiplier on the purchase probability
    "win_decision": np.int32,  # row in the decision table
    "win_redeemed": np.bool_,
    "trigger_day": np.int32,  # last day with a decision trigger, _NEVER if none
    "channel": np.int8,  # index in ACQUISITION_CHANNELS
    "loyalty": np.bool_,
}


@dataclass
class World:
    """A simulated customer base. Build with :meth:`create` or :meth:`load`."""

    seed: int
    start_date: date
    drift_day: int | None
    n_initial: int
    day: int
    contacts: dict[str, np.ndarray]
    win_hazard: np.ndarray  # (n, WINDOW_DAYS) frozen purchase probabilities
    decisions: dict[str, np.ndarray]  # decision table: id, contact, action, day
    pending: dict[str, np.ndarray]  # scheduled offer events: day, second, decision, kind
    oracle_log: dict[str, np.ndarray]  # per applied task: ids, day, action, margins
    order_seq: int = 0
    totals: dict[str, int] = field(default_factory=dict)

    # -- construction --------------------------------------------------------------------

    @classmethod
    def create(
        cls, n_contacts: int, seed: int, start_date: date, drift_day: int | None = None
    ) -> World:
        """A new world of ``n_contacts`` contacts whose first simulated day is
        ``start_date``; ``drift_day`` (days from the start) switches on drift."""
        if n_contacts < 1:
            raise ValueError("n_contacts must be at least 1")
        world = cls(
            seed=int(seed),
            start_date=start_date,
            drift_day=drift_day,
            n_initial=int(n_contacts),
            day=0,
            contacts={k: np.empty(0, dtype=t) for k, t in _CONTACT_ARRAYS.items()},
            win_hazard=np.empty((0, WINDOW_DAYS), dtype=np.float32),
            decisions={
                "id": np.empty(0, dtype="<U1"),
                "contact": np.empty(0, dtype=np.int64),
                "action": np.empty(0, dtype=np.int8),
                "day": np.empty(0, dtype=np.int32),
            },
            pending={
                "day": np.empty(0, dtype=np.int32),
                "second": np.empty(0, dtype=np.int32),
                "decision": np.empty(0, dtype=np.int32),
                "kind": np.empty(0, dtype=np.int8),
            },
            oracle_log={
                "decision_id": np.empty(0, dtype="<U1"),
                "contact": np.empty(0, dtype=np.int64),
                "day": np.empty(0, dtype=np.int32),
                "action": np.empty(0, dtype=np.int8),
                "expected_margin": np.empty((0, len(ACTION_NAMES)), dtype=np.float64),
            },
        )
        world._add_contacts(n_contacts, day=0, initial=True)
        return world

    def _add_contacts(self, n: int, day: int, initial: bool) -> np.ndarray:
        """Append ``n`` contacts with freshly drawn traits; out: their indices."""
        rng = self._stream(day, "new_contacts" if not initial else "population")
        drifted = self.drifted(day)
        mix = SEGMENT_MIX_AFTER_DRIFT if drifted else SEGMENT_MIX
        segment = rng.choice(len(SEGMENTS), size=n, p=mix).astype(np.int8)
        high = rng.beta(6.0, 2.0, size=(3, n))
        low = rng.beta(1.5, 6.0, size=(3, n))
        price = np.where(segment == 1, high[0], low[0])
        perk = np.where(segment == 2, high[1], low[1])
        annoy = np.where(segment == 3, high[2], low[2] * 0.3)
        engagement = rng.lognormal(-0.125, 0.5, size=n)  # mean 1
        base = MEAN_BASE_HAZARD * SEGMENT_BASE_HAZARD[segment] * rng.lognormal(-0.18, 0.6, n)
        value = MEAN_ORDER_VALUE * SEGMENT_ORDER_VALUE[segment] * rng.lognormal(-0.08, 0.4, n)
        if initial:
            stage = rng.choice(7, size=n, p=INITIAL_STAGE_MIX).astype(np.int8)
            created_sec = rng.integers(0, _ACTIVITY_START, size=n)
        else:
            stage = np.where(rng.random(n) < 0.7, SUBSCRIBER, LEAD).astype(np.int8)
            created_sec = rng.integers(_ACTIVITY_START, _DAY_SECONDS, size=n)
        # Drawn last, so the traits above are what they were before these properties existed.
        cumulative = CHANNEL_MIX.cumsum(axis=1)[segment]
        channel = (rng.random(n)[:, None] > cumulative[:, :-1]).sum(axis=1)
        loyalty = rng.random(n) < LOYALTY_RATE[segment]
        day_ts = self._epoch(day)
        new = {
            "segment": segment,
            "price_sensitivity": price,
            "perk_affinity": perk,
            "annoyance": annoy,
            "engagement": engagement,
            "base_hazard": base,
            "order_value": value,
            "first_name": rng.integers(0, len(FIRST_NAMES), size=n),
            "last_name": rng.integers(0, len(LAST_NAMES), size=n),
            "created_ts": day_ts + created_sec,
            "updated_ts": day_ts + created_sec,
            "created_day": np.full(n, -1 if initial else day),
            "stage": stage,
            "stage_day": np.full(n, day),
            "alive": np.ones(n, dtype=bool),
            "in_crm": np.zeros(n, dtype=bool),
            "last_cart_day": np.full(n, _NEVER),
            "last_purchase_day": np.full(n, _NEVER),
            "win_start": np.full(n, _NEVER),
            "win_action": np.zeros(n),
            "win_delivery": np.zeros(n),
            "win_offer_end": np.full(n, WINDOW_DAYS),
            "win_lift": np.ones(n),
            "win_decision": np.full(n, -1),
            "win_redeemed": np.zeros(n, dtype=bool),
            "trigger_day": np.full(n, _NEVER),
            "channel": channel,
            "loyalty": loyalty,
        }
        first = self.n_contacts
        for key, dtype in _CONTACT_ARRAYS.items():
            self.contacts[key] = np.concatenate([self.contacts[key], new[key].astype(dtype)])
        self.win_hazard = np.concatenate(
            [self.win_hazard, np.zeros((n, WINDOW_DAYS), dtype=np.float32)]
        )
        return np.arange(first, first + n)

    # -- small accessors -----------------------------------------------------------------

    @property
    def n_contacts(self) -> int:
        """Contacts ever created (erased ones included: indices never get reused)."""
        return len(self.contacts["segment"])

    @property
    def current_date(self) -> date:
        """The date the next :meth:`step` simulates."""
        return self.start_date + timedelta(days=self.day)

    def _stream(self, day: int, purpose: str) -> np.random.Generator:
        """The random stream for one purpose on one day: a generator seeded by
        ``[seed, day + 1, purpose code]``. Keying streams this way makes the generator state
        a function of (seed, day), so save/load continues exactly, and keeps the draws for
        one purpose from shifting when another purpose draws more or less."""
        return np.random.default_rng([self.seed, day + 1, _STREAMS.index(purpose)])

    def drifted(self, day: int) -> bool:
        """Whether drift is in force on day index ``day``."""
        return self.drift_day is not None and day >= self.drift_day

    def _epoch(self, day: int) -> int:
        """Epoch seconds of 00:00 UTC on day index ``day``."""
        return _midnight_epoch(self.start_date) + day * _DAY_SECONDS

    def _ts_iso(self, ts: int) -> str:
        """ISO-8601 UTC text of epoch seconds ``ts`` (fast path for CRM rows)."""
        day, sec = divmod(ts - self._epoch(0), _DAY_SECONDS)
        return _day_text(self.start_date, day) + _CLOCK[sec] + "Z"

    def day_index(self, day: int | date) -> int:
        """Day index (days since ``start_date``) of a date or index."""
        return (day - self.start_date).days if isinstance(day, date) else int(day)

    def index_of(self, ids: object) -> np.ndarray:
        """Contact indices from indices or ``C-...`` id strings (any sequence or array)."""
        arr = np.asarray(ids)
        if arr.dtype.kind in "iu":
            idx = arr.astype(np.int64)
        else:
            idx = np.array([int(str(s)[2:]) - 1 for s in arr.ravel()], dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_contacts):
            raise KeyError("contact id outside this world")
        return idx

    def contact_ids(self, idx: object) -> list[str]:
        """``C-...`` ids of contact indices."""
        return [contact_id_of(int(i)) for i in np.asarray(idx).ravel()]

    def live_contacts(self) -> np.ndarray:
        """Indices of contacts that exist (not erased)."""
        return np.flatnonzero(self.contacts["alive"])

    def active_contacts(self) -> np.ndarray:
        """Indices of contacts that exist and are not churned."""
        c = self.contacts
        return np.flatnonzero(c["alive"] & (c["stage"] != CHURNED))

    def traits(self, ids: object | None = None) -> pd.DataFrame:
        """The latent traits (ground truth, for analysis only) of ``ids`` (default: all)."""
        idx = np.arange(self.n_contacts) if ids is None else self.index_of(ids)
        c = self.contacts
        return pd.DataFrame(
            {
                "contact_id": self.contact_ids(idx),
                "segment": np.array(SEGMENTS)[c["segment"][idx]],
                "price_sensitivity": c["price_sensitivity"][idx],
                "perk_affinity": c["perk_affinity"][idx],
                "annoyance": c["annoyance"][idx],
                "engagement": c["engagement"][idx],
                "base_hazard": c["base_hazard"][idx],
                "order_value": c["order_value"][idx],
                "lifecycle_stage": np.array(LIFECYCLE_STAGES)[c["stage"][idx]],
                "acquisition_channel": np.array(ACQUISITION_CHANNELS)[c["channel"][idx]],
                "loyalty_member": c["loyalty"][idx],
            }
        )

    # -- the model: purchase probabilities and offer effects -------------------------------

    def _baseline_schedule(self, idx: np.ndarray, day: int) -> np.ndarray:
        """Purchase probability of each contact on days ``day .. day+6`` with no offer, from
        its current stage and last cart abandon: an array of shape (len(idx), 7)."""
        c = self.contacts
        days = day + np.arange(WINDOW_DAYS)
        since = days[None, :] - c["last_cart_day"][idx][:, None]
        boost = np.where(since >= 1, CART_BOOST * np.exp(-(since - 1) / CART_DECAY), 0.0)
        level = c["base_hazard"][idx] * STAGE_PURCHASE[c["stage"][idx]]
        return level[:, None] * (1.0 + boost)

    def _lift(self, idx: np.ndarray, action: np.ndarray | int, day: int) -> np.ndarray:
        """Multiplier on purchase probability of each action for each contact, in the regime
        in force on ``day``."""
        c = self.contacts
        price, perk = c["price_sensitivity"][idx], c["perk_affinity"][idx]
        if self.drifted(day):
            price, perk = perk, price  # the offers now work on the other segment
        damp = 1.0 - 0.6 * c["annoyance"][idx]
        lift_a = (1.0 + 1.2 * price**1.5) * damp
        lift_b = (1.0 + 1.4 * perk**1.5) * damp
        table = np.stack([np.ones_like(lift_a), lift_a, lift_b])  # order of ACTION_NAMES
        return table[np.broadcast_to(action, idx.shape), np.arange(len(idx))]

    def _click_affinity(self, idx: np.ndarray, action: np.ndarray, day: int) -> np.ndarray:
        """How much each contact cares for the offer it received (drives click-through)."""
        c = self.contacts
        price, perk = c["price_sensitivity"][idx], c["perk_affinity"][idx]
        if self.drifted(day):
            price, perk = perk, price
        return np.where(action == ACTION_CODE["offer_a"], price, perk)

    def _held_offer(self, idx: np.ndarray, day: int) -> tuple[np.ndarray, np.ndarray]:
        """The days of a window opened on ``day`` (offsets ``start .. end-1``) on which the
        offer of each contact's current window still works: from its delivery to the end of
        its own window. Empty (``start == end``) for a contact outside a window."""
        c = self.contacts
        offset = day - c["win_start"][idx]
        inside = (offset >= 0) & (offset < WINDOW_DAYS)
        start = np.clip(c["win_delivery"][idx] - offset, 0, WINDOW_DAYS)
        end = np.clip(c["win_offer_end"][idx] - offset, 0, WINDOW_DAYS)
        return np.where(inside, start, 0), np.where(inside, end, 0)

    @staticmethod
    def _offer_days(start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Boolean (len(start), 7): the window's offsets in ``[start, end)``."""
        k = np.arange(WINDOW_DAYS)[None, :]
        return (k >= np.asarray(start)[:, None]) & (k < np.asarray(end)[:, None])

    def _window_schedule(
        self, baseline: np.ndarray, lift: np.ndarray, start: np.ndarray, end: np.ndarray
    ) -> np.ndarray:
        """The frozen schedule of a window: the baseline times the offer's lift on its days,
        capped."""
        offer = self._offer_days(start, end)
        return np.minimum(np.where(offer, baseline * lift[:, None], baseline), HAZARD_CAP)

    def _expected_revenue(
        self,
        idx: np.ndarray,
        baseline: np.ndarray,
        lift: np.ndarray,
        discount: np.ndarray,
        start: np.ndarray,
        end: np.ndarray,
        horizon: np.ndarray,
    ) -> np.ndarray:
        """Expected revenue of the window's first ``horizon`` days with the offer working on
        offsets ``start .. end-1``: every purchase is worth the contact's mean order value,
        the first on an offer day loses ``discount`` (it redeems the offer)."""
        h = self._window_schedule(baseline, lift, start, end)
        # Erasure is drawn every day of the window, the first day included.
        alive = (1.0 - ERASURE_RATE) ** np.arange(1, WINDOW_DAYS + 1)
        counted = alive * (np.arange(WINDOW_DAYS)[None, :] < horizon[:, None])
        purchases = (h * counted).sum(axis=1)
        on_offer = np.where(self._offer_days(start, end), h, 0.0)
        none_before = np.cumprod(np.hstack([np.ones((len(h), 1)), 1.0 - on_offer[:, :-1]]), axis=1)
        first = (on_offer * none_before * counted).sum(axis=1)
        return self.contacts["order_value"][idx] * (purchases - discount * first)

    def expected_margin(
        self, ids: object, action: str, day: int | date, horizon: object = WINDOW_DAYS
    ) -> np.ndarray:
        """Oracle: expected margin of taking ``action`` for each contact on ``day``.

        In: contact indices or ``C-...`` ids, an action name, a day (index or date; the task
        is applied that day) and the days of the window that count (a number, or one per
        contact: a decision's window ends where the contact's next decision starts a new
        one). Out: float array, revenue expected from the contact's payments in those days
        minus the action's fixed cost, computed analytically from the latent state. An
        offer's window starts with that offer; ``no_offer``'s is the window a trigger opens
        without a task, where an offer the contact already holds keeps working to the end of
        its own window. Exact for ``day == self.day`` (the next step);
        for other days the current stage, cart history and windows stand in for that day's.
        """
        idx = self.index_of(ids)
        t = self.day_index(day)
        code = ACTION_CODE[action]
        baseline = self._baseline_schedule(idx, t)
        n = len(idx)
        days = np.broadcast_to(np.asarray(horizon), (n,))
        if code == _NO_OFFER:
            c = self.contacts
            start, end = self._held_offer(idx, t)
            unredeemed = ~c["win_redeemed"][idx] & (c["win_action"][idx] != _NO_OFFER)
            discount = np.where(unredeemed, _DISCOUNT[c["win_action"][idx]], 0.0)
            return self._expected_revenue(
                idx, baseline, c["win_lift"][idx], discount, start, end, days
            )
        lift = self._lift(idx, code, t)
        discount = np.full(n, _DISCOUNT[code])
        full = np.full(n, WINDOW_DAYS)
        revenue = DELIVERED_SAME_DAY * self._expected_revenue(
            idx, baseline, lift, discount, np.zeros(n, dtype=int), full, days
        ) + (1.0 - DELIVERED_SAME_DAY) * self._expected_revenue(
            idx, baseline, lift, discount, np.ones(n, dtype=int), full, days
        )
        return revenue - _FIXED_COST[code]

    def expected_margins(self, ids: object, day: int | date) -> pd.DataFrame:
        """Oracle for every action: a DataFrame indexed by contact id, one column per
        action (in ``ACTION_NAMES`` order)."""
        idx = self.index_of(ids)
        return pd.DataFrame(
            {a: self.expected_margin(idx, a, day) for a in ACTION_NAMES},
            index=pd.Index(self.contact_ids(idx), name="contact_id"),
        )

    def oracle_actions(self, ids: object, day: int | date) -> np.ndarray:
        """The action with the highest expected margin for each contact on ``day`` (ties go
        to the earlier action in ``ACTION_NAMES``, i.e. ``no_offer``)."""
        idx = self.index_of(ids)
        margins = np.stack([self.expected_margin(idx, a, day) for a in ACTION_NAMES])
        return np.array(ACTION_NAMES, dtype=object)[margins.argmax(axis=0)]

    def decision_oracle(self) -> pd.DataFrame:
        """Every applied task with the oracle's expected margin of each action at the time
        it was applied: columns decision_id, contact_id, date, action, one
        ``expected_margin_<action>`` column per action, ``regret`` (best minus taken)."""
        log = self.oracle_log
        em = log["expected_margin"]
        frame = pd.DataFrame(
            {
                "decision_id": log["decision_id"].astype(str),
                "contact_id": self.contact_ids(log["contact"]),
                "date": [self.start_date + timedelta(days=int(d)) for d in log["day"]],
                "action": np.array(ACTION_NAMES, dtype=object)[log["action"]],
            }
        )
        for j, a in enumerate(ACTION_NAMES):
            frame[f"expected_margin_{a}"] = em[:, j]
        taken = em[np.arange(len(em)), log["action"]] if len(em) else np.empty(0)
        frame["regret"] = (em.max(axis=1) if len(em) else np.empty(0)) - taken
        return frame

    # -- one day ---------------------------------------------------------------------------

    def step(
        self,
        crm: LocalCrmStore,
        landing_dir: str | Path,
        debezium: bool = False,
        task_cutoff: str | None = None,
    ) -> DayReport:
        """Simulate :attr:`current_date`: apply open CRM tasks, draw the day's behaviour,
        update the CRM (contacts, change_log, task status) and write
        ``landing_dir/events-YYYY-MM-DD.jsonl`` atomically. Out: a :class:`DayReport`.

        Tasks applied are the open ones with ``created_at < task_cutoff``; the default
        cutoff is the end of the simulated day (``YYYY-MM-DDT00:00:00`` of the next day,
        compared as text, so UTC stamps with ``Z``, ``+00:00`` or fractions all work).
        """
        t = self.day
        today = self.current_date
        day_ts = self._epoch(t)
        c = self.contacts
        landing = Path(landing_dir)
        landing.mkdir(parents=True, exist_ok=True)
        out = _DayEvents()

        if task_cutoff is None:
            task_cutoff = (today + timedelta(days=1)).isoformat() + "T00:00:00"
        self._open_trigger_windows(t)
        applied, skipped = self._apply_tasks(crm, t, task_cutoff)
        stage_before = c["stage"].copy()
        changes: list[tuple[int, int, str, int]] = []  # (second, contact, op, new stage)

        # First sync of the initial population into the CRM (day 0 of a new world).
        # They are written apart, in chunks: on day 0 that is the whole population.
        unsynced = np.flatnonzero(c["alive"] & ~c["in_crm"])
        order = np.lexsort((unsynced, c["created_ts"][unsynced]))
        unsynced = unsynced[order]
        c["in_crm"][unsynced] = True

        # Erasure requests: the contact leaves the CRM and does nothing else today.
        candidates = np.flatnonzero(c["alive"] & (c["created_day"] < t))
        rng = self._stream(t, "erasure")
        erased = candidates[rng.random(self.n_contacts)[candidates] < ERASURE_RATE]
        erase_sec = rng.integers(_ACTIVITY_START, _DAY_SECONDS, size=len(erased))
        for i, sec in zip(erased.tolist(), erase_sec.tolist(), strict=True):
            changes.append((sec, i, "d", -1))
        c["alive"][erased] = False
        c["win_start"][erased] = _NEVER

        # New contacts: they sign up today and start doing things tomorrow.
        drifted = self.drifted(t)
        rate = ARRIVAL_RATE * (DRIFT_ARRIVAL_FACTOR if drifted else 1.0)
        n_new = int(self._stream(t, "arrivals").poisson(rate * self.n_initial))
        arrived = self._add_contacts(n_new, t, initial=False)
        c = self.contacts  # _add_contacts replaced the arrays
        stage_before = np.concatenate([stage_before, c["stage"][arrived]])
        for i, sec in zip(
            arrived.tolist(), (c["created_ts"][arrived] - day_ts).tolist(), strict=True
        ):
            changes.append((sec, i, "c", -1))
        c["in_crm"][arrived] = True

        active = np.flatnonzero(c["alive"] & (c["created_day"] < t))
        stage = c["stage"][active]
        eng = c["engagement"][active]
        seg = c["segment"][active]
        activity = DRIFT_ACTIVITY_FACTOR if drifted else 1.0

        # Lifecycle progression and churn.
        rng = self._stream(t, "lifecycle")
        advance = rng.random(self.n_contacts)[active] < STAGE_ADVANCE[stage] * np.minimum(eng, 3.0)
        churn = (stage == CUSTOMER) & (rng.random(self.n_contacts)[active] < CHURN_RATE)
        moved_sec = rng.integers(_ACTIVITY_START, _DAY_SECONDS - 2, size=self.n_contacts)[active]
        new_stage = np.where(advance, stage + 1, np.where(churn, CHURNED, stage))
        moved = advance | churn
        for j in np.flatnonzero(moved).tolist():
            changes.append((int(moved_sec[j]), int(active[j]), "u", int(new_stage[j])))
        c["stage"][active] = new_stage
        c["stage_day"][active[moved]] = t
        became_opportunity = advance & (new_stage == OPPORTUNITY)
        to_opportunity = int(became_opportunity.sum())
        c["trigger_day"][active[became_opportunity]] = t

        # Product views (Poisson) and cart abandonment (its product is viewed first).
        products_p = 1.0 / np.arange(1, N_PRODUCTS + 1) ** 1.1
        products_p /= products_p.sum()
        view_rate = MEAN_VIEWS * activity * eng * SEGMENT_VIEWS[seg] * STAGE_VIEWS[new_stage]
        rng = self._stream(t, "views")
        views = rng.poisson(view_rate)
        viewers = np.repeat(active, views)
        out.add(
            "product.viewed",
            rng.integers(_ACTIVITY_START, _DAY_SECONDS, size=len(viewers)),
            viewers,
            ref=rng.choice(N_PRODUCTS, size=len(viewers), p=products_p),
        )
        cart_p = CART_RATE * activity * SEGMENT_CART[seg] * STAGE_CART[new_stage] * np.sqrt(eng)
        rng = self._stream(t, "carts")
        carts = rng.random(self.n_contacts)[active] < np.minimum(cart_p, 0.5)
        abandoners = active[carts]
        cart_sec = rng.integers(_ACTIVITY_START + 600, _DAY_SECONDS, size=len(abandoners))
        cart_product = rng.choice(N_PRODUCTS, size=len(abandoners), p=products_p)
        cart_value = c["order_value"][abandoners] * rng.lognormal(-0.02, 0.2, len(abandoners))
        out.add(
            "product.viewed",
            cart_sec - rng.integers(1, 600, size=len(abandoners)),
            abandoners,
            ref=cart_product,
        )
        out.add(
            "cart.abandoned", cart_sec, abandoners, ref=cart_product, value=np.round(cart_value, 2)
        )

        # Offer events due today (scheduled when their task was applied).
        deliver_sec = np.full(self.n_contacts, -1, dtype=np.int64)
        due = self.pending["day"] == t
        if due.any():
            dec = self.pending["decision"][due]
            who = self.decisions["contact"][dec]
            ok = c["alive"][who]
            kind, sec, dec, who = (
                self.pending["kind"][due][ok],
                self.pending["second"][due][ok],
                dec[ok],
                who[ok],
            )
            for k, name in enumerate(_OFFER_EVENT):
                sel = kind == k
                out.add(name, sec[sel], who[sel], decision=dec[sel])
            delivered = kind == 0
            deliver_sec[who[delivered]] = sec[delivered]
            keep = ~due
            self.pending = {key: arr[keep] for key, arr in self.pending.items()}

        # Purchases: inside a decision window the frozen schedule applies, else the baseline
        # (which uses the last cart before today: today's abandon boosts from tomorrow).
        offset = t - c["win_start"][active]
        in_window = (offset >= 0) & (offset < WINDOW_DAYS)
        hazard = self._baseline_schedule(active, t)[:, 0]
        hazard[churn] = 0.0  # a contact that churns today does not buy today...
        windowed = np.flatnonzero(in_window)
        # ...unless a decision window holds it: the frozen schedule is what the oracle sums.
        hazard[windowed] = self.win_hazard[active[windowed], offset[windowed]]
        c["last_cart_day"][abandoners] = t
        c["trigger_day"][abandoners] = t
        # Draws are made for every contact and indexed by contact, so two worlds with the same
        # seed that differ only in the decisions taken see the same luck (common random
        # numbers): comparisons of policies are paired.
        rng = self._stream(t, "purchases")
        buys = rng.random(self.n_contacts)[active] < hazard
        pay_u = rng.random(self.n_contacts)
        noise = rng.lognormal(-(ORDER_NOISE_SIGMA**2) / 2, ORDER_NOISE_SIGMA, self.n_contacts)
        buyer_pos = np.flatnonzero(buys)
        buyers = active[buyer_pos]
        low = np.full(len(buyers), _ACTIVITY_START, dtype=np.int64)
        low = np.maximum(low, deliver_sec[buyers] + 1)
        low = np.where(moved[buyer_pos], np.maximum(low, moved_sec[buyer_pos] + 1), low)
        pay_sec = low + (pay_u[buyers] * (_DAY_SECONDS - 2 - low)).astype(np.int64)
        amount = c["order_value"][buyers] * noise[buyers]
        # The first purchase after delivery redeems the offer of the contact's window.
        after_delivery = (
            in_window[buyer_pos]
            & (offset[buyer_pos] >= c["win_delivery"][buyers])
            & (offset[buyer_pos] < c["win_offer_end"][buyers])
        )
        redeem = (
            after_delivery & ~c["win_redeemed"][buyers] & (c["win_action"][buyers] != _NO_OFFER)
        )
        c["win_redeemed"][buyers[after_delivery]] = True
        amount = np.where(redeem, amount * (1.0 - _DISCOUNT[c["win_action"][buyers]]), amount)
        order_no = self.order_seq + np.arange(1, len(buyers) + 1)
        self.order_seq += len(buyers)
        out.add(
            "payment.succeeded",
            pay_sec,
            buyers,
            ref=order_no,
            value=np.round(np.maximum(amount, 0.01), 2),
            decision=np.where(redeem, c["win_decision"][buyers], -1),
        )
        c["last_purchase_day"][buyers] = t
        becomes_customer = c["stage"][buyers] != CUSTOMER
        for i, sec in zip(
            buyers[becomes_customer].tolist(), (pay_sec[becomes_customer] + 1).tolist(), strict=True
        ):
            changes.append((sec, i, "u", CUSTOMER))
        c["stage"][buyers] = CUSTOMER
        c["stage_day"][buyers[becomes_customer]] = t

        records, record_secs = self._contact_changes(changes, stage_before, today, day_ts)
        path = self._write_day(
            crm,
            landing,
            today,
            day_ts,
            unsynced,
            stage_before,
            records,
            record_secs,
            out,
            (applied, skipped),
            debezium,
        )
        kinds = np.bincount(out.columns()["kind"], minlength=len(EVENT_TYPES))
        counts = {name: int(kinds[k]) for k, name in enumerate(EVENT_TYPES)}
        counts["contact.created"] += len(unsynced)
        for record in records:
            counts[_CHANGE_TYPE[record.op]] += 1
        counts = {k: v for k, v in counts.items() if v}
        for k, v in counts.items():
            self.totals[k] = self.totals.get(k, 0) + v
        self._prune_decisions()
        self.day += 1
        return DayReport(
            date=today,
            day=t,
            events_path=path,
            counts=counts,
            tasks_applied=len(applied),
            tasks_skipped=len(skipped),
            contacts_live=int(self.contacts["alive"].sum()),
            triggers=len(abandoners) + to_opportunity,
        )

    def _open_trigger_windows(self, t: int) -> None:
        """Open a decision window on day ``t`` for every live contact triggered on day
        ``t - 1`` (a cart abandoned, or the stage became opportunity): see
        :meth:`_open_no_offer_windows`. A task applied today replaces it."""
        c = self.contacts
        self._open_no_offer_windows(np.flatnonzero(c["alive"] & (c["trigger_day"] == t - 1)), t)

    def _open_no_offer_windows(self, idx: np.ndarray, t: int) -> None:
        """Start a window on day ``t`` without a new offer for contacts ``idx``: the purchase
        schedule is frozen from the contact's state now (a new cart boosts it), exactly as a
        task applied today would freeze it. An offer the contact holds from an earlier window
        keeps working to the end of that window, and stays the one a purchase redeems."""
        if not len(idx):
            return
        c = self.contacts
        start, end = self._held_offer(idx, t)
        held = (start < end) & (c["win_action"][idx] != _NO_OFFER)
        lift = np.where(held, c["win_lift"][idx], 1.0)
        schedule = self._window_schedule(self._baseline_schedule(idx, t), lift, start, end)
        self._open_windows(
            idx,
            t,
            np.where(held, c["win_action"][idx], _NO_OFFER),
            np.where(held, start, 0),
            np.where(held, c["win_decision"][idx], -1),
            schedule,
            lift,
            np.where(held, end, WINDOW_DAYS),
            held & c["win_redeemed"][idx],
        )

    def _open_windows(
        self,
        idx: np.ndarray,
        t: int,
        action: np.ndarray | int,
        delivery: np.ndarray | int,
        decision: np.ndarray | int,
        schedule: np.ndarray,
        lift: np.ndarray | float = 1.0,
        offer_end: np.ndarray | int = WINDOW_DAYS,
        redeemed: np.ndarray | bool = False,
    ) -> None:
        """Start a decision window on day ``t`` for contacts ``idx``: the action, its delivery
        offset and decision row, the frozen purchase schedule (capped), the offer's lift, the
        offset it stops working at and whether a purchase has redeemed it."""
        c = self.contacts
        c["win_start"][idx] = t
        c["win_action"][idx] = action
        c["win_delivery"][idx] = delivery
        c["win_offer_end"][idx] = offer_end
        c["win_lift"][idx] = lift
        c["win_decision"][idx] = decision
        c["win_redeemed"][idx] = redeemed
        self.win_hazard[idx] = np.minimum(schedule, HAZARD_CAP).astype(np.float32)

    def _apply_tasks(self, crm: LocalCrmStore, t: int, cutoff: str) -> tuple[list, list]:
        """Open decision windows for open tasks created before ``cutoff`` and schedule
        their offer events. Out: (applied task ids, skipped task ids)."""
        tasks = crm.open_tasks(before=cutoff)
        c = self.contacts
        applied, skipped = [], []
        idx_list, code_list, dec_ids = [], [], []
        for task in tasks:
            try:
                i = int(task.contact_id[2:]) - 1 if task.contact_id.startswith("C-") else -1
            except ValueError:
                i = -1
            if (
                task.action not in ACTION_CODE
                or not (0 <= i < self.n_contacts)
                or not c["alive"][i]
            ):
                skipped.append(task.task_id)
                continue
            applied.append(task.task_id)
            idx_list.append(i)
            code_list.append(ACTION_CODE[task.action])
            dec_ids.append(task.decision_id)
        if not idx_list:
            return applied, skipped
        rng = self._stream(t, "tasks")
        idx = np.array(idx_list, dtype=np.int64)
        code = np.array(code_list, dtype=np.int8)
        m = len(idx)
        # Oracle values at application time, before anything about the window is drawn.
        margins = np.stack([self.expected_margin(idx, a, t) for a in ACTION_NAMES], axis=1)
        first_dec = len(self.decisions["id"])
        dec_index = np.arange(first_dec, first_dec + m, dtype=np.int32)
        self.decisions = {
            "id": np.concatenate([self.decisions["id"], np.array(dec_ids, dtype=str)]),
            "contact": np.concatenate([self.decisions["contact"], idx]),
            "action": np.concatenate([self.decisions["action"], code]),
            "day": np.concatenate([self.decisions["day"], np.full(m, t, dtype=np.int32)]),
        }
        log = self.oracle_log
        self.oracle_log = {
            "decision_id": np.concatenate([log["decision_id"], np.array(dec_ids, dtype=str)]),
            "contact": np.concatenate([log["contact"], idx]),
            "day": np.concatenate([log["day"], np.full(m, t, dtype=np.int32)]),
            "action": np.concatenate([log["action"], code]),
            "expected_margin": np.concatenate([log["expected_margin"], margins]),
        }
        delivery = (rng.random(m) >= DELIVERED_SAME_DAY).astype(np.int8)
        baseline = self._baseline_schedule(idx, t)
        lift = self._lift(idx, code, t)
        schedule = self._window_schedule(baseline, lift, delivery, np.full(m, WINDOW_DAYS))
        # Tasks are in creation order, so for a contact with several the last one wins.
        _, last = np.unique(idx[::-1], return_index=True)
        last = m - 1 - last
        sends = code[last] != _NO_OFFER
        last_offer = last[sends]
        self._open_windows(
            idx[last_offer],
            t,
            code[last_offer],
            delivery[last_offer],
            dec_index[last_offer],
            schedule[last_offer],
            lift[last_offer],
        )
        # A no_offer task sends nothing: it does not take back an offer already sent.
        self._open_no_offer_windows(idx[last[~sends]], t)

        # Offer events: delivery (same day or next), open within days, click after an open.
        offer = code != _NO_OFFER
        o_idx, o_code, o_dec, o_del = idx[offer], code[offer], dec_index[offer], delivery[offer]
        k = len(o_idx)
        deliver_sec = rng.integers(_DELIVERY_START, _DELIVERY_END, size=k)
        eng = c["engagement"][o_idx]
        annoy = c["annoyance"][o_idx]
        p_open = np.clip(0.15 + 0.25 * np.minimum(eng, 2.0) - 0.25 * annoy, 0.02, 0.9)
        opened = rng.random(k) < p_open
        open_delay = rng.choice(len(OPEN_DELAY_PROBS), size=k, p=OPEN_DELAY_PROBS)
        open_same_day = open_delay == 0
        open_sec = np.where(
            open_same_day,
            deliver_sec
            + 60
            + (rng.random(k) * (_DAY_SECONDS - 4000 - deliver_sec)).astype(np.int64),
            rng.integers(_ACTIVITY_START, _DAY_SECONDS - 3700, size=k),
        )
        affinity = self._click_affinity(o_idx, o_code, t)
        p_click = np.clip(0.08 + 0.5 * affinity - 0.3 * annoy, 0.01, 0.9)
        clicked = opened & (rng.random(k) < p_click)
        click_sec = open_sec + rng.integers(5, 3600, size=k)
        deliver_day = t + o_del
        open_day = deliver_day + open_delay
        self.pending = {
            "day": np.concatenate(
                [self.pending["day"], deliver_day, open_day[opened], open_day[clicked]]
            ).astype(np.int32),
            "second": np.concatenate(
                [self.pending["second"], deliver_sec, open_sec[opened], click_sec[clicked]]
            ).astype(np.int32),
            "decision": np.concatenate(
                [self.pending["decision"], o_dec, o_dec[opened], o_dec[clicked]]
            ).astype(np.int32),
            "kind": np.concatenate(
                [
                    self.pending["kind"],
                    np.zeros(k),
                    np.ones(int(opened.sum())),
                    np.full(int(clicked.sum()), 2),
                ]
            ).astype(np.int8),
        }
        return applied, skipped

    def _static_rows(self, idx: list[int]) -> dict[int, dict]:
        """The fields of contacts ``idx`` that never change (id, PII, creation time), built
        in one pass because the first day syncs the whole population."""
        c = self.contacts
        firsts = [FIRST_NAMES[k] for k in c["first_name"][idx].tolist()]
        lasts = [LAST_NAMES[k] for k in c["last_name"][idx].tolist()]
        created = [self._ts_iso(ts) for ts in c["created_ts"][idx].tolist()]
        channels = [ACQUISITION_CHANNELS[k] for k in c["channel"][idx].tolist()]
        loyalty = c["loyalty"][idx].tolist()
        return {
            i: {
                "contact_id": contact_id_of(i),
                "email": f"{first}.{last}{i + 1}@example.com".lower(),
                "phone": f"+1555{(i * 7_919 + self.seed) % 10_000_000:07d}",
                "first_name": first,
                "last_name": last,
                "acquisition_channel": channel,
                "loyalty_member": member,
                "created_at": at,
            }
            for i, first, last, at, channel, member in zip(
                idx, firsts, lasts, created, channels, loyalty, strict=True
            )
        }

    def _contact_changes(
        self,
        changes: list[tuple[int, int, str, int]],
        stage_before: np.ndarray,
        today: date,
        day_ts: int,
    ) -> tuple[list[ContactChange], list[int]]:
        """Turn the day's contact changes ``(second, contact, op, new stage)`` into CRM
        changes with full before/after rows, in time order, and record the contacts' new
        ``updated_at``. Out: (changes, second of each)."""
        changes.sort(key=lambda ch: (ch[0], ch[1]))
        c = self.contacts
        touched = sorted({ch[1] for ch in changes})
        static = self._static_rows(touched)
        old_updated = dict(zip(touched, c["updated_ts"][touched].tolist(), strict=True))
        old_stage = dict(zip(touched, stage_before[touched].tolist(), strict=True))
        day_text = today.isoformat() + "T"

        def row(i: int, stage: int, updated_ts: int) -> dict:
            return {
                **static[i],
                "lifecycle_stage": LIFECYCLE_STAGES[stage],
                "status": "inactive" if stage == CHURNED else "active",
                "updated_at": self._ts_iso(updated_ts),
            }

        current: dict[int, tuple[int, int]] = {}  # contact -> (stage, updated_ts) so far
        records: list[ContactChange] = []
        for sec, i, op, new_stage in changes:
            ts = day_ts + sec
            if op == "c":
                before, after = None, row(i, old_stage[i], ts)
                current[i] = (old_stage[i], ts)
            else:
                stage, upd = current.get(i, (old_stage[i], old_updated[i]))
                before = row(i, stage, upd)
                if op == "d":
                    after = None
                else:
                    after = row(i, new_stage, ts)
                    current[i] = (new_stage, ts)
            changed_at = day_text + _CLOCK[sec] + "Z"
            records.append(ContactChange(static[i]["contact_id"], op, before, after, changed_at))
        if current:
            keys = list(current)
            c["updated_ts"][keys] = [current[i][1] for i in keys]
        return records, [ch[0] for ch in changes]

    def _sync_changes(
        self, idx: np.ndarray, stage_before: np.ndarray, day_ts: int
    ) -> tuple[list[ContactChange], list[int]]:
        """``c`` changes for contacts that exist in the world but not yet in the CRM (the
        initial population, on day 0). Out: (changes, second of each)."""
        static = self._static_rows(idx.tolist())
        stages = stage_before[idx].tolist()
        records = []
        for i, stage in zip(idx.tolist(), stages, strict=True):
            row = {
                **static[i],
                "lifecycle_stage": LIFECYCLE_STAGES[stage],
                "status": "inactive" if stage == CHURNED else "active",
                "updated_at": static[i]["created_at"],
            }
            records.append(ContactChange(row["contact_id"], "c", None, row, row["created_at"]))
        return records, (self.contacts["created_ts"][idx] - day_ts).tolist()

    def _contact_lines(
        self,
        changes: list[ContactChange],
        seqs: list[int],
        secs: list[int],
        debezium: bool,
        uuids: Iterator[str],
        day_text: str,
        day_ts: int,
    ) -> list[bytes]:
        """Encoded ``contact.*`` lines for CRM changes: canonical events, or Debezium
        envelopes with the change-log sequence as ``source.lsn``."""
        lines = []
        for change, seq, sec in zip(changes, seqs, secs, strict=True):
            if debezium:
                ts_ms = (day_ts + sec) * 1000
                envelope = {
                    "before": change.before,
                    "after": change.after,
                    "op": change.op,
                    "ts_ms": ts_ms,
                    "source": {**DEBEZIUM_SOURCE, "ts_ms": ts_ms, "lsn": seq},
                }
                lines.append(orjson.dumps(envelope))
                continue
            if change.op == "d":
                name, payload = "contact.deleted", {"contact_id": change.contact_id}
            else:
                name = "contact.created" if change.op == "c" else "contact.updated"
                payload = {k: change.after[k] for k in CONTACT_PAYLOAD}
            lines.append(
                orjson.dumps(
                    {
                        "event_id": next(uuids),
                        "timestamp": day_text + _CLOCK[sec] + "Z",
                        "type": name,
                        "source": "local_crm",
                        "payload": payload,
                    }
                )
            )
        return lines

    def _write_day(
        self,
        crm: LocalCrmStore,
        landing: Path,
        today: date,
        day_ts: int,
        sync: np.ndarray,
        stage_before: np.ndarray,
        changes: list[ContactChange],
        change_secs: list[int],
        out: _DayEvents,
        tasks: tuple[list[int], list[int]],
        debezium: bool,
    ) -> Path:
        """Write the day: CRM changes and task status in one transaction, and
        ``events-YYYY-MM-DD.jsonl`` through a temporary name renamed once the CRM has
        committed. Lines are in time order; the population sync (first hour of day 0)
        precedes all activity, so it is streamed in chunks ahead of the rest.
        Out: the day file's path."""
        day_text = today.isoformat() + "T"
        path = landing / f"events-{today.isoformat()}.jsonl"
        tmp = landing / f".events-{today.isoformat()}.jsonl.tmp"
        id_stream = self._stream(self.day, "event_ids")

        def uuids(n: int) -> Iterator[str]:
            return iter(_uuid_strings(id_stream.bytes(16 * n)))

        try:
            with open(tmp, "wb") as fh, crm.day_transaction() as writer:
                for start in range(0, len(sync), _CHUNK):
                    records, secs = self._sync_changes(
                        sync[start : start + _CHUNK], stage_before, day_ts
                    )
                    seqs = writer.add_changes(records)
                    ids = uuids(0 if debezium else len(records))
                    lines = self._contact_lines(
                        records, seqs, secs, debezium, ids, day_text, day_ts
                    )
                    fh.write(b"\n".join(lines) + b"\n")
                seqs = writer.add_changes(changes)
                writer.close_tasks(*tasks, _iso(today, 0))

                # Everything else, sorted by (second, type order, generation order).
                cols = out.columns()
                n_other = len(cols["kind"])
                change_kind = [_CHANGE_KIND[ch.op] for ch in changes]
                second = np.concatenate([cols["second"], np.asarray(change_secs, dtype=np.int64)])
                kind = np.concatenate([cols["kind"], np.asarray(change_kind, dtype=np.int8)])
                order = np.lexsort((np.arange(len(kind)), kind, second))
                for start in range(0, len(order), _CHUNK):
                    chunk = order[start : start + _CHUNK]
                    is_change = chunk >= n_other
                    n_ids = int((~is_change).sum()) + (0 if debezium else int(is_change.sum()))
                    ids = uuids(n_ids)
                    lines = []
                    if n_other:  # contact changes get a dummy row here, never read
                        other = np.minimum(chunk, n_other - 1)
                        values = [cols[k][other].tolist() for k in _COLUMNS]
                    else:
                        values = [[0] * len(chunk)] * len(_COLUMNS)
                    rows = zip(chunk.tolist(), *values, strict=True)
                    for pos, *event in rows:
                        if pos >= n_other:
                            k = pos - n_other
                            lines += self._contact_lines(
                                [changes[k]],
                                [seqs[k]],
                                [change_secs[k]],
                                debezium,
                                ids,
                                day_text,
                                day_ts,
                            )
                        else:
                            lines.append(self._encode_event(*event, next(ids), day_text))
                    if lines:
                        fh.write(b"\n".join(lines) + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, path)
        return path

    def _encode_event(
        self,
        kind: int,
        second: int,
        contact: int,
        ref: int,
        value: float,
        decision: int,
        event_id: str,
        day_text: str,
    ) -> bytes:
        """One non-contact event (a row of :class:`_DayEvents`) as a canonical JSON line."""
        name = EVENT_TYPES[kind]
        contact_id = contact_id_of(contact)
        if name == "product.viewed":
            payload = {"contact_id": contact_id, "product_id": _PRODUCT_IDS[ref]}
        elif name == "cart.abandoned":
            payload = {
                "contact_id": contact_id,
                "product_id": _PRODUCT_IDS[ref],
                "cart_value": value,
            }
        elif name == "payment.succeeded":
            payload = {
                "contact_id": contact_id,
                "amount": value,
                "currency": CURRENCY,
                "order_id": f"O-{self.seed}-{ref:09d}",
            }
            if decision >= 0:
                payload["decision_id"] = str(self.decisions["id"][decision])
        else:  # offer.delivered | opened | clicked
            payload = {
                "contact_id": contact_id,
                "decision_id": str(self.decisions["id"][decision]),
                "action": ACTION_NAMES[self.decisions["action"][decision]],
            }
        return orjson.dumps(
            {
                "event_id": event_id,
                "timestamp": day_text + _CLOCK[second] + "Z",
                "type": name,
                "source": _SOURCE[name],
                "payload": payload,
            }
        )

    def _prune_decisions(self) -> None:
        """Drop decisions no window or pending event refers to any more (keeps the table
        small over long runs) and renumber references."""
        dec = self.decisions
        c = self.contacts
        live_window = (c["win_start"] > self.day - WINDOW_DAYS) & (c["win_decision"] >= 0)
        used = np.zeros(len(dec["id"]), dtype=bool)
        used[c["win_decision"][live_window]] = True
        used[self.pending["decision"]] = True
        if used.all():
            return
        new_index = np.cumsum(used) - 1
        self.decisions = {k: v[used] for k, v in dec.items()}
        self.pending["decision"] = new_index[self.pending["decision"]].astype(np.int32)
        c["win_decision"] = np.where(live_window, new_index[c["win_decision"]], -1).astype(np.int32)

    # -- persistence -------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the whole state (traits, lifecycle, windows, pending offer events, decision
        table, oracle log, generator state) to ``directory/world_state.npz`` through a
        temporary name, plus a readable ``world_state.json``. Out: the npz path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "seed": self.seed,
            "start_date": self.start_date.isoformat(),
            "drift_day": self.drift_day,
            "n_initial": self.n_initial,
            "day": self.day,
            "current_date": self.current_date.isoformat(),
            "order_seq": self.order_seq,
            "n_contacts": self.n_contacts,
            "live_contacts": int(self.contacts["alive"].sum()),
            "totals": self.totals,
            "rng": {"streams": "numpy PCG64 seeded by [seed, day, purpose]", "purposes": _STREAMS},
        }
        arrays = {f"contact__{k}": v for k, v in self.contacts.items()}
        arrays["win_hazard"] = self.win_hazard
        arrays.update({f"decision__{k}": v for k, v in self.decisions.items()})
        arrays.update({f"pending__{k}": v for k, v in self.pending.items()})
        arrays.update({f"oracle__{k}": v for k, v in self.oracle_log.items()})
        arrays["meta_json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        path = directory / STATE_FILE
        tmp = directory / (STATE_FILE + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        meta_tmp = directory / (META_FILE + ".tmp")
        meta_tmp.write_text(json.dumps(meta, indent=2, default=str))
        os.replace(meta_tmp, directory / META_FILE)
        return path

    @classmethod
    def exists(cls, directory: str | Path) -> bool:
        """Whether ``directory`` holds a saved world."""
        return (Path(directory) / STATE_FILE).exists()

    @classmethod
    def load(cls, directory: str | Path) -> World:
        """The world saved in ``directory`` by :meth:`save`, ready to step on."""
        with np.load(Path(directory) / STATE_FILE, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        meta = json.loads(data.pop("meta_json").tobytes())

        def part(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix) :]: v for k, v in data.items() if k.startswith(prefix)}

        contacts = part("contact__")
        world = cls(
            seed=meta["seed"],
            start_date=date.fromisoformat(meta["start_date"]),
            drift_day=meta["drift_day"],
            n_initial=meta["n_initial"],
            day=meta["day"],
            contacts=contacts,
            win_hazard=data["win_hazard"],
            decisions=part("decision__"),
            pending=part("pending__"),
            oracle_log=part("oracle__"),
            order_seq=meta["order_seq"],
            totals=meta["totals"],
        )
        if "win_lift" not in contacts:  # saved before windows kept their offer's lift
            n = len(contacts["alive"])
            contacts["win_offer_end"] = np.full(n, WINDOW_DAYS, dtype=np.int8)
            every, action, start = np.arange(n), contacts["win_action"], contacts["win_start"]
            before = world._lift(every, action, -1)
            if world.drift_day is None:
                contacts["win_lift"] = before
            else:
                after = world._lift(every, action, world.drift_day)
                contacts["win_lift"] = np.where(start >= world.drift_day, after, before)
        return world


class _DayEvents:
    """The day's non-contact events as columns, one entry per event: type code, second of
    the day, contact, ``ref`` (product or order number), ``value`` (cart value or amount)
    and ``decision`` (row in the decision table, -1 if none)."""

    def __init__(self) -> None:
        self._parts: list[dict[str, np.ndarray]] = []

    def add(
        self,
        name: str,
        second: np.ndarray,
        contact: np.ndarray,
        ref: np.ndarray | None = None,
        value: np.ndarray | None = None,
        decision: np.ndarray | None = None,
    ) -> None:
        n = len(contact)
        if n == 0:
            return
        self._parts.append(
            {
                "kind": np.full(n, EVENT_TYPES.index(name), dtype=np.int8),
                "second": np.asarray(second, dtype=np.int64),
                "contact": np.asarray(contact, dtype=np.int64),
                "ref": np.full(n, -1, dtype=np.int64) if ref is None else np.asarray(ref),
                "value": np.full(n, np.nan) if value is None else np.asarray(value, float),
                "decision": np.full(n, -1, dtype=np.int64)
                if decision is None
                else np.asarray(decision, dtype=np.int64),
            }
        )

    def columns(self) -> dict[str, np.ndarray]:
        """All events added, concatenated column by column."""
        keys = _COLUMNS
        if not self._parts:
            return {k: np.empty(0, dtype=np.float64 if k == "value" else np.int64) for k in keys}
        return {k: np.concatenate([p[k] for p in self._parts]) for k in keys}
