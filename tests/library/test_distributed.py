"""nbutils.parallel.distributed: strategies, FSDP's block units, the launch environment, what each
process holds; and the runner's options for several machines. (The multi-process runs are in
test_distributed_runs.py.)"""

import pytest
import torch

from nbutils.parallel import distributed
from nbutils.run import runtime
from tools import runner


@pytest.fixture(scope="module")
def tiny(cache):
    """Loaders of the fixtures' tiny models, by architecture."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()  # the new classification heads' load report

    def load(name):
        folder = cache / "tiny-models" / name
        if name == "llama":
            return AutoModelForCausalLM.from_pretrained(folder)
        if name == "t5":
            return AutoModelForSeq2SeqLM.from_pretrained(folder)
        return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)

    return load


@pytest.mark.parametrize("name, blocks", [
    ("llama", ["LlamaDecoderLayer"]),
    # not BertEmbeddings (which transformers' private _no_split_modules names): accelerate shards
    # the word embeddings on their own, and sharding them again inside BertEmbeddings fails
    ("bert", ["BertLayer"]),
    ("roberta", ["RobertaLayer"]),
    ("t5", ["T5Block"]),  # encoder and decoder blocks are one class
    ("deberta-v2", ["DebertaV2Layer"]),
    ("distilbert", ["TransformerBlock"]),
])
def test_block_classes_are_the_models_transformer_blocks(tiny, name, blocks):
    model = tiny(name)
    assert distributed.block_classes(model) == blocks
    present = {type(m).__name__ for m in model.modules()}
    assert set(blocks) <= present  # accelerate fails on a class the model lacks


def test_block_classes_look_inside_a_peft_model(tiny):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny("llama"), LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert distributed.block_classes(model) == ["LlamaDecoderLayer"]


def test_a_model_without_blocks_is_an_error_naming_the_parameter():
    with pytest.raises(ValueError, match=r"distributed='fsdp'.*Sequential.*ddp"):
        distributed.block_classes(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))


@pytest.mark.parametrize("bad", ["FSDP", "fdsp", "", "deepspeed", None])
def test_a_misspelt_strategy_names_the_parameter_and_the_choices(bad):
    with pytest.raises(ValueError, match=r"distributed must be one of 'ddp', 'fsdp'.*got"):
        distributed.check_strategy(bad)
    with pytest.raises(ValueError, match="distributed must be one of"):
        distributed.training_arguments(bad, None, processes=2)


def test_ddp_and_a_single_process_add_no_arguments(tiny):
    model = tiny("llama")
    assert distributed.training_arguments("ddp", model, processes=2) == {}  # today's behaviour
    # One process: nothing to shard, and the Trainer refuses FSDP outside a distributed run.
    assert distributed.training_arguments("fsdp", model, processes=1) == {}
    assert distributed.strategy_in_use("fsdp", processes=1) == "single"
    assert distributed.strategy_in_use("fsdp", processes=2) == "fsdp"


def test_fsdp_arguments_are_fsdp2_with_sharded_checkpoints_and_accepted_by_the_trainer(tiny, tmp_path):
    from transformers import TrainingArguments

    model = tiny("llama")
    kwargs = distributed.training_arguments("fsdp", model, activation_checkpointing=True, processes=2)
    config = kwargs["fsdp_config"]
    assert kwargs["fsdp"] is True
    assert config["version"] == 2 and config["reshard_after_forward"] is True
    assert config["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert config["state_dict_type"] == "SHARDED_STATE_DICT"
    # FSDP's own activation checkpointing replaces the Trainer's (which adds an all-gather).
    assert config["activation_checkpointing"] is True and kwargs["activation_checkpointing"] is False
    # transformers turns them into accelerate's FSDP plugin arguments without complaint.
    plugin = TrainingArguments(output_dir=str(tmp_path), **kwargs).fsdp_plugin_args
    assert plugin["fsdp_version"] == 2
    assert plugin["transformer_cls_names_to_wrap"] == "LlamaDecoderLayer"
    assert plugin["state_dict_type"] == "SHARDED_STATE_DICT"
    assert plugin["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


@pytest.mark.parametrize("environ, expected", [
    ({}, (1, 0, 0, 1, 1)),
    # torchrun / accelerate launch: GROUP_WORLD_SIZE is the number of machines (agents)
    ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_WORLD_SIZE": "2"},
     (4, 3, 1, 2, 2)),
    # uneven machines (3 + 1 processes): WORLD_SIZE / LOCAL_WORLD_SIZE would be wrong, GROUP_WORLD_SIZE is not
    ({"WORLD_SIZE": "4", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "3", "GROUP_WORLD_SIZE": "2"},
     (4, 0, 0, 3, 2)),
    # a launcher without GROUP_WORLD_SIZE (an srun script): processes per machine
    ({"WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}, (8, 5, 1, 4, 2)),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, (2, 1, 1, 2, 1)),
])
def test_launch_environment(environ, expected):
    launch = runtime.topology(environ)
    assert (launch.processes, launch.rank, launch.local_rank, launch.processes_per_machine,
            launch.machines) == expected
    assert launch.is_main == (expected[1] == 0)


def test_a_malformed_launch_variable_is_named():
    with pytest.raises(ValueError, match="WORLD_SIZE.*'two'"):
        runtime.topology({"WORLD_SIZE": "two"})


def test_model_state_bytes_counts_parameters_and_buffers_once(tiny):
    model = torch.nn.Linear(4, 3)  # 15 float32 values
    model.register_buffer("scale", torch.ones(5, dtype=torch.float64))  # 40 bytes
    assert distributed.model_state_bytes(model) == 15 * 4 + 5 * 8
    tied = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False))
    tied[1].weight = tied[0].weight  # tied embeddings: one tensor, counted once
    assert distributed.model_state_bytes(tied) == 40 * 4
    llama = tiny("llama")
    expected = sum(p.numel() * p.element_size() for p in llama.parameters()) + sum(
        b.numel() * b.element_size() for b in llama.buffers())
    assert distributed.model_state_bytes(llama) == expected  # untied, no shared buffers
    state = distributed.process_state(llama)
    assert state["sharded_parameters"] == 0 and state["shard_fraction_min"] is None


def test_summary_of_a_single_process_run(tiny, monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    model = tiny("bert")
    section = distributed.summary(model, "ddp")
    assert section["strategy"] == "single" and section["processes"] == 1 and section["machines"] == 1
    assert section["model_state_bytes_per_process"] == [distributed.model_state_bytes(model)]
    assert set(distributed.RECORD_FIELDS) <= set(section)


def test_save_pretrained_unsharded_writes_a_loadable_model(tiny, tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    monkeypatch.delenv("RANK", raising=False)
    model = tiny("bert")
    assert not distributed.is_sharded(model)
    assert distributed.save_pretrained(model, tmp_path / "m") == tmp_path / "m"
    assert (tmp_path / "m" / "model.safetensors").is_file()
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
    assert torch.equal(again.classifier.weight, model.classifier.weight)
    monkeypatch.setenv("RANK", "1")  # another process: writes nothing
    assert distributed.save_pretrained(model, tmp_path / "other") is None
    assert not (tmp_path / "other").exists()


def test_machines_become_accelerate_launch_options():
    assert runner.Machines().accelerate_options(2) == ["--num_processes", "2", "--num_machines", "1"]
    # accelerate's --num_processes counts all machines' processes; --nproc is per machine
    options = runner.Machines(2, 1, "10.0.0.5", 29600).accelerate_options(2)
    assert options == ["--num_processes", "4", "--num_machines", "2", "--machine_rank", "1",
                       "--main_process_ip", "10.0.0.5", "--main_process_port", "29600"]
    with pytest.raises(ValueError, match="--node-rank must be in 0..1"):
        runner.Machines(2, 2)


def test_runner_rejects_a_node_rank_outside_the_machines(capsys):
    with pytest.raises(SystemExit):
        runner.parse_arguments(["run", "detect_ai_text/bert", "--nnodes", "2", "--node-rank", "5"])
    assert "--node-rank must be in 0..1" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["instruction_tune", "summarize_dialogues", "detect_ai_text"])
def test_notebooks_declare_and_pass_the_strategy(name):
    """The training notebooks declare `distributed` (ddp by default); their set-up call checks
    it before it launches (`nb.run.start`, see the next test), their TrainingArguments get its
    keywords given the model (`run.training_arguments`), each Trainer has it applied (FSDP
    really on, on CPUs too, or a stop: `nb.parallel.prepare`), the record holds what each
    process held (the task's `write_record`, through `record.trained`) and the saved model is
    consolidated (`run.save_model`, `run.save_pretrained`)."""
    import importlib
    import inspect
    import re

    import nbformat

    from conftest import ROOT
    from nbutils.run.params import declared_parameters

    path = ROOT / "notebooks" / f"{name}.ipynb"
    assert declared_parameters(path)["distributed"] == "str"
    source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    assert 'distributed: str = "ddp"' in source
    assert "run = nb.run.start(globals()" in source
    assert re.search(r"run\.training_arguments\(\s*\w+, \w*model\b", source), "the strategy's keywords need the model"
    assert "nb.parallel.prepare(trainer)" in source
    task = re.search(r"\b(\w+)\.write_record\(\s*run, trainer, train_output\b", source)
    assert task, "the record is written by the task's module, given the trainer"
    module = importlib.import_module(f"nbutils.tasks.{task.group(1)}")
    assert "record.trained(run, trainer, train_output" in inspect.getsource(module.write_record)
    assert "run.save_model(trainer" in source or "run.save_pretrained(trainer.model" in source


def test_the_set_up_call_stops_a_misspelt_strategy_before_it_launches(monkeypatch):
    from nbutils.parallel import launch
    from nbutils.run import setup

    monkeypatch.setattr(launch, "run_in_processes", lambda *args: pytest.fail("launched with a bad strategy"))
    namespace = {"__annotations__": {"project": str, "output_dir": str, "num_processes": int, "distributed": str},
                 "project": "demo/x", "output_dir": "out", "num_processes": 2, "distributed": "zero3"}
    with pytest.raises(ValueError, match="distributed must be one of"):
        setup.start_notebook(namespace)


def test_block_classes_of_a_model_fsdp_has_sharded_keep_their_names():
    class FSDPModule:  # stands in for torch's: FSDP2 makes FSDP<name>(FSDPModule, <name>)
        pass

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)

    sharded = type("FSDPBlock", (FSDPModule, Block), {})
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([sharded(), sharded()])
    assert distributed.block_classes(model) == ["Block"]


def _run(tmp_path, flags: dict, **config):
    from nbutils.run import environment, setup

    return setup.Run(project="x", dir=tmp_path, env=environment.detect(), precision=flags, config=config)


def test_qlora_under_fsdp_stores_4bit_weights_in_the_compute_dtype(tmp_path):
    """`run.quant_storage`, the storage the notebooks pass: the compute dtype where the
    parameters ask for fsdp, bitsandbytes' packed bytes (uint8) otherwise."""
    from nbutils import lora

    bf16, fp16 = {"bf16": True, "fp16": False}, {"bf16": False, "fp16": True}
    fsdp = _run(tmp_path, bf16, distributed="fsdp")
    sharded = lora.bnb_4bit_config("nf4", True, fsdp.compute_dtype, fsdp.quant_storage)
    assert sharded.bnb_4bit_quant_storage == torch.bfloat16 and sharded.bnb_4bit_compute_dtype == torch.bfloat16
    assert _run(tmp_path, fp16, distributed="fsdp").quant_storage == torch.float16
    ddp = _run(tmp_path, bf16, distributed="ddp")
    assert lora.bnb_4bit_config("nf4", True, ddp.compute_dtype, ddp.quant_storage).bnb_4bit_quant_storage == torch.uint8
    fp32 = _run(tmp_path, {"bf16": False, "fp16": False}, distributed="fsdp")  # a CPU: fp32 throughout
    assert lora.bnb_4bit_config("nf4", True, fp32.compute_dtype, fp32.quant_storage).bnb_4bit_quant_storage == torch.float32


def test_qlora_under_fsdp_refuses_fp16_and_emulated_bf16(monkeypatch):
    """The published FSDP-QLoRA recipes store, load and compute in bf16; a T4 has fp16 and only
    emulates bf16: both stop before loading, naming the precision and the one-GPU variant."""
    from nbutils import lora
    from nbutils.run import runtime

    with pytest.raises(ValueError, match=r"precision gives float16 \(storage float16\) on this CPU.*llama2_13b_qlora"):
        lora.bnb_4bit_config("nf4", True, torch.float16, torch.float16)
    with pytest.raises(ValueError, match=r"precision gives bfloat16 \(storage float32\)"):
        lora.bnb_4bit_config("nf4", True, torch.bfloat16, torch.float32)  # storage must be the compute dtype
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(runtime, "native_bf16", lambda: False)
    with pytest.raises(ValueError, match=r"precision gives bfloat16 \(storage bfloat16\) on Tesla T4"):
        lora.bnb_4bit_config("nf4", True, torch.bfloat16, torch.bfloat16)
    assert lora.bnb_4bit_config("nf4", True, torch.float16).bnb_4bit_compute_dtype == torch.float16  # one T4
    monkeypatch.setattr(runtime, "native_bf16", lambda: True)
    assert lora.bnb_4bit_config("nf4", True, torch.bfloat16, torch.bfloat16).bnb_4bit_quant_storage == torch.bfloat16


def test_the_13b_fsdp_qlora_variant_resolves_and_shards_its_4bit_weights_in_bf16():
    """The full variant for two GPUs: its parameters check against the notebook, ask for two
    FSDP processes and QLoRA, and the quantization config the notebook builds from them on a
    bf16 GPU stores the 4-bit weights in bf16."""
    from conftest import ROOT
    from nbutils import lora

    project = runner.select(runner.discover(ROOT, "full"), ["instruction_tune/llama2_13b_fsdp_qlora"])[0]
    params = runner.project_parameters(project, "full", "outputs/full/x")  # checked against the notebook
    assert params["model_name"] == "NousResearch/Llama-2-13b-hf"
    assert params["num_processes"] == 2 and params["distributed"] == "fsdp" and params["load_in_4bit"]
    assert not params["optim"].startswith("paged")  # bitsandbytes' paged optimizers take no DTensors
    assert params["precision"] == "bf16"  # bf16 GPUs only: storage = load dtype = compute dtype
    run = _run(ROOT, {"bf16": True, "fp16": False}, **params)
    config = lora.bnb_4bit_config(params["bnb_4bit_quant_type"], params["bnb_4bit_use_double_quant"],
                                  run.compute_dtype, run.quant_storage)
    assert config.bnb_4bit_quant_storage == torch.bfloat16


def _fake_trainer(distributed_type, tmp_path, model):
    from types import SimpleNamespace

    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), **distributed.training_arguments("fsdp", model, processes=2))
    state = SimpleNamespace(distributed_type=distributed_type)
    return SimpleNamespace(args=args, is_fsdp_enabled=False, accelerator=SimpleNamespace(state=state), model=model)


def test_apply_refuses_fsdp_the_trainer_does_not_run(tiny, tmp_path):
    """accelerate runs FSDP on accelerator devices only: on CPUs (MULTI_CPU, gloo) a Trainer given
    FSDP arguments would train with DDP. `apply` does not turn FSDP on (the tests' fixture
    switch does, tests/fixtures/fsdp_on_cpu): where it is off, it stops."""
    from accelerate.utils import DistributedType

    with pytest.raises(RuntimeError, match="distributed='fsdp' was asked for.*MULTI_CPU.*not be sharded"):
        distributed.apply(_fake_trainer(DistributedType.MULTI_CPU, tmp_path, tiny("llama")))


def test_apply_leaves_a_ddp_run_to_the_trainer(tiny, tmp_path):
    from types import SimpleNamespace

    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), **distributed.training_arguments("ddp", None, processes=2))
    trainer = SimpleNamespace(args=args, model=tiny("bert"), is_fsdp_enabled=False,
                              model_accepts_loss_kwargs=True, compute_loss_func=None)
    assert distributed.apply(trainer) is trainer
    assert trainer.model_accepts_loss_kwargs is False  # BERT's head takes a plain mean: matched


def _trainer_with_plugin(tmp_path, model):
    from types import SimpleNamespace

    trainer = _fake_trainer(None, tmp_path, model)
    trainer.accelerator.state.fsdp_plugin = SimpleNamespace(ignored_modules=None)
    return trainer


def test_a_frozen_weight_several_modules_hold_is_left_out_of_the_sharding(tiny, tmp_path):
    """T5's embedding is also its encoder's and decoder's `embed_tokens` (and the tiny model's
    output layer): FSDP2 refuses a tensor that two units reach, so it stays whole in every
    process. The input embeddings tied to the output layer alone are accelerate's own case."""
    from nbutils import lora

    model = lora.add_lora(tiny("t5"), lora.seq2seq_lora_config(4, 8, 0.0, ["q", "v"]))
    trainer = _trainer_with_plugin(tmp_path, model)
    left_out = distributed.keep_tied_weights_whole(trainer)
    assert {name.rsplit(".", 1)[-1] for name in left_out} >= {"shared", "embed_tokens"}
    ignored = trainer.accelerator.state.fsdp_plugin.ignored_modules
    assert any(m is model.get_base_model().shared for m in ignored)
    assert distributed.tied_modules(tiny("llama")) == {}
    assert distributed.tied_modules(tiny("bert")) == {}


def test_a_tied_weight_that_trains_cannot_be_sharded(tiny, tmp_path):
    trainer = _trainer_with_plugin(tmp_path, tiny("t5"))  # full fine-tuning: the embedding trains
    with pytest.raises(ValueError, match="distributed='fsdp' cannot shard a weight.*shared.weight.*'ddp'"):
        distributed.keep_tied_weights_whole(trainer)


def test_prepare_for_evaluation_does_nothing_without_fsdp(tiny, tmp_path):
    trainer = _fake_trainer(None, tmp_path, tiny("llama"))  # is_fsdp_enabled: False
    assert distributed.prepare_for_evaluation(trainer) is trainer and not distributed.is_sharded(trainer.model)


@pytest.mark.parametrize("finetuning, load_in_4bit, message", [
    ("qlora", False, "finetuning must be 'lora'.*or 'full'.*got 'qlora'"),
    ("full", True, "finetuning='full' trains every weight.*load_in_4bit: false"),
])
def test_a_finetuning_mode_the_notebook_cannot_run_is_named(finetuning, load_in_4bit, message):
    from nbutils import lora

    with pytest.raises(ValueError, match=message):
        lora.check_finetuning(finetuning, load_in_4bit)
    assert lora.check_finetuning("full", False) == "full" and lora.check_finetuning("lora", True) == "lora"


# Two processes over gloo, started as the runner starts a smoke run's (`accelerate launch`, the
# FSDP-on-CPU fixture on PYTHONPATH): the Trainer itself enables FSDP, as on GPUs, and `apply`
# runs its one FSDP path. Each process starts its LoRA adapter from its own seed.
FSDP_ALREADY_ON = """
import json
import torch
import torch.distributed as dist
from transformers import AutoModelForSeq2SeqLM, Trainer, TrainingArguments
from nbutils import lora
from nbutils.parallel import distributed
from nbutils.run import runtime

rank = runtime.topology().rank
torch.manual_seed(rank)  # the two processes' adapters start apart
model = lora.add_lora(AutoModelForSeq2SeqLM.from_pretrained(MODEL_DIR),
                      lora.seq2seq_lora_config(4, 8, 0.0, ["q", "v"]))
rows = [{"input_ids": [5 + i, 6, 7, 1], "attention_mask": [1, 1, 1, 1], "labels": [8, 9 + i, 1]} for i in range(4)]
args = TrainingArguments(output_dir=OUT + ".run", report_to=[], per_device_eval_batch_size=2,
                         eval_strategy="steps", save_strategy="steps", load_best_model_at_end=True,
                         **distributed.training_arguments("fsdp", model, processes=2))
trainer = Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows)
found = {"fsdp_before_apply": trainer.is_fsdp_enabled,
         "accelerator": str(trainer.accelerator.state.distributed_type)}

def adapter():
    return [round(v, 7) for n, p in sorted(model.named_parameters()) if "lora_A" in n for v in p.flatten().tolist()]

found["adapter_before"] = adapter()
distributed.apply(trainer)
found["adapter_after"] = adapter()
ignored = {id(m) for m in trainer.accelerator.state.fsdp_plugin.ignored_modules or []}
found["left_whole"] = sorted(n for n, m in model.named_modules(remove_duplicate=False) if id(m) in ignored)
found["callbacks"] = [type(c).__name__ for c in trainer.callback_handler.callbacks]
distributed.prepare_for_evaluation(trainer)  # sharded now: FSDP2 with the shared embedding left out
found["state"] = distributed.process_state(trainer.model)
shared = trainer.model.get_input_embeddings().weight
found["embedding_rows"] = shared.shape[0] if not hasattr(shared, "to_local") else shared.to_local().shape[0]
found["eval_loss"] = trainer.evaluate()["eval_loss"]
everyone = [None, None]
dist.all_gather_object(everyone, found)
if rank == 0:
    open(OUT, "w").write(json.dumps(everyone))
"""


@pytest.mark.slow
def test_with_fsdp_already_on_apply_keeps_tied_weights_whole_and_broadcasts(cache, tmp_path):
    """FSDP on before `apply`, as the Trainer enables it on GPUs (here by the tests' fixture
    switch, in force before the Trainer is built): T5's embedding, which its encoder, decoder and
    tied output layer share, is left whole in both processes and every other parameter is split
    in halves; both processes hold the main process's adapter; the best-checkpoint callback is
    added."""
    import json

    from conftest import ROOT
    from tools import runner

    (tmp_path / "launch").mkdir()
    script, out = tmp_path / "launch" / "script.py", tmp_path / "found.json"
    script.write_text(f"MODEL_DIR = {str(cache / 'tiny-models' / 't5')!r}\nOUT = {str(out)!r}\n" + FSDP_ALREADY_ON)
    with runner.run_environment("smoke", ROOT):
        runner.launch_script(script, tmp_path / "launch.log", ROOT, 2)
    main, other = json.loads(out.read_text())
    for found in (main, other):
        assert found["fsdp_before_apply"] is True and found["accelerator"] == "DistributedType.FSDP"
        assert {name.rsplit(".", 1)[-1] for name in found["left_whole"]} >= {"shared", "embed_tokens"}
        assert "CheckpointFolderFirst" in found["callbacks"]
        state = found["state"]
        assert state["parameters"] - state["sharded_parameters"] == 1  # the shared embedding
        assert 0.45 <= state["shard_fraction_min"] <= state["shard_fraction_max"] <= 0.55
        assert found["embedding_rows"] == main["embedding_rows"] > 2  # whole, not half
    assert main["adapter_before"] != other["adapter_before"]  # two seeds, two adapters
    assert main["adapter_after"] == other["adapter_after"] == main["adapter_before"]  # the main one's
    assert main["eval_loss"] == pytest.approx(other["eval_loss"])
