"""Can the tokenizer write the targets at all? A coverage check, and the fix.

T5's sentencepiece vocabulary has no `{`, `}` or `<`: they become `<unk>`, so a T5 fine-tuned
on pandas code can never produce `agg({'a': 'sum'})` or `df[df['x'] < 3]`, and nobody notices
unless they look: the loss is fine, BLEU is fine. The check finds every character of the texts
that the tokenizer maps to the unknown token (or does not give back unchanged), counts the
texts that do not survive encode -> decode, and `add_missing_tokens` adds the characters as
tokens (then `resize_embeddings` makes room for them in the model).

Adding tokens alone is not enough for T5: its pre-tokenizer (WhitespaceSplit, then Metaspace
with `prepend_scheme="always"`) drops the space before an added token and inserts one after it
(`a < b` comes back as `a< b`, `{'a'` as `{ 'a'`). The fix switches it to the non-legacy
Metaspace (`prepend_scheme="first"`, what transformers 4 called `legacy=False`), which
tokenizes ordinary single-spaced text exactly as before, and wraps the result in a plain
tokenizers-backed tokenizer so that the fix survives `save_pretrained` / `from_pretrained`
(T5Tokenizer rebuilds the legacy pre-tokenizer whenever it is loaded).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class CoverageReport:
    texts: int
    distinct_characters: int
    unknown: dict[str, int]  # character -> texts containing it; the tokenizer maps it to <unk>
    altered: dict[str, int]  # character -> texts containing it; encodes, but decodes differently
    texts_with_unknown: int
    texts_not_round_tripping: int  # decode(encode(text)) != text
    examples: list[tuple[str, str]] = field(default_factory=list)  # (text, what comes back)

    @property
    def missing(self) -> list[str]:
        """The characters to add as tokens: the unknown ones and the changed ones (such as a
        newline that comes back as a space)."""
        return sorted(set(self.unknown) | set(self.altered))

    def table(self):
        """One row per problem character: what happens to it and how many texts contain it."""
        import pandas as pd

        rows = [{"character": repr(c), "problem": "unknown token", "texts": n,
                 "share of texts": n / self.texts} for c, n in sorted(self.unknown.items())]
        rows += [{"character": repr(c), "problem": "changed by encode/decode", "texts": n,
                  "share of texts": n / self.texts} for c, n in sorted(self.altered.items())]
        return pd.DataFrame(rows, columns=["character", "problem", "texts", "share of texts"])

    def summary(self) -> dict:
        return {"texts": self.texts, "unknown_characters": "".join(sorted(self.unknown)),
                "altered_characters": "".join(sorted(self.altered)),
                "texts_with_unknown": self.texts_with_unknown,
                "texts_not_round_tripping": self.texts_not_round_tripping}


def decode(tokenizer, ids) -> str:
    """Decode as the metrics read generated code: special tokens dropped, spaces left alone
    (`clean_up_tokenization_spaces` would turn `df .x` into `df.x` and hide real errors)."""
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def check_coverage(tokenizer, texts, max_examples: int = 5) -> CoverageReport:
    """Which characters of `texts` the tokenizer cannot encode, and which texts do not survive
    encode -> decode."""
    texts = [str(t) for t in texts]
    containing: Counter = Counter()
    for text in texts:
        containing.update(set(text))
    unknown, altered = {}, {}
    unk = tokenizer.unk_token_id
    for char in containing:
        # Between two letters, so that a leading space or a merge at the edge does not count.
        probe = f"x{char}x"
        ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
        if unk is not None and unk in ids:
            unknown[char] = containing[char]
        elif decode(tokenizer, ids) != probe:
            altered[char] = containing[char]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    with_unknown = sum(1 for ids in encoded if unk is not None and unk in ids)
    failures = []
    for text, ids in zip(texts, encoded):
        back = decode(tokenizer, ids)
        if back != text:
            failures.append((text, back))
    return CoverageReport(texts=len(texts), distinct_characters=len(containing), unknown=unknown,
                          altered=altered, texts_with_unknown=with_unknown,
                          texts_not_round_tripping=len(failures), examples=failures[:max_examples])


def _non_legacy(component: dict | None, drop_whitespace_split: bool) -> tuple[dict | None, bool]:
    """A pre-tokenizer or decoder JSON with Metaspace(prepend_scheme="always") made "first"."""
    if component is None:
        return None, False
    if component.get("type") == "Sequence":
        key = "pretokenizers" if "pretokenizers" in component else "decoders"
        parts, changed = [], False
        for part in component[key]:
            if drop_whitespace_split and part.get("type") == "WhitespaceSplit":
                changed = True
                continue
            new, part_changed = _non_legacy(part, drop_whitespace_split)
            parts.append(new)
            changed |= part_changed
        if changed and len(parts) == 1:
            return parts[0], True
        return {**component, key: parts}, changed
    if component.get("type") == "Metaspace":
        legacy = component.get("prepend_scheme") == "always" or component.get("add_prefix_space") is True
        if legacy:
            fixed = {k: v for k, v in component.items() if k != "add_prefix_space"}
            return {**fixed, "prepend_scheme": "first", "split": component.get("split", True)}, True
    return component, False


def add_missing_tokens(tokenizer, characters):
    """Add `characters` as (normal, not special) tokens; returns the tokenizer to use from now on.

    Metaspace tokenizers (T5, and sentencepiece ones in general) also get the non-legacy
    pre-tokenizer, so spaces around the new tokens survive, and come back as a plain
    tokenizers-backed tokenizer that saves and reloads exactly.
    """
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    characters = [c for c in dict.fromkeys(characters)]
    if not characters:
        return tokenizer
    # Matched in the raw text, before the normalizer (which may rewrite a newline as a space).
    tokenizer.add_tokens([AddedToken(c, normalized=False) for c in characters])
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer
    spec = json.loads(backend.to_str())
    pre, changed_pre = _non_legacy(spec.get("pre_tokenizer"), drop_whitespace_split=True)
    dec, changed_dec = _non_legacy(spec.get("decoder"), drop_whitespace_split=False)
    if not (changed_pre or changed_dec):
        return tokenizer
    spec["pre_tokenizer"], spec["decoder"] = pre, dec
    rebuilt = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        model_max_length=tokenizer.model_max_length, padding_side=tokenizer.padding_side,
        truncation_side=tokenizer.truncation_side, **tokenizer.special_tokens_map)
    return rebuilt


def resize_embeddings(model, tokenizer, new_tokens=()) -> dict:
    """Make room for the tokenizer's vocabulary and start new tokens at the mean embedding.

    t5-base has 32,128 embedding rows for 32,100 tokens, so its first new tokens fit in unused
    rows without resizing; those rows are untrained either way, so every new token is set to the
    mean of the existing embeddings (input and output), a better start than noise.
    """
    import torch

    before = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > before:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in new_tokens]
    ids = [i for i in ids if i is not None and i >= 0]
    with torch.no_grad():
        layers = [model.get_input_embeddings()]
        output = model.get_output_embeddings()
        if output is not None and output.weight is not layers[0].weight:
            layers.append(output)
        known = min([before, *ids])  # the rows of the tokens the model was trained with
        for layer in layers:
            mean = layer.weight[:known].mean(dim=0)
            for i in ids:
                layer.weight[i] = mean
    return {"embeddings_before": before, "embeddings_after": model.get_input_embeddings().num_embeddings,
            "new_token_ids": ids}
