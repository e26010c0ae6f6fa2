"""Sample essays for AI-generated text detection, in the DAIGT v2 schema.

Student essays are informal (first person, slips, fillers); model essays are polished and
signposted; a third of each essay's sentences borrow the other class's style, so the task is
learnable but not trivial. Prompts are shared by both classes.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

# --- AI-generated text detection (DAIGT v2 schema: text, label, prompt_name, source, RDizzl3_seven)

DETECTION_COLUMNS = ["text", "label", "prompt_name", "source", "RDizzl3_seven"]

# Topic sentences are shared by both classes, so the prompt says nothing about the label.
_TOPICS = {
    "Car-free cities": [
        "cities without cars have cleaner air",
        "people could walk or ride a bike to work",
        "buses and trains would carry more people",
        "parking lots could become parks",
        "traffic accidents would happen less often",
        "some families live far from the city center",
    ],
    "Phones and driving": [
        "texting while driving causes many crashes",
        "a phone call can take a driver's eyes off the road",
        "hands-free devices still distract the mind",
        "young drivers use their phones the most",
        "some states ban phones behind the wheel",
        "a message can always wait until you park",
    ],
    "Distance learning": [
        "students can attend classes from home",
        "online school helps students who are sick",
        "talking with friends at school builds social skills",
        "a quiet room at home makes it easier to focus",
        "teachers cannot see when a student is confused",
        "not every family has a fast internet connection",
    ],
    "Summer projects": [
        "a summer project keeps students learning",
        "teachers could design the summer projects",
        "students could choose a project they care about",
        "many students work or travel during the summer",
        "a project about a hobby feels less like homework",
        "grading summer projects is extra work for teachers",
    ],
    "Facial action coding system": [
        "software can read emotions from a face",
        "a computer could notice when a student is bored",
        "the technology could help teachers adjust a lesson",
        "some people think reading faces invades privacy",
        "the muscles of the face show small changes",
        "a program might misread a tired student as sad",
    ],
}

# Style is what separates the classes, as in the real data: student essays are informal, with
# slips and first-person asides; model essays are polished, hedged and signposted.
_HUMAN_OPENERS = ["i think", "honestly", "in my opinion", "me and my friends think", "well",
                  "i believe", "to be honest", "personally i feel", "so basically", "my mom says"]
_HUMAN_FILLERS = ["like", "really", "alot", "kinda", "pretty much", "you know", "just", "so",
                  "definately", "becuase of that", "thats why", "i guess", "lol", "stuff like that"]
_HUMAN_CLOSERS = ["thats what i think.", "so yeah.", "and thats my opinion.",
                  "i hope they change it.", "anyway thats it.", "it is what it is."]
_AI_OPENERS = ["Furthermore,", "Additionally,", "Moreover,", "It is important to note that",
               "In today's society,", "Consequently,", "Notably,", "From this perspective,",
               "It is essential to recognize that", "On the other hand,"]
_AI_FILLERS = ["significantly", "ultimately", "various", "numerous", "crucial", "overall",
               "potential", "enhance", "foster", "a wide range of", "in turn", "vital"]
_AI_CLOSERS = ["In conclusion, the benefits clearly outweigh the drawbacks.",
               "Ultimately, a balanced approach is essential for everyone involved.",
               "In summary, this issue deserves careful consideration.",
               "Overall, these factors highlight the importance of thoughtful decisions."]
_SOURCES_HUMAN = ["persuade_corpus"]
_SOURCES_AI = ["mistral7binstruct_v1", "llama2_chat", "chat_gpt_moth", "falcon_180b_v1"]


def _human_sentence(rng: random.Random, fact: str) -> str:
    words = fact.split()
    if rng.random() < 0.6:
        words.insert(rng.randrange(len(words) + 1), rng.choice(_HUMAN_FILLERS))
    sentence = " ".join(words)
    if rng.random() < 0.5:
        sentence = f"{rng.choice(_HUMAN_OPENERS)} {sentence}"
    # Students often skip capitals and end with a comma splice or no stop at all.
    return sentence + rng.choice([".", ".", ",", "!", ""])


def _ai_sentence(rng: random.Random, fact: str) -> str:
    words = fact.split()
    if rng.random() < 0.6:
        words.insert(rng.randrange(len(words) + 1), rng.choice(_AI_FILLERS))
    sentence = " ".join(words)
    if rng.random() < 0.6:
        sentence = f"{rng.choice(_AI_OPENERS)} {sentence}"
    else:
        sentence = sentence[0].upper() + sentence[1:]
    return sentence + "."


def _essay(rng: random.Random, prompt: str, generated: bool) -> str:
    facts = _TOPICS[prompt]
    # Log-normal sentence counts give the long right tail of real essays (3 to ~25 sentences).
    n_sentences = max(3, min(25, int(rng.lognormvariate(2.0, 0.5))))
    own, other = (_ai_sentence, _human_sentence) if generated else (_human_sentence, _ai_sentence)
    # A third of the sentences borrow the other class's style, so short essays are ambiguous
    # and the task is learnable but not trivial.
    sentences = [(other if rng.random() < 0.35 else own)(rng, rng.choice(facts))
                 for _ in range(n_sentences)]
    closer = rng.choice(_AI_CLOSERS if generated else _HUMAN_CLOSERS)
    return " ".join(sentences + [closer])


def detection_rows(n: int = 600, seed: int = 0) -> list[dict]:
    """Rows in the DAIGT v2 schema; `label` is 1 for AI-generated text, balanced classes (the
    clean rows: the written file mixes in the real sets' quirks, see `add_quirks`)."""
    rng = random.Random(seed)
    prompts = sorted(_TOPICS)
    rows = []
    for i in range(n):
        generated = i % 2 == 1
        prompt = prompts[rng.randrange(len(prompts))]
        rows.append({
            "text": _essay(rng, prompt, generated),
            "label": int(generated),
            "prompt_name": prompt,
            "source": rng.choice(_SOURCES_AI if generated else _SOURCES_HUMAN),
            "RDizzl3_seven": prompt != "Facial action coding system",
        })
    rng.shuffle(rows)
    return rows


# Essays in other languages, as the real sets have a few (DAIGT v2 and the persuade corpus hold
# some Spanish, French and German essays among the English ones).
_OTHER_LANGUAGES = {
    "es": ["creo que las ciudades sin coches tienen un aire más limpio",
           "además, el transporte público es crucial para el futuro",
           "mi familia vive lejos del centro y necesitamos el coche",
           "en conclusión, los beneficios superan claramente los inconvenientes"],
    "fr": ["je pense que les élèves apprennent mieux à l'école",
           "de plus, l'enseignement à distance favorise l'autonomie",
           "mes amis préfèrent étudier ensemble à la bibliothèque",
           "en conclusion, il est essentiel de trouver un équilibre"],
    "de": ["ich glaube, dass Handys beim Fahren sehr gefährlich sind",
           "darüber hinaus lenkt eine Freisprechanlage den Fahrer ab",
           "meine Mutter sagt, eine Nachricht kann immer warten",
           "zusammenfassend ist ein Verbot für alle Beteiligten wichtig"],
}


def add_quirks(rows: list[dict], seed: int = 0) -> list[dict]:
    """Mix in what the real detection sets have and clean samples lack, at similar rates:
    very long essays (5%; real essays run far past 512 tokens, and past the smoke max_length),
    a few empty or missing texts (0.5%), exact duplicates (0.7%), essays in other languages
    (1%) and Windows line ends between paragraphs. A separate random stream, so the clean rows
    stay as they were."""
    rng = random.Random(seed + 15)
    prompts = sorted(_TOPICS)
    extra = []
    for i in range(30):  # very long, multi-paragraph essays of both classes
        generated = i % 2 == 1
        prompt = prompts[rng.randrange(len(prompts))]
        paragraphs = [_essay(rng, prompt, generated) for _ in range(rng.randint(4, 7))]
        extra.append({"text": ("\r\n\r\n" if i % 10 == 0 else "\n\n").join(paragraphs), "label": int(generated),
                      "prompt_name": prompt, "source": rng.choice(_SOURCES_AI if generated else _SOURCES_HUMAN),
                      "RDizzl3_seven": prompt != "Facial action coding system"})
    for i, (language, sentences) in enumerate(sorted(_OTHER_LANGUAGES.items()) * 2):
        generated = i % 2 == 1
        prompt = prompts[rng.randrange(len(prompts))]
        start = i // len(_OTHER_LANGUAGES)  # each copy starts elsewhere: no two rows alike
        text = " ".join(sentences[start:] + sentences[:start]) + "."
        extra.append({"text": text[0].upper() + text[1:], "label": int(generated), "prompt_name": prompt,
                      "source": rng.choice(_SOURCES_AI if generated else _SOURCES_HUMAN),
                      "RDizzl3_seven": prompt != "Facial action coding system"})
    for text in ("", "   ", None):  # an empty essay, a blank one, a missing one (empty csv field)
        prompt = prompts[rng.randrange(len(prompts))]
        extra.append({"text": text, "label": 0, "prompt_name": prompt, "source": _SOURCES_HUMAN[0],
                      "RDizzl3_seven": prompt != "Facial action coding system"})
    extra += [dict(row) for row in rng.sample(rows, 4)]  # exact duplicates
    out = list(rows)
    for row in extra:
        out.insert(rng.randrange(len(out) + 1), row)
    return out


def write_detection_csv(path: str | Path, seed: int = 0, n: int = 600) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=DETECTION_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(add_quirks(detection_rows(n, seed), seed))
    return path



# --- The competition's own training file (train_essays.csv: id, prompt_id, text, generated):
# another schema, and almost only student essays (3 generated among 1378 in the real file), on
# two prompts given as an integer `prompt_id` (0 and 1) instead of DAIGT's `prompt_name`.

COMPETITION_COLUMNS = ["id", "prompt_id", "text", "generated"]


def competition_rows(n: int = 120, seed: int = 1, generated_share: float = 0.05) -> list[dict]:
    """Rows in the competition's train_essays.csv schema; `generated` is 1 for AI text, rare."""
    rng = random.Random(seed)
    prompts = sorted(_TOPICS)
    n_generated = max(1, round(n * generated_share))
    rows = []
    for i in range(n):
        generated = i < n_generated
        prompt = rng.randrange(2)  # the real file has two prompts, as integers 0 and 1
        rows.append({"id": f"{rng.getrandbits(32):08x}", "prompt_id": prompt,
                     "text": _essay(rng, prompts[prompt], generated), "generated": int(generated)})
    rng.shuffle(rows)
    return rows


def write_competition_csv(path: str | Path, seed: int = 0, n: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COMPETITION_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(competition_rows(n, seed + 1))  # other essays than daigt_v2_train.csv's
    return path
