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
    # BABA: the subject named first, so that position is not role (Wang et al. 2022 use both orders)
    "when_baba": "When {S1} and {IO} went to the {PLACE}, {S2} gave a {OBJECT} to",
    "after_baba": "After {S1} and {IO} went to the {PLACE}, {S2} gave a {OBJECT} to",
    "while_baba": "While {S1} and {IO} were at the {PLACE}, {S2} gave a {OBJECT} to",
    "longer_baba": "Later that day, when {S1} and {IO} went together to the {PLACE}, {S2} decided to give a {OBJECT} "
                   "to",
    # another verb frame (and length): the object handed over, the recipient last
    "handed": "Afterwards, {IO} and {S1} were at the {PLACE}, and {S2} handed the {OBJECT} over to",
}
# The templates the tiny test tokenizer was trained on (vocabulary_corpus): kept as they were, so the tiny
# vocabulary, and every tiny result, stays the same when templates are added.
TINY_CORPUS_IOI_TEMPLATES = ["after", "long", "longer", "then", "when", "while"]
IOI_DEFAULT_TEMPLATES = ["when", "after", "while"]

# Countries with one-word names and their capitals. A model's tasks use those whose name and capital are
# each one token for its tokenizer (after a space, as they stand in prompts and answers): 40 of these for
# SmolLM2-135M, 81 for Gemma 3 270M. No capital is another country's name or a truncated name.
CAPITALS = {
    "France": "Paris", "Italy": "Rome", "Germany": "Berlin", "Spain": "Madrid", "Japan": "Tokyo",
    "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Greece": "Athens", "England": "London",
    "Ireland": "Dublin", "Austria": "Vienna", "Poland": "Warsaw", "Canada": "Ottawa", "Peru": "Lima",
    "Cuba": "Havana", "Kenya": "Nairobi", "Norway": "Oslo", "Sweden": "Stockholm", "Portugal": "Lisbon",
    "Turkey": "Ankara", "India": "Delhi", "Iran": "Tehran", "Thailand": "Bangkok", "Hungary": "Budapest",
    "Denmark": "Copenhagen", "Finland": "Helsinki", "Belgium": "Brussels", "Chile": "Santiago",
    "Colombia": "Bogota", "Venezuela": "Caracas", "Ecuador": "Quito", "Uruguay": "Montevideo",
    "Paraguay": "Asuncion", "Brazil": "Brasilia", "Australia": "Canberra", "Indonesia": "Jakarta",
    "Philippines": "Manila", "Vietnam": "Hanoi", "Korea": "Seoul", "Pakistan": "Islamabad", "Afghanistan": "Kabul",
    "Iraq": "Baghdad", "Syria": "Damascus", "Lebanon": "Beirut", "Jordan": "Amman", "Qatar": "Doha",
    "Oman": "Muscat", "Yemen": "Sanaa", "Nigeria": "Abuja", "Ghana": "Accra", "Senegal": "Dakar",
    "Morocco": "Rabat", "Algeria": "Algiers", "Tunisia": "Tunis", "Libya": "Tripoli", "Sudan": "Khartoum",
    "Uganda": "Kampala", "Tanzania": "Dodoma", "Zimbabwe": "Harare", "Zambia": "Lusaka", "Angola": "Luanda",
    "Mali": "Bamako", "Niger": "Niamey", "Somalia": "Mogadishu", "Rwanda": "Kigali", "Scotland": "Edinburgh",
    "Wales": "Cardiff", "Netherlands": "Amsterdam", "Switzerland": "Bern", "Slovakia": "Bratislava",
    "Romania": "Bucharest", "Bulgaria": "Sofia", "Serbia": "Belgrade", "Croatia": "Zagreb",
    "Slovenia": "Ljubljana", "Albania": "Tirana", "Ukraine": "Kyiv", "Belarus": "Minsk", "Lithuania": "Vilnius",
    "Latvia": "Riga", "Estonia": "Tallinn", "Iceland": "Reykjavik", "Georgia": "Tbilisi", "Armenia": "Yerevan",
    "Azerbaijan": "Baku", "Kazakhstan": "Astana", "Uzbekistan": "Tashkent", "Mongolia": "Ulaanbaatar",
    "Nepal": "Kathmandu", "Bangladesh": "Dhaka", "Laos": "Vientiane", "Taiwan": "Taipei", "Jamaica": "Kingston",
    "Nicaragua": "Managua", "Honduras": "Tegucigalpa", "Cyprus": "Nicosia", "Malta": "Valletta",
    "Moldova": "Chisinau", "Bahrain": "Manama", "Fiji": "Suva", "Namibia": "Windhoek", "Botswana": "Gaborone",
    "Mozambique": "Maputo", "Malawi": "Lilongwe", "Cameroon": "Yaounde", "Gabon": "Libreville",
    "Liberia": "Monrovia", "Guinea": "Conakry", "Eritrea": "Asmara", "Bhutan": "Thimphu", "Bahamas": "Nassau",
}
# The tiny test tokenizer is trained on the task texts of this first, smaller list (workers/tiny_tokenizer.py):
# kept as it was, so the tiny models' vocabulary, and every tiny result, stays the same.
TINY_CORPUS_CAPITALS = {
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
# The default: a space before the city, so a city that is one token after a space (as the task's countries are
# chosen) is one token in the prompt, and every prompt of a model has one token length. The two that open with the
# city may split it (no space before it) and so lose prompts to fixed-length methods.
CITY_DEFAULT_TEMPLATES = ["located"]


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


def single_tokens(words: list[str], tokenizer) -> list[str]:
    """The words that are one token after a space, as they stand in the prompts and answers, for
    this tokenizer (all of them without one: the task as defined, e.g. to hash its data)."""
    if tokenizer is None:
        return list(words)
    return [w for w in words if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1]


def usable_countries(capitals: dict[str, str], tokenizer) -> list[str]:
    """Countries whose name and capital are each one token for this tokenizer, sorted."""
    single = set(single_tokens(sorted(set(capitals) | set(capitals.values())), tokenizer))
    return [c for c in sorted(capitals) if c in single and capitals[c] in single]


def _too_few(task: str, what: str, have: int, need: int, tokenizer) -> UsageError:
    return UsageError(f"task {task!r}: only {have} {what} are single tokens for this model's tokenizer "
                      f"({type(tokenizer).__name__}); the task needs at least {need}")


IOI_DEFAULT_N = 120  # ioi's examples per template when option n is not given


def ioi(options: dict, seed: int, tokenizer=None) -> list[Example]:
    """Distinct prompts; the entity is the unordered name pair, so no pair is in two splits. With a
    tokenizer, only names, places and objects that are one token for it are used."""
    _check_options("ioi", options, {"n": f"examples per template, default {IOI_DEFAULT_N}",
                                    "templates": f"list of {sorted(IOI_TEMPLATES)}",
                                    "heldout_templates": "templates used only for the test split",
                                    "counterfactual": "'swap' (default: S2 named as the IO, so the answer is "
                                                      "the other name) or 'abc' (S2 a third name)"})
    n = _n("ioi", options, IOI_DEFAULT_N)
    counterfactual = options.get("counterfactual", "swap")
    if counterfactual not in ("swap", "abc"):
        raise UsageError(f"task 'ioi': option counterfactual={counterfactual!r}; accepted: 'swap' or 'abc'")
    templates = list(options.get("templates", IOI_DEFAULT_TEMPLATES))
    heldout = list(options.get("heldout_templates", []))
    for t in templates + heldout:
        if t not in IOI_TEMPLATES:
            raise UsageError(f"task 'ioi': unknown template {t!r}; accepted: {sorted(IOI_TEMPLATES)}")
    names, places, objects = (single_tokens(words, tokenizer) for words in (NAMES, PLACES, OBJECTS))
    if len(names) < 2 or not places or not objects:
        raise _too_few("ioi", "names, places or objects", min(len(names), len(places), len(objects)), 2, tokenizer)
    available = len(names) * (len(names) - 1) * len(places) * len(objects)
    if n > available // 4:
        raise _too_many("ioi", n, available, "per template; n may be at most a quarter of that")
    rng = random.Random(seed)
    out = []
    for template_id in templates + heldout:
        template = IOI_TEMPLATES[template_id]
        seen: set[str] = set()
        while len(seen) < n:
            io, s = rng.sample(names, 2)
            fills = {"IO": io, "S1": s, "S2": s, "PLACE": rng.choice(places), "OBJECT": rng.choice(objects)}
            prompt = template.format(**fills)
            if prompt in seen:
                continue
            seen.add(prompt)
            out.append(Example(prompt=prompt, answer_a=" " + io, answer_b=" " + s, template=template,
                               heldout=template_id in heldout, entities=("+".join(sorted((io, s))),),
                               counterfactual=template.format(**_ioi_counterfactual(fills, counterfactual, names,
                                                                                   prompt))))
    return out


def _ioi_counterfactual(fills: dict[str, str], kind: str, names: list[str], prompt: str) -> dict[str, str]:
    """The fills of an IOI prompt's counterfactual: 'swap' names the IO as S2 (the answer becomes the other
    name, answer b); 'abc' names a third name as S2 (no name is repeated: neither answer), chosen from the
    prompt itself so that no random draw of the task changes."""
    if kind == "swap":
        return dict(fills, S2=fills["IO"])
    others = [n for n in names if n not in (fills["IO"], fills["S1"])]
    return dict(fills, S2=others[sum(map(ord, prompt)) % len(others)])


CCC_DEFAULT_N = 800


def ccc(options: dict, seed: int, tokenizer=None, capitals: dict[str, str] | None = None) -> list[Example]:
    """Distinct (country, context city) pairs; both countries are entities, so neither is in two splits.
    With a tokenizer, only countries whose name and capital are one token for it."""
    capitals = capitals or CAPITALS
    countries = usable_countries(capitals, tokenizer)
    pairs = [(c, o) for c in countries for o in countries if c != o]
    _check_options("ccc", options, {"n": f"examples, default {CCC_DEFAULT_N} (or all (country, other country) "
                                          "pairs if fewer)",
                                    "answer": "'context' (the city in the prompt) or 'memory' (the true capital)"})
    if len(countries) < 4:
        raise _too_few("ccc", "countries (name and capital)", len(countries), 4, tokenizer)
    n = _n("ccc", options, min(CCC_DEFAULT_N, len(pairs)))
    if n > len(pairs):
        raise _too_many("ccc", n, len(pairs), f"(country, other country) pairs of {len(countries)} countries")
    answer = options.get("answer", "context")
    if answer not in ("context", "memory"):
        raise UsageError(f"task 'ccc': option answer={answer!r}; accepted: 'context' or 'memory'")
    rng = random.Random(seed)
    out = []
    for country, other in rng.sample(pairs, n):
        city, capital = capitals[other], capitals[country]
        prompt = CCC_TEMPLATE.format(COUNTRY=country, CITY=city, COUNTRY_Q=country)
        a, b = (city, capital) if answer == "context" else (capital, city)
        # the counterfactual's context agrees with answer b: the true capital, or (memory) the other country
        counterfactual = (CCC_TEMPLATE.format(COUNTRY=country, CITY=capital, COUNTRY_Q=country) if answer == "context"
                          else CCC_TEMPLATE.format(COUNTRY=other, CITY=city, COUNTRY_Q=other))
        out.append(Example(prompt=prompt, answer_a=" " + a, answer_b=" " + b, template=CCC_TEMPLATE,
                           entities=(country, other), counterfactual=counterfactual))
    return out


def city_country(options: dict, seed: int, tokenizer=None, capitals: dict[str, str] | None = None) -> list[Example]:
    """One prompt per (city, template); the entity is the country, so no city is in two splits. With a
    tokenizer, only countries whose name and capital are one token for it (the default template puts a
    space before the city, so it stays one token; one that opens with the city, like is_in, may split it)."""
    capitals = capitals or CAPITALS
    countries = [c for c in usable_countries(capitals, tokenizer) if capitals[c] != c]
    _check_options("city_country", options, {"n": "examples, default all (one per city and template)",
                                             "templates": f"list of {sorted(CITY_TEMPLATES)}, default "
                                                          f"{CITY_DEFAULT_TEMPLATES} (a space before the city)"})
    templates = list(options.get("templates", CITY_DEFAULT_TEMPLATES))
    for t in templates:
        if t not in CITY_TEMPLATES:
            raise UsageError(f"task 'city_country': unknown template {t!r}; accepted: {sorted(CITY_TEMPLATES)}")
    if len(countries) < 4:
        raise _too_few("city_country", "countries (name and capital)", len(countries), 4, tokenizer)
    cells = [(c, t) for c in countries for t in templates]
    n = _n("city_country", options, len(cells))
    if n > len(cells):
        raise _too_many("city_country", n, len(cells), f"= {len(countries)} cities x {len(templates)} template(s)")
    rng = random.Random(seed)
    out = []
    for country, t in rng.sample(cells, n):
        other = rng.choice([c for c in countries if c != country])
        template = CITY_TEMPLATES[t]
        out.append(Example(prompt=template.format(CITY=capitals[country]), answer_a=" " + country,
                           answer_b=" " + other, template=template, entities=(country,),
                           counterfactual=template.format(CITY=capitals[other])))
    return out


BUILTIN_TASKS = {
    "ioi": (ioi, "indirect object identification: 'When Mary and John went to the store, John gave a drink to' "
                 "-> ' Mary' vs ' John'"),
    "ccc": (ccc, "country-capital conflict: context city vs remembered capital"),
    "city_country": (city_country, "'Rome is in' -> ' Italy' vs another country"),
}


def vocabulary_corpus() -> list[str]:
    """Texts that make every built-in task's words single tokens for the tiny tokenizer (from the first
    country list, TINY_CORPUS_CAPITALS, so that the tiny vocabulary stays what it was)."""
    old = TINY_CORPUS_CAPITALS
    n_pairs = len(old) * (len(old) - 1)
    texts = [e.prompt + e.answer_a + e.answer_b for e in ioi({"templates": TINY_CORPUS_IOI_TEMPLATES}, 0)]
    texts += [e.prompt + e.answer_a + e.answer_b for e in ccc({"n": n_pairs}, 0, capitals=old)]
    texts += [e.prompt + e.answer_a + e.answer_b for e in city_country({"templates": ["is_in"]}, 0, capitals=old)]
    words = NAMES + PLACES + OBJECTS + list(old) + list(old.values())
    texts += [" ".join(" " + w for w in words)] * 50
    return texts
