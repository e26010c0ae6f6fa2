"""Sample questions over small tables with reference pandas code, in the text2pandas schema.

The real data set (zeyadusf/text2pandas, train and test splits) has three columns: `question`,
`context` (the table's schema as code: `df = pd.DataFrame(columns=['player', 'team'])`, one line
per table) and `answer` (the pandas code). It ships no table rows, so the notebook synthesizes
tables to execute the code on. The sample goes further: its tables are real (known columns and
rows, written to `tables.json` beside the splits), so every reference here executes to a known,
non-trivial result, and execution accuracy on the smoke run compares real answers.

The answers use the constructs that T5's vocabulary cannot encode: dict literals (`{`, `}` in
`agg`, `rename`, `replace`) and comparisons (`<`, `<=`). Like the real data, the test split
repeats some training questions verbatim (the leak the notebook's overlap check must find).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from nbutils.harness.samples.jsonl import write_jsonl

COLUMNS = ["question", "context", "answer"]
SPLITS = ("train", "test")
TABLES_FILE = "tables.json"
N_TRAIN = 360
N_TEST = 72
LEAKED = 8  # test rows copied from train, as a merged and re-split data set ends up with


# Each table: its name in the code, columns, rows, and what the question templates need
# (the entity word, the column that names a row, categorical and numeric columns).
TABLES = [
    {
        "name": "df", "entity": "players", "key": "player",
        "columns": ["player", "team", "position", "years", "points", "games"],
        "categorical": ["team", "position"], "numeric": ["points", "games", "years"],
        "rows": [
            ["Hakeem Olajuwon", "Rockets", "center", 17, 26946, 1177],
            ["Clyde Drexler", "Rockets", "guard", 15, 22195, 1086],
            ["Yao Ming", "Rockets", "center", 8, 9247, 486],
            ["Tracy McGrady", "Rockets", "guard", 15, 18381, 938],
            ["Tim Duncan", "Spurs", "forward", 19, 26496, 1392],
            ["David Robinson", "Spurs", "center", 14, 20790, 987],
            ["Tony Parker", "Spurs", "guard", 18, 19473, 1254],
            ["Dirk Nowitzki", "Mavericks", "forward", 21, 31560, 1522],
            ["Jason Kidd", "Mavericks", "guard", 19, 17529, 1391],
            ["Steve Nash", "Suns", "guard", 18, 17387, 1217],
            ["Amare Stoudemire", "Suns", "forward", 14, 15994, 846],
            ["Shawn Marion", "Suns", "forward", 16, 17700, 1163],
        ],
    },
    {
        "name": "df", "entity": "cities", "key": "city",
        "columns": ["city", "country", "continent", "population", "area", "founded"],
        "categorical": ["country", "continent"], "numeric": ["population", "area", "founded"],
        "rows": [
            ["Lyon", "France", "Europe", 522, 48, 43],
            ["Nice", "France", "Europe", 342, 72, 350],
            ["Bordeaux", "France", "Europe", 260, 49, 300],
            ["Munich", "Germany", "Europe", 1488, 310, 1158],
            ["Hamburg", "Germany", "Europe", 1841, 755, 808],
            ["Cologne", "Germany", "Europe", 1086, 405, 38],
            ["Osaka", "Japan", "Asia", 2753, 225, 645],
            ["Kyoto", "Japan", "Asia", 1464, 828, 794],
            ["Sapporo", "Japan", "Asia", 1973, 1121, 1868],
            ["Toronto", "Canada", "America", 2794, 630, 1793],
            ["Calgary", "Canada", "America", 1306, 825, 1875],
            ["Quebec", "Canada", "America", 549, 485, 1608],
        ],
    },
    {
        "name": "df", "entity": "movies", "key": "title",
        "columns": ["title", "director", "genre", "year", "rating", "votes"],
        "categorical": ["director", "genre"], "numeric": ["year", "rating", "votes"],
        "rows": [
            ["Alien", "Scott", "horror", 1979, 8.5, 910],
            ["Gladiator", "Scott", "drama", 2000, 8.5, 1600],
            ["The Martian", "Scott", "scifi", 2015, 8.0, 920],
            ["Jaws", "Spielberg", "horror", 1975, 8.1, 630],
            ["Jurassic Park", "Spielberg", "scifi", 1993, 8.2, 1000],
            ["Lincoln", "Spielberg", "drama", 2012, 7.3, 280],
            ["Inception", "Nolan", "scifi", 2010, 8.8, 2500],
            ["Memento", "Nolan", "drama", 2000, 8.4, 1300],
            ["Interstellar", "Nolan", "scifi", 2014, 8.7, 2100],
            ["Arrival", "Villeneuve", "scifi", 2016, 7.9, 740],
            ["Prisoners", "Villeneuve", "drama", 2013, 8.1, 790],
            ["Enemy", "Villeneuve", "horror", 2013, 6.9, 200],
        ],
    },
]

# Two related tables, as in the part of the real data that came from Spider-style schemas.
EMPLOYEES = {
    "name": "employees", "columns": ["employee_id", "name", "department_id", "salary", "age"],
    "rows": [
        [1, "Ana", 10, 5200, 34], [2, "Ben", 10, 4300, 29], [3, "Carla", 20, 6100, 45],
        [4, "Dev", 20, 3900, 23], [5, "Eli", 30, 7000, 51], [6, "Fay", 30, 4800, 38],
        [7, "Gus", 40, 3500, 26], [8, "Hana", 40, 5600, 41], [9, "Ivo", 10, 6400, 48],
        [10, "Jo", 30, 4100, 31],
    ],
}
DEPARTMENTS = {
    "name": "departments", "columns": ["department_id", "department_name", "budget"],
    "rows": [[10, "Sales", 120], [20, "Research", 300], [30, "Support", 90], [40, "Legal", 60]],
}


def context_of(*tables: dict) -> str:
    """The schema as the real data writes it: one `name = pd.DataFrame(columns=[...])` per table."""
    return "\n".join(f"{t['name']} = pd.DataFrame(columns={t['columns']!r})" for t in tables)


def _column(table: dict, name: str) -> list:
    return [row[table["columns"].index(name)] for row in table["rows"]]


def _threshold(rng: random.Random, values: list) -> int | float:
    """A cut inside the column's range, so a filter keeps some rows and drops others."""
    ordered = sorted(values)
    cut = ordered[rng.randrange(2, len(ordered) - 2)]
    return cut if isinstance(cut, float) else int(cut)


def _single_table_example(rng: random.Random, t: dict) -> tuple[str, str]:
    """One (question, answer) about table `t`, from a random template."""
    key, entity = t["key"], t["entity"]
    cat, cat2 = rng.sample(t["categorical"], 2)
    num, num2 = rng.sample(t["numeric"], 2)
    v, w = rng.sample(sorted(set(_column(t, cat))), 2)
    k = _threshold(rng, _column(t, num))
    k2 = _threshold(rng, _column(t, num2))
    n = rng.randint(2, 4)
    new = rng.choice(["total", "value", "amount", "score"])
    other = rng.choice(sorted(set(_column(t, cat2))))
    # A cut inside the rows with `cat` == v, so the combined filter keeps at least one row.
    within = sorted({x for x, c in zip(_column(t, num), _column(t, cat)) if c == v})
    k_within = within[rng.randrange(1, len(within))] if len(within) > 1 else within[0] + 1
    templates = [
        (f"How many {entity} have {cat} {v}?", f"df[df['{cat}'] == '{v}']['{key}'].count()"),
        (f"What is the average {num} of {entity} with {cat} {v}?",
         f"df[df['{cat}'] == '{v}']['{num}'].mean()"),
        (f"How many {entity} have {num} less than {k}?", f"df[df['{num}'] < {k}]['{key}'].count()"),
        (f"Which {entity} have {num} below {k}?", f"df[df['{num}'] < {k}]['{key}']"),
        (f"List the {key} of {entity} with at most {k} {num}.", f"df[df['{num}'] <= {k}]['{key}']"),
        (f"What is the total {num} of {entity} with {num2} greater than {k2}?",
         f"df[df['{num2}'] > {k2}]['{num}'].sum()"),
        (f"Which {key} has the highest {num}?", f"df.loc[df['{num}'].idxmax(), '{key}']"),
        (f"Which {key} has the lowest {num}?", f"df.loc[df['{num}'].idxmin(), '{key}']"),
        (f"What are the total {num} and the average {num2} for each {cat}?",
         f"df.groupby('{cat}').agg({{'{num}': 'sum', '{num2}': 'mean'}})"),
        (f"What is the highest {num} for each {cat}?", f"df.groupby('{cat}')['{num}'].max()"),
        (f"Show the table with the column {num} renamed to {new}.",
         f"df.rename(columns={{'{num}': '{new}'}})"),
        (f"How many {entity} are there for each {cat}?", f"df['{cat}'].value_counts()"),
        (f"How many different values of {cat} are there?", f"df['{cat}'].nunique()"),
        (f"List the {key} of the {n} {entity} with the most {num}.",
         f"df.sort_values('{num}', ascending=False).head({n})['{key}']"),
        (f"Which {entity} have {cat} {v} and {num} less than {k_within}?",
         f"df[(df['{cat}'] == '{v}') & (df['{num}'] < {k_within})]['{key}']"),
        (f"Show the {cat} column with {v} replaced by {w}.",
         f"df['{cat}'].replace({{'{v}': '{w}'}})"),
        (f"List the {key} of {entity} whose {cat} is {v} or {w}.",
         f"df[df['{cat}'].isin(['{v}', '{w}'])]['{key}']"),
        (f"What is the minimum {num2} of {entity} whose {cat2} is not {other}?",
         f"df[df['{cat2}'] != '{other}']['{num2}'].min()"),
    ]
    return rng.choice(templates)


def _two_table_example(rng: random.Random) -> tuple[str, str]:
    dept = rng.choice(_column(DEPARTMENTS, "department_name"))
    budget = rng.choice([80, 100, 200])
    age = _threshold(rng, _column(EMPLOYEES, "age"))
    joined = "employees.merge(departments, on='department_id')"
    return rng.choice([
        (f"What is the average salary of employees in the {dept} department?",
         f"{joined}[lambda d: d['department_name'] == '{dept}']['salary'].mean()"),
        ("What is the average salary in each department?",
         f"{joined}.groupby('department_name')['salary'].mean()"),
        (f"Which employees work in departments with a budget less than {budget}?",
         f"{joined}[lambda d: d['budget'] < {budget}]['name']"),
        (f"How many employees younger than {age} work in each department?",
         f"{joined}[lambda d: d['age'] < {age}]['department_name'].value_counts()"),
        (f"What are the name and salary of employees in the {dept} department?",
         f"{joined}[lambda d: d['department_name'] == '{dept}'][['name', 'salary']]"),
    ])


def text2pandas_rows(seed: int = 0) -> dict[str, list[dict]]:
    """{"train": [...], "test": [...]}: rows of question, context, answer; unique within a split,
    and `LEAKED` test rows repeat training rows, like the real merged data set."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < N_TRAIN + N_TEST - LEAKED:
        if rng.random() < 0.15:
            question, answer = _two_table_example(rng)
            context = context_of(EMPLOYEES, DEPARTMENTS)
        else:
            table = rng.choice(TABLES)
            question, answer = _single_table_example(rng, table)
            context = context_of(table)
        if (question, context) in seen:
            continue
        seen.add((question, context))
        rows.append({"question": question, "context": context, "answer": answer})
    train, test = rows[:N_TRAIN], rows[N_TRAIN:]
    test = test + [dict(row) for row in rng.sample(train, LEAKED)]
    rng.shuffle(test)
    return {"train": train, "test": test}


# --- the real sets' quirks ---------------------------------------------------------------------

BROKEN_SHARE = 0.1  # share of rows added with a reference that does not parse (broken quoting)
UPSTREAM_DIR = "text2pandas_upstream"  # the single-column form, beside `text2pandas/`
UPSTREAM_COLUMNS = ["Input", "Pandas Query"]
UPSTREAM_TRAIN = 160  # rows of the training split written in the single-column form


def break_quoting(code: str) -> str:
    """The reference with an apostrophe inside its last string literal (`'Rockets's'`), the way
    the real sets' answers break on names like O'Neal: it no longer parses."""
    import ast
    import re

    literals = list(re.finditer(r"'([^']+)'", code))
    for match in reversed(literals):
        broken = code[:match.end() - 1] + "'s" + code[match.end() - 1:]
        try:
            ast.parse(broken)
        except SyntaxError:
            return broken
    return code + " )"


def quirk_rows(split: str, n: int, seed: int = 0) -> list[dict]:
    """`n` rows whose reference answer does not parse, and (in train) one with an empty answer,
    from a separate random stream (the clean rows stay as they are). Appended at the end of a
    split, so the clean rows keep their positions (`row_id`)."""
    rng = random.Random(f"{seed}-{split}-broken")
    rows = []
    for _ in range(n):
        table = rng.choice(TABLES)
        question, answer = _single_table_example(rng, table)
        rows.append({"question": question, "context": context_of(table), "answer": break_quoting(answer)})
    if split == "train":
        table = rng.choice(TABLES)
        question, _ = _single_table_example(rng, table)
        rows.insert(rng.randrange(len(rows) + 1), {"question": question, "context": context_of(table), "answer": ""})
    return rows


def _dtype(values: list) -> str:
    return "int64" if all(isinstance(v, int) for v in values) else \
        "float64" if all(isinstance(v, (int, float)) for v in values) else "object"


def upstream_schema(context: str) -> str:
    """A context in the single-column form's schema text: `table: df (player : object , ...)`,
    one line per table (the types from the sample tables' values)."""
    from nbutils.tasks.text_to_pandas.table_context import parse_context

    by_name = {t["name"] + "|" + ",".join(t["columns"]): t for t in TABLES + [EMPLOYEES, DEPARTMENTS]}
    lines = []
    for name, columns in parse_context(context).items():
        table = by_name[name + "|" + ",".join(columns)]
        types = [_dtype(_column(table, c)) for c in columns]
        lines.append(f"table: {name} (" + " , ".join(f"{c} : {t}" for c, t in zip(columns, types)) + ")")
    return "\n".join(lines)


def upstream_rows(split: str, seed: int = 0) -> list[dict]:
    """Rows in the upstream single-column form: `Input` = the schema text, a newline and
    `question: ...`; `Pandas Query` = `result = <code>`, with the same share of references that
    do not parse."""
    rows = text2pandas_rows(seed)[split]
    rows = rows[:UPSTREAM_TRAIN] if split == "train" else rows
    rows = rows + quirk_rows(split, round(BROKEN_SHARE * len(rows)), seed)
    return [{"Input": f"{upstream_schema(r['context'])}\nquestion: {r['question']}",
             "Pandas Query": f"result = {r['answer']}" if r["answer"] else ""} for r in rows]


def write_upstream_jsonl(path: str | Path, seed: int = 0, split: str = "train") -> Path:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return write_jsonl(path, upstream_rows(split, seed))


def tables() -> list[dict]:
    """Every sample table: name, columns and rows (what `tables.json` holds)."""
    return [{"name": t["name"], "columns": t["columns"], "rows": t["rows"]}
            for t in TABLES + [EMPLOYEES, DEPARTMENTS]]


def texts(seed: int = 0) -> list[str]:
    """Every question, context and answer, for the tiny models' tokenizers."""
    return [row[col] for rows in text2pandas_rows(seed).values() for row in rows for col in COLUMNS]


def write_text2pandas_jsonl(path: str | Path, seed: int = 0, split: str = "train") -> Path:
    """Write one split as JSON lines (one `{"question", "context", "answer"}` object per line)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    rows = text2pandas_rows(seed)[split]
    rows = rows + quirk_rows(split, round(BROKEN_SHARE * len(rows)), seed)
    return write_jsonl(path, ({c: row[c] for c in COLUMNS} for row in rows))


def write_tables_json(path: str | Path, seed: int = 0) -> Path:
    """Write the tables the questions are about (`seed` is unused: the tables are fixed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"tables": tables()}, indent=1, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    return path
