"""Shared package of the LLM fine-tuning notebook collection, in three tiers.

The notebooks reach it through one name, `import nbutils as nb`, then `nb.data.load_table(...)`,
`nb.remedies.cv.cross_validate(...)`; a project's own helpers are imported from `nbutils.tasks`.
Nothing heavy is imported here, so `import nbutils` is instant: a module is imported the first
time it is used, and imports torch/transformers only where it needs them.

The library: what the notebooks teach (`nbutils.<module>`)
    baselines          classic baselines beside every transformer (TF-IDF + logistic regression, LEAD-3)
    batching           padding per batch, length-grouped resumable order, packing for SFT, token counts
    callbacks          Trainer callbacks: stop on a NaN or infinite training loss
    checkpoints        checkpoint schedule, and the last complete checkpoint to resume from
    data               loading tables and splits (hub, file, Kaggle input), checking columns and labels
    distributed        ddp or fsdp: FSDP2 arguments, block units, bytes per process, consolidated saves
    environment        where a notebook runs (Kaggle, Colab, local), run folders, missing inputs
    launch             several training processes from inside a notebook (accelerate)
    layers             layer groups, freeze / freeze_to / unfreeze (fastai's names)
    lora               LoRA and QLoRA settings, target-module checks, merging an adapter
    memory             memory per process before loading: weights, gradients, optimizer state
    metrics            task metrics from probabilities: classification, threshold choice, ROUGE
    model_card         model cards and Hub uploads of the saved folders
    optim              discriminative learning rates: one optimizer group per layer group
    params             notebook parameters: declared in the parameters cell, checked
    plots              loss curves, confusion matrix, ROC and the other plots a run leaves
    quiet              known log noise filtered where it is logged; plain progress lines headless
    record             the run record (metrics.json): schema, parameter counts, split hashes
    regularization     early stopping and a dropout override
    row_report         one rule for malformed rows, and the data report
    runtime            hardware, training precision, device placement
    secrets            tokens from the environment or Kaggle/Colab secrets, never printed
    setup              a notebook's set-up in one call, and the shared TrainingArguments keywords
    tokenizer_coverage can the tokenizer write the targets? the check and the fix
    unfreezing         gradual unfreezing (ULMFiT) as a Trainer callback

Remedies: optional techniques a recipe turns on with a parameter (`nbutils.remedies.<module>`)
    remedies.augment        text augmentation without downloads: word deletion, swaps, sentence shuffling
    remedies.balance        class imbalance: resampling or class weights
    remedies.cv             k-fold cross-validation, stratified, grouped by a column
    remedies.domain         holding out a domain for an out-of-domain test
    remedies.group_metrics  metrics per group (prompt, source)
    remedies.search         hyperparameter search with Optuna, and its expected cost
    remedies.sources        extra training sources, checked for overlap with the held-out rows

Tasks: one home per project, the helpers only its notebook needs (`nbutils.tasks.<module>`)
    tasks.ensemble                          detect_ensemble: combining detection runs, stacking
    tasks.summarization                     summarize_dialogues: prompts, targets, lengths, generation
    tasks.instruction_tuning.causal_lm      instruction_tune: labels, stop tokens, held-out loss, generation
    tasks.instruction_tuning.instructions   instruction_tune: three data formats to one, chat templates
    tasks.strategies.forgetting             finetuning_strategies: masked-LM loss on general text
    tasks.strategies.study                  finetuning_strategies: the strategies, their runs, the conclusion
    tasks.text_to_pandas.code_exec          text_to_pandas: the sandbox's worker pool and the evaluator
    tasks.text_to_pandas.result_compare     text_to_pandas: comparing a result with the reference
    tasks.text_to_pandas.sandbox_allowlist  text_to_pandas: the sandbox's static allowlist
    tasks.text_to_pandas.sandbox_jail       text_to_pandas: the sandbox's operating-system layers
    tasks.text_to_pandas.table_context      text_to_pandas: the tables an example runs against
    tasks.text_to_pandas.text_to_code       text_to_pandas: input format, overlap check, text metrics

The harness: runs, tests and packages the collection; no notebook imports it, and the wheel
leaves it out (`nbutils.harness.<module>`, not in `__all__`)
    harness.bench                  `make bench`: the batching against the original recipe
    harness.bench_distributed      `make bench-distributed`: bytes per process, DDP vs FSDP
    harness.bench_sandbox          `make bench-sandbox`: the text-to-pandas sandbox's speed
    harness.compare_records        two output folders' run records compared, timings left out
    harness.fixtures               builds the smoke inputs (sample data, tiny models) in .cache/
    harness.kaggle                 `make kaggle`: kernel folders and the wheels dataset
    harness.lab                    `make lab`: a project's notebook prepared for JupyterLab
    harness.repository             `make set-repository`: Colab's repository into the notebooks and README
    harness.runner                 `make run`, `make run-all`: papermill runs and the summary table
    harness.tiny_models            tiny random models with locally trained tokenizers
    harness.tiny_pretraining       a tiny BERT briefly pre-trained, for the forgetting smoke run
    harness.warm_kernels           headless kernels forked from a server that imported torch already
    harness.samples.detection      sample essays in the DAIGT v2 schema
    harness.samples.dialogues      sample dialogues in the SAMSum schema
    harness.samples.general_text   sample general text in wikitext's schema
    harness.samples.instructions   sample instructions in the guanaco-llama2-1k schema and as messages
    harness.samples.jsonl          the sample makers' JSON-lines writer
    harness.samples.text2pandas    sample questions over small tables, in the text2pandas schema
"""

import importlib

__version__ = "0.1.0"

# The library modules and the two subpackages a notebook may use; the harness is left out
# (it is not in the wheel). tests/test_public_api.py checks this list against the tree.
__all__ = [
    "baselines", "batching", "callbacks", "checkpoints", "data", "distributed", "environment",
    "launch", "layers", "lora", "memory", "metrics", "model_card", "optim", "params", "plots",
    "quiet", "record", "regularization", "row_report", "runtime", "secrets", "setup",
    "tokenizer_coverage", "unfreezing",
    "remedies", "tasks",
]


def __getattr__(name: str):
    # PEP 562: `nbutils.data` imports the module on first use, so `import nbutils` stays instant.
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
