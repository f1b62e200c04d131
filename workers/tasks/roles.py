"""Tokenize examples and give each token a role, so results align across tokenizers.

Placeholder tokens take the placeholder's name (IO, S1, S2, ...), the last token is END,
special tokens are BOS, and other tokens take their template word ("went", "the#2" for a
repeated word, "store+1" for a word's second token). No role occurs twice in one prompt, so
a role names one token of every prompt that has it (workers/columns.py relies on this).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from workers.tasks.example import Example

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_WORD = re.compile(r"\w+|[^\w\s]")


@dataclass
class TokenizedExample:
    example: Example
    input_ids: list[int]
    roles: list[str]
    answer_a_id: int
    answer_b_id: int
    # the counterfactual prompt's token ids (Example.counterfactual), kept only where it has the prompt's
    # length, so that position i of one is position i of the other; None: no counterfactual, or another length
    counterfactual_ids: list[int] | None = None

    @property
    def length(self) -> int:
        return len(self.input_ids)


def placeholder_spans(template: str, prompt: str) -> list[tuple[int, int, str]]:
    """Character spans of the template's placeholders in the prompt ([] if it does not match)."""
    names = _PLACEHOLDER.findall(template)
    if not names:
        return []
    pattern, last = "", 0
    for m in _PLACEHOLDER.finditer(template):
        pattern += re.escape(template[last:m.start()]) + f"(?P<g{len(pattern)}>.+?)"
        last = m.end()
    pattern += re.escape(template[last:])
    match = re.fullmatch(pattern, prompt, flags=re.S)
    if not match:
        return []
    groups = [g for g in match.groupdict()]
    return [(match.start(g), match.end(g), name) for g, name in zip(groups, names)]


def token_roles(prompt: str, template: str, offsets: list[tuple[int, int]]) -> list[str]:
    spans = placeholder_spans(template, prompt)
    words = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(prompt)]
    word_seen: dict[str, int] = {}
    word_role: dict[int, str] = {}
    for i, (_, _, w) in enumerate(words):
        k = word_seen.get(w, 0) + 1
        word_seen[w] = k
        word_role[i] = w if k == 1 else f"{w}#{k}"
    roles: list[str] = []
    pieces: dict[str, int] = {}
    for start, end in offsets:
        if end <= start:
            role = "BOS"
        else:
            c = end - 1
            role = next((name for s, e, name in spans if s <= c < e), None)
            if role is None:
                idx = next((i for i, (s, e, _) in enumerate(words) if s <= c < e), None)
                role = word_role[idx] if idx is not None else "SPACE"
        n = pieces.get(role, 0)
        pieces[role] = n + 1
        roles.append(role if n == 0 else f"{role}+{n}")
    if roles:
        roles[-1] = "END"
    return roles


def tokenize_examples(examples: list[Example], tokenizer) -> tuple[list[TokenizedExample], list[Example]]:
    """Tokenize with roles; returns (kept, dropped for an answer that is not one token)."""
    kept, dropped = [], []
    for e in examples:
        a = tokenizer(e.answer_a, add_special_tokens=False)["input_ids"]
        b = tokenizer(e.answer_b, add_special_tokens=False)["input_ids"]
        if len(a) != 1 or len(b) != 1 or a == b:
            dropped.append(e)
            continue
        enc = tokenizer(e.prompt, return_offsets_mapping=True)
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        ids = list(enc["input_ids"])
        counterfactual = None
        if e.counterfactual is not None:
            counterfactual = list(tokenizer(e.counterfactual)["input_ids"])
            counterfactual = counterfactual if len(counterfactual) == len(ids) else None
        kept.append(TokenizedExample(e, ids, token_roles(e.prompt, e.template, offsets), a[0], b[0], counterfactual))
    return kept, dropped
