"""Built-in tasks: ioi, ccc (country-capital conflict) and city_country.

Each generator returns plain `Example`s from templates with `{ROLE}` placeholders; the
roles of the tokens are worked out later for each tokenizer (see `roles.py`).
"""
from __future__ import annotations

import random

from workers.errors import UsageError
from workers.tasks.example import Example

NAMES = ["Mary", "John", "Tom", "James", "Anna", "David", "Sarah", "Michael", "Paul", "Laura",
         "Peter", "Kate", "Mark", "Emma", "Robert", "Alice", "George", "Jane", "Daniel", "Lisa",
         "Chris", "Ben", "Sam", "Jack", "Lucy", "Steve", "Linda", "Frank", "Helen", "Carl"]
PLACES = ["store", "park", "school", "office", "house", "beach", "garden", "station", "hospital", "restaurant"]
OBJECTS = ["drink", "book", "ball", "ring", "bag", "key", "gift", "cake", "card", "pen"]

# IOI templates (Wang et al., 2022 style). The "long" one is the same kind of sentence with
# extra words, so it has another token length: the held-out split for DynScalar.
IOI_TEMPLATES = {
    "when": "When {IO} and {S1} went to the {PLACE}, {S2} gave a {OBJECT} to",
    "after": "After {IO} and {S1} went to the {PLACE}, {S2} gave a {OBJECT} to",
    "while": "While {IO} and {S1} were at the {PLACE}, {S2} gave a {OBJECT} to",
    "then": "Then {IO} and {S1} went to the {PLACE}, and {S2} gave a {OBJECT} to",
    "long": "When {IO} and {S1} went to the {PLACE} together, {S2} gave a {OBJECT} to",
    "longer": "Later that day, when {IO} and {S1} went together to the {PLACE}, {S2} decided to give a {OBJECT} to",
}
IOI_DEFAULT_TEMPLATES = ["when", "after", "while"]

CAPITALS = {
    "France": "Paris", "Italy": "Rome", "Germany": "Berlin", "Spain": "Madrid", "Japan": "Tokyo",
    "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Greece": "Athens", "England": "London",
    "Ireland": "Dublin", "Austria": "Vienna", "Poland": "Warsaw", "Canada": "Ottawa", "Peru": "Lima",
    "Cuba": "Havana", "Kenya": "Nairobi", "Norway": "Oslo", "Sweden": "Stockholm", "Portugal": "Lisbon",
    "Turkey": "Ankara", "India": "Delhi", "Iran": "Tehran", "Thailand": "Bangkok", "Hungary": "Budapest",
    "Denmark": "Copenhagen", "Finland": "Helsinki", "Belgium": "Brussels", "Mexico": "Mexico",
}
CCC_TEMPLATE = "The capital of {COUNTRY} is {CITY}. Q: What is the capital of {COUNTRY_Q}? A:"
CITY_TEMPLATES = {
    "is_in": "{CITY} is in",
    "city_in": "{CITY} is a city in",
    "located": "The city of {CITY} is located in",
}


def _check_options(task: str, options: dict, allowed: dict) -> None:
    for key in options:
        if key not in allowed:
            raise UsageError(f"task {task!r}: unknown option {key!r}; accepted options: "
                             + ", ".join(f"{k} ({v})" for k, v in allowed.items()))


def _n(task: str, options: dict, default: int) -> int:
    n = options.get("n", default)
    if not isinstance(n, int) or isinstance(n, bool) or n < 4:
        raise UsageError(f"task {task!r}: option n={n!r} must be an integer >= 4")
    return n


def _too_many(task: str, n: int, available: int, detail: str) -> UsageError:
    return UsageError(f"task {task!r}: n={n} asks for more distinct prompts than the task has ({available} {detail}); "
                      "lower n (prompts are never repeated: a repeat could land in two splits)")


def ioi(options: dict, seed: int) -> list[Example]:
    """Distinct prompts; the entity is the unordered name pair, so no pair is in two splits."""
    _check_options("ioi", options, {"n": "examples per template, default 120",
                                    "templates": f"list of {sorted(IOI_TEMPLATES)}",
                                    "heldout_templates": "templates used only for the test split"})
    n = _n("ioi", options, 120)
    templates = list(options.get("templates", IOI_DEFAULT_TEMPLATES))
    heldout = list(options.get("heldout_templates", []))
    for t in templates + heldout:
        if t not in IOI_TEMPLATES:
            raise UsageError(f"task 'ioi': unknown template {t!r}; accepted: {sorted(IOI_TEMPLATES)}")
    available = len(NAMES) * (len(NAMES) - 1) * len(PLACES) * len(OBJECTS)
    if n > available // 4:
        raise _too_many("ioi", n, available, "per template; n may be at most a quarter of that")
    rng = random.Random(seed)
    out = []
    for template_id in templates + heldout:
        template = IOI_TEMPLATES[template_id]
        seen: set[str] = set()
        while len(seen) < n:
            io, s = rng.sample(NAMES, 2)
            fills = {"IO": io, "S1": s, "S2": s, "PLACE": rng.choice(PLACES), "OBJECT": rng.choice(OBJECTS)}
            prompt = template.format(**fills)
            if prompt in seen:
                continue
            seen.add(prompt)
            out.append(Example(prompt=prompt, answer_a=" " + io, answer_b=" " + s, template=template,
                               heldout=template_id in heldout, entities=("+".join(sorted((io, s))),)))
    return out


def ccc(options: dict, seed: int) -> list[Example]:
    """Distinct (country, context city) pairs; both countries are entities, so neither is in two splits."""
    pairs = [(c, o) for c in sorted(CAPITALS) for o in sorted(CAPITALS) if c != o]
    _check_options("ccc", options, {"n": f"examples, default all {len(pairs)} (country, other country) pairs",
                                    "answer": "'context' (the city in the prompt) or 'memory' (the true capital)"})
    n = _n("ccc", options, len(pairs))
    if n > len(pairs):
        raise _too_many("ccc", n, len(pairs), "(country, other country) pairs")
    answer = options.get("answer", "context")
    if answer not in ("context", "memory"):
        raise UsageError(f"task 'ccc': option answer={answer!r}; accepted: 'context' or 'memory'")
    rng = random.Random(seed)
    out = []
    for country, other in rng.sample(pairs, n):
        city, capital = CAPITALS[other], CAPITALS[country]
        prompt = CCC_TEMPLATE.format(COUNTRY=country, CITY=city, COUNTRY_Q=country)
        a, b = (city, capital) if answer == "context" else (capital, city)
        out.append(Example(prompt=prompt, answer_a=" " + a, answer_b=" " + b, template=CCC_TEMPLATE,
                           entities=(country, other)))
    return out


def city_country(options: dict, seed: int) -> list[Example]:
    """One prompt per (city, template); the entity is the country, so no city is in two splits."""
    countries = [c for c in sorted(CAPITALS) if CAPITALS[c] != c]
    _check_options("city_country", options, {"n": "examples, default all (one per city and template)",
                                             "templates": f"list of {sorted(CITY_TEMPLATES)}, default [is_in]"})
    templates = list(options.get("templates", ["is_in"]))
    for t in templates:
        if t not in CITY_TEMPLATES:
            raise UsageError(f"task 'city_country': unknown template {t!r}; accepted: {sorted(CITY_TEMPLATES)}")
    cells = [(c, t) for c in countries for t in templates]
    n = _n("city_country", options, len(cells))
    if n > len(cells):
        raise _too_many("city_country", n, len(cells), f"= {len(countries)} cities x {len(templates)} template(s)")
    rng = random.Random(seed)
    out = []
    for country, t in rng.sample(cells, n):
        other = rng.choice([c for c in countries if c != country])
        template = CITY_TEMPLATES[t]
        out.append(Example(prompt=template.format(CITY=CAPITALS[country]), answer_a=" " + country,
                           answer_b=" " + other, template=template, entities=(country,)))
    return out


BUILTIN_TASKS = {
    "ioi": (ioi, "indirect object identification: 'When Mary and John went to the store, John gave a drink to' "
                 "-> ' Mary' vs ' John'"),
    "ccc": (ccc, "country-capital conflict: context city vs remembered capital"),
    "city_country": (city_country, "'Rome is in' -> ' Italy' vs another country"),
}


def vocabulary_corpus() -> list[str]:
    """Texts that make every built-in task's words single tokens for the tiny tokenizer."""
    texts = []
    for fn, _ in BUILTIN_TASKS.values():
        opts = {"templates": sorted(IOI_TEMPLATES)} if fn is ioi else {}
        texts += [e.prompt + e.answer_a + e.answer_b for e in fn(opts, 0)]
    words = NAMES + PLACES + OBJECTS + list(CAPITALS) + list(CAPITALS.values())
    texts += [" ".join(" " + w for w in words)] * 50
    return texts
