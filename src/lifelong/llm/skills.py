"""``skills``: a built-in instruction stream that needs no download and that a tiny model learns on a CPU.

Three small generated skills, in this order, each a prompt/completion task scored by exact match:

- ``upper``: a four-letter word in capitals, ``up:c.a.t.s=`` -> ``C.A.T.S``;
- ``reverse``: a four-letter word backwards, ``rev:c.a.t.s=`` -> ``s.t.a.c``;
- ``shift``: each letter of a four-letter word moved one on in the alphabet, ``next:c.a.t.s=`` -> ``d.b.u.t``.

``add`` (two-digit addition, ``add:4.7+3.5=`` -> ``0.8.2``) is there too, for a harder stream
(``skills:names=upper+add``): carrying takes the tiny model several times longer to learn.

Why this shape: characters are joined by dots so that every digit and letter is one token for
byte-level BPE tokenizers (``tiny-llama``'s merges "47" or "cat" into one token otherwise), and
inputs and answers have a fixed length (sums are written with three digits), so an answer token
sits at a fixed distance from what it depends on. A 0.7M-parameter model then learns each default
skill in about a minute on one CPU core, and the skills share the same characters and positions,
so learning one disturbs the others: plain sequential fine-tuning forgets.

Train and held-out parts are drawn from one seeded generator without overlap, so the held-out
score is on inputs never trained on.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable

from lifelong.core.spec import bind, parse_spec
from lifelong.errors import LifelongError
from lifelong.llm.instruct import InstructionTask, Record

SKILLS = "skills"
SKILL_NAMES = ("upper", "reverse", "shift")  # the default stream, in order
WORD_LENGTH = 4


def _dots(text: str) -> str:
    return ".".join(text)


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(WORD_LENGTH))


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"add:{_dots(str(a))}+{_dots(str(b))}=", _dots(f"{a + b:03d}")


def _reverse(rng: random.Random) -> tuple[str, str]:
    word = _word(rng)
    return f"rev:{_dots(word)}=", _dots(word[::-1])


def _shift(rng: random.Random) -> tuple[str, str]:
    word = _word(rng)
    shifted = "".join(chr((ord(c) - ord("a") + 1) % 26 + ord("a")) for c in word)
    return f"next:{_dots(word)}=", _dots(shifted)


def _upper(rng: random.Random) -> tuple[str, str]:
    word = _word(rng)
    return f"up:{_dots(word)}=", _dots(word.upper())


GENERATORS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "add": _add,
    "reverse": _reverse,
    "upper": _upper,
    "shift": _shift,
}


def skill_task(name: str, train: int = 4000, heldout: int = 200, seed: int = 0) -> InstructionTask:
    """One skill: ``train`` and ``heldout`` distinct prompts (no prompt in both parts)."""
    if name not in GENERATORS:
        raise LifelongError(f"unknown skill '{name}'; the skills are {', '.join(GENERATORS)}")
    if train < 1 or heldout < 1:
        raise LifelongError(f"skills need train >= 1 and heldout >= 1, got train={train}, heldout={heldout}")
    rng = random.Random(f"{seed}-{name}")  # a string seed: each skill its own stream, stable across runs
    pairs: dict[str, str] = {}
    # Duplicates are skipped; the limit keeps a request for more prompts than exist from spinning.
    for _ in range(20 * (train + heldout)):
        prompt, answer = GENERATORS[name](rng)
        pairs.setdefault(prompt, answer)
        if len(pairs) == train + heldout:
            break
    else:
        raise LifelongError(
            f"skill '{name}' has fewer than {train + heldout} distinct prompts; ask for fewer"
        )
    records = [
        Record(f"skills/{name} #{i}", prompt=p, completion=a) for i, (p, a) in enumerate(pairs.items())
    ]
    return InstructionTask(name, records[:train], records[train:], f"built-in: skills/{name}")


def skills_stream(
    train: int = 4000, heldout: int = 200, seed: int = 0, names: str = "+".join(SKILL_NAMES)
) -> list[InstructionTask]:
    """The skills ``names`` (``+``-separated) in that order; by default upper, reverse, shift."""
    chosen = [n.strip() for n in names.split("+") if n.strip()]
    if not chosen or len(set(chosen)) < len(chosen):
        raise LifelongError(f"skills names must be distinct skill names joined by '+', got '{names}'")
    return [skill_task(name, train, heldout, seed) for name in chosen]


def is_skills(source: str) -> bool:
    return source.split(":", 1)[0] == SKILLS


def parse_skills(source: str) -> list[InstructionTask]:
    """``skills`` or ``skills:train=1000,heldout=100,seed=1,names=upper+add``."""
    return list(bind(skills_stream, parse_spec(source), what="skills stream"))
