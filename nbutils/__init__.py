"""Shared package of the LLM fine-tuning notebook collection: what the notebooks import, nothing else.

The notebooks reach it through one name, `import nbutils as nb`, then `nb.data.load_splits(...)`,
`nb.layers.freeze_to(...)`; a project's own helpers come from `nbutils.tasks`. Nothing heavy is
imported here, so `import nbutils` is instant: a module is imported the first time it is used,
and imports torch/transformers only where it needs them. The harness that runs, tests and
packages the notebooks lives outside the package, in the repository's `tools/` and `tests/`.

The recipe: what the notebooks teach (`nbutils.<module>`)
    baselines                              classic baselines beside every transformer (TF-IDF + logistic regression, LEAD-3)
    batching                               padding per batch, length-grouped resumable order, packing for SFT, token counts
    data                                   loading tables and splits (hub, file, Kaggle input), checking columns and labels
    layers                                 layer groups, freeze / freeze_to / unfreeze (fastai's names)
    lora                                   LoRA and QLoRA settings, target-module checks, merging an adapter
    metrics                                task metrics from probabilities: classification, threshold choice, ROUGE
    optim                                  discriminative learning rates: one optimizer group per layer group
    plots                                  loss curves, confusion matrix, ROC and the other plots a run leaves
    regularization                         early stopping and a dropout override
    tokenizer_coverage                     can the tokenizer write the targets? the check and the fix
    unfreezing                             gradual unfreezing (ULMFiT) as a Trainer callback

Run plumbing: set-up, parameters, the run folder and its record (`nbutils.run.<module>`)
    run.setup                              a notebook's set-up in one call, and the shared TrainingArguments keywords
    run.params                             notebook parameters: declared in the parameters cell, checked
    run.environment                        where a notebook runs (Kaggle, Colab, local), run folders, missing inputs
    run.runtime                            hardware, training precision, device placement
    run.secrets                            tokens from the environment or Kaggle/Colab secrets, never printed
    run.checkpoints                        checkpoint schedule, and the last complete checkpoint to resume from
    run.record                             the run record (metrics.json): schema, parameter counts, split hashes
    run.row_report                         one rule for malformed rows, and the data report
    run.quiet                              known log noise filtered where it is logged; plain progress lines headless
    run.model_card                         model cards and Hub uploads of the saved folders
    run.callbacks                          Trainer callbacks: stop on a NaN or infinite training loss

Several processes: launching them, the strategy, memory per process (`nbutils.parallel.<module>`)
    parallel.launch                        several training processes from inside a notebook (accelerate)
    parallel.distributed                   ddp or fsdp: FSDP2 arguments, block units, bytes per process, consolidated saves
    parallel.memory                        memory per process before loading: weights, gradients, optimizer state

The sandbox that runs generated code, contained by the operating system (`nbutils.sandbox.<module>`)
    sandbox.code_exec                      the sandbox's worker pool and the evaluator
    sandbox.result_compare                 comparing a result with the reference
    sandbox.allowlist                      the sandbox's static allowlist
    sandbox.jail                           the sandbox's operating-system layers

Remedies: optional techniques a recipe turns on with a parameter (`nbutils.remedies.<module>`)
    remedies.augment                       text augmentation without downloads: word deletion, swaps, sentence shuffling
    remedies.balance                       class imbalance: resampling or class weights
    remedies.cv                            k-fold cross-validation, stratified, grouped by a column
    remedies.domain                        holding out a domain for an out-of-domain test
    remedies.group_metrics                 metrics per group (prompt, source)
    remedies.search                        hyperparameter search with Optuna, and its expected cost
    remedies.sources                       extra training sources, checked for overlap with the held-out rows

Tasks: one home per project, the helpers only its notebook needs (`nbutils.tasks.<module>`)
    tasks.detection                        detect_ai_text: its run record
    tasks.ensemble                         detect_ensemble: combining detection runs, stacking
    tasks.summarization                    summarize_dialogues: prompts, targets, lengths, generation
    tasks.instruction_tuning.causal_lm     instruction_tune: labels, stop tokens, held-out loss, generation
    tasks.instruction_tuning.instructions  instruction_tune: three data formats to one, chat templates
    tasks.strategies.forgetting            finetuning_strategies: masked-LM loss on general text
    tasks.strategies.study                 finetuning_strategies: the strategies, their runs, the conclusion
    tasks.text_to_pandas.table_context     text_to_pandas: the tables an example runs against
    tasks.text_to_pandas.text_to_code      text_to_pandas: input format, overlap check, text metrics
"""

import importlib

__version__ = "0.1.0"

# The recipe modules and the subpackages; tests/test_public_api.py checks this list against the tree.
__all__ = [
    "baselines", "batching", "data", "layers", "lora", "metrics", "optim", "plots", "regularization",
    "tokenizer_coverage", "unfreezing",
    "run", "parallel", "sandbox", "remedies", "tasks",
]


def __getattr__(name: str):
    # PEP 562: `nbutils.data` imports the module on first use, so `import nbutils` stays instant.
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
