"""`make bench-distributed`: what each of 2 training processes holds under DDP and under FSDP.

The bench model of `tools.bench` (its Llama: SwiGLU, RoPE, width 512, 2 blocks, vocabulary
4096, untied head) is trained for one optimizer step (AdamW) in 2 processes over gloo, once
with each strategy, from the same weights and the same batch. After the step each process
counts what it holds (`nbutils.parallel.distributed`): model state (parameters and buffers), gradients
and the optimizer's state, in bytes, of its local shard where a tensor is sharded. DDP gives
each process the whole model; FSDP (FSDP2, `fully_shard` on each transformer block, the input
embeddings and the model, as accelerate applies it) about half. It also checks that both
strategies took the same step: the two models' losses after it must agree.

    python -m tools.bench_distributed           # writes outputs/bench/distributed.json
    python -m tools.bench_distributed --scale tiny   # seconds: checks that the bench works

One command, one launch: the two processes run both strategies one after the other. Bytes do
not depend on the machine's load; the timings it prints are for orientation only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

DEFAULT_OUT = "outputs/bench/distributed.json"
PROCESSES = 2


def _tensor_bytes(tensors) -> int:
    from nbutils.parallel.distributed import _local

    return int(sum(_local(t).numel() * _local(t).element_size() for t in tensors if t is not None))


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of the optimizer's state tensors this process holds (AdamW: two per parameter)."""
    import torch

    return _tensor_bytes(v for state in optimizer.state.values() for v in state.values()
                         if isinstance(v, torch.Tensor) and v.dim() > 0)


def _shard(model):
    """FSDP2 as accelerate applies it: each block, the input embeddings, then the whole model."""
    from torch.distributed.fsdp import fully_shard

    from nbutils.parallel.distributed import block_classes

    blocks = set(block_classes(model))
    for module in list(model.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model.get_input_embeddings())
    fully_shard(model)
    return model


def _held(model, optimizer, seconds: float) -> dict:
    """What this process holds after the step, at rest (FSDP units resharded)."""
    from nbutils.parallel.distributed import model_state_bytes, reshard

    reshard(model)
    grads = _tensor_bytes(p.grad for p in model.parameters())
    return {"model_state_bytes": model_state_bytes(model), "gradient_bytes": grads,
            "optimizer_state_bytes": optimizer_state_bytes(optimizer), "step_s": round(seconds, 3)}


def worker(scale_name: str, seed: int) -> None:
    """One of the launched processes: a training step with each strategy; rank 0 prints JSON."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from tools import bench

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    scale = bench.SCALES[scale_name]
    generator = torch.Generator().manual_seed(seed + rank)  # each process its own half of the batch
    batch = torch.randint(4, scale.vocab, (scale.batch_size, 64), generator=generator)

    def step(wrap):
        model = wrap(bench.llama_model(scale, seed))  # the same initial weights in every process
        optimizer = torch.optim.AdamW(model.parameters(), lr=scale.learning_rate)
        start = time.perf_counter()
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        seconds = time.perf_counter() - start
        held = _held(model.module if hasattr(model, "module") else model, optimizer, seconds)
        with torch.no_grad():
            loss = model(input_ids=batch, labels=batch).loss.detach()
        dist.all_reduce(loss)  # the mean over both halves of the batch
        held["loss_after_step"] = round(float(loss) / dist.get_world_size(), 6)
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, held)
        return everyone

    results = {"ddp": step(DistributedDataParallel), "fsdp": step(_shard)}
    if rank == 0:
        print("BENCH-RESULT " + json.dumps(results), flush=True)
    dist.destroy_process_group()


def run(scale_name: str, seed: int) -> dict:
    """Launch the two processes (torchrun) and return what they measured."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(PROCESSES),
               "--master_addr", "127.0.0.1", "--master_port", str(port),
               "-m", "tools.bench_distributed", "--worker", "--scale", scale_name, "--seed", str(seed)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    line = next((l for l in done.stdout.splitlines() if l.startswith("BENCH-RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"the {PROCESSES}-process bench failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(line[len("BENCH-RESULT "):])


def summarize(results: dict) -> dict:
    """Per strategy: the largest process's bytes; and FSDP's share of DDP's, per kind of state."""
    kinds = ("model_state_bytes", "gradient_bytes", "optimizer_state_bytes")
    largest = {s: {k: max(p[k] for p in per) for k in kinds} for s, per in results.items()}
    ratio = {k: round(largest["fsdp"][k] / largest["ddp"][k], 4) for k in kinds}
    losses = {s: per[0]["loss_after_step"] for s, per in results.items()}
    return {"largest_process": largest, "fsdp_over_ddp": ratio, "loss_after_step": losses,
            "same_step": abs(losses["fsdp"] - losses["ddp"]) <= 1e-4 * max(1.0, abs(losses["ddp"]))}


def main(argv: list[str] | None = None) -> int:
    from tools import bench

    parser = argparse.ArgumentParser(prog="python -m tools.bench_distributed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(bench.SCALES), default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=DEFAULT_OUT, help="where the JSON goes")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.worker:
        worker(options.scale, options.seed)
        return 0

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    results = run(options.scale, options.seed)
    summary = summarize(results)
    report = {"processes": PROCESSES, "scale": options.scale, "model": "tools.bench llama_model",
              "per_process": results, **summary,
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "transformers": metadata.version("transformers"), "backend": "gloo (CPU)",
                          "load_average": list(os.getloadavg())}}
    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for strategy, held in summary["largest_process"].items():
        print(f"{strategy}: per process " + ", ".join(f"{k.replace('_bytes', '')} {v / 1e6:.2f} MB"
                                                      for k, v in held.items()))
    print("fsdp / ddp per process: " + ", ".join(f"{k.replace('_bytes', '')} {v:.3f}"
                                                for k, v in summary["fsdp_over_ddp"].items()))
    print(f"loss after the step: ddp {summary['loss_after_step']['ddp']:.6f}, fsdp "
          f"{summary['loss_after_step']['fsdp']:.6f} (same step: {summary['same_step']}); written to {out}")
    return 0 if summary["same_step"] else 1


if __name__ == "__main__":
    sys.exit(main())
