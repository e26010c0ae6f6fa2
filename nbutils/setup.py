"""A notebook's set-up in one call, and the Trainer settings that are infrastructure, not recipe.

Every training notebook began with the same lines: seed, find out where it runs (Kaggle, Colab,
local), stop on a missing local input before making any folder, make the run folder, choose the
precision this hardware and model allow, read the hub token, print one line saying all that.
`start` does them, in that order, and returns a `Run`:

    run = setup.start(project, output_dir, seed=seed, precision=precision,
                      inputs=dict(data_source=data_source, model_name=model_name))
    run.dir, run.env, run.precision, run.token, run.compute_dtype

`training_arguments` returns the TrainingArguments keywords every notebook sets the same way
(checkpoint schedule and retention, the NaN filter `StopOnNonFiniteLoss` needs off, length
grouping, pinned memory, reporting, precision, seed), merged with the keywords given, which
win: the notebook writes only its recipe (learning rate, epochs, batch sizes, ...), and a
strategy that adds its own settings (several processes, a sharded model) passes them on:

    TrainingArguments(**setup.training_arguments(
        run, save_every_steps=save_every_steps, best_metric="roc_auc", report_to=report_to,
        learning_rate=learning_rate, num_train_epochs=epochs, ...))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nbutils import checkpoints, environment, runtime, secrets

CHECKPOINTS = "checkpoints"  # the run folder's subfolder the Trainer checkpoints into


@dataclass(frozen=True)
class Run:
    """Where a run writes and what it runs on. The token is left out of `repr`: never printed."""

    project: str
    dir: Path  # the run folder (on Kaggle under /kaggle/working), created by `start`
    env: environment.Environment
    precision: dict = field(default_factory=dict)  # Trainer flags {"bf16": ..., "fp16": ...}; {}: none chosen
    seed: int | None = None
    token: str | None = field(default=None, repr=False)  # the hub token, passed on, never shown
    token_name: str | None = "HF_TOKEN"  # the secret `token` was read from (None: none read)

    @property
    def compute_dtype(self):
        """The torch dtype of the chosen precision: 16-bit weights load in it, 4-bit layers compute in it."""
        return runtime.compute_dtype(self.precision)

    def resume_from(self, resume: bool = True, folder: str | Path = CHECKPOINTS) -> str | None:
        """The checkpoint `trainer.train(resume_from_checkpoint=...)` continues from (None: the
        start); prints what it decided (see `checkpoints.resume_checkpoint`)."""
        return checkpoints.resume_checkpoint(self.dir / folder, resume)

    def describe(self, **notes) -> str:
        """The environment line: where, on what, in which precision, whether a token is set."""
        parts = [f"environment: {self.env.describe()}"]
        if self.precision:
            parts += [f"device: {runtime.describe_device()}", f"precision: {self.precision}"]
        parts += [f"{name.replace('_', ' ')}: {value}" for name, value in notes.items()]
        if self.token_name:
            parts.append(f"hub token: {secrets.describe(self.token)}")
        parts.append(f"run folder: {self.dir}")
        return "; ".join(parts)


def start(project: str, output_dir: str, *, seed: int | None = None, precision: str | None = None,
          fp16_safe: bool | None = None, precision_model: str = "", trust_remote_code: bool = False,
          inputs: dict | None = None, cpu_threads: int = 0, token_name: str | None = "HF_TOKEN",
          notes: dict | None = None, show: bool = True) -> Run:
    """Set a notebook's run up and return it.

    - `seed`: seeds Python, NumPy and torch (`transformers.set_seed`); None leaves them alone.
    - `cpu_threads`: torch threads when there is no GPU (0: torch's default).
    - `inputs`: local inputs by parameter name (`data_source=...`); a missing one stops here,
      before the run folder exists, with how to run the notebook at small scale.
    - `precision`: "auto", "fp32", "bf16" or "fp16" -> `run.precision`, the Trainer flags. "auto"
      picks fp16 only where the model tolerates it: `fp16_safe` says so, or `precision_model`
      names a checkpoint whose config is read to decide (T5 and Qwen2 overflow in fp16).
      None: no precision (a notebook that trains nothing).
    - `token_name`: the secret read from the environment or the Kaggle/Colab store (None: none).
    - `notes`: more items for the printed environment line, e.g. {"activation checkpointing": True}.
    """
    if seed is not None:
        from transformers import set_seed

        set_seed(seed)
    if cpu_threads:
        import torch

        if not torch.cuda.is_available():
            torch.set_num_threads(cpu_threads)
    env = environment.detect()
    if inputs:
        environment.require_inputs(project, **inputs)
    run_dir = environment.run_folder(output_dir, env)
    run_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.get_secret(token_name) if token_name else None
    flags = {}
    if precision is not None:
        model_type = runtime.model_type_of(precision_model, token, trust_remote_code) if precision_model else None
        flags = runtime.training_precision(precision, fp16_safe=fp16_safe, model_type=model_type)
    run = Run(project=project, dir=run_dir, env=env, precision=flags, seed=seed, token=token,
              token_name=token_name)
    if show:
        print(run.describe(**(notes or {})))
    return run


def training_arguments(run: Run, *, save_every_steps: int = 0, evaluate: bool = True,
                       best_metric: str | None = None, report_to: str = "none",
                       length_grouping: bool = True, folder: str | Path = CHECKPOINTS, **recipe) -> dict:
    """TrainingArguments (or Seq2SeqTrainingArguments, SFTConfig) keywords: the shared
    infrastructure, then `recipe`, whose keywords win.

    - checkpoints into `run.dir / folder`, every epoch or every `save_every_steps` optimizer
      steps (`checkpoints.schedule`); with `evaluate`, evaluation follows the same schedule;
    - `best_metric`: the checkpoint with the best validation score of it is loaded at the end,
      and the best and the last are kept (a rerun of a finished run then resumes at its end and
      trains nothing); without one, only the last is kept;
    - `logging_nan_inf_filter=False`, so `callbacks.StopOnNonFiniteLoss` sees a NaN loss;
    - `length_grouping`: batches of examples of similar length (`batching.length_grouping`);
      False leaves the sampler to the recipe;
    - pinned memory where there is a GPU, `report_to`, the run's precision flags and seed.
    """
    import torch

    from nbutils import batching

    settings = {"output_dir": str(run.dir / folder),
                **checkpoints.schedule(save_every_steps, evaluate=evaluate),
                "logging_nan_inf_filter": False,  # let StopOnNonFiniteLoss see a NaN loss
                "report_to": report_to,
                "dataloader_pin_memory": torch.cuda.is_available(),
                **run.precision}
    if length_grouping:
        settings.update(batching.length_grouping())  # little padding: similar lengths per batch
    if run.seed is not None:
        settings["seed"] = run.seed
    if best_metric:
        settings.update(save_total_limit=2, load_best_model_at_end=True, metric_for_best_model=best_metric)
    else:
        settings["save_total_limit"] = 1
    return {**settings, **recipe}
