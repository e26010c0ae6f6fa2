"""Sample chat dialogues with reference summaries, in the SAMSum schema (`id`, `dialogue`, `summary`).

Like SAMSum, each dialogue is a messenger chat, one turn per line ("Amanda: ...\\r\\nJerry: ..."),
and each summary is written in the third person. Every dialogue is built around one or two small
events (a meeting, a late arrival, a favour, a party...) whose details (who, what, where, when) are
stated in the chat and restated in the summary, so a model can learn the task; small talk,
reactions and shared photos around them give the long right tail of real chat lengths.
Train, validation and test are disjoint draws from the same generator, as in SAMSum.
"""

from __future__ import annotations

import random
from pathlib import Path

from nbutils.harness.samples.jsonl import write_jsonl

COLUMNS = ["id", "dialogue", "summary"]
# SAMSum has 14,732 / 818 / 819 dialogues; the sample keeps roughly its proportions, small.
SPLIT_SIZES = {"train": 480, "validation": 60, "test": 60}

_NAMES = ["Amanda", "Jerry", "Hannah", "Betty", "Tom", "Kate", "Lenny", "Ollie", "Mia", "Jake",
          "Emma", "Noah", "Olivia", "Liam", "Ava", "Lucas", "Sophie", "Max", "Chloe", "Ethan",
          "Grace", "Leo", "Julia", "Adam", "Eva", "Mark", "Rita", "Paul", "Nina", "Sam"]
_PLACES = ["cafe", "cinema", "park", "gym", "library", "station", "mall", "office", "pub", "pizzeria"]
_TIMES = ["at 5", "at 6 pm", "at noon", "at 7:30", "at 8", "around 4", "at 9 am", "at 10"]
_DAYS = ["today", "tomorrow", "on Friday", "on Saturday", "on Sunday", "on Monday", "tonight",
         "next week"]
_ITEMS = ["charger", "umbrella", "drill", "camera", "laptop", "bike", "tent", "notes", "car", "ladder"]
_FOODS = ["milk", "bread", "eggs", "pizza", "coffee", "apples", "cheese", "beer", "a cake", "ice cream"]
_EVENTS = ["meeting", "dinner", "class", "game", "rehearsal", "appointment"]
# (what the person says in the chat, how the summary puts it)
_REASONS = [("I'm stuck in traffic", "traffic"), ("It's raining like crazy", "the rain"),
            ("I got a flat tire", "a flat tire"), ("My meeting ran long", "a long meeting"),
            ("The bus didn't come", "a missing bus"), ("My train is delayed", "a delayed train")]
_ILLNESSES = ["a cold", "the flu", "a fever", "a migraine", "a sore throat"]
_GENRES = ["horror", "comedy", "action", "sci-fi", "animated", "romantic"]
_RECOMMENDATIONS = {"book": ["Dune", "The Hobbit", "Normal People", "Atomic Habits"],
                    "series": ["Dark", "The Office", "Succession", "Fargo"],
                    "restaurant": ["the Thai place on Main Street", "Luigi's", "the sushi bar downtown"],
                    "podcast": ["Radiolab", "Serial", "The Daily"]}
_PURPOSES = {"charger": "My phone is dead", "umbrella": "It's going to rain all day",
             "drill": "I need to hang some shelves", "camera": "I'm going to a wedding",
             "laptop": "Mine broke and I have a deadline", "bike": "I want to ride to the lake",
             "tent": "We're going camping", "notes": "I missed the lecture",
             "car": "I have to move some boxes", "ladder": "I need to clean the windows"}

_GREETINGS = ["Hi!", "Hey", "Hello :)", "Morning!", "Hi there", "Hey, you there?", "Yo"]
_SMALL_TALK = [
    ("How are you?", "Fine, thanks, busy week"),
    ("Did you see the game yesterday?", "Yes, what a match!"),
    ("How was your weekend?", "Lazy, I slept a lot haha"),
    ("Look what I found", "<file_photo>"),
    ("Is it still raining there?", "Not anymore, it's sunny now"),
    ("Did you finish the report?", "Almost, just the last page"),
    ("My cat did something stupid again", "haha what now?"),
    ("I'm so tired today", "Me too, this week is endless"),
    ("Have you talked to Mom?", "Yes, she called me this morning"),
    ("Did you watch the new episode?", "Not yet, no spoilers please!"),
    ("The new neighbours are so loud", "Ugh, that's annoying"),
    ("I started running again", "Good for you!"),
    ("Are you coming to the gym later?", "Maybe, let's see"),
    ("Guess who I saw at the mall", "Who?"),
    ("I got the job!", "Congratulations!!!"),
    ("Did you get my email?", "Yes, I'll answer it later"),
]
_REACTIONS = ["ok", "haha", "lol", ":)", "Sure", "Great", "Cool", "I know right", "Really?",
              "Sounds good", "Thanks!", "Nice", "Oh no", "<file_photo>", "Yeah", "Exactly"]
_CLOSINGS = ["See you!", "Bye!", "Talk later", "Thanks, bye", "Cool, see ya", ":*"]


def _meet(rng, a, b):
    place, time, day = rng.choice(_PLACES), rng.choice(_TIMES), rng.choice(_DAYS)
    turns = [(a, f"Are you free {day}?"), (b, rng.choice(["Yes, why?", "I think so, what's up?"])),
             (a, f"Let's meet at the {place} {time}."),
             (b, rng.choice(["Perfect, see you there!", f"Ok, the {place} {time} works for me."]))]
    summary = rng.choice([f"{a} and {b} will meet at the {place} {time} {day}.",
                          f"{a} and {b} are meeting {day} {time} at the {place}."])
    return turns, summary


def _late(rng, a, b):
    event, (said, reason), minutes = rng.choice(_EVENTS), rng.choice(_REASONS), rng.choice([10, 15, 20, 30])
    turns = [(a, f"I'm going to be late for the {event}, sorry."), (b, "What happened?"),
             (a, f"{said}. I'll be there in {minutes} minutes."),
             (b, rng.choice(["No problem, I'll wait.", "Ok, I'll wait for you."]))]
    summary = f"{a} will be {minutes} minutes late for the {event} because of {reason}. {b} will wait."
    return turns, summary


def _borrow(rng, a, b):
    item, day = rng.choice(_ITEMS), rng.choice(_DAYS)
    turns = [(a, f"Can I borrow your {item}?"), (b, "Sure, what for?"), (a, _PURPOSES[item]),
             (b, f"I'll bring it {day}."), (a, "Thanks, you're the best!")]
    summary = rng.choice([f"{b} will lend {a} the {item} {day}.",
                          f"{a} will borrow {b}'s {item} {day}."])
    return turns, summary


def _shopping(rng, a, b):
    first, second = rng.sample(_FOODS, 2)
    turns = [(a, f"Can you buy {first} on your way home?"), (b, "Ok, anything else?"),
             (a, f"{second[0].upper() + second[1:]} too, please."), (b, "Got it.")]
    summary = f"{b} will buy {first} and {second} on the way home."
    return turns, summary


def _lost(rng, a, b):
    item, place, day = rng.choice(_ITEMS), rng.choice(_PLACES), rng.choice(_DAYS)
    turns = [(a, f"I think I left my {item} at the {place}."), (b, "Oh no!"),
             (b, f"I'll ask there {day}."), (a, "Thank you so much.")]
    summary = f"{a} left the {item} at the {place}. {b} will ask about it {day}."
    return turns, summary


def _party(rng, a, b):
    day, food = rng.choice(_DAYS), rng.choice(_FOODS)
    turns = [(a, f"I'm having a birthday party {day}! Will you come?"),
             (b, "Of course! Should I bring something?"), (a, f"Maybe {food}?"), (b, "Deal!")]
    summary = f"{a} is having a birthday party {day}. {b} will come and bring {food}."
    return turns, summary


def _movie(rng, a, b):
    genre, day, time = rng.choice(_GENRES), rng.choice(_DAYS), rng.choice(_TIMES)
    turns = [(a, f"Do you want to see the new {genre} movie {day}?"), (b, "Yes! What time?"),
             (a, f"The show starts {time}."), (b, "I'll be there.")]
    summary = f"{a} and {b} will watch the new {genre} movie {day} {time}."
    return turns, summary


def _sick(rng, a, b):
    event, day, illness = rng.choice(_EVENTS), rng.choice(_DAYS), rng.choice(_ILLNESSES)
    boss = rng.choice([n for n in _NAMES if n not in (a, b)])
    turns = [(a, f"I won't make it to the {event} {day}, I have {illness}."),
             (b, f"Get well soon! I'll tell {boss}."), (a, "Thanks.")]
    summary = f"{a} has {illness} and will miss the {event} {day}. {b} will tell {boss}."
    return turns, summary


def _recommend(rng, a, b):
    thing = rng.choice(sorted(_RECOMMENDATIONS))
    pick = rng.choice(_RECOMMENDATIONS[thing])
    turns = [(a, f"Can you recommend a good {thing}?"), (b, f"Try {pick}, it's great."),
             (a, "Thanks, I'll check it out.")]
    summary = f"{b} recommends {pick} to {a}."
    return turns, summary


def _pickup(rng, a, b):
    place, time = rng.choice(_PLACES), rng.choice(_TIMES)
    turns = [(a, f"Can you pick me up from the {place} {time}?"), (b, "Sure, I'll be there."),
             (a, "You're a star.")]
    summary = f"{b} will pick {a} up from the {place} {time}."
    return turns, summary


_EVENTS_MADE = [_meet, _late, _borrow, _shopping, _lost, _party, _movie, _sick, _recommend, _pickup]


def _small_talk(rng, people, n_turns, unused):
    """`n_turns` turns of chat; `unused` holds the small-talk exchanges this dialogue has left."""
    turns = []
    while len(turns) < n_turns:
        speaker, other = rng.sample(people, 2)
        if unused and rng.random() < 0.6:
            question, answer = unused.pop(rng.randrange(len(unused)))
            turns += [(speaker, question), (other, answer)]
        else:
            turns.append((speaker, rng.choice(_REACTIONS)))
    return turns


def _dialogue(rng):
    people = rng.sample(_NAMES, 3 if rng.random() < 0.25 else 2)  # a quarter are group chats
    a, b = people[:2]
    # Log-normal amount of small talk: most chats are short, a few run long (SAMSum's tail).
    n_small = min(60, int(rng.lognormvariate(1.9, 0.9)))
    n_events = 2 if n_small > 12 and rng.random() < 0.6 else 1
    greeting = rng.choice(_GREETINGS)
    turns = [(a, f"Hey {b}!" if greeting == "Hey" and rng.random() < 0.5 else greeting)]
    summaries, unused = [], list(_SMALL_TALK)
    chunks = [n_small // (n_events + 1)] * n_events + [n_small - n_events * (n_small // (n_events + 1))]
    for i, make in enumerate(rng.sample(_EVENTS_MADE, n_events)):
        turns += _small_talk(rng, people, chunks[i], unused)
        asker, helper = (a, b) if i == 0 else (b, a)
        event_turns, summary = make(rng, asker, helper)
        turns += event_turns
        summaries.append(summary)
    turns += _small_talk(rng, people, chunks[-1], unused)
    if rng.random() < 0.5:
        turns.append((rng.choice(people), rng.choice(_CLOSINGS)))
    dialogue = "\r\n".join(f"{speaker}: {text}" for speaker, text in turns)
    return dialogue, " ".join(summaries)


def dialogue_rows(seed: int = 0) -> dict[str, list[dict]]:
    """{"train": [...], "validation": [...], "test": [...]}: rows of id, dialogue, summary."""
    rng = random.Random(seed)
    ids = rng.sample(range(13_680_000, 13_870_000), sum(SPLIT_SIZES.values()))  # SAMSum-like ids
    rows, seen = [], set()
    while len(rows) < len(ids):
        dialogue, summary = _dialogue(rng)
        if dialogue in seen:  # a test dialogue must never repeat a training one
            continue
        seen.add(dialogue)
        rows.append({"id": str(ids[len(rows)]), "dialogue": dialogue, "summary": summary})
    splits, start = {}, 0
    for name, size in SPLIT_SIZES.items():
        splits[name] = rows[start:start + size]
        start += size
    return splits


def add_quirks(rows: list[dict], split: str, seed: int = 0) -> list[dict]:
    """What the real SAMSum copies have beyond `\\r\\n` line ends and `<file_photo>`-style
    placeholders (which every sample dialogue already has): in the training split an empty
    dialogue, a missing summary (null) and a blank one, and two exact duplicates; in validation
    one empty summary. About 1% of the rows, so the malformed-row rule runs on every smoke run.
    The test split stays clean: it is what runs are compared on."""
    rng = random.Random(f"{seed}-{split}-quirks")
    out = [dict(row) for row in rows]
    broken = {"train": [("dialogue", ""), ("summary", None), ("summary", "   ")],
              "validation": [("summary", "")]}.get(split, [])
    for column, value in broken:
        out[rng.randrange(len(out))][column] = value
    if split == "train":
        for row in rng.sample(rows, 2):
            out.insert(rng.randrange(len(out) + 1), {**row, "id": str(int(row["id"]) + 1)})
    return out


def texts(seed: int = 0) -> list[str]:
    """Every dialogue and summary, for the tiny models' tokenizers."""
    return [row[col] for rows in dialogue_rows(seed).values() for row in rows
            for col in ("dialogue", "summary")]


def write_dialogues_jsonl(path: str | Path, seed: int = 0, split: str = "train") -> Path:
    """Write one split as JSON lines (one `{"id", "dialogue", "summary"}` object per line)."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"split must be one of {', '.join(SPLIT_SIZES)}, got {split!r}")
    rows = add_quirks(dialogue_rows(seed)[split], split, seed)
    return write_jsonl(path, ({c: row[c] for c in COLUMNS} for row in rows))
