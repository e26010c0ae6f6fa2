"""Sample instructions in the schema of mlabonne/guanaco-llama2-1k, and as chat messages.

guanaco-llama2-1k has one column, `text`, each row one conversation in Llama-2's prompt format:
`<s>[INST] question [/INST] answer </s>`, a few with a second turn appended
(`... </s><s>[INST] question [/INST] answer </s>`). The sample keeps that exact format.

Each answer is written from the question: short questions with one right answer (capitals,
opposites, plurals) and longer requests about a topic (explain it, list facts, write an essay,
write code) answered from that topic's own sentences, so a model can learn which answer goes
with which question, and that an answer ends. Lengths follow the real data set's shape (a
log-normal with a long right tail: with a Llama tokenizer the real one has a median of about
375 tokens, a 10th percentile of 116 and a 90th of 930), scaled down four times so that CPU
smoke runs stay fast, while `max_length` still truncates a tenth of the examples.

The chat-messages file, in trl-lib/Capybara's schema (`source`, `messages`: a list of
`{"role", "content"}`, `num_turns`), holds other conversations from the same generator, some
with a system prompt.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from nbutils.harness.samples.jsonl import write_jsonl

# Rows per file. guanaco-llama2-1k has 1,000; the notebook holds a tenth out for evaluation.
N_TEXT_ROWS = 300
N_CHAT_ROWS = 200
# Log-normal answer length in words: median 75, 10th percentile about 28, 90th about 200,
# the real data set's shape at a quarter of its size.
_MEDIAN_WORDS = 28
_SIGMA = 0.95
_MAX_WORDS = 400

_CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Kenya": "Nairobi", "Peru": "Lima",
             "Canada": "Ottawa", "Egypt": "Cairo", "Norway": "Oslo", "India": "New Delhi",
             "Brazil": "Brasilia", "Spain": "Madrid", "Poland": "Warsaw", "Chile": "Santiago",
             "Italy": "Rome", "Ghana": "Accra", "Greece": "Athens", "Cuba": "Havana"}
_OPPOSITES = {"hot": "cold", "early": "late", "heavy": "light", "open": "closed", "empty": "full",
              "fast": "slow", "loud": "quiet", "rich": "poor", "wide": "narrow", "sharp": "dull",
              "happy": "sad", "strong": "weak", "young": "old", "soft": "hard"}
_PLURALS = {"mouse": "mice", "child": "children", "tooth": "teeth", "leaf": "leaves",
            "city": "cities", "box": "boxes", "goose": "geese", "knife": "knives",
            "person": "people", "cactus": "cacti", "woman": "women", "wolf": "wolves"}

# Each topic: facts an answer about it is built from, and list items for "list" requests.
_TOPICS = {
    "the water cycle": [
        "Water evaporates from oceans, lakes and rivers when the sun heats it.",
        "The water vapour rises, cools and condenses into clouds.",
        "When the droplets in a cloud grow heavy, they fall as rain, snow or hail.",
        "Rain soaks into the ground or runs off into streams and rivers.",
        "Plants release water vapour through their leaves, which is called transpiration.",
        "Groundwater slowly flows back to the sea through soil and rock.",
        "The same water has been moving through this cycle for billions of years.",
        "The water cycle moves heat around the planet and shapes the weather.",
    ],
    "photosynthesis": [
        "Photosynthesis is how plants turn light into chemical energy.",
        "Leaves take in carbon dioxide from the air through tiny pores.",
        "Roots draw water up from the soil to the leaves.",
        "Chlorophyll, the green pigment in leaves, absorbs sunlight.",
        "The plant uses that energy to build sugar from water and carbon dioxide.",
        "Oxygen is released into the air as a by-product.",
        "Almost every food chain on Earth starts with photosynthesis.",
        "Algae in the oceans carry out a large share of the world's photosynthesis.",
    ],
    "volcanoes": [
        "A volcano is an opening in the crust where molten rock reaches the surface.",
        "Molten rock below the surface is called magma, and above it is called lava.",
        "Most volcanoes form where tectonic plates meet or pull apart.",
        "Gas trapped in the magma can make an eruption explosive.",
        "Volcanic ash can travel thousands of kilometres in the wind.",
        "Over time, lava flows build up mountains and even new islands.",
        "Volcanic soil is very fertile, so many farms grow near volcanoes.",
        "Scientists watch small earthquakes and gas levels to predict eruptions.",
    ],
    "the solar system": [
        "The solar system is the sun and everything that orbits it.",
        "Eight planets travel around the sun on nearly circular paths.",
        "The four inner planets are small and rocky.",
        "The four outer planets are giants made mostly of gas and ice.",
        "Jupiter is the largest planet, more than eleven times as wide as Earth.",
        "Beyond Neptune lies a belt of icy bodies that includes Pluto.",
        "Light from the sun takes about eight minutes to reach Earth.",
        "The solar system formed about four and a half billion years ago from a cloud of gas.",
    ],
    "machine learning": [
        "Machine learning is a way to make computers learn patterns from examples.",
        "Instead of writing rules by hand, we show the model many labelled examples.",
        "The model adjusts its parameters to reduce its errors on the training data.",
        "A separate test set tells us how well the model works on new data.",
        "Overfitting happens when a model memorizes the training data instead of learning.",
        "Neural networks are a family of models built from layers of simple units.",
        "Good data often matters more than a clever model.",
        "Machine learning is used for translation, search, medicine and much more.",
    ],
    "healthy sleep": [
        "Most adults need seven to nine hours of sleep each night.",
        "Going to bed at the same time every day keeps the body clock steady.",
        "Bright screens late in the evening can make it harder to fall asleep.",
        "A cool, dark and quiet bedroom helps you sleep deeply.",
        "Caffeine can stay in the body for many hours after a cup of coffee.",
        "During deep sleep the body repairs muscles and the brain stores memories.",
        "Regular exercise during the day improves sleep at night.",
        "Long-term lack of sleep raises the risk of many health problems.",
    ],
    "baking bread": [
        "Bread needs only flour, water, salt and yeast.",
        "Kneading the dough builds gluten, which gives bread its structure.",
        "Yeast eats sugars in the flour and releases gas that makes the dough rise.",
        "The dough should rise in a warm place until it doubles in size.",
        "Shaping the loaf gently keeps the gas bubbles inside.",
        "A hot oven and a little steam give the bread a crisp crust.",
        "The bread is done when it sounds hollow when you tap the bottom.",
        "Let the loaf cool before slicing, because it keeps cooking inside.",
    ],
    "recycling": [
        "Recycling turns used materials into new products.",
        "Paper, glass, metal and many plastics can be recycled.",
        "Recycling aluminium saves most of the energy needed to make new metal.",
        "Items should be clean and dry before they go in the recycling bin.",
        "Mixing the wrong items into the bin can spoil a whole batch.",
        "Glass can be recycled again and again without losing quality.",
        "Reducing and reusing come before recycling, because they save even more.",
        "Many cities sort recycling with machines that use magnets and air jets.",
    ],
}
_LIST_ITEMS = {
    "the water cycle": ["evaporation", "condensation", "precipitation", "runoff", "infiltration",
                        "transpiration", "collection"],
    "photosynthesis": ["sunlight", "water", "carbon dioxide", "chlorophyll", "sugar", "oxygen"],
    "volcanoes": ["Mount Etna", "Mount Fuji", "Kilauea", "Vesuvius", "Krakatoa", "Mount St. Helens"],
    "the solar system": ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"],
    "machine learning": ["linear regression", "decision trees", "random forests", "neural networks",
                         "k-means clustering", "support vector machines"],
    "healthy sleep": ["a regular bedtime", "a dark room", "no late coffee", "daily exercise",
                      "no screens before bed", "a cool bedroom"],
    "baking bread": ["flour", "water", "salt", "yeast", "a mixing bowl", "a hot oven"],
    "recycling": ["paper", "cardboard", "glass bottles", "aluminium cans", "steel tins",
                  "plastic bottles"],
}
_CODE_TASKS = [
    ("adds two numbers", "add", "a, b", "return a + b", "add(2, 3)", "5"),
    ("returns the largest item of a list", "largest", "items", "return max(items)",
     "largest([4, 9, 2])", "9"),
    ("reverses a string", "reverse", "text", "return text[::-1]", "reverse(\"abc\")", "\"cba\""),
    ("counts the vowels in a string", "count_vowels", "text",
     "return sum(1 for c in text.lower() if c in \"aeiou\")", "count_vowels(\"banana\")", "3"),
    ("checks whether a number is even", "is_even", "n", "return n % 2 == 0", "is_even(4)", "True"),
    ("returns the average of a list of numbers", "average", "numbers",
     "return sum(numbers) / len(numbers)", "average([1, 2, 3])", "2.0"),
]
_CLOSERS = ["I hope this helps!", "Let me know if you have more questions.",
            "Feel free to ask if anything is unclear.", "Good luck!", ""]
_FOLLOW_UPS = ["Can you make it shorter?", "Thank you!", "Can you give me one more fact?"]
_SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are a friendly teacher who explains things simply.",
                   "You are a concise assistant. Answer clearly."]


def _words(text: str) -> int:
    return len(text.split())


def _target_words(rng: random.Random) -> int:
    return max(12, min(_MAX_WORDS, int(rng.lognormvariate(0, _SIGMA) * _MEDIAN_WORDS)))


def _pad_with(rng, answer: str, sentences: list[str], target: int, repeat: bool = True) -> str:
    """Grow an answer to about `target` words with sentences of its own topic, in paragraphs.
    Each sentence is used once before any repeats (and never again if `repeat` is False)."""
    paragraphs, current, pool = [answer], [], []
    while _words(" ".join(paragraphs + current)) < target:
        if not pool:
            if not repeat and current + paragraphs[1:]:
                break
            pool = rng.sample(sentences, len(sentences))
        current.append(pool.pop())
        if len(current) >= rng.randint(3, 5):
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


def _short_answer(rng, target):
    """A question with one right answer; a longer target adds related sentences."""
    kind = rng.choice(["capital", "opposite", "plural"])
    if kind == "capital":
        country = rng.choice(sorted(_CAPITALS))
        city = _CAPITALS[country]
        question = rng.choice([f"What is the capital of {country}?",
                               f"Which city is the capital of {country}?",
                               f"Tell me the capital city of {country}."])
        answer = f"The capital of {country} is {city}."
        more = [f"{city} is where the government of {country} meets.",
                f"Many visitors to {country} start their trip in {city}.",
                f"{city} is one of the best known cities in {country}."]
    elif kind == "opposite":
        word = rng.choice(sorted(_OPPOSITES))
        question = rng.choice([f"What is the opposite of \"{word}\"?",
                               f"Give me the antonym of the word {word}."])
        answer = f"The opposite of \"{word}\" is \"{_OPPOSITES[word]}\"."
        more = [f"For example, something that is not {word} could be called {_OPPOSITES[word]}.",
                f"Antonyms like {word} and {_OPPOSITES[word]} help to describe contrasts."]
    else:
        word = rng.choice(sorted(_PLURALS))
        question = rng.choice([f"What is the plural of \"{word}\"?",
                               f"How do you write more than one {word}?"])
        answer = f"The plural of \"{word}\" is \"{_PLURALS[word]}\"."
        more = [f"You say one {word}, but two {_PLURALS[word]}.",
                f"\"{_PLURALS[word].capitalize()}\" is an irregular or special plural form in English."]
    if target > 25:
        answer = _pad_with(rng, answer, more, target, repeat=False)
    return question, answer


def _topic_answer(rng, target):
    topic = rng.choice(sorted(_TOPICS))
    facts = _TOPICS[topic]
    kind = rng.choice(["explain", "explain", "list", "essay", "code"] if topic == "machine learning"
                      else ["explain", "explain", "list", "essay"])
    if kind == "list":
        items = _LIST_ITEMS[topic]
        n = rng.randint(3, len(items))
        question = rng.choice([f"List {n} things related to {topic}.",
                               f"Give me a list of {n} key words about {topic}."])
        lines = [f"{i + 1}. {item.capitalize()}" for i, item in enumerate(rng.sample(items, n))]
        answer = f"Here are {n} things related to {topic}:\n\n" + "\n".join(lines)
        answer = _pad_with(rng, answer, facts, target)
    elif kind == "code":
        task, name, args, body, call, result = rng.choice(_CODE_TASKS)
        question = f"Write a Python function that {task}."
        code = f"```python\ndef {name}({args}):\n    {body}\n```"
        answer = (f"Here is a Python function that {task}:\n\n{code}\n\n"
                  f"For example, `{call}` returns `{result}`.")
        answer = _pad_with(rng, answer, facts, target)
    elif kind == "essay":
        question = rng.choice([f"Write a detailed essay about {topic}.",
                               f"Write a long, detailed explanation of {topic}."])
        answer = _pad_with(rng, f"{facts[0]} {facts[1]}", facts, max(target, 80))
    else:
        question = rng.choice([f"Explain {topic} in simple terms.", f"What is {topic}?",
                               f"Can you tell me about {topic}?", f"How does {topic} work?"])
        answer = _pad_with(rng, facts[0], facts, target)
    return question, answer, facts


def conversations(n: int, seed: int, system_share: float = 0.0) -> list[list[dict]]:
    """`n` distinct conversations as lists of {"role", "content"}: user, assistant, and sometimes
    a second user/assistant turn (about one in ten, as in guanaco) or a leading system prompt."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        target = _target_words(rng)
        if target < 20 or rng.random() < 0.2:
            question, answer = _short_answer(rng, target)
            facts = [answer.split("\n\n")[0]]
        else:
            question, answer, facts = _topic_answer(rng, target)
        closer = rng.choice(_CLOSERS)
        if closer:
            answer = f"{answer}\n\n{closer}"
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        if rng.random() < 0.1:
            follow_up = rng.choice(_FOLLOW_UPS)
            reply = {"Can you make it shorter?": facts[0],
                     "Thank you!": "You are welcome! " + rng.choice(_CLOSERS[:3]),
                     "Can you give me one more fact?": f"Sure. {rng.choice(facts)}"}[follow_up]
            messages += [{"role": "user", "content": follow_up},
                         {"role": "assistant", "content": reply}]
        if rng.random() < system_share:
            messages.insert(0, {"role": "system", "content": rng.choice(_SYSTEM_PROMPTS)})
        # Every conversation once: a duplicate could land on both sides of the held-out split.
        key = json.dumps([m for m in messages if m["role"] != "system"])
        if key not in seen:
            seen.add(key)
            rows.append(messages)
    return rows


def llama2_text(messages: list[dict]) -> str:
    """One conversation in guanaco-llama2-1k's format: `<s>[INST] q [/INST] a </s>` per turn."""
    turns = [m for m in messages if m["role"] != "system"]
    return "".join(f"<s>[INST] {user['content']} [/INST] {assistant['content']} </s>"
                   for user, assistant in zip(turns[::2], turns[1::2]))


def text_rows(n: int = N_TEXT_ROWS, seed: int = 0) -> list[dict]:
    """Rows in the guanaco-llama2-1k schema: one column, `text`."""
    return [{"text": llama2_text(m)} for m in conversations(n, seed)]


def chat_rows(n: int = N_CHAT_ROWS, seed: int = 0) -> list[dict]:
    """Rows in trl-lib/Capybara's schema: `source`, `messages`, `num_turns` (other conversations
    than the text rows', a third with a system prompt)."""
    return [{"source": "nbutils-sample", "messages": m,
             "num_turns": sum(msg["role"] != "system" for msg in m)}
            for m in conversations(n, seed + 1000, system_share=0.3)]


def add_quirks(rows: list[dict], seed: int = 0) -> list[dict]:
    """guanaco-llama2-1k's malformed multi-turn rows (3 in its 1,000), one or two of each kind
    so the small sample has them: two conversations ending in an empty `<s>[INST]  [/INST]`
    turn and one whose last question has an empty answer (the rule repairs these: the empty
    trailing turn is removed), and one whose first answer is empty before a second turn (the
    rule drops it: there is no unambiguous repair)."""
    rng = random.Random(seed + 15)
    out = [dict(row) for row in rows]
    multi = [i for i, row in enumerate(out) if row["text"].count("[INST]") > 1]
    single = [i for i, row in enumerate(out) if row["text"].count("[INST]") == 1]
    empty_turns, empty_answer = rng.sample(multi, 2), rng.choice(single)
    for i in empty_turns:
        out[i]["text"] += "<s>[INST]  [/INST]"
    out[empty_answer]["text"] += f"<s>[INST] {rng.choice(_FOLLOW_UPS)} [/INST] </s>"
    dropped = rng.choice([i for i in multi if i not in empty_turns])
    first_end = out[dropped]["text"].index("[/INST]") + len("[/INST]")
    out[dropped]["text"] = out[dropped]["text"][:first_end] + " </s>" + out[dropped]["text"].split("</s>", 1)[1]
    return out


def write_guanaco_jsonl(path: str | Path, seed: int = 0) -> Path:
    return write_jsonl(path, add_quirks(text_rows(seed=seed), seed))


def write_chat_jsonl(path: str | Path, seed: int = 0) -> Path:
    return write_jsonl(path, chat_rows(seed=seed))


def texts(seed: int = 0) -> list[str]:
    """Every text of both files, for the tiny tokenizers' training corpus (without the `<s>` and
    `</s>` markers, which the tokenizer reads as its BOS and EOS special tokens)."""
    out = [row["text"].replace("<s>", "").replace("</s>", "") for row in text_rows(seed=seed)]
    for row in chat_rows(seed=seed):
        out += [m["content"] for m in row["messages"]]
    return out
