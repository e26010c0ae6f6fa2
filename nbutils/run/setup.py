"""A notebook's set-up in one call, and the Trainer settings that are infrastructure, not recipe.

Every training notebook began with the same lines: seed, find out where it runs (Kaggle, Colab,
local), stop on a missing local input before making any folder, make the run folder, choose the
precision this hardware and model allow, read the hub token, print one line saying all that.
`start` does them, in that order, and returns a `Run`:

    run = setup.start(project, output_dir, config, seed=seed, precision=precision,
                      inputs=dict(data_source=data_source, model_name=model_name))
    run.dir, run.env, run.precision, run.token, run.compute_dtype
    ...
    run.finish()   # the notebook's last cell: the finished run replaces the earlier one

A run works in its own folder, `<output_dir>.incomplete` (`run.dir`), and `finish` moves it
into `output_dir` (`run.final`) whole, once its record is written. So `output_dir` always holds
one complete run: a failed or killed run leaves the earlier one as it was, beside a clearly
named incomplete one. The checkpoints there carry what trained them (`checkpoints.TRAINING_FILE`):
a rerun with the same parameters resumes them (a finished run: nothing is trained, and the
record says so); a run with other values trains afresh, and the earlier run stays whole until
it is replaced.

`run.training_arguments(TrainingArguments, model, **recipe)` builds the arguments from the
recipe the notebook writes out (learning rate, schedule, epochs, batches, evaluation and save
strategy, which checkpoint is kept) and adds what is not recipe (`infrastructure`: checkpoint
folder and retention, the NaN filter `StopOnNonFiniteLoss` needs off, pinned memory, reporting,
precision, seed, and with several processes the strategy's keywords).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from nbutils.run import checkpoints, environment, runtime, secrets

CHECKPOINTS = "checkpoints"  # the run folder's subfolder the Trainer checkpoints into
# What a run keeps to be continued: checkpoints, the strategies study's finished runs and a
# hyperparameter search's study database. A rerun with the same parameters starts from them.
RESUME_STATE = (CHECKPOINTS, "runs", "hpo.sqlite3")
INCOMPLETE = ".incomplete"  # suffix of the folder a run works in until it finishes


def attempt_folder(final: str | Path) -> Path:
    """The folder a run of `final` works in until it finishes (`Run.finish`)."""
    final = Path(final)
    return final.with_name(final.name + INCOMPLETE)


@dataclass(frozen=True)
class Run:
    """Where a run writes and what it runs on. The token is left out of `repr`: never printed."""

    project: str
    dir: Path  # the folder this run works in (`<final>.incomplete`), created by `start`
    env: environment.Environment
    precision: dict = field(default_factory=dict)  # Trainer flags {"bf16": ..., "fp16": ...}; {}: none chosen
    seed: int | None = None
    token: str | None = field(default=None, repr=False)  # the hub token, passed on, never shown
    token_name: str | None = "HF_TOKEN"  # the secret `token` was read from (None: none read)
    final: Path | None = None  # the run folder (`output_dir`) that `finish` publishes `dir` as
    # What the run found and did: "previous_train" (the training figures of the finished run
    # whose checkpoints this one continues), "resumed" {folder: finished steps or 0}.
    state: dict = field(default_factory=dict, repr=False, compare=False)
    config: dict = field(default_factory=dict, repr=False, compare=False)  # the checked parameters

    @property
    def launched(self) -> dict | None:
        """The run record of the processes this kernel launched (`num_processes` > 1); None where
        this kernel runs the notebook itself."""
        return self.state.get("launched")

    @property
    def is_main(self) -> bool:
        """True in the process that writes files (every process of a single-process run)."""
        return runtime.is_main_process()

    @property
    def strategy(self) -> str:
        """"ddp" or "fsdp": how several training processes share the model (`distributed`)."""
        return str(self.config.get("distributed", "ddp"))

    @property
    def quant_storage(self):
        """The dtype 4-bit weights are packed into (`lora.bnb_4bit_config`): where the parameters
        ask for fsdp, the compute dtype, so FSDP can shard them like every other weight; else
        None (bitsandbytes' uint8)."""
        return self.compute_dtype if self.strategy == "fsdp" else None

    @property
    def processes(self) -> int:
        """Training processes of this run: `num_processes`, or those a launcher started."""
        return max(int(self.config.get("num_processes", 1) or 1), runtime.processes())

    @property
    def compute_dtype(self):
        """The torch dtype of the chosen precision: 16-bit weights load in it, 4-bit layers compute in it."""
        return runtime.compute_dtype(self.precision)

    @property
    def trained_nothing(self) -> bool:
        """Did every `trainer.train` of this run continue a finished checkpoint (no step taken)?"""
        resumed = self.state.get("resumed", {})
        return bool(resumed) and all(resumed.values())

    def resume_from(self, resume: bool = True, folder: str | Path = CHECKPOINTS) -> str | None:
        """The checkpoint `trainer.train(resume_from_checkpoint=...)` continues from (None: the
        start); prints what it decided (see `checkpoints.resume_checkpoint`). Every process
        calls it; each reads the same folder."""
        _wait_for_everyone()  # the main process has made the folder (`start`)
        checkpoint = checkpoints.resume_checkpoint(self.dir / folder, resume)
        self.state.setdefault("resumed", {})[str(folder)] = checkpoints.finished_steps(checkpoint)
        return checkpoint

    def training_arguments(self, arguments_class, model=None, *, folder: str | Path = CHECKPOINTS, **recipe):
        """`arguments_class(...)`: TrainingArguments (or Seq2SeqTrainingArguments, SFTConfig) of
        the recipe as the notebook writes it, with what is not recipe added (`infrastructure`:
        checkpoint retention, NaN filter, pinned memory, reporting, precision, seed, and the
        strategy's keywords given the `model`). `folder`: where the checkpoints go, under the
        run folder (a notebook that trains several models gives each its own)."""
        return arguments_class(**{**recipe, **infrastructure(self, model, recipe, folder)})

    def estimate_memory(self, task: str, **recipe) -> dict:
        """What training will hold per process, from the model's config alone, before any weight
        is loaded (`nbutils.parallel.memory`), for this run's model, precision, processes and
        strategy; printed once. `recipe`: LoRA, 4-bit, batch size, sequence length, ..."""
        from nbutils.parallel import memory

        estimate = memory.estimate_training_memory(
            self.config["model_name"], task, precision=memory.precision_of(self.precision),
            distributed=self.strategy, processes=self.processes,
            trust_remote_code=bool(self.config.get("trust_remote_code", False)), token=self.token, **recipe)
        if self.is_main:
            print(memory.describe(estimate))
        return estimate

    def save_model(self, trainer, folder: str | Path, *also) -> Path | None:
        """The trained model (or adapter) and its tokenizer into `folder`, in safetensors, written
        once: a model sharded across processes is gathered first. `also`: more objects saved
        beside it with their `save_pretrained` (a generation config). Every process calls it."""
        from nbutils.parallel import distributed

        saved = distributed.save_model(trainer, folder)
        if self.is_main:
            for thing in also:
                thing.save_pretrained(folder)
        return saved

    def save_pretrained(self, model, folder: str | Path, tokenizer=None, **options) -> Path | None:
        """`model.save_pretrained(folder, **options)` (and the tokenizer's), written once, a sharded
        model gathered first. Every process calls it."""
        from nbutils.parallel import distributed

        return distributed.save_pretrained(model, folder, tokenizer, **options)

    def save_table(self, table, name: str, **options) -> Path:
        """A pandas table as `name` (CSV) in the run folder, written once."""
        path = self.dir / name
        if self.is_main:
            table.to_csv(path, **{"index": False, **options})
        return path

    def describe(self, **notes) -> str:
        """The environment line: where, on what, in which precision, whether a token is set."""
        parts = [f"environment: {self.env.describe()}"]
        if self.precision:
            parts += [f"device: {runtime.describe_device()}", f"precision: {self.precision}"]
        parts += [f"{name.replace('_', ' ')}: {value}" for name, value in notes.items()]
        if self.token_name:
            parts.append(f"hub token: {secrets.describe(self.token)}")
        parts.append(f"run folder: {self.final or self.dir}")
        return "; ".join(parts)

    def finish(self) -> Path:
        """Publish the run: its folder replaces `final` whole (the notebook's last cell).

        Only a run that wrote its record is published. Every process calls it; the main one
        moves the folders once all have arrived.
        """
        from nbutils.run.record import RECORD_FILE

        final = self.final or self.dir
        _wait_for_everyone()
        if runtime.is_main_process() and self.dir != final:
            if not (self.dir / RECORD_FILE).is_file():
                raise RuntimeError(f"{self.dir} has no {RECORD_FILE}: a run without its record is not published")
            replaced = final.with_name(final.name + ".replaced")
            shutil.rmtree(replaced, ignore_errors=True)
            if final.exists():
                final.rename(replaced)
            self.dir.rename(final)
            shutil.rmtree(replaced, ignore_errors=True)
            print(f"run finished: {final}")
        _wait_for_everyone()
        return final


def _wait_for_everyone() -> None:
    """A barrier in a run of several processes (every process calls the same ones, in order)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _carry_over(source: Path, target: Path) -> None:
    """Bring a finished run's resume state (`RESUME_STATE`) into a new run's folder, the
    finished run left as it is. Folders as hard links, no bytes copied: the Trainer writes each
    checkpoint into a new folder and the study replaces its files whole (`record.write_json`),
    so no file of the finished run is written through a link. A database changes in place: copied."""
    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    for name in RESUME_STATE:
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name, copy_function=link)
        elif (source / name).is_file():
            shutil.copy2(source / name, target / name)


def prepare_folder(final: Path, identity: dict, resume: bool = True) -> tuple[Path, dict]:
    """Choose and make the folder a run works in, from what `final` and its incomplete
    folder hold; returns it and what it found (`Run.state`). Main process only.

    - an incomplete run with this identity is continued (resume = False: emptied first);
    - one with another identity is kept, renamed `<final>.incomplete-<its hash>`, and this
      run starts afresh;
    - a finished run in `final` with this identity: its resume state is carried into the new
      folder (`_carry_over`), so the Trainer finds its checkpoints finished and trains nothing;
    - `final` with another identity (or none) is left whole until `finish` replaces it.
    """
    work = attempt_folder(final)
    state: dict = {}
    stored = checkpoints.read_identity(work)
    if work.exists() and stored != identity and not any((work / n).exists() for n in RESUME_STATE):
        shutil.rmtree(work)  # a failed attempt that trained nothing: nothing there to keep
    elif work.exists() and stored != identity:
        kept = work.with_name(f"{work.name}-{_digest(stored) if stored else 'unknown'}")
        shutil.rmtree(kept, ignore_errors=True)
        work.rename(kept)
        why = (checkpoints.describe_differences(checkpoints.differences(stored, identity)) if stored
               else f"no {checkpoints.TRAINING_FILE}")
        print(f"an unfinished run trained with other values ({why}) is kept in {kept}; this run starts afresh")
    elif work.exists() and not resume:
        shutil.rmtree(work)
    if not work.exists():
        work.mkdir(parents=True)
        finished = checkpoints.read_identity(final)
        decision = checkpoints.decide(finished, identity, any((final / n).exists() for n in RESUME_STATE), resume)
        if decision.action == "resume":
            _carry_over(final, work)
        elif final.exists() and decision.reason != "no checkpoint":
            print(f"{final} holds an earlier run; training afresh ({decision.reason}). "
                  f"It stays whole until this run finishes and replaces it.")
    if checkpoints.read_identity(final) == identity:
        # Where this run continues the finished one (carried over now, or by an earlier attempt
        # that failed before training), its record keeps that run's training figures.
        try:
            from nbutils.run.record import read_record

            state["previous_train"] = read_record(final).get("train")
        except (OSError, ValueError):
            pass
    checkpoints.write_identity(work, identity)
    return work, state


def _digest(identity: dict) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]


def check_publishing(config: dict, token: str | None, token_name: str | None) -> None:
    """Stop at set-up on a push to the hub that could only fail after training."""
    if not config.get("push_to_hub"):
        return
    if not config.get("hub_repo_id"):
        raise ValueError("push_to_hub is true but hub_repo_id is empty: name the repository to push to "
                         "(hub_repo_id: your-name/model-name), or set push_to_hub false")
    if not token:
        raise ValueError(f"push_to_hub is true but no hub token was found ({token_name or 'HF_TOKEN'} in the "
                         "environment or the Kaggle/Colab secrets): set it, or set push_to_hub false")


# A checkpoint of full fine-tuning holds the weights and AdamW's two moments, all fp32: at most
# three times the size of the model's weight files (LoRA's holds far less). Two are kept.
CHECKPOINT_BYTES_PER_WEIGHT_BYTE, CHECKPOINTS_KEPT = 3, 2


def check_disk(folder: Path, model_name: str, free_bytes: int | None = None) -> str | None:
    """A warning where the free space at `folder` is less than the checkpoints of a local model
    `model_name` could take (an upper bound: full fine-tuning); None where it fits or the model
    is not a local folder (a hub id's size is not known before it downloads)."""
    model = Path(model_name).expanduser() if model_name else None
    if model is None or not model.is_dir():
        return None
    weights = sum(p.stat().st_size for p in model.glob("*.safetensors")) or sum(
        p.stat().st_size for p in model.glob("*.bin"))
    needed = weights * CHECKPOINT_BYTES_PER_WEIGHT_BYTE * CHECKPOINTS_KEPT
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free if free_bytes is None else free_bytes
    if free >= needed:
        return None
    return (f"only {free / 1e9:.1f} GB free at {probe}, and {CHECKPOINTS_KEPT} checkpoints of {model} may take up "
            f"to {needed / 1e9:.1f} GB (full fine-tuning: weights and optimizer state; LoRA needs far less)")


def start(project: str, output_dir: str, config: dict | None = None, *, seed: int | None = None,
          precision: str | None = None, fp16_safe: bool | None = None, precision_model: str = "",
          trust_remote_code: bool = False, inputs: dict | None = None, cpu_threads: int = 0,
          token_name: str | None = "HF_TOKEN", notes: dict | None = None, show: bool = True) -> Run:
    """Set a notebook's run up and return it.

    - `config`: the notebook's checked parameters (`params.notebook_parameters`): they decide
      whether checkpoints in the run folder may be resumed (`checkpoints.training_identity`),
      and a push to the hub without a repository or a token stops here, before training.
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
    config = dict(config or {})
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
    token = secrets.get_secret(token_name) if token_name else None
    check_publishing(config, token, token_name)
    final = environment.run_folder(output_dir, env)
    warning = check_disk(final.parent, str(config.get("model_name", "")))
    if warning and runtime.is_main_process():
        print("WARNING:", warning)
    identity = checkpoints.training_identity(config)
    state: dict = {}
    if runtime.is_main_process():
        try:
            work, state = prepare_folder(final, identity, bool(config.get("resume", True)))
        except OSError as err:
            raise OSError(f"output_dir {output_dir!r}: cannot write the run folder {final.parent} ({err})") from err
    else:  # the main process makes the folder; the others write nothing
        work = attempt_folder(final)
    flags = {}
    if precision is not None:
        model_type = runtime.model_type_of(precision_model, token, trust_remote_code) if precision_model else None
        flags = runtime.training_precision(precision, fp16_safe=fp16_safe, model_type=model_type)
    run = Run(project=project, dir=work, env=env, precision=flags, seed=seed, token=token,
              token_name=token_name, final=final, state=state, config=config)
    if show:
        print(run.describe(**(notes or {})))
    return run


def start_notebook(namespace, *, inputs: tuple[str, ...] = (), trains: bool = True, fp16_safe: bool | None = None,
                   precision_from_model: bool = False, token_name: str | None = "HF_TOKEN",
                   notes: dict | None = None, notebook: str | None = None) -> Run:
    """The set-up cell's one call: `run = nb.run.start(globals(), inputs=("data_source", "model_name"))`.

    In order: check the parameters (`params.notebook_parameters`: a misspelt name or a wrong
    type stops here); quiet the known log noise (`quiet.install`); with `num_processes` > 1,
    start that many processes, each running this notebook, show their result and make this
    kernel's later cells no-ops (it must happen before this kernel imports torch's CUDA side:
    the processes are forks of it); otherwise `start`: seed, where the run is, the local
    `inputs` (parameter names) checked before any folder is made, the run folder, the precision
    (`precision_from_model`: decided from the checkpoint's config), the hub token.
    `trains=False`: a notebook that trains nothing (no seed, precision or token).
    """
    from nbutils.parallel import distributed, launch
    from nbutils.run import params, quiet

    config = params.notebook_parameters(namespace)
    quiet.install()
    if "distributed" in config:
        distributed.check_strategy(config["distributed"])  # before any process starts
    project = config["project"]
    processes = config.get("num_processes", 1)
    if launch.wanted(processes):
        record = launch.run_in_processes(notebook or project.split("/")[0], config, processes)
        final = environment.run_folder(config["output_dir"])
        return Run(project=project, dir=final, env=environment.detect(), final=final,
                   state={"launched": record}, config=config)
    run = start(project, config["output_dir"], config,
                seed=config.get("seed") if trains else None,
                precision=config.get("precision", "auto") if trains else None, fp16_safe=fp16_safe,
                precision_model=config["model_name"] if precision_from_model else "",
                trust_remote_code=bool(config.get("trust_remote_code", False)),
                inputs={name: config[name] for name in inputs}, cpu_threads=int(config.get("cpu_threads", 0)),
                token_name=token_name if trains else None, notes=notes)
    return run


def infrastructure(run: Run, model=None, recipe: dict | None = None, folder: str | Path = CHECKPOINTS) -> dict:
    """The TrainingArguments keywords that are not the recipe, the same in every notebook, for
    the `recipe` keywords a notebook writes (they decide retention, the schedule's form and the
    strategy's activation checkpointing). Where a key is in both, this one is applied last:

    - checkpoints into `run.dir / folder`; where the recipe keeps the best checkpoint
      (`load_best_model_at_end`), the best and the last are kept (a rerun of a finished run
      resumes at its end and trains nothing), else the last;
    - with the `save_every_steps` parameter (a session that may vanish), saving every that many
      optimizer steps instead of every epoch; where the recipe keeps the best checkpoint,
      evaluating on the same steps (each checkpoint needs its score), else the recipe's own
      evaluation schedule stays (an evaluation for the loss curves only); a recipe that saves
      nothing (`save_strategy="no"`: a cross-validation fold) stays so;
    - `logging_nan_inf_filter=False`, so `callbacks.StopOnNonFiniteLoss` sees a NaN loss;
      `logging_steps` and `report_to` from the parameters;
    - pinned memory where there is a GPU, the run's precision flags, and the run's seed unless
      the recipe gives its own (a study that trains each model once per seed);
    - given the `model`, the strategy's keywords for several processes
      (`distributed.training_arguments`: none for ddp; FSDP2's for fsdp, which takes over the
      recipe's `activation_checkpointing`).
    """
    import torch

    from nbutils.parallel import distributed

    recipe = recipe or {}
    config = run.config
    settings = {"output_dir": str(run.dir / folder),
                "save_total_limit": 2 if recipe.get("load_best_model_at_end") else 1,
                "logging_nan_inf_filter": False,  # let StopOnNonFiniteLoss see a NaN loss
                "report_to": config.get("report_to", "none"),
                "dataloader_pin_memory": torch.cuda.is_available(),
                **run.precision}
    if "logging_steps" in config:
        settings["logging_steps"] = config["logging_steps"]
    if run.seed is not None and "seed" not in recipe:
        settings["seed"] = run.seed
    if config.get("save_every_steps") and recipe.get("save_strategy") != "no":
        settings.update(checkpoints.schedule(config["save_every_steps"],
                                             evaluate=bool(recipe.get("load_best_model_at_end"))))
    if model is not None:
        settings.update(distributed.training_arguments(run.strategy, model,
                                                       bool(recipe.get("activation_checkpointing", False)),
                                                       processes=run.processes))
    return settings
