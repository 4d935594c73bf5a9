"""A small synthetic world with learnable structure, for the demo model.

The world is a fixed set of people (120 by default), each with a home city, a pet, a favourite
colour and a four-digit code, plus single-digit addition. From it come:

* the training corpus: every fact stated in three phrasings, questions and
  answers for most people, and the addition table;
* the multiple-choice evaluation: questions in the question/answer form for the
  people whose questions were held out of training (the model has only read
  statements about them), every person's code against codes that differ in one
  digit, and the addition table;
* the perplexity corpus: a seeded sample of training documents — how well the
  model still knows its world after quantization.

Codes are what make the evaluation sensitive: recalling four arbitrary digits
exactly needs precise weights, so heavy quantization loses them first, while
8-bit keeps them.

Everything is a pure function of the seed, so the corpus, and with it the
tokenizer and the model, can be rebuilt bit for bit.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_REAL_NAMES = [
    "Alice",
    "Bruno",
    "Clara",
    "David",
    "Elena",
    "Felix",
    "Greta",
    "Hugo",
    "Iris",
    "Jonas",
    "Karla",
    "Leon",
    "Mira",
    "Noah",
    "Olga",
    "Pablo",
    "Quinn",
    "Rosa",
    "Simon",
    "Tara",
    "Ugo",
    "Vera",
    "Walter",
    "Xenia",
    "Yara",
    "Zeno",
    "Anna",
    "Boris",
    "Celia",
    "Dario",
    "Emma",
    "Fabio",
    "Gina",
    "Hans",
    "Ilse",
    "Jakob",
    "Kira",
    "Lukas",
    "Maya",
    "Nils",
]


def make_names(count: int, seed: int) -> list[str]:
    """``count`` distinct names: real ones first, then syllable names (Bako, Tirelu …)."""
    rng = random.Random(seed)
    names = list(_REAL_NAMES[:count])
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    while len(names) < count:
        name = "".join(rng.choice(syllables) for _ in range(rng.choice((2, 3)))).capitalize()
        if name not in names:
            names.append(name)
    return names


CITIES = ["Paris", "Rome", "Berlin", "Madrid", "Vienna", "Oslo", "Lisbon", "Prague", "Dublin", "Athens"]
PETS = ["cat", "dog", "horse", "rabbit", "parrot", "turtle", "goat", "hamster"]
COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]

ATTRIBUTES: dict[str, tuple[str, ...]] = {"city": tuple(CITIES), "pet": tuple(PETS), "color": tuple(COLORS)}

# Phrasings used in training (three per attribute).
TRAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "city": ("{name} lives in {value}.", "The home of {name} is {value}.", "{name} moved to {value} long ago."),
    "pet": ("{name} has a {value}.", "The pet of {name} is a {value}.", "{name} walks the {value} every day."),
    "color": (
        "{name} likes the color {value}.",
        "The favourite color of {name} is {value}.",
        "{name} paints everything {value}.",
    ),
    "code": ("The code of {name} is {value}.", "{name} opens the door with {value}.", "{name} remembers {value}."),
}
QUESTIONS: dict[str, str] = {
    "city": "Question: Where does {name} live?\nAnswer:",
    "pet": "Question: Which pet does {name} have?\nAnswer:",
    "color": "Question: Which color does {name} like?\nAnswer:",
    "code": "Question: What is the code of {name}?\nAnswer:",
}
NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
]

HELD_OUT_FRACTION = 0.25
CODE_DIGITS = 4


@dataclass(frozen=True)
class World:
    """The facts of the world, which people's questions are held out, and the seed."""

    facts: dict[str, dict[str, str]]
    held_out: tuple[str, ...]
    seed: int


def build_world(seed: int = 0, people: int = 120) -> World:
    rng = random.Random(seed)
    names = make_names(people, seed)
    facts = {}
    for name in names:
        attrs = {attr: rng.choice(values) for attr, values in ATTRIBUTES.items()}
        attrs["code"] = " ".join(str(rng.randrange(10)) for _ in range(CODE_DIGITS))
        facts[name] = attrs
    held = sorted(rng.sample(names, int(len(names) * HELD_OUT_FRACTION)))
    return World(facts=facts, held_out=tuple(held), seed=seed)


def _addition_lines() -> list[tuple[str, str]]:
    return [
        (f"Question: What is {NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]}?\nAnswer:", NUMBER_WORDS[a + b])
        for a in range(10)
        for b in range(10)
    ]


def training_documents(world: World) -> list[str]:
    """Every document the model is trained on, in a fixed order."""
    docs: list[str] = []
    for name, attrs in world.facts.items():
        for attr, value in attrs.items():
            docs.extend(t.format(name=name, value=value) for t in TRAIN_TEMPLATES[attr])
            if name not in world.held_out:
                docs.append(f"{QUESTIONS[attr].format(name=name)} {value}")
    docs.extend(f"{question} {answer}" for question, answer in _addition_lines())
    return docs


def _code_choices(code: str, rng: random.Random) -> tuple[list[str], int]:
    """The true code and three codes that differ from it in one digit each, shuffled."""
    digits = code.split()
    choices = [code]
    for position in rng.sample(range(CODE_DIGITS), 3):
        wrong = list(digits)
        wrong[position] = str((int(digits[position]) + rng.randrange(1, 10)) % 10)
        choices.append(" ".join(wrong))
    rng.shuffle(choices)
    return choices, choices.index(code)


def multiple_choice_items(world: World) -> list[dict[str, object]]:
    """Held-out fact questions, every code, and the addition table, as lm-eval documents."""
    rng = random.Random(world.seed + 1)
    items: list[dict[str, object]] = []
    for name in world.held_out:
        for attr in ATTRIBUTES:
            choices = list(ATTRIBUTES[attr])
            value = world.facts[name][attr]
            items.append(
                {"question": QUESTIONS[attr].format(name=name), "choices": choices, "label": choices.index(value)}
            )
    for name, attrs in world.facts.items():
        choices, label = _code_choices(attrs["code"], rng)
        items.append({"question": QUESTIONS["code"].format(name=name), "choices": choices, "label": label})
    numbers = list(NUMBER_WORDS[:19])
    for question, answer in _addition_lines():
        items.append({"question": question, "choices": numbers, "label": numbers.index(answer)})
    return items


def perplexity_documents(world: World, count: int = 300) -> list[str]:
    """A seeded sample of the training documents, in their natural mix.

    The corpus measures how well the model still knows its world. Drawing from the
    training mix keeps the distribution of first tokens the model was trained on;
    a corpus of only one document type shifts it, and then noise that flattens
    the model's predictions can make perplexity look better.
    """
    return random.Random(world.seed + 2).sample(training_documents(world), count)
