"""One home per project: the helpers only one notebook needs.

`ensemble` (detect_ensemble), `summarization` (summarize_dialogues), `strategies`
(finetuning_strategies: the study and its forgetting probe), `instruction_tuning`
(instruction_tune), `text_to_pandas` (text_to_pandas, with its sandbox). What two projects
share belongs in the library (`nbutils`), not here.
"""
