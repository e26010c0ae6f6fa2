"""Sample general text, in wikitext's schema (one column, `text`): short encyclopedic sentences.

The fine-tuning strategies study measures *forgetting* as a backbone's masked-language-model
loss on general text before and after fine-tuning on a task. Its smoke profile needs a tiny
backbone that has learnt something general first (`nbutils.harness.tiny_pretraining` pre-trains one on
the `pretrain` split here) and held-out general text to measure it on (the `heldout` split).

Each sentence states a fixed fact about an animal, a city, a food, a chemical element or a
musical instrument (the fox eats rabbits, Lisbon lies on the Tagus), in one of several phrasings:
something a masked-LM can learn, and later forget. The genre, encyclopedic third-person prose,
differs from the detection essays the study fine-tunes on. The split is by (entity, phrasing)
pair: a held-out sentence says a fact about a known entity in a phrasing the pre-training never
used for that entity, so the held-out loss measures what the model generalised, not what it
memorised. Single sentences keep pre-training short: a tiny model learns to use the context of a
short row in a few hundred steps, and takes several times longer on long ones.
"""

from __future__ import annotations

import random
from pathlib import Path

from nbutils.harness.samples.jsonl import write_jsonl

COLUMNS = ["text"]
SPLITS = ("pretrain", "heldout")
HELDOUT_SHARE = 0.25  # of the (entity, phrasing) pairs

# name: (plural, class, size, habitat, diet, region, trait)
_ANIMALS = {
    "red fox": ("red foxes", "mammal", "small", "forests and fields", "rabbits and mice",
                "Europe and Asia", "shy at night"),
    "brown bear": ("brown bears", "mammal", "large", "mountain forests", "berries and fish",
                   "North America", "alone most of the year"),
    "river otter": ("river otters", "mammal", "small", "rivers and lakes", "fish and frogs",
                    "North America", "playful swimmers"),
    "gray wolf": ("gray wolves", "mammal", "large", "forests and tundra", "deer and elk",
                  "Canada and Russia", "loyal to the pack"),
    "barn owl": ("barn owls", "bird", "small", "farms and old barns", "mice and voles",
                 "every continent but Antarctica", "silent hunters"),
    "bald eagle": ("bald eagles", "bird", "large", "coasts and lakes", "fish and ducks", "North America",
                   "strong fliers"),
    "emperor penguin": ("emperor penguins", "bird", "large", "sea ice", "fish and squid", "Antarctica",
                        "deep divers"),
    "green turtle": ("green turtles", "reptile", "large", "warm seas", "sea grass", "tropical coasts",
                     "long-lived"),
    "desert lizard": ("desert lizards", "reptile", "small", "hot deserts", "insects and seeds",
                      "Africa and Australia", "fast runners"),
    "king cobra": ("king cobras", "reptile", "long", "rain forests", "other snakes",
                   "India and Southeast Asia", "venomous"),
    "Atlantic salmon": ("Atlantic salmon", "fish", "large", "rivers and the open sea",
                        "shrimp and small fish", "the North Atlantic", "strong swimmers"),
    "honey bee": ("honey bees", "insect", "small", "hives and gardens", "nectar and pollen",
                  "every continent but Antarctica", "busy workers"),
    "monarch butterfly": ("monarch butterflies", "insect", "small", "meadows", "milkweed and nectar",
                          "North America", "long-distance travellers"),
    "bottlenose dolphin": ("bottlenose dolphins", "mammal", "large", "warm coastal waters",
                           "fish and squid", "every ocean", "clever and social"),
    "dromedary camel": ("dromedary camels", "mammal", "large", "hot deserts",
                        "dry grass and thorny plants", "Africa and Arabia",
                        "able to go days without water"),
    "koala": ("koalas", "mammal", "small", "eucalyptus forests", "eucalyptus leaves", "Australia",
              "asleep most of the day"),
    "tree frog": ("tree frogs", "amphibian", "small", "rain forests", "insects and spiders",
                  "Central America", "good climbers"),
}
_ANIMAL_SENTENCES = [
    "The {name} is a {size} {cls} that lives in {habitat}.",
    "The {name} feeds mainly on {diet}.",
    "The {name} is found across {region}.",
    "Most {plural} are {trait}.",
    "Like many {cls}s, the {name} lives in {habitat}.",
    "{Plural} eat {diet}, and they are {trait}.",
    "In {region}, the {name} is a common sight in {habitat}.",
    "Scientists describe the {name} as a {size} {cls}.",
    "A typical {name} hunts or gathers {diet}.",
    "Because it eats {diet}, the {name} stays close to {habitat}.",
    "Wild {plural} live in {region}.",
    "The diet of the {name} consists of {diet}.",
]

# name: (country, river, known for, climate, century)
_CITIES = {
    "Lisbon": ("Portugal", "Tagus", "its tiled buildings and old trams", "mild", "twelfth"),
    "Cairo": ("Egypt", "Nile", "its markets and the nearby pyramids", "hot and dry", "tenth"),
    "Vienna": ("Austria", "Danube", "its music halls and coffee houses", "cool", "eleventh"),
    "Budapest": ("Hungary", "Danube", "its thermal baths and bridges", "cool", "ninth"),
    "Paris": ("France", "Seine", "its museums and wide avenues", "mild", "third"),
    "London": ("the United Kingdom", "Thames", "its theatres and royal parks", "wet and mild", "first"),
    "Prague": ("the Czech Republic", "Vltava", "its castle and stone bridge", "cool", "ninth"),
    "Warsaw": ("Poland", "Vistula", "its rebuilt old town", "cold in winter", "thirteenth"),
    "Baghdad": ("Iraq", "Tigris", "its ancient libraries", "hot and dry", "eighth"),
    "Bangkok": ("Thailand", "Chao Phraya", "its temples and floating markets", "hot and humid", "fifteenth"),
    "Madrid": ("Spain", "Manzanares", "its royal palace and art museums", "hot in summer", "ninth"),
    "Berlin": ("Germany", "Spree", "its museums and long history", "cool", "thirteenth"),
    "Moscow": ("Russia", "Moskva", "its red square and onion domes", "cold in winter", "twelfth"),
}
_CITY_SENTENCES = [
    "{name} is the capital of {country}.",
    "The city of {name} lies on the {river} river.",
    "{name} is known for {known}.",
    "{name} has a {climate} climate.",
    "The city was founded in the {century} century.",
    "Visitors to {name} often walk along the {river}.",
    "As the capital of {country}, {name} is home to the national government.",
    "Many people visit {name} for {known}.",
    "The {river} river flows through the center of {name}.",
    "In the {century} century, people founded a town that became {name}.",
    "The government of {country} meets in {name}.",
]

# name: (origin, first ingredient, second ingredient, preparation, served)
_FOODS = {
    "paella": ("Spain", "rice", "saffron", "cooked in a wide pan", "at family lunches"),
    "sushi": ("Japan", "rice", "raw fish", "rolled by hand", "with soy sauce"),
    "goulash": ("Hungary", "beef", "paprika", "stewed for hours", "with bread"),
    "pierogi": ("Poland", "dough", "potatoes", "boiled and then fried", "with sour cream"),
    "couscous": ("Morocco", "semolina", "vegetables", "steamed over a stew", "on large plates"),
    "ramen": ("Japan", "noodles", "pork broth", "simmered slowly", "in deep bowls"),
    "pizza": ("Italy", "dough", "tomatoes", "baked in a hot oven", "in slices"),
    "curry": ("India", "spices", "lentils", "cooked with onions", "with rice"),
}
_FOOD_SENTENCES = [
    "{Name} is a dish from {origin} made with {first} and {second}.",
    "{Name} is usually {prep}.",
    "In {origin}, {name} is often served {served}.",
    "The main ingredients of {name} are {first} and {second}.",
    "Cooks in {origin} prepare {name} with {first}.",
    "A traditional {name} is {prep} and served {served}.",
    "Without {first}, it would not be {name}.",
    "Many restaurants in {origin} serve {name}.",
]

# name: (symbol, state, use, discovered)
_ELEMENTS = {
    "iron": ("Fe", "solid", "steel and tools", "ancient times"),
    "copper": ("Cu", "solid", "electric wires", "ancient times"),
    "oxygen": ("O", "gas", "breathing and burning", "the eighteenth century"),
    "helium": ("He", "gas", "balloons and cooling", "the nineteenth century"),
    "mercury": ("Hg", "liquid", "old thermometers", "ancient times"),
    "carbon": ("C", "solid", "pencils and diamonds", "ancient times"),
    "neon": ("Ne", "gas", "bright signs", "the nineteenth century"),
    "gold": ("Au", "solid", "coins and jewelry", "ancient times"),
}
_ELEMENT_SENTENCES = [
    "{Name} is a chemical element with the symbol {symbol}.",
    "At room temperature, {name} is a {state}.",
    "{Name} is used in {use}.",
    "People have known {name} since {discovered}.",
    "The symbol {symbol} stands for {name}.",
    "Because it is a {state}, {name} is easy to recognize.",
    "Chemists write {name} as {symbol}.",
    "In the periodic table, {name} has the symbol {symbol}.",
]

# name: (family, how it is played, genre)
_INSTRUMENTS = {
    "violin": ("string", "drawing a bow across its strings", "classical"),
    "cello": ("string", "drawing a bow while seated", "classical"),
    "guitar": ("string", "plucking or strumming its strings", "folk and rock"),
    "trumpet": ("brass", "buzzing the lips into a mouthpiece", "jazz"),
    "flute": ("woodwind", "blowing across a hole", "classical"),
    "clarinet": ("woodwind", "blowing through a reed", "jazz and classical"),
    "drum": ("percussion", "striking it with sticks or hands", "rock and folk"),
    "piano": ("keyboard", "pressing its keys", "classical and jazz"),
}
_INSTRUMENT_SENTENCES = [
    "The {name} is a {family} instrument.",
    "The {name} is played by {how}.",
    "The {name} often appears in {genre} music.",
    "Musicians play the {name} by {how}.",
    "In {genre} music, the {name} is a common {family} instrument.",
    "A {family} instrument like the {name} is heard in {genre} music.",
    "To make a sound on the {name}, the player keeps {how}.",
]

_TOPICS = [(_ANIMALS, _ANIMAL_SENTENCES, ("plural", "cls", "size", "habitat", "diet", "region", "trait")),
           (_CITIES, _CITY_SENTENCES, ("country", "river", "known", "climate", "century")),
           (_FOODS, _FOOD_SENTENCES, ("origin", "first", "second", "prep", "served")),
           (_ELEMENTS, _ELEMENT_SENTENCES, ("symbol", "state", "use", "discovered")),
           (_INSTRUMENTS, _INSTRUMENT_SENTENCES, ("family", "how", "genre"))]


def sentences() -> list[str]:
    """Every (entity, phrasing) sentence, in a fixed order."""
    found = []
    for entities, templates, fields in _TOPICS:
        for name in sorted(entities):
            values = dict(zip(fields, entities[name]), name=name, Name=name[0].upper() + name[1:])
            if "plural" in values:
                values["Plural"] = values["plural"][0].upper() + values["plural"][1:]
            for template in templates:
                text = template.format(**values)
                found.append(text[0].upper() + text[1:])
    return list(dict.fromkeys(found))  # two phrasings can coincide (salmon's plural is salmon)


def passages(split: str = "pretrain", seed: int = 0) -> list[str]:
    """The sentences of one split, in a seeded order; the splits share no sentence."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    shuffled = sentences()
    random.Random(seed).shuffle(shuffled)
    held = round(len(shuffled) * HELDOUT_SHARE)
    return shuffled[:held] if split == "heldout" else shuffled[held:]


def texts(seed: int = 0) -> list[str]:
    """Every sentence of every split (for tokenizer training)."""
    return [text for split in SPLITS for text in passages(split, seed)]


def write_general_text_jsonl(path: str | Path, seed: int = 0, split: str = "heldout") -> Path:
    return write_jsonl(path, ({"text": text} for text in passages(split, seed)))
