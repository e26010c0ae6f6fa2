"""One rule for malformed rows, the same in every training notebook, and the data report.

Real data sets have a few bad rows: an empty essay, a missing summary, a conversation whose last
turn is an empty `[INST]  [/INST]`, a reference answer that is not valid Python. A full recipe
must not stop on the first of them after an hour of downloading, nor hide them. The rule:

- a row is **repaired** only where the fix is unambiguous (Windows `\\r\\n` line ends become
  `\\n`; an empty trailing turn of a conversation is removed), and the repair is counted;
- a row that cannot be used as it is, is **dropped**, with its reason and its id;
- something worth knowing that needs no change is **noted** (placeholders such as
  `<file_photo>`, non-ASCII text) and the row is kept;
- the run **stops** with an error naming the reasons and the counts only when the dropped rows
  are more than `max_bad_row_share` of the rows read (in all, or in any one split): that many
  bad rows mean the wrong column, the wrong format or a broken file, not a few bad rows.

`RowLedger` keeps the counts while a notebook loads its data; `data_report` adds the token
lengths (percentiles, the share `max_length` truncates) and the label balance, for the notebook
and the run record (`record["data"]["report"]`).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

MAX_IDS = 50  # row ids kept per reason in the record; the count is always complete
PARAM = "max_bad_row_share"


class BadRowsError(ValueError):
    """More rows are malformed than the run's `max_bad_row_share` allows."""


def check_share(value, param: str = PARAM) -> float:
    """`max_bad_row_share` must be a fraction in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{param} must be a fraction in [0, 1) (0: stop at the first bad row), got {value!r}")
    return float(value)


class RowLedger:
    """Counts of rows read, kept, repaired, dropped (with reasons) and noted, per split."""

    def __init__(self, max_ids: int = MAX_IDS):
        self.max_ids = max_ids
        self.read: Counter = Counter()
        self.dropped_rows: Counter = Counter()  # per split
        self.repaired_rows: dict[str, set] = {}  # per split: ids of rows with any repair
        # kind -> {reason: {"count": n, "row_ids": [...], "by_split": Counter}}
        self.entries: dict[str, dict[str, dict]] = {"dropped": {}, "repaired": {}, "noted": {}}
        self._dropped_ids: dict[str, set] = {}

    def _add(self, kind: str, reason: str, split: str, row_id) -> None:
        entry = self.entries[kind].setdefault(reason, {"count": 0, "row_ids": [], "by_split": Counter()})
        entry["count"] += 1
        entry["by_split"][split] += 1
        if len(entry["row_ids"]) < self.max_ids:
            entry["row_ids"].append(f"{split}:{row_id}")

    def add_read(self, split: str, n: int) -> None:
        self.read[split] += int(n)

    def drop(self, split: str, row_id, reason: str) -> None:
        """Leave a row out, for `reason` (once per row: a second reason is not counted)."""
        seen = self._dropped_ids.setdefault(split, set())
        if row_id in seen:
            return
        seen.add(row_id)
        self.dropped_rows[split] += 1
        self._add("dropped", reason, split, row_id)

    def repair(self, split: str, row_id, what: str) -> None:
        self.repaired_rows.setdefault(split, set()).add(row_id)
        self._add("repaired", what, split, row_id)

    def note(self, split: str, row_id, what: str) -> None:
        self._add("noted", what, split, row_id)

    def is_dropped(self, split: str, row_id) -> bool:
        return row_id in self._dropped_ids.get(split, ())

    def counts(self, split: str | None = None) -> dict:
        splits = [split] if split else list(self.read)
        read = sum(self.read[s] for s in splits)
        dropped = sum(self.dropped_rows[s] for s in splits)
        repaired = sum(len(self.repaired_rows.get(s, set()) - self._dropped_ids.get(s, set()))
                       for s in splits)
        return {"read": read, "kept": read - dropped, "repaired": repaired, "dropped": dropped}

    def summary(self) -> dict:
        """The ledger as plain JSON: totals, per split, and each reason with its first row ids."""
        def entries(kind):
            return {reason: {"count": e["count"], "by_split": dict(e["by_split"]),
                             "row_ids": list(e["row_ids"])}
                    for reason, e in sorted(self.entries[kind].items(), key=lambda kv: -kv[1]["count"])}

        return {"rows": self.counts(), "by_split": {s: self.counts(s) for s in self.read},
                "dropped": entries("dropped"), "repaired": entries("repaired"),
                "noted": entries("noted"), "row_ids_kept_per_reason": self.max_ids}

    def check(self, max_bad_row_share: float, param: str = PARAM) -> None:
        """Stop when the dropped rows exceed `max_bad_row_share` of the rows read, in all or in
        any one split, naming the reasons and their counts."""
        share = check_share(max_bad_row_share, param)
        for split in [None, *self.read]:
            c = self.counts(split)
            if c["read"] and c["dropped"] / c["read"] > share:
                reasons = "; ".join(f"{reason}: {e['count']} (e.g. {', '.join(e['row_ids'][:3])})"
                                    for reason, e in self.summary()["dropped"].items()
                                    if split is None or e["by_split"].get(split))
                where = "in all" if split is None else f"in the {split} split"
                raise BadRowsError(
                    f"{c['dropped']} of {c['read']} rows {where} ({c['dropped'] / c['read']:.1%}) cannot be "
                    f"used: {reasons}; more than {param}={share:g} allows. So many usually mean a wrong "
                    f"column or format: check the data, or raise {param} to train on the rest.")
        if not self.counts()["kept"]:
            raise BadRowsError("no usable rows left in the data")

    def describe(self) -> str:
        """A few lines for the notebook: the counts, then each reason."""
        c = self.counts()
        lines = [f"rows read {c['read']}, kept {c['kept']}, repaired {c['repaired']}, dropped {c['dropped']}"]
        for kind in ("dropped", "repaired", "noted"):
            for reason, e in self.summary()[kind].items():
                more = " ..." if e["count"] > len(e["row_ids"][:5]) else ""
                lines.append(f"  {kind}: {reason}: {e['count']} ({', '.join(e['row_ids'][:5])}{more})")
        return "\n".join(lines)


def normalise_line_ends(text):
    """(text with `\\r\\n` and lone `\\r` as `\\n`, whether anything changed); None stays None."""
    if not isinstance(text, str) or "\r" not in text:
        return text, False
    return text.replace("\r\n", "\n").replace("\r", "\n"), True


def is_blank(value) -> bool:
    """Missing (None, NaN) or only whitespace."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return True
    return not str(value).strip()


def token_lengths(tokenizer, texts, target: bool = False) -> np.ndarray:
    """Tokens per text as the model sees it (special tokens such as T5's </s> included);
    `target`: tokenized as labels (`text_target`), for a sequence-to-sequence model's answers."""
    encoded = tokenizer(text_target=list(texts)) if target else tokenizer(list(texts))
    return np.asarray([len(ids) for ids in encoded["input_ids"]], dtype=np.int64)


def length_report(lengths, limit: int, prompt_lengths=None) -> dict:
    """How token lengths are distributed and how many examples `limit` truncates (the one
    length summary of the collection).

    `prompt_lengths` (prompt/completion examples, e.g. instruction tuning): also how many
    examples have a prompt that alone fills `limit` (no answer token is left: TRL drops them),
    and how many tokens the limit cuts in all (a cut example also loses its final EOS)."""
    lengths = np.asarray(lengths)
    if lengths.size == 0:
        raise ValueError("no examples to measure")
    pct = np.percentile(lengths, [10, 50, 90, 99])
    truncated = int((lengths > limit).sum())
    report = {"limit": int(limit), "examples": int(lengths.size), "min": int(lengths.min()),
              "p10": float(pct[0]), "median": float(pct[1]), "p90": float(pct[2]), "p99": float(pct[3]),
              "max": int(lengths.max()), "mean": round(float(lengths.mean()), 2),
              "truncated": truncated, "truncated_fraction": round(truncated / lengths.size, 4)}
    if prompt_lengths is not None:
        report["prompt_fills_max_length"] = int((np.asarray(prompt_lengths) >= limit).sum())
        report["tokens_cut"] = int(np.clip(lengths - limit, 0, None).sum())
    return report


def label_balance(labels, names: dict | None = None) -> dict:
    """Rows per class and the share of each: {"counts": {...}, "shares": {...}}."""
    counts = Counter(names.get(v, v) if names else v for v in (int(x) for x in labels))
    total = sum(counts.values()) or 1
    return {"counts": {str(k): n for k, n in sorted(counts.items(), key=lambda kv: str(kv[0]))},
            "shares": {str(k): round(n / total, 4) for k, n in sorted(counts.items(), key=lambda kv: str(kv[0]))}}


def data_report(ledger: RowLedger, max_bad_row_share: float, lengths: dict | None = None,
                labels: dict | None = None) -> dict:
    """What the run trains and is scored on: the ledger's counts and reasons, the token length
    reports (`{"input": length_report(...), ...}`) and the label balance per split."""
    report = {**ledger.summary(), PARAM: float(max_bad_row_share)}
    if lengths:
        report["lengths"] = lengths
    if labels:
        report["labels"] = labels
    return report


def report_table(report: dict):
    """The report's row counts per split as a pandas table, for display."""
    import pandas as pd

    return pd.DataFrame({**report["by_split"], "all": report["rows"]}).T
