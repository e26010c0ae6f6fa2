"""Model cards and Hub uploads for the folders a run saves, the Hugging Face way.

Every saved model or adapter folder gets a `README.md`: YAML metadata with a `model-index`
(the task, the data the run read, and the evaluation results the record names in
`metrics.measured_on`, each with the split it was measured on), the base model, the library, then a short
text with the training parameters and library versions. It is built from the run record
(`metrics.json`) with `huggingface_hub`'s `ModelCard`, `ModelCardData` and `EvalResult`, so the
Hub reads it as it reads any card it renders.

    card_path = model_card.write_card(run_dir / "model", run_record, library_name="transformers")
    model_card.publish(run_dir / "model", push_to_hub, hub_repo_id, hub_private, hf_token)

`publish` uploads the folder with `HfApi.upload_folder` only when asked (`push_to_hub`), to a
private repository unless told otherwise; the token comes from the secret stores
(`nbutils.run.secrets`) and is never printed.
"""

from __future__ import annotations

from pathlib import Path

CARD_FILE = "README.md"

# The run record's task -> the Hub's pipeline tag and task type.
PIPELINE_TAGS = {
    "ai-text-detection": "text-classification",
    "instruction-tuning": "text-generation",
    "dialogue-summarization": "summarization",
    "text-to-pandas": "text2text-generation",
}
TASK_NAMES = {
    "ai-text-detection": "AI-generated text detection",
    "instruction-tuning": "Instruction tuning",
    "dialogue-summarization": "Dialogue summarization",
    "text-to-pandas": "Question and table schema to pandas code",
}
# Record parameters worth showing in the card's training section (those the record has).
TRAINING_KEYS = ("epochs", "learning_rate", "lr_scheduler", "warmup_ratio", "weight_decay", "batch_size",
                 "gradient_accumulation_steps", "max_length", "max_source_length", "max_target_length",
                 "precision", "seed", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
                 "load_in_4bit", "freeze_to", "gradual_unfreezing", "discriminative_lr")


def _is_hub_id(source: str) -> bool:
    """`owner/name` that is not a local path: the Hub's data set or model id form."""
    parts = source.split("/")
    return (len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))
            and not Path(source).exists())


def dataset_name(record: dict) -> str:
    """The data the run read, as the card names it: the hub id, else the path as the run was given
    it (a smoke run's `.cache/sample-data/samsum` is made-up sample data, and its card must not
    read "samsum" as if it were the corpus)."""
    return str((record.get("data") or {}).get("source") or "unknown")


def measured_results(record: dict) -> list[tuple[str, float, str, dict | None]]:
    """(metric, value, split, interval) for each evaluation result the record names in
    `metrics.measured_on`, and only those: a decision threshold, a count of scored rows or a
    token count is no result, and a metric on a slice of train is no test result."""
    from nbutils.run.record import INTERVALS, MEASURED_ON

    metrics = record.get("metrics") or {}
    intervals = metrics.get(INTERVALS) or {}
    return [(name, float(metrics[name]), split, intervals.get(name))
            for name, split in (metrics.get(MEASURED_ON) or {}).items()
            if isinstance(metrics.get(name), (int, float)) and not isinstance(metrics.get(name), bool)]


def eval_results(record: dict) -> list:
    """One EvalResult per evaluation result (`measured_results`), with its split."""
    from huggingface_hub import EvalResult

    task = record.get("task", "")
    name = dataset_name(record)
    return [EvalResult(task_type=PIPELINE_TAGS.get(task, task or "other"), task_name=TASK_NAMES.get(task, task),
                       dataset_type=name, dataset_name=name, dataset_split=split,
                       metric_type=metric, metric_name=metric, metric_value=value)
            for metric, value, split, _ in measured_results(record)]


def build_card(record: dict, library_name: str = "transformers", base_model: str | None = None):
    """A `huggingface_hub.ModelCard` for the model trained in the run `record` describes."""
    from huggingface_hub import ModelCard, ModelCardData

    base = base_model or record.get("model")
    hub_base = base if base and _is_hub_id(base) else None  # a local tiny model is no Hub id
    task = record.get("task", "")
    data = record.get("data") or {}
    name = (record.get("project") or "model").replace("/", "-")
    card_data = ModelCardData(
        model_name=name, base_model=hub_base, library_name=library_name,
        pipeline_tag=PIPELINE_TAGS.get(task), license=None,
        datasets=[dataset_name(record)] if _is_hub_id(dataset_name(record)) else None,
        tags=[t for t in ("llm-notebooks", task, "peft" if library_name == "peft" else None) if t],
        eval_results=eval_results(record) or None,
    )
    config = record.get("config") or {}
    training = {k: config[k] for k in TRAINING_KEYS if k in config}
    versions = record.get("versions") or {}
    results = measured_results(record)
    level = next((interval["level"] for *_, interval in results if interval), None)
    baselines = record.get("baselines") or {}
    lines = [
        "---", card_data.to_yaml(), "---", "",
        f"# {name}", "",
        f"{TASK_NAMES.get(task, task)}: `{base}` fine-tuned by the `{record.get('project')}` notebook "
        f"of the llm-notebooks collection (profile `{record.get('profile')}`).", "",
        "## Data", "",
        f"- source: `{data.get('source')}`"
        + (f" (fingerprint `{data['fingerprint']}`)" if data.get("fingerprint") else ""),
        f"- rows: train {data.get('train')}, validation {data.get('validation')}, test {data.get('test')}", "",
        "## Results", "",
        "| metric | value | " + (f"{level:.0%} bootstrap interval |" if level else "interval |")
        + " measured on |", "|---|---|---|---|",
        *[f"| {k} | {v:.4f} | " + (f"{i['low']:.4f} to {i['high']:.4f}" if i else "-") + f" | {split} |"
          for k, v, split, i in results], "",
    ]
    published = {name for name, *_ in results}  # each baseline's same results, not its counts
    shown = {b: [f"{k} {m[k]:.4f}" for k in m if k in published and isinstance(m[k], (int, float))]
             for b, m in baselines.items()}
    if any(shown.values()):
        lines += ["Baselines on the same rows: " + "; ".join(f"{b}: " + ", ".join(v) for b, v in shown.items() if v), ""]
    lines += ["## Training", "", "| parameter | value |", "|---|---|",
              *[f"| {k} | {v} |" for k, v in training.items()], ""]
    if record.get("train"):
        train = record["train"]
        lines += [f"Training took {train.get('runtime_s')} s ({train.get('samples_per_s')} samples/s, "
                  f"{train.get('processes', 1)} process(es)); seed {record.get('seed')}.", ""]
    if record.get("parameters"):
        lines += [f"Trainable parameters: {record['parameters'].get('trainable'):,} of "
                  f"{record['parameters'].get('total'):,}.", ""]
    lines += ["## Library versions", "", *[f"- {k} {v}" for k, v in versions.items() if v], ""]
    git = record.get("git") or {}
    if git.get("commit"):
        lines += [f"Code: commit `{git['commit']}`" + (" (with uncommitted changes)" if git.get("dirty") else "")
                  + ".", ""]
    return ModelCard("\n".join(lines))


def write_card(folder: str | Path, record: dict, library_name: str = "transformers",
               base_model: str | None = None) -> Path:
    """Write `README.md` (the model card) into the saved model or adapter `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no saved model folder {folder} to write a model card into")
    path = folder / CARD_FILE
    build_card(record, library_name, base_model).save(path)
    return path


def push_folder(folder: str | Path, repo_id: str, token: str | None, private: bool = True, api=None) -> str:
    """Upload `folder` to the Hub model repository `repo_id` (created private by default)."""
    from huggingface_hub import HfApi

    api = api or HfApi()
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True, token=token)
    commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder), token=token,
                               commit_message="Upload from the llm-notebooks collection")
    return str(getattr(commit, "commit_url", commit))


def publish(folder: str | Path, push_to_hub: bool, repo_id: str, private: bool, token: str | None,
            api=None) -> str | None:
    """The notebooks' publishing step: nothing unless `push_to_hub`; then the folder is uploaded
    to `repo_id` (private unless `private` is false) with the token from the secret stores."""
    if not push_to_hub:
        print(f"model card written to {Path(folder) / CARD_FILE}; not uploaded (push_to_hub is off)")
        return None
    if not repo_id or "/" not in repo_id:
        raise ValueError(f"push_to_hub needs hub_repo_id as 'owner/name', got {repo_id!r}")
    if not token:
        raise ValueError("push_to_hub needs a Hugging Face token with write access: set HF_TOKEN in the "
                         "environment or in Kaggle's or Colab's secrets (it is never printed)")
    url = push_folder(folder, repo_id, token, private, api)
    print(f"uploaded {folder} to {repo_id} ({'private' if private else 'public'}): {url}")
    return url


def publish_run(run, folders: dict, upload: str | Path) -> str | None:
    """The notebooks' model-card cell: a card in each saved folder that exists (`folders`:
    folder -> its library, "transformers" or "peft"), from the run's record on disk, then
    `upload` pushed to the Hub where the parameters ask for it (`publish`). The main process
    writes; the others return None."""
    from nbutils.run.record import read_record

    if not run.is_main:
        return None
    record = read_record(run.dir)
    for folder, library in folders.items():
        if Path(folder).is_dir():
            print("model card:", write_card(folder, record, library_name=library))
    config = run.config
    return publish(upload, config.get("push_to_hub", False), config.get("hub_repo_id", ""),
                   config.get("hub_private", True), run.token)
