"""Instruction data in three formats, checked and converted to one: conversational prompt/completion.

Accepted formats (`detect_format` picks one from the columns, or the caller names it):

- ``text``: one column in Llama-2's prompt format, as in mlabonne/guanaco-llama2-1k:
  ``<s>[INST] question [/INST] answer </s>``, optionally more turns appended and a
  ``<<SYS>>...<</SYS>>`` system prompt inside the first ``[INST]``;
- ``prompt_completion``: a prompt column and a completion column of plain strings;
- ``messages``: one column holding a list of ``{"role", "content"}`` (system, user, assistant).

Every row becomes a list of messages, then ``{"prompt": [...], "completion": [last assistant
message]}``. Rendered with the tokenizer's chat template (`causal_lm.turn_labels`, or TRL's
SFTTrainer given the pairs), the answers are the targets: every assistant turn's, or the
completion's alone (what TRL's completion-only loss gives), each with the template's
end-of-turn token (EOS) among its labels, so the model learns to stop. The Llama-2 template below writes
exactly the guanaco format, with the BOS and EOS tokens as the template's own special tokens:
the literal ``<s>``/``</s>`` of the text are parsed away, never tokenized on top of the BOS the
tokenizer would add (the double-BOS trap).

A malformed row is an `InstructionDataError` naming the row (counted from 0, as in the loaded
table) and what was expected.
"""

from __future__ import annotations

import re
from pathlib import Path

FORMATS = ("text", "prompt_completion", "messages")
ROLES = ("system", "user", "assistant")

# The Llama-2 chat template (as shipped with meta-llama/Llama-2-7b-chat-hf): each turn is
# `<s>[INST] user [/INST] assistant </s>`, a system prompt goes inside the first [INST].
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
CHAT_TEMPLATES = {"llama2": LLAMA2_CHAT_TEMPLATE}


class InstructionDataError(ValueError):
    """A row of instruction data that cannot be trained on, or a format the columns do not fit."""


def _show(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def detect_format(columns, requested: str = "auto", text_column: str = "text",
                  prompt_column: str = "prompt", completion_column: str = "completion",
                  messages_column: str = "messages") -> str:
    """The data format: `requested` checked against the columns, or (auto) the first that fits,
    in the order messages, prompt_completion, text."""
    columns = list(columns)
    needs = {"messages": [("messages_column", messages_column)],
             "prompt_completion": [("prompt_column", prompt_column),
                                   ("completion_column", completion_column)],
             "text": [("text_column", text_column)]}
    if requested == "auto":
        for fmt in ("messages", "prompt_completion", "text"):
            if all(col in columns for _, col in needs[fmt]):
                return fmt
        raise InstructionDataError(
            f"data_format='auto' found no instruction columns; expected a {text_column!r} column "
            f"(text format), {prompt_column!r} and {completion_column!r} columns, or a "
            f"{messages_column!r} column; columns present: {', '.join(columns)}")
    if requested not in FORMATS:
        raise InstructionDataError(f"data_format must be auto or one of {', '.join(FORMATS)}, "
                                   f"got {requested!r}")
    for param, col in needs[requested]:
        if col not in columns:
            raise InstructionDataError(f"data_format={requested!r} needs {param}={col!r}, which is not "
                                       f"a column of the data; columns present: {', '.join(columns)}")
    return requested


_TURN = re.compile(r"\[INST\](.*?)\[/INST\]", re.S)
_SYSTEM = re.compile(r"^\s*<<SYS>>\n?(.*?)\n?<</SYS>>", re.S)


def parse_llama2_text(text, row: int) -> list[dict]:
    """`<s>[INST] q [/INST] a </s>` (one or more turns) -> messages; the `<s>`/`</s>` markers are
    dropped: the chat template writes BOS and EOS back as special tokens."""
    if not isinstance(text, str) or "[INST]" not in text or "[/INST]" not in text:
        raise InstructionDataError(
            f"row {row}: no [INST] ... [/INST] markers; the text format expects "
            f"'<s>[INST] question [/INST] answer </s>', got {_show(text)}")
    turns = list(_TURN.finditer(text))
    if not turns:
        raise InstructionDataError(f"row {row}: [/INST] comes before [INST]; got {_show(text)}")
    if text[:turns[0].start()].replace("<s>", "").strip():
        raise InstructionDataError(f"row {row}: text before the first [INST]: {_show(text)}")
    messages: list[dict] = []
    for i, turn in enumerate(turns):
        question = turn.group(1)
        end = turns[i + 1].start() if i + 1 < len(turns) else len(text)
        answer = text[turn.end():end].strip()
        # A turn ends `answer </s>`, and the next one starts with `<s>`.
        for marker in ("<s>", "</s>"):
            if answer.endswith(marker):
                answer = answer[: -len(marker)].rstrip()
        if i == 0:
            system = _SYSTEM.match(question)
            if system:
                messages.append({"role": "system", "content": system.group(1).strip()})
                question = question[system.end():]
        question = question.strip()
        if "[INST]" in question or "[/INST]" in answer or "<s>" in answer or "</s>" in answer:
            raise InstructionDataError(f"row {row}: unbalanced [INST]/[/INST] or <s>/</s> markers "
                                       f"in turn {i + 1}: {_show(text)}")
        if not question:
            raise InstructionDataError(f"row {row}: empty question in turn {i + 1}: {_show(text)}")
        if not answer:
            what = "empty completion: nothing after the last [/INST]" if i == len(turns) - 1 \
                else f"empty answer in turn {i + 1}"
            raise InstructionDataError(f"row {row}: {what}: {_show(text)}")
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages


def check_messages(messages, row: int) -> list[dict]:
    """Check one conversation: known roles, an optional system message first, then user and
    assistant turns alternating, ending with a non-empty assistant answer (the completion)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InstructionDataError(f"row {row}: messages must be a non-empty list of "
                                   f"{{'role', 'content'}}, got {_show(messages)}")
    clean = []
    for j, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise InstructionDataError(f"row {row}: message {j} must have 'role' and 'content', "
                                       f"got {_show(message)}")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise InstructionDataError(f"row {row}: message {j} has unknown role {role!r}; "
                                       f"expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise InstructionDataError(f"row {row}: message {j} content must be a string, "
                                       f"got {_show(content)}")
        clean.append({"role": role, "content": content})
    turns = clean[1:] if clean[0]["role"] == "system" else clean
    for j, message in enumerate(turns):
        expected = "user" if j % 2 == 0 else "assistant"
        if message["role"] != expected:
            index = j + (len(clean) - len(turns))
            raise InstructionDataError(
                f"row {row}: message {index} is {message['role']!r} where {expected!r} was expected; "
                "after an optional system message, user and assistant must alternate")
        if expected == "user" and not message["content"].strip():
            raise InstructionDataError(f"row {row}: empty user message {j + len(clean) - len(turns)}")
    if not turns or turns[-1]["role"] != "assistant":
        raise InstructionDataError(f"row {row}: the last message must be the assistant's answer "
                                   "(the completion to train on)")
    if not turns[-1]["content"].strip():
        raise InstructionDataError(f"row {row}: empty completion: the last assistant message is empty")
    return clean


def row_messages(row: dict, fmt: str, index: int, text_column: str = "text",
                 prompt_column: str = "prompt", completion_column: str = "completion",
                 messages_column: str = "messages") -> list[dict]:
    """One row of any format as a checked list of messages."""
    if fmt == "text":
        return parse_llama2_text(row[text_column], index)
    if fmt == "prompt_completion":
        prompt, completion = row[prompt_column], row[completion_column]
        for column, value in ((prompt_column, prompt), (completion_column, completion)):
            if not isinstance(value, str):
                raise InstructionDataError(f"row {index}: column {column!r} must hold text, "
                                           f"got {_show(value)}")
        if not prompt.strip():
            raise InstructionDataError(f"row {index}: empty prompt in column {prompt_column!r}")
        if not completion.strip():
            raise InstructionDataError(f"row {index}: empty completion in column {completion_column!r}")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    if fmt == "messages":
        return check_messages(row[messages_column], index)
    raise InstructionDataError(f"unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}")


def split_prompt_completion(messages: list[dict]) -> dict:
    """The conversation up to the last answer is the prompt; the last answer is the completion."""
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def trim_empty_trailing_turns(text):
    """(text without trailing turns whose question or answer is empty, turns removed).

    guanaco-llama2-1k has multi-turn rows ending in an empty `<s>[INST]  [/INST]` turn or a
    question with no answer: the conversation before that turn is complete, so removing the
    empty turn is an unambiguous repair. A first turn is never removed (nothing would remain).
    """
    if not isinstance(text, str):
        return text, 0
    removed = 0
    while True:
        turns = list(_TURN.finditer(text))
        if len(turns) < 2:
            return text, removed
        last = turns[-1]
        answer = text[last.end():].strip()
        for marker in ("<s>", "</s>"):
            if answer.endswith(marker):
                answer = answer[: -len(marker)].rstrip()
        if last.group(1).strip() and answer:
            return text, removed
        head = text[:last.start()].rstrip()
        if head.endswith("<s>"):
            head = head[:-3].rstrip()
        text, removed = head, removed + 1


def to_prompt_completion(table, fmt: str, skip_invalid: bool = False, ledger=None, split: str = "data",
                         **columns):
    """Convert a `datasets.Dataset` of any format to conversational prompt/completion.

    Returns (dataset with `prompt` and `completion` columns, skipped rows as (index, reason)).
    A malformed row raises `InstructionDataError`, or with `skip_invalid` is left out and listed.
    With a `nbutils.run.row_report.RowLedger` the malformed-row rule applies instead: `\r\n` line
    ends and empty trailing turns (text format) are repaired and counted, other malformed rows
    are dropped with their reason, and the caller checks the ledger's share.
    """
    from datasets import Dataset

    from nbutils.run.row_report import normalise_line_ends

    if ledger is not None:
        ledger.add_read(split, len(table))
    rows, skipped = [], []
    for index, row in enumerate(table):
        repairs = []
        if ledger is not None and fmt == "text":
            text, changed = normalise_line_ends(row[columns.get("text_column", "text")])
            if changed:
                repairs.append("\\r\\n line ends normalised to \\n")
            text, removed = trim_empty_trailing_turns(text)
            if removed:
                repairs.append("empty trailing turn removed")
            row = {**row, columns.get("text_column", "text"): text}
        try:
            rows.append(split_prompt_completion(row_messages(row, fmt, index, **columns)))
        except InstructionDataError as err:
            if ledger is not None:
                ledger.drop(split, index, _reason(str(err)))
                continue
            if not skip_invalid:
                raise InstructionDataError(f"{err} (pass skip_invalid, or a row_report.RowLedger as the notebook does, "
                                           "to leave such rows out)") from None
            skipped.append((index, str(err)))
            continue
        for what in repairs:
            ledger.repair(split, index, what)
    if not rows:
        raise InstructionDataError("no valid rows left: " + (skipped[0][1] if skipped else "the data is empty"))
    return Dataset.from_list(rows), skipped


def _reason(message: str) -> str:
    """The kind of fault in an `InstructionDataError` message, without the row number and the
    quoted text, so that rows with the same fault share one reason in the ledger."""
    reason = re.sub(r"^row \d+: ", "", message)
    reason = reason.split(": '")[0].split(': "')[0]
    return re.sub(r"\s+got .*$", "", reason).strip()


def set_chat_template(tokenizer, chat_template: str, param: str = "chat_template") -> str:
    """Give the tokenizer the chat template that turns conversations into tokens.

    `chat_template` is a built-in name (`llama2`), a `.jinja`/`.j2` file, or empty to keep the
    tokenizer's own (an error if it has none, as base models and the tiny test models do).
    Returns a short description of the template used.
    """
    if not chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"{param}='' keeps the tokenizer's own chat template, but this tokenizer "
                             f"has none; set {param} to one of {', '.join(CHAT_TEMPLATES)} or a .jinja file")
        return "the tokenizer's own"
    if chat_template in CHAT_TEMPLATES:
        tokenizer.chat_template = CHAT_TEMPLATES[chat_template]
        return chat_template
    path = Path(chat_template).expanduser()
    if path.suffix in (".jinja", ".j2"):
        if not path.is_file():
            raise FileNotFoundError(f"{param}: chat template file not found: {path.resolve()}")
        tokenizer.chat_template = path.read_text()
        return str(path)
    raise ValueError(f"{param} must be empty (the tokenizer's own), one of "
                     f"{', '.join(CHAT_TEMPLATES)}, or a .jinja file; got {chat_template!r}")
