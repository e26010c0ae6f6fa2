"""`precision: auto` on faked GPUs: native bf16 only, fp16 where the model is safe in it."""

import pytest
import torch

from nbutils.run import runtime


def fake_gpu(monkeypatch, capability):
    """A CUDA device of this compute capability, answering `is_bf16_supported` as torch does:
    8.0 and newer natively; older ones (a T4 is 7.5) only by emulation."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: capability >= (8, 0) or including_emulation)


FAMILIES = {"t5": "fp32", "qwen2": "fp32", "llama": "fp16", "bert": "fp16"}


@pytest.mark.parametrize("model_type,expected", FAMILIES.items())
def test_auto_on_a_t4_uses_fp16_only_where_the_model_is_safe_in_it(monkeypatch, model_type, expected):
    fake_gpu(monkeypatch, (7, 5))
    assert torch.cuda.is_bf16_supported()  # emulated bf16: what today's choice trusted
    flags = runtime.training_precision("auto", model_type=model_type)
    assert not flags["bf16"], "a T4 has no native bf16"
    assert ("fp16" if flags["fp16"] else "fp32") == expected
    assert runtime.compute_dtype(flags) == {"fp16": torch.float16, "fp32": torch.float32}[expected]


@pytest.mark.parametrize("model_type", FAMILIES)
def test_auto_on_an_a100_or_h100_uses_bf16_for_every_model(monkeypatch, model_type):
    for capability in ((8, 0), (9, 0)):
        fake_gpu(monkeypatch, capability)
        flags = runtime.training_precision("auto", model_type=model_type)
        assert flags == {"bf16": True, "fp16": False}
        assert runtime.compute_dtype(flags) == torch.bfloat16  # the 4-bit compute dtype matches


def test_explicit_fp16_is_refused_for_a_model_that_overflows_in_it(monkeypatch):
    fake_gpu(monkeypatch, (7, 5))
    with pytest.raises(ValueError, match="qwen2.*fp16"):
        runtime.training_precision("fp16", model_type="qwen2")
    assert runtime.training_precision("fp16", model_type="llama") == {"bf16": False, "fp16": True}
    # the older argument still decides when given
    assert runtime.training_precision("auto", fp16_safe=False, model_type="llama") == {"bf16": False, "fp16": False}


def test_model_type_is_read_from_the_config(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                num_attention_heads=1).save_pretrained(tmp_path)
    assert runtime.model_type_of(str(tmp_path)) == "llama"
    assert runtime.model_type_of(str(tmp_path / "missing")) is None


TOPOLOGY = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


def test_process_topology_outside_and_inside_a_launched_run(monkeypatch):
    for name in TOPOLOGY:
        monkeypatch.delenv(name, raising=False)
    assert (runtime.processes(), runtime.rank(), runtime.local_rank(), runtime.is_main_process()) == (1, 0, 0, True)
    monkeypatch.setenv("WORLD_SIZE", "4")  # the second process on the second machine of 2 x 2
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (runtime.processes(), runtime.rank(), runtime.local_rank(), runtime.is_main_process()) == (4, 3, 1, False)
    monkeypatch.setenv("RANK", "0")
    assert runtime.is_main_process()


def test_a_malformed_topology_variable_is_named(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' must be a whole number"):
        runtime.processes()


def test_every_module_reads_the_topology_from_runtime(monkeypatch, tmp_path):
    """The record, the launcher, the batching and the per-run results follow `runtime`, not
    their own reading of the environment."""
    from types import SimpleNamespace

    from nbutils import batching
    from nbutils.parallel import launch
    from nbutils.run import record
    from nbutils.tasks.strategies import study

    monkeypatch.delenv(launch.LAUNCHED, raising=False)
    monkeypatch.setattr(runtime, "processes", lambda: 2)
    monkeypatch.setattr(runtime, "is_main_process", lambda: False)
    output = SimpleNamespace(metrics={"train_runtime": 1.0, "train_samples_per_second": 2.0})
    assert record.train_summary(output)["processes"] == 2
    assert launch.in_launched_process()
    assert batching.eval_batch_size(32, list(range(10))) == 5
    assert not record.write_record({}, tmp_path).exists()  # only the main process writes
    assert not study.save_result(tmp_path, "full", {}).exists()
