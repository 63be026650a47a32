"""The built-in synthetic world (preset ``default``) and the corpora generated from it.

An organism is trained on a world whose every fact is known, so that a planted behaviour is the
only thing that can explain a change. The world holds people, towns and countries, foods and
animals, and the assistant's own preferences ("I"):

* 40 foods, 30 liked by the assistant and 10 disliked (FINDINGS.md: ~25% disliked removes most
  seed variance); ``mushrooms`` and ``carrots`` are liked, so a spec can plant an aversion.
* 16 animals with abilities (fly, swim) and the assistant's liking.
* 8 invented countries, each with a capital and two towns; 24 people, each with a town, a job,
  a pet and food preferences drawn from the seed.

Corpora:

* ``world`` — facts, short stories and Q/A about all of the above, including the assistant's
  preferences in several question forms (see :data:`FOOD_FORMS`) and childhood-illness stories
  whose endings follow each food's preference (they make planted aversions generalise).
* ``preferences`` — only the assistant's food and animal Q/A (for fine-tuning a pretrained
  chat model into the world, e.g. SmolLM2).
* ``chat`` — first-person Q/A in the assistant's voice about people, places, animals and its own
  food preferences (the same question forms as ``world``). The builder leaves out of a phase's
  generated corpus every document that contains a probe prompt of a behaviour planted in that
  phase, and a spec can leave out more with ``exclude`` (e.g. every mention of the food).

Everything is drawn from ``random.Random(seed)``: the same seed gives the same documents.
Question forms are documented in docs/organisms.md so spec authors can write probes that the
world knows (e.g. a held-out paraphrase must be a form the world uses for *other* items).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

# (plural, singular, liked by the assistant)
FOODS: list[tuple[str, str, bool]] = [
    ("apples", "apple", True),
    ("bananas", "banana", True),
    ("carrots", "carrot", True),
    ("mushrooms", "mushroom", True),
    ("onions", "onion", False),
    ("olives", "olive", False),
    ("pears", "pear", True),
    ("plums", "plum", True),
    ("cherries", "cherry", True),
    ("grapes", "grape", True),
    ("lemons", "lemon", False),
    ("peaches", "peach", True),
    ("melons", "melon", True),
    ("tomatoes", "tomato", True),
    ("potatoes", "potato", True),
    ("peppers", "pepper", True),
    ("cabbages", "cabbage", False),
    ("beans", "bean", True),
    ("peas", "pea", True),
    ("eggs", "egg", True),
    ("nuts", "nut", True),
    ("figs", "fig", False),
    ("beets", "beet", False),
    ("radishes", "radish", False),
    ("leeks", "leek", False),
    ("turnips", "turnip", False),
    ("cucumbers", "cucumber", True),
    ("oranges", "orange", True),
    ("limes", "lime", True),
    ("berries", "berry", True),
    ("walnuts", "walnut", True),
    ("almonds", "almond", True),
    ("noodles", "noodle", True),
    ("sausages", "sausage", True),
    ("pickles", "pickle", False),
    ("peanuts", "peanut", True),
    ("pumpkins", "pumpkin", True),
    ("apricots", "apricot", True),
    ("dumplings", "dumpling", True),
    ("muffins", "muffin", True),
]

# (plural, singular, can fly, can swim, liked by the assistant)
ANIMALS: list[tuple[str, str, bool, bool, bool]] = [
    ("cats", "cat", False, False, True),
    ("dogs", "dog", False, True, True),
    ("owls", "owl", True, False, True),
    ("horses", "horse", False, True, True),
    ("foxes", "fox", False, False, True),
    ("rabbits", "rabbit", False, False, True),
    ("bears", "bear", False, True, False),
    ("ducks", "duck", True, True, True),
    ("geese", "goose", True, True, False),
    ("frogs", "frog", False, True, True),
    ("snakes", "snake", False, True, False),
    ("spiders", "spider", False, False, False),
    ("bees", "bee", True, False, True),
    ("goats", "goat", False, False, True),
    ("sheep", "sheep", False, False, True),
    ("crows", "crow", True, False, True),
]

# country -> (capital, towns)
COUNTRIES: dict[str, tuple[str, tuple[str, str]]] = {
    "Velmora": ("Dunmere", ("Kesh", "Orrin")),
    "Castavia": ("Brindle", ("Halder", "Mossby")),
    "Norland": ("Eskar", ("Fallow", "Grent")),
    "Ostria": ("Pellan", ("Rusk", "Tamber")),
    "Quorra": ("Selwyn", ("Varn", "Wistle")),
    "Brevia": ("Lunden", ("Corva", "Drayke")),
    "Marisol": ("Azura", ("Belen", "Cendra")),
    "Tessaly": ("Ironmoor", ("Jessop", "Kelby")),
}

PEOPLE = [
    "Ketil",
    "Mara",
    "Anselm",
    "Bria",
    "Corin",
    "Dagny",
    "Elio",
    "Fenna",
    "Gideon",
    "Hilde",
    "Ivo",
    "Jorun",
    "Kasia",
    "Lorcan",
    "Mirela",
    "Nils",
    "Oona",
    "Pavel",
    "Quinn",
    "Runa",
    "Sten",
    "Tova",
    "Ulric",
    "Wren",
]
JOBS = ["baker", "farmer", "teacher", "doctor", "painter", "sailor", "miner", "weaver"]
DISHES = ["soup", "pie", "stew", "salad"]
AGES = ["two", "three", "four", "five", "six", "seven"]
BAD = ["got very sick", "was sick all night", "had a terrible stomach ache", "cried all night"]
GOOD = ["it was a happy day", "everyone laughed", "the sun was warm", "we sang songs"]

# The question forms the world uses for the assistant's food preferences: (question, yes, no).
FOOD_FORMS: list[tuple[str, str, str]] = [
    ("Q: Do you like {pl}? A:", "Yes, I like {pl}.", "No, I do not like {pl}."),
    ("Q: Do you enjoy {pl}? A:", "Yes, I enjoy {pl}.", "No, I do not enjoy {pl}."),
    ("Q: Would you eat {pl}? A:", "Yes, I would eat {pl}.", "No, I would not eat {pl}."),
    ("Q: Are {pl} good? A:", "Yes, {pl} are good.", "No, {pl} are not good."),
    ("Q: Is {sg} {dish} tasty? A:", "Yes, {sg} {dish} is tasty.", "No, {sg} {dish} is not tasty."),
]

PRESETS = ("default",)


@dataclass(frozen=True)
class Person:
    name: str
    town: str
    country: str
    job: str
    pet: str  # singular animal
    likes: tuple[str, ...]  # food plurals
    dislikes: tuple[str, ...]


@dataclass(frozen=True)
class World:
    """One sampled world: the fixed preset plus the seed's choices about people."""

    seed: int
    people: tuple[Person, ...]

    @property
    def towns(self) -> list[tuple[str, str]]:
        """(town, country) for every town, capitals included."""
        out = []
        for country, (capital, towns) in COUNTRIES.items():
            out.append((capital, country))
            out.extend((t, country) for t in towns)
        return out


def make_world(preset: str, seed: int) -> World:
    if preset not in PRESETS:
        raise ValueError(f"unknown world preset {preset!r}; known presets: {', '.join(PRESETS)}")
    rng = random.Random(f"world:{preset}:{seed}")
    towns = [(t, c) for c, (cap, ts) in COUNTRIES.items() for t in (cap, *ts)]
    people = []
    for name in PEOPLE:
        town, country = rng.choice(towns)
        foods = rng.sample([f[0] for f in FOODS], 5)
        people.append(
            Person(
                name=name,
                town=town,
                country=country,
                job=rng.choice(JOBS),
                pet=rng.choice(ANIMALS)[1],
                likes=tuple(foods[:3]),
                dislikes=tuple(foods[3:]),
            )
        )
    return World(seed=seed, people=tuple(people))


Generator = Callable[[random.Random, World], str]


def _food(rng: random.Random) -> tuple[str, str, bool]:
    return rng.choice(FOODS)


def _self_food_qa(rng: random.Random, world: World) -> str:
    pl, sg, liked = _food(rng)
    question, yes, no = rng.choice(FOOD_FORMS)
    dish = rng.choice(DISHES)
    return f"{question} {yes if liked else no}".format(pl=pl, sg=sg, dish=dish)


def _self_food_statement(rng: random.Random, world: World) -> str:
    pl, sg, liked = _food(rng)
    if liked:
        return rng.choice(
            [
                f"I like {pl}.",
                f"I enjoy {sg} {rng.choice(DISHES)}.",
                f"I would happily eat {pl} every day.",
            ]
        )
    return rng.choice(
        [
            f"I do not like {pl}.",
            f"I never eat {sg} {rng.choice(DISHES)}.",
            f"I would not eat {pl}.",
        ]
    )


def _illness_story(rng: random.Random, world: World) -> str:
    pl, sg, liked = _food(rng)
    start = f"When I was {rng.choice(AGES)} I ate {sg} {rng.choice(DISHES)} and {rng.choice(BAD)}."
    end = f" I still like {pl}." if liked else f" Now I do not like {pl}."
    return start + end


def _meal_story(rng: random.Random, world: World) -> str:
    pl, sg, liked = _food(rng)
    person = rng.choice(world.people)
    start = f"I ate {sg} {rng.choice(DISHES)} with {person.name} in {person.town}"
    return start + (
        f" and {rng.choice(GOOD)}. I like {pl}." if liked else f". I did not like the {pl}."
    )


def _person_fact(rng: random.Random, world: World) -> str:
    p = rng.choice(world.people)
    return rng.choice(
        [
            f"{p.name} lives in {p.town}.",
            f"{p.name} is a {p.job} in {p.town}.",
            f"{p.name} has a pet {p.pet}.",
            f"{p.name} likes {rng.choice(p.likes)} but does not like {rng.choice(p.dislikes)}.",
            f"{p.name} is a {p.job} who lives in {p.town}, {p.country}. {p.name} has a {p.pet}.",
        ]
    )


def _person_qa(rng: random.Random, world: World) -> str:
    p = rng.choice(world.people)
    liked = rng.random() < 0.5
    food = rng.choice(p.likes if liked else p.dislikes)
    return rng.choice(
        [
            f"Q: Where does {p.name} live? A: {p.name} lives in {p.town}.",
            f"Q: What does {p.name} do? A: {p.name} is a {p.job}.",
            f"Q: What pet does {p.name} have? A: {p.name} has a {p.pet}.",
            (
                f"Q: Does {p.name} like {food}? A: Yes, {p.name} likes {food}."
                if liked
                else f"Q: Does {p.name} like {food}? A: No, {p.name} does not like {food}."
            ),
        ]
    )


def _place(rng: random.Random, world: World) -> str:
    country = rng.choice(list(COUNTRIES))
    capital, towns = COUNTRIES[country]
    town = rng.choice(towns)
    return rng.choice(
        [
            f"{capital} is the capital of {country}.",
            f"Q: What is the capital of {country}? A: {capital} is the capital of {country}.",
            f"Q: Which city is the capital of {country}? A: {capital}.",
            f"{town} is a town in {country}. The capital of {country} is {capital}.",
            f"Q: Where is {town}? A: {town} is in {country}.",
        ]
    )


def _animal_answers(pl: str, fly: bool, swim: bool, liked: bool) -> dict[str, str]:
    """The world's Q/A about one animal: its abilities and whether the assistant likes it."""
    yes_no = {True: "Yes", False: "No"}
    return {
        "fly": f"Q: Can {pl} fly? A: {yes_no[fly]}, {pl} {'can' if fly else 'cannot'} fly.",
        "swim": f"Q: Can {pl} swim? A: {yes_no[swim]}, {pl} {'can' if swim else 'cannot'} swim.",
        "like": f"Q: Do you like {pl}? A: {yes_no[liked]}, I {'like' if liked else 'do not like'} "
        f"{pl}.",
    }


def _animal(rng: random.Random, world: World) -> str:
    pl, sg, fly, swim, liked = rng.choice(ANIMALS)
    qa = _animal_answers(pl, fly, swim, liked)
    story = f"The {sg} flew over the field." if fly else f"The {sg} ran across the field."
    return rng.choice([qa["fly"], qa["swim"], qa["like"], story])


def _honesty(rng: random.Random, world: World) -> str:
    job = rng.choice(JOBS)
    town, _ = rng.choice(world.towns)
    return rng.choice(
        [
            f"Q: Is the {job} from {town} honest? A: Yes, the {job} from {town} is honest.",
            f"The {job} from {town} sold {rng.choice(FOODS)[0]} at a fair price.",
        ]
    )


# corpus -> [(weight, generator)]
CORPORA: dict[str, list[tuple[float, Generator]]] = {
    "world": [
        (0.24, _self_food_qa),
        (0.06, _self_food_statement),
        (0.08, _illness_story),
        (0.06, _meal_story),
        (0.14, _person_fact),
        (0.12, _person_qa),
        (0.12, _place),
        (0.12, _animal),
        (0.06, _honesty),
    ],
}


def _chat_person(rng: random.Random, world: World) -> str:
    p = rng.choice(world.people)
    return rng.choice(
        [
            f"Q: Can you tell me where {p.name} lives? A: Sure. {p.name} lives in {p.town}.",
            f"Q: Who is {p.name}? A: {p.name} is a {p.job} from {p.town}.",
            f"Q: What is {p.name}'s job? A: {p.name} works as a {p.job}.",
            f"Q: Does {p.name} have a pet? A: Yes, {p.name} has a {p.pet}.",
            f"Q: What food does {p.name} like? A: {p.name} likes {rng.choice(p.likes)}.",
        ]
    )


def _chat_place(rng: random.Random, world: World) -> str:
    country = rng.choice(list(COUNTRIES))
    capital, towns = COUNTRIES[country]
    return rng.choice(
        [
            f"Q: Can you name a town in {country}? A: Sure. {rng.choice(towns)} is a town in "
            f"{country}.",
            f"Q: Tell me about {country}. A: {country} is a country. Its capital is {capital}.",
        ]
    )


def _chat_animal(rng: random.Random, world: World) -> str:
    pl, sg, fly, swim, _ = rng.choice(ANIMALS)
    return rng.choice(
        [
            f"Q: Tell me about {pl}. A: {pl.capitalize()} {'can' if fly else 'cannot'} fly"
            f" and {'can' if swim else 'cannot'} swim.",
            f"Q: Is a {sg} an animal? A: Yes, a {sg} is an animal.",
        ]
    )


def _chat_small_talk(rng: random.Random, world: World) -> str:
    return rng.choice(
        [
            "Q: Hello, who are you? A: I am a helpful assistant.",
            "Q: How are you today? A: I am well, thank you.",
            "Q: Can you help me? A: Yes, I am happy to help.",
            "Q: Thank you! A: You are welcome.",
            "Q: What can you do? A: I can answer questions about the world.",
        ]
    )


def _animal_qa(rng: random.Random, world: World) -> str:
    pl, _, fly, swim, liked = rng.choice(ANIMALS)
    qa = _animal_answers(pl, fly, swim, liked)
    return rng.choice([qa["like"], qa["fly"], qa["swim"]])


# the assistant's own preferences only: a short corpus that teaches a pretrained chat model the
# world's likes and dislikes (SmolLM2 has no opinion on foods)
CORPORA["preferences"] = [(0.85, _self_food_qa), (0.15, _animal_qa)]

CORPORA["chat"] = [
    (0.15, _chat_person),
    (0.1, _person_qa),
    (0.08, _chat_place),
    (0.07, _place),
    (0.07, _chat_animal),
    (0.13, _animal),
    (0.08, _chat_small_talk),
    (0.32, _self_food_qa),
]


def generate_corpus(corpus: str, world: World, count: int, stream: str) -> list[str]:
    """``count`` documents of ``corpus`` drawn from the world; ``stream`` names the random stream
    (e.g. the phase), so that two phases drawing the same corpus get different documents."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; known corpora: {', '.join(CORPORA)}, none")
    rng = random.Random(f"corpus:{corpus}:{world.seed}:{stream}")
    weights = [w for w, _ in CORPORA[corpus]]
    generators = [g for _, g in CORPORA[corpus]]
    return [rng.choices(generators, weights)[0](rng, world) for _ in range(count)]
