"""Hypothesis strategies for portal signal payloads, valid and invalid.

Valid payloads follow the signal table of the wire contract, with odd but
allowed Unicode, long text and extra fields, which ``parse_event`` ignores.
Each invalid payload breaks exactly one rule that ``parse_event`` enforces.
``Sent.fault`` contains the text that its rejection reason must contain, so a
test checks the rejection and its reason without a second validator.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from typing import Any, Literal

from hypothesis import strategies as st

from workflows.events import (
    CHANNELS,
    CLOSE_REASONS,
    MAX_ID_LENGTH,
    MAX_TEXT_LENGTH,
    OUTCOMES,
    SIGNALS,
)

# The signal that reports a rejected Update. Its payload differs from an event's.
RECORD_REJECTION = "record_rejection"

# The Unicode categories these strategies leave out of text.
Category = Literal["Cc", "Cf", "Cs", "Zs", "Zl", "Zp"]
# Unicode categories that parse_event rejects in text: control, format
# (U+202E, zero-width space) and surrogate characters.
REJECTED_CATEGORIES: tuple[Category, ...] = ("Cc", "Cf", "Cs")
REJECTED_CHARACTERS = [
    "\x00",
    "\x1b",
    "\x7f",
    "\u202e",
    "\u200b",
    "\u200d",
    "\ufeff",
    "\ud800",
    "\n",
]
# Allowed, but likely to trip up a validator, a database or a mail header.
ODD_TEXT = [
    "\u0301",
    "e\u0301\u0302\u0303",
    "\u05e9\u05dc\u05d5\u05dd",
    "\u0645\u0631\u062d\u0628\u0627 abc",
    "\U0001f3ab\U0001f4de",
    "\u2028\u2029",
    "\U0010fffd",
    "\ufffe\uffff",
    "'; DROP TABLE tickets; --",
    "=?utf-8?q?Subject?=",
]
MAX_EMAIL_LENGTH = 254
ADDRESS_SEPARATORS = '@<>,;"'
MAX_PHONE_LENGTH = 64
MAX_TIME_LENGTH = 64

# Fields of each signal beside event_id and occurred_at, by the kind of value.
# parse_event reads an optional reason on a claim too.
SIGNAL_FIELDS: dict[str, dict[str, str]] = {
    "claim": {"tech": "tech", "reason": "free_text"},
    "reassign": {"tech": "tech", "reason": "free_text"},
    "release": {"reason": "free_text"},
    "contact_attempt": {"channel": "channel", "outcome": "outcome"},
    "notes_updated": {},
    "customer_message": {"channel": "channel"},
    "time_logged": {"hours": "hours"},
    "close": {"reason": "close_reason"},
}
COMMON_FIELDS = {"event_id": "id", "occurred_at": "time"}
TECH_FIELDS = {"id": "id", "name": "name", "email": "email", "phone": "phone"}
ENUMS = {"channel": CHANNELS, "outcome": OUTCOMES, "close_reason": CLOSE_REASONS}

# Removes the field from the payload when it is the drawn "value".
MISSING = object()


@dataclass(frozen=True)
class Sent:
    """One signal as a test sends it: the name, the payload and what is wrong.

    ``fault`` is None for a valid payload. For an invalid one it is the text
    that the rejection reason contains: the field's name as parse_event's
    message spells it (``tech.email``), ``payload`` or ``unknown event``.
    ``more_inputs`` go with the signal after the payload, which makes it
    invalid whatever the payload.
    """

    signal: str
    payload: Any
    fault: str | None = None
    more_inputs: tuple[Any, ...] = ()

    @property
    def valid(self) -> bool:
        return self.fault is None


def allowed_characters(
    extra_categories: tuple[Category, ...] = (), extra_characters: str = ""
) -> st.SearchStrategy[str]:
    """Return characters that parse_event accepts in text, minus some more."""
    return st.characters(
        exclude_categories=REJECTED_CATEGORIES + extra_categories,
        exclude_characters=extra_characters,
    )


def repeated(
    pieces: st.SearchStrategy[str], min_size: int, max_size: int
) -> st.SearchStrategy[str]:
    """Return strings of ``min_size`` to ``max_size`` characters from a short piece.

    Hypothesis draws a few bytes per character, so a 100 kB string drawn
    directly would exceed its data limit. A repeated piece costs a few bytes.
    """

    def build(piece: str, size: int) -> str:
        return (piece * (size // len(piece) + 1))[:size]

    return st.builds(build, pieces.filter(bool), st.integers(min_size, max_size))


@cache
def texts(max_size: int, *, line_breaks: bool = False) -> st.SearchStrategy[str]:
    """Return strings that parse_event accepts in a text field of ``max_size``."""
    characters = allowed_characters()
    if line_breaks:
        characters = characters | st.sampled_from("\n\r\t")
    short = st.text(characters, max_size=min(max_size, 40))
    odd = st.sampled_from(ODD_TEXT)
    long = repeated(short | odd, max_size - 10, max_size)
    return st.one_of(short, odd, long)


@cache
def ids() -> st.SearchStrategy[str]:
    """Return required identifiers: non-empty, not only whitespace."""
    return texts(MAX_ID_LENGTH).filter(str.strip)


@cache
def emails(ascii_only: bool = False) -> st.SearchStrategy[str]:
    """Return mail addresses: no whitespace, no characters that separate addresses."""
    characters = allowed_characters(
        extra_categories=("Zs", "Zl", "Zp"), extra_characters=ADDRESS_SEPARATORS
    )
    if ascii_only:
        characters = st.characters(min_codepoint=0x21, max_codepoint=0x7E).filter(
            lambda c: c not in ADDRESS_SEPARATORS
        )
    part = st.text(characters, min_size=1, max_size=30)
    return st.builds("{}@{}".format, part, part)


def numbers() -> st.SearchStrategy[Any]:
    """Return booleans and numbers: the JSON scalars besides strings and null."""
    return st.one_of(st.booleans(), st.integers(), st.floats())


@cache
def json_values() -> st.SearchStrategy[Any]:
    """Return any JSON value, nested a few levels deep."""
    scalars = st.one_of(st.none(), numbers(), st.text(max_size=20))
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=8), children, max_size=4),
        ),
        max_leaves=8,
    )


def json_lists() -> st.SearchStrategy[list[Any]]:
    return st.lists(json_values(), max_size=4)


def json_objects() -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.text(max_size=8), json_values(), max_size=4)


def non_strings() -> st.SearchStrategy[Any]:
    """Return JSON values other than a string or null."""
    return st.one_of(numbers(), json_lists(), json_objects())


def non_objects() -> st.SearchStrategy[Any]:
    """Return JSON values other than an object, null included."""
    return st.one_of(st.none(), numbers(), st.text(max_size=20), json_lists())


@cache
def extra_fields(known: frozenset[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Return fields the contract does not name, which parse_event ignores."""
    names = st.text(max_size=12).filter(lambda name: name not in known)
    values = json_values() | repeated(st.text(min_size=1, max_size=5), 1, 100_000)
    return st.dictionaries(names, values, max_size=3)


def time_text(moment: datetime, offset_minutes: int, use_z: bool) -> str:
    """Return ``moment`` as ISO 8601 text with the given UTC offset."""
    if use_z and offset_minutes == 0:
        return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
    zone = timezone(timedelta(minutes=offset_minutes))
    return moment.astimezone(zone).isoformat()


def times(earliest: datetime, latest: datetime) -> st.SearchStrategy[str]:
    """Return aware ISO 8601 times from ``earliest`` to ``latest``, any offset."""
    moments = st.datetimes(
        min_value=earliest.astimezone(UTC).replace(tzinfo=None),
        max_value=latest.astimezone(UTC).replace(tzinfo=None),
        timezones=st.just(UTC),
    )
    # Python accepts offsets up to 23:59 either way.
    offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1) | st.just(0)
    return st.builds(time_text, moments, offsets, st.booleans())


@cache
def techs(ascii_email: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    tech = st.fixed_dictionaries(
        {"id": ids(), "email": emails(ascii_email)},
        optional={
            "name": st.none() | texts(MAX_ID_LENGTH),
            "phone": st.none() | texts(MAX_PHONE_LENGTH),
        },
    )
    return with_extra_fields(tech, frozenset(TECH_FIELDS))


def with_extra_fields(
    base: st.SearchStrategy[dict[str, Any]], known: frozenset[str]
) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda fields, extra: {**extra, **fields}, base, extra_fields(known)
    )


@cache
def valid_value(kind: str) -> st.SearchStrategy[Any]:
    """Return a value that parse_event accepts for a field of ``kind``."""
    if kind == "tech":
        return techs()
    if kind == "free_text":
        return st.none() | texts(MAX_TEXT_LENGTH, line_breaks=True)
    if kind in ENUMS:
        return st.sampled_from(ENUMS[kind])
    if kind == "hours":
        return st.integers(1, 24) | st.floats(
            min_value=0, max_value=24, exclude_min=True, allow_nan=False
        )
    raise ValueError(f"no valid values for field kind {kind!r}")


def valid_payloads(
    signal: str,
    event_ids: st.SearchStrategy[str],
    occurred_at: st.SearchStrategy[str],
) -> st.SearchStrategy[dict[str, Any]]:
    """Return payloads that parse_event accepts for ``signal``."""
    required: dict[str, st.SearchStrategy[Any]] = {"event_id": event_ids}
    optional: dict[str, st.SearchStrategy[Any]] = {"occurred_at": occurred_at}
    for name, kind in SIGNAL_FIELDS[signal].items():
        if kind == "free_text":
            optional[name] = valid_value(kind)
        else:
            required[name] = valid_value(kind)
    base = st.fixed_dictionaries(required, optional=optional)
    return with_extra_fields(base, frozenset({*COMMON_FIELDS, *SIGNAL_FIELDS[signal]}))


def valid_events(
    event_ids: st.SearchStrategy[str], occurred_at: st.SearchStrategy[str]
) -> st.SearchStrategy[Sent]:
    return st.one_of(
        [
            st.builds(
                Sent, st.just(signal), valid_payloads(signal, event_ids, occurred_at)
            )
            for signal in SIGNALS
        ]
    )


def with_rejected_character(
    valid: st.SearchStrategy[str], characters: list[str]
) -> st.SearchStrategy[str]:
    """Return valid text with one rejected character put in at any place."""

    def insert(text: str, character: str, place: int) -> str:
        place = place % (len(text) + 1)
        return text[:place] + character + text[place:]

    return st.builds(insert, valid, st.sampled_from(characters), st.integers(0, 500))


def invalid_texts(
    valid: st.SearchStrategy[str], max_size: int, characters: list[str]
) -> st.SearchStrategy[Any]:
    """Return bad values for an optional text field.

    They have the wrong type, are too long or hold a rejected character.
    """
    too_long = repeated(st.text(min_size=1, max_size=5), max_size + 1, 100_000)
    return st.one_of(
        non_strings(), too_long, with_rejected_character(valid, characters)
    )


@cache
def invalid_value(kind: str) -> st.SearchStrategy[Any]:
    """Return a value, or MISSING, that parse_event rejects for a field of ``kind``."""
    blank = st.sampled_from(["", " ", "\u3000\u00a0", "\u2028"])

    if kind == "id":
        bad = invalid_texts(ids(), MAX_ID_LENGTH, REJECTED_CHARACTERS)
        return st.one_of(st.just(MISSING), st.none(), blank, bad)

    if kind == "email":
        bad = invalid_texts(emails(), MAX_EMAIL_LENGTH, REJECTED_CHARACTERS)
        no_at = ids().filter(lambda text: "@" not in text)
        with_space = st.builds("{} {}".format, emails(), st.text(max_size=5))
        not_one_address = st.sampled_from(
            ["a@b@c", "<a@b>", "a@b, c@d", "a;b@c", '"a"@b', "@b", "a@", "a\u2028b@c"]
        )
        return st.one_of(
            st.just(MISSING), st.none(), blank, bad, no_at, with_space, not_one_address
        )

    if kind == "name":
        return invalid_texts(texts(MAX_ID_LENGTH), MAX_ID_LENGTH, REJECTED_CHARACTERS)

    if kind == "phone":
        return invalid_texts(
            texts(MAX_PHONE_LENGTH), MAX_PHONE_LENGTH, REJECTED_CHARACTERS
        )

    if kind == "free_text":
        # Free text may hold line breaks and tabs, but no other control character.
        characters = [c for c in REJECTED_CHARACTERS if c != "\n"]
        valid = texts(MAX_TEXT_LENGTH, line_breaks=True)
        return invalid_texts(valid, MAX_TEXT_LENGTH, characters)

    if kind in ENUMS:
        allowed = ENUMS[kind]
        near_misses = st.sampled_from(allowed).flatmap(
            lambda word: st.sampled_from([word.upper(), f" {word}", word[:-1]])
        )
        others = st.one_of(numbers(), json_lists(), json_objects(), st.text())
        others = others.filter(lambda value: value not in allowed)
        return st.one_of(st.just(MISSING), st.none(), near_misses, others)

    if kind == "hours":
        return st.one_of(
            st.just(MISSING),
            st.none(),
            st.sampled_from(
                [0, 0.0, -0.0, -1, 24.000001, 25, 10**400, -(10**400), True, "2"]
            ),
            st.sampled_from([float("nan"), float("inf"), float("-inf")]),
            st.floats(max_value=0) | st.floats(min_value=24, exclude_min=True),
            json_lists(),
            json_objects(),
            st.text(max_size=20),
        )

    if kind == "time":
        return invalid_times()

    if kind == "tech":
        return st.one_of(st.just(MISSING), non_objects())

    raise ValueError(f"no invalid values for field kind {kind!r}")


@cache
def invalid_times() -> st.SearchStrategy[Any]:
    """Return occurred_at values that parse_event rejects."""
    moment = datetime(2026, 6, 10, 14, 0)
    naive = st.sampled_from(
        [
            moment.isoformat(),
            moment.date().isoformat(),
            "2026-06-10T14:00:00.123456",
            "2026-03-08T02:30:00",
        ]
    )
    bad_offsets = st.sampled_from(
        ["+24:00", "-24:00", "+25:00", "-99:00", "+1", "+05:0", "+0530x", " UTC"]
    ).map(lambda offset: moment.isoformat() + offset)
    # Beyond datetime's range once moved to UTC, or outside the accepted years.
    out_of_range = st.sampled_from(
        [
            "9999-12-31T23:00:00-05:00",
            "0001-01-01T00:30:00+01:00",
            "0001-01-01T00:00:00+00:00",
            "1969-12-31T23:59:59+00:00",
            "3000-01-01T00:00:00+00:00",
            "2999-12-31T23:00:00-05:00",
        ]
    )
    garbage = st.sampled_from(
        ["", "now", "yesterday", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z"]
    )
    too_long = st.just(moment.isoformat() + "+00:00" + " " * MAX_TIME_LENGTH)
    return st.one_of(naive, bad_offsets, out_of_range, garbage, too_long, non_strings())


def set_field(payload: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """Set or, for MISSING, remove the field at ``path`` of a nested payload."""
    *parents, name = path
    for parent in parents:
        payload = payload[parent]
    if value is MISSING:
        payload.pop(name, None)
    else:
        payload[name] = value


def field_paths(signal: str) -> list[tuple[tuple[str, ...], str]]:
    """Return every field of ``signal``'s payload with its kind, nested ones too."""
    paths: list[tuple[tuple[str, ...], str]] = [
        ((name,), kind) for name, kind in COMMON_FIELDS.items()
    ]
    for name, kind in SIGNAL_FIELDS[signal].items():
        paths.append(((name,), kind))
        if kind == "tech":
            paths += [((name, field), k) for field, k in TECH_FIELDS.items()]
    return paths


def one_field_wrong(
    event_ids: st.SearchStrategy[str], occurred_at: st.SearchStrategy[str]
) -> st.SearchStrategy[Sent]:
    """Return valid payloads with one field, maybe a nested one, made invalid."""

    @st.composite
    def wrong(draw: st.DrawFn, signal: str) -> Sent:
        payload = draw(payloads[signal])
        path, kind = draw(paths[signal])
        set_field(payload, path, draw(invalid_value(kind)))
        return Sent(signal, payload, fault=".".join(path))

    payloads = {s: valid_payloads(s, event_ids, occurred_at) for s in SIGNALS}
    paths = {signal: st.sampled_from(field_paths(signal)) for signal in SIGNALS}
    return st.one_of([wrong(signal) for signal in SIGNALS])


@cache
def unknown_signal_names() -> st.SearchStrategy[str]:
    """Return signal names that the workflow has no handler for.

    NUL and lone surrogates are left out: the workflow keeps the name in the
    record, which PostgreSQL cannot store with them.
    test_record_keeps_no_nul_from_signal_name pins that case.
    """
    surrogates: tuple[Category, ...] = ("Cs",)
    characters = st.characters(exclude_categories=surrogates, exclude_characters="\x00")
    names = st.one_of(
        st.text(characters, min_size=1, max_size=30),
        st.sampled_from([s.upper() for s in SIGNALS] + [f"{s} " for s in SIGNALS]),
        repeated(st.text(characters, min_size=1, max_size=5), 1000, 100_000),
    )
    return names.filter(lambda name: name not in (*SIGNALS, RECORD_REJECTION))


def invalid_events(
    event_ids: st.SearchStrategy[str], occurred_at: st.SearchStrategy[str]
) -> st.SearchStrategy[Sent]:
    """Return signals that parse_event rejects, each with its ``fault``."""
    unknown = st.builds(
        lambda name, sent: Sent(name, sent.payload, fault="unknown event"),
        unknown_signal_names(),
        valid_events(event_ids, occurred_at),
    )
    return st.one_of(
        one_field_wrong(event_ids, occurred_at),
        st.builds(Sent, st.sampled_from(SIGNALS), non_objects(), st.just("payload")),
        unknown,
    )


def event_id_pool(size: int) -> st.SearchStrategy[str]:
    """Return ids from a small pool, so that a sequence repeats some of them."""
    return st.sampled_from([f"e-{number}" for number in range(1, size + 1)])
