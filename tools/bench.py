"""`make bench`: what the project's batching saves against the original recipe, measured.

Each task trains the same freshly initialised model (same seed, same weights) on the same
examples for one pass in two ways: the original recipe (every example padded to `max_length`
512, random order) and the project's batching (`nbutils.batching`: per-batch padding with length
grouping for seq2seq, packing without padding for SFT where the attention keeps packed examples
apart). It prints and writes (JSON) wall time, real tokens/s, padding efficiency and the losses
of each, and the speed-up as a ratio measured in the same run. Each way runs in two example
orders: how far the held-out loss moves between orders is the noise the loss difference between
the two ways is judged against.

Summarization batches are the ones the length-grouped sampler forms on a samsum-sized training
set (14,732 dialogues), a random sample of them: grouping only the bench's few examples would
group far more coarsely than a real run does. The summaries cannot be grouped at the same time
as the dialogues, so the decoder side keeps some padding; the report shows both sides.

The examples are synthetic but shaped like the real data: token counts follow the length
distributions of the real data sets (samsum dialogues through a BERT-style tokenizer: median
106, 10th percentile 38, 90th 271; guanaco-llama2-1k rows: median 375, 10th 116, 90th 930),
drawn from a two-piece log-normal that meets all three percentiles, cut at 512. Token content
comes from a sparse Markov chain, so the models have something to learn and the losses are
comparable. The models are randomly initialised with a real architecture's layout (T5 with
gated-GELU feed-forward, Llama with SwiGLU and RoPE) at flan-t5-small's width, fewer layers and
a smaller vocabulary, so the whole bench runs in minutes on two CPU cores: speed does not depend
on the weights, and at this width the matrix products, not Python, take the time.

    python -m tools.bench                    # both tasks, writes outputs/bench/bench.json
    python -m tools.bench --scale tiny       # seconds: checks that the bench works

It uses one CPU thread unless told otherwise (`--threads`): on a machine shared with other work,
torch's threads wait for each other at every operation, which slows small operations most and
skews the comparison (seen here: 2 threads under load ran both arms 2-5x slower than 1 thread).
On a GPU it trains on the GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from nbutils import batching

DEFAULT_OUT = "outputs/bench/bench.json"
MAX_LENGTH = 512  # the original recipe pads every example to this
MAX_TARGET_LENGTH = 128  # ... and every summary to this


@dataclass(frozen=True)
class LengthProfile:
    """Token counts of a data set: median and 10th/90th percentiles."""

    median: float
    p10: float
    p90: float

    def sample(self, n: int, rng: np.random.Generator, cap: int, floor: int = 8) -> np.ndarray:
        return self.from_normal(rng.standard_normal(n), cap, floor)

    def from_normal(self, z: np.ndarray, cap: int, floor: int = 8) -> np.ndarray:
        # Two-piece log-normal: a different spread below and above the median, so that all three
        # percentiles are met (the real distributions are skewed on the log scale as well).
        z90 = 1.2815515655446004  # standard normal 90th percentile
        low, high = math.log(self.median / self.p10) / z90, math.log(self.p90 / self.median) / z90
        lengths = self.median * np.exp(np.where(z < 0, z * low, z * high))
        return np.clip(np.rint(lengths), floor, cap).astype(int)


SAMSUM_DIALOGUE = LengthProfile(median=106, p10=38, p90=271)
GUANACO_ROW = LengthProfile(median=375, p10=116, p90=930)
# samsum's reference summaries (about 20 words): not quoted in the issue, an assumption.
SAMSUM_SUMMARY = LengthProfile(median=26, p10=12, p90=52)
SUMMARY_CORRELATION = 0.5

PAD, EOS, BOS, UNK = 0, 1, 2, 3
FIRST_WORD = 4


class MarkovChain:
    """Token sequences from a sparse first-order Markov chain: every state has a few successors
    with fixed, unequal probabilities, so a model can learn it (loss falls from ln(vocabulary)
    towards the chain's entropy rate, a little over 1 nat)."""

    def __init__(self, states: int, successors: int = 4, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.states = states
        self.next = rng.integers(0, states, size=(states, successors))
        weights = 1.0 / np.arange(1, successors + 1)
        self.probs = weights / weights.sum()

    def sample(self, length: int, rng: np.random.Generator, start: int | None = None) -> list[int]:
        state = int(rng.integers(self.states)) if start is None else start % self.states
        out = []
        for _ in range(length):
            out.append(FIRST_WORD + state)
            state = int(self.next[state, rng.choice(len(self.probs), p=self.probs)])
        return out


@dataclass(frozen=True)
class Scale:
    """How big a bench run is."""

    train_examples: int
    heldout_examples: int
    batch_size: int
    vocab: int
    states: int
    d_model: int
    t5_layers: int
    llama_layers: int
    learning_rate: float


SCALES = {
    # About 6 minutes in all on one thread of a shared 2-core CPU (both tasks, 2 orders per arm).
    "default": Scale(train_examples=64, heldout_examples=16, batch_size=4, vocab=4096, states=512,
                     d_model=512, t5_layers=2, llama_layers=2, learning_rate=1e-3),
    # Seconds: for the test that keeps the bench working. Not a measurement.
    "tiny": Scale(train_examples=8, heldout_examples=4, batch_size=2, vocab=256, states=64,
                  d_model=32, t5_layers=1, llama_layers=1, learning_rate=1e-3),
}


def tokenizer(vocab: int):
    """A word-level tokenizer over the chain's tokens: the Trainer and TRL want one for the pad,
    EOS and BOS ids; the data is already token ids."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": PAD, "</s>": EOS, "<s>": BOS, "<unk>": UNK}
    words.update({f"w{i}": i for i in range(FIRST_WORD, vocab)})
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(words, unk_token="<unk>")),
                                   pad_token="<pad>", eos_token="</s>", bos_token="<s>", unk_token="<unk>")


# ----------------------------------------------------------------------------------------------
# Data


SAMSUM_TRAIN_ROWS = 14732  # dialogues in samsum's training split


def summarization_lengths(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Dialogue and summary token counts; longer dialogues tend to get longer summaries (a rank
    correlation of about 0.5 is assumed: the issue quotes dialogue lengths only)."""
    z = rng.standard_normal((2, n))
    z[1] = SUMMARY_CORRELATION * z[0] + math.sqrt(1 - SUMMARY_CORRELATION ** 2) * z[1]
    return (SAMSUM_DIALOGUE.from_normal(z[0], cap=MAX_LENGTH),
            SAMSUM_SUMMARY.from_normal(z[1], cap=MAX_TARGET_LENGTH, floor=4))


def summarization_examples(n: int, scale: Scale, seed: int, batch_size: int | None = None) -> list[dict]:
    """Dialogue -> summary pairs. The summary starts from the dialogue's last word, so the
    decoder has a reason to read the encoder.

    With `batch_size`, the examples are whole batches of a samsum-sized training set as the
    project's length-grouped sampler forms them (the very function the Trainer's
    `group_by_length` sampler calls), `n // batch_size` of them drawn at random, returned batch
    after batch. Grouping n examples alone would group far more coarsely than grouping 14,732:
    this way the bench trains on the batches a full run trains on, and the original arm on the
    same examples.
    """
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    rng = np.random.default_rng(seed)
    chain = MarkovChain(scale.states, seed=1)
    if batch_size is None:
        sources, targets = summarization_lengths(n, rng)
    else:
        all_sources, all_targets = summarization_lengths(SAMSUM_TRAIN_ROWS, rng)
        order = get_length_grouped_indices(all_sources.tolist(), batch_size,
                                           generator=torch.Generator().manual_seed(seed))
        batches = [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
        chosen = [i for b in rng.choice(len(batches), n // batch_size, replace=False) for i in batches[b]]
        sources, targets = all_sources[chosen], all_targets[chosen]
    rows = []
    for source_len, target_len in zip(sources, targets):
        source = chain.sample(source_len - 1, rng) + [EOS]
        target = chain.sample(target_len - 1, rng, start=source[-2] - FIRST_WORD) + [EOS]
        rows.append({"input_ids": source, "attention_mask": [1] * len(source), "labels": target})
    return rows


def shuffled_batches(rows: list[dict], batch_size: int, seed: int) -> list[dict]:
    """The same batches in a random order (examples stay with their batch)."""
    batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    order = np.random.default_rng(seed).permutation(len(batches))
    return [row for b in order for row in batches[b]]


def sft_examples(n: int, scale: Scale, seed: int) -> list[dict]:
    """Whole rows (BOS, text, EOS) as token ids, the way TRL takes pre-tokenized data."""
    rng = np.random.default_rng(seed)
    chain = MarkovChain(scale.states, seed=2)
    return [{"input_ids": [BOS] + chain.sample(length - 2, rng) + [EOS]}
            for length in GUANACO_ROW.sample(n, rng, cap=MAX_LENGTH)]


def pad_to(values: list[int], length: int, fill: int) -> list[int]:
    return values + [fill] * (length - len(values))


def padded_summarization(rows: list[dict]) -> list[dict]:
    """The original recipe: dialogue padded to 512 and summary to 128 tokens, whatever their length."""
    return [{"input_ids": pad_to(r["input_ids"], MAX_LENGTH, PAD),
             "attention_mask": pad_to(r["attention_mask"], MAX_LENGTH, 0),
             "labels": pad_to(r["labels"], MAX_TARGET_LENGTH, batching.LABEL_PAD)} for r in rows]


# ----------------------------------------------------------------------------------------------
# Models (fresh, same seed, so both arms start from the same weights)


def t5_model(scale: Scale, seed: int):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    # flan-t5-small's d_model (512) and gated-GELU d_ff (1024), heads of 64, fewer layers.
    heads = max(1, scale.d_model // 64)
    config = T5Config(vocab_size=scale.vocab, d_model=scale.d_model, d_kv=scale.d_model // heads,
                      d_ff=2 * scale.d_model, num_layers=scale.t5_layers, num_decoder_layers=scale.t5_layers,
                      num_heads=heads, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                      dropout_rate=0.0, pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD)
    model = T5ForConditionalGeneration(config)
    # T5 initialises an untied output layer with std 1, so a random model starts with logits of
    # std sqrt(d_model) and a loss in the tens; std d_model^-0.5 starts it near ln(vocabulary),
    # where the losses of the two arms are comparable. Same shape, same speed.
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, scale.d_model ** -0.5)
    return model


def llama_model(scale: Scale, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    # Llama-2's layout (SwiGLU with intermediate/hidden = 2.69, RoPE, RMSNorm, heads of 64).
    heads = max(1, scale.d_model // 64)
    config = LlamaConfig(vocab_size=scale.vocab, hidden_size=scale.d_model,
                         intermediate_size=int(2.6875 * scale.d_model), num_hidden_layers=scale.llama_layers,
                         num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=2 * MAX_LENGTH, pad_token_id=PAD, bos_token_id=BOS,
                         eos_token_id=EOS, tie_word_embeddings=False)
    return LlamaForCausalLM(config)


# ----------------------------------------------------------------------------------------------
# Measuring


def heldout_loss(model, rows: list[dict], encoder_decoder: bool, batch_size: int = 4) -> float:
    """Mean loss per target token on held-out examples, batched the same way for both arms."""
    import torch
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            width = max(len(r["input_ids"]) for r in chunk)
            ids = torch.tensor([pad_to(r["input_ids"], width, PAD) for r in chunk])
            mask = torch.tensor([pad_to([1] * len(r["input_ids"]), width, 0) for r in chunk])
            if encoder_decoder:
                target_width = max(len(r["labels"]) for r in chunk)
                labels = torch.tensor([pad_to(r["labels"], target_width, batching.LABEL_PAD) for r in chunk])
                logits = model(input_ids=ids, attention_mask=mask, labels=labels).logits
            else:
                labels = torch.where(mask.bool(), ids, batching.LABEL_PAD)
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
                labels = labels[:, 1:]
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                     ignore_index=batching.LABEL_PAD, reduction="sum").item()
            count += int((labels != batching.LABEL_PAD).sum())
    return total / count


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(trainer, model, heldout: list[dict], encoder_decoder: bool) -> dict:
    """Train once and report time, throughput, padding and losses."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # no per-step log lines
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    output = trainer.train()
    wall = time.perf_counter() - wall0
    cpu = cpu_seconds() - cpu0
    stats = batching.training_padding_stats(trainer, count_labels=encoder_decoder)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    tail = losses[-max(1, len(losses) // 4):]
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "optimizer_steps": trainer.state.global_step,
        **stats,
        "tokens_per_s": round(stats["real_tokens"] / wall, 1),
        "token_slots_per_s": round(stats["token_slots"] / wall, 1),
        "train_loss": round(float(output.training_loss), 4),  # mean over the run
        "final_loss": round(float(np.mean(tail)), 4),  # mean of the last quarter of the steps
        "heldout_loss": round(heldout_loss(model, heldout, encoder_decoder), 4),
    }


def common_args(scale: Scale, seed: int, out_dir: str) -> dict:
    import torch

    return dict(output_dir=out_dir, num_train_epochs=1, learning_rate=scale.learning_rate,
                lr_scheduler_type="linear", warmup_steps=0.1, weight_decay=0.0, logging_steps=1,
                save_strategy="no", eval_strategy="no", report_to="none", seed=seed,
                use_cpu=not torch.cuda.is_available(), dataloader_pin_memory=torch.cuda.is_available(),
                disable_tqdm=True)


ARMS = ("original", "project")


def bench_summarization(scale: Scale, seed: int, work: str, orders: int = 2) -> dict:
    from datasets import Dataset
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

    tok = tokenizer(scale.vocab)
    batch = scale.batch_size
    rows = summarization_examples(scale.train_examples, scale, seed, batch_size=batch)
    heldout = summarization_examples(scale.heldout_examples, scale, seed + 1000)
    runs = {arm: [] for arm in ARMS}
    for order in range(orders):
        for arm in ARMS:
            model = t5_model(scale, seed)
            if arm == "original":
                data, sampling = padded_summarization(rows), {"train_sampling_strategy": "random"}
            else:
                # The length-grouped batches of the full-size set, in random order, padded per batch.
                data = shuffled_batches(rows, batch, seed + order)
                sampling = {"train_sampling_strategy": "sequential"}
            args = Seq2SeqTrainingArguments(per_device_train_batch_size=batch, data_seed=seed + order,
                                            **common_args(scale, seed, f"{work}/t5-{arm}-{order}"), **sampling)
            trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=Dataset.from_list(data),
                                     processing_class=tok, data_collator=batching.seq2seq_collator(tok, model))
            runs[arm].append(measure(trainer, model, heldout, encoder_decoder=True))
    how = {"original": "every dialogue padded to 512 and summary to 128, random order",
           "project": ("padded per batch to its longest (DataCollatorForSeq2Seq), batches as group_by_length "
                       f"forms them on {SAMSUM_TRAIN_ROWS} dialogues, in random order")}
    return {"task": "summarization", "model": "T5 (flan-t5 layout), random init, "
            f"d_model {scale.d_model}, {scale.t5_layers}+{scale.t5_layers} layers, vocabulary {scale.vocab}",
            "data": f"{len(rows)} dialogue/summary pairs, samsum-like lengths, batch size {batch}",
            "arms": {arm: summarize(runs[arm], how[arm]) for arm in ARMS}}


def bench_sft(scale: Scale, seed: int, work: str, orders: int = 2) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tok = tokenizer(scale.vocab)
    rows = sft_examples(scale.train_examples, scale, seed)
    heldout = sft_examples(scale.heldout_examples, scale, seed + 1000)
    runs = {arm: [] for arm in ARMS}
    how = {"original": "every example padded to 512, random order"}
    for order in range(orders):
        for arm in ARMS:
            model = llama_model(scale, seed)
            if arm == "original":
                # TRL pads each batch to its longest; a multiple of 512 is exactly the fixed 512.
                settings = {"max_length": MAX_LENGTH, "packing": False, "padding_free": False,
                            "pad_to_multiple_of": MAX_LENGTH, "per_device_train_batch_size": scale.batch_size}
            else:
                decision = batching.sft_batching(model, scale.batch_size, max_length=MAX_LENGTH,
                                                 lengths=[len(r["input_ids"]) for r in rows], verbose=False)
                settings, how[arm] = decision.config, str(decision)
            args = SFTConfig(**settings, **common_args(scale, seed, f"{work}/llama-{arm}-{order}"),
                             data_seed=seed + order, activation_checkpointing=False, bf16=False, fp16=False,
                             optim="adamw_torch")
            trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                 processing_class=tok)
            runs[arm].append(measure(trainer, model, heldout, encoder_decoder=False))
    return {"task": "sft", "model": "Llama (Llama-2 layout), random init, "
            f"hidden {scale.d_model}, {scale.llama_layers} layers, vocabulary {scale.vocab}",
            "data": f"{len(rows)} rows, guanaco-llama2-1k-like lengths, batch size {scale.batch_size}",
            "arms": {arm: summarize(runs[arm], how[arm]) for arm in ARMS}}


def summarize(runs: list[dict], how: str) -> dict:
    """One arm over its example orders: counts from the first run (every order batches the same
    examples alike), times and losses averaged, and how far the held-out loss moved between
    orders: the noise against which the two arms' losses are compared."""
    mean = {key: round(float(np.mean([run[key] for run in runs])), 4)
            for key in ("wall_s", "cpu_s", "tokens_per_s", "token_slots_per_s", "train_loss", "final_loss",
                        "heldout_loss")}
    held = [run["heldout_loss"] for run in runs]
    return {"batching": how, **runs[0], **mean, "orders": len(runs),
            "heldout_loss_spread": round(max(held) - min(held), 4), "runs": runs}


def compare(result: dict) -> dict:
    original, project = result["arms"]["original"], result["arms"]["project"]
    result["speedup_wall"] = round(original["wall_s"] / project["wall_s"], 2)
    result["speedup_cpu"] = round(original["cpu_s"] / project["cpu_s"], 2)
    result["heldout_loss_difference"] = round(project["heldout_loss"] - original["heldout_loss"], 4)
    # Another order of the same examples moves the loss this much: a difference no larger is noise.
    result["heldout_loss_noise"] = max(original["heldout_loss_spread"], project["heldout_loss_spread"])
    result["loss_within_noise"] = abs(result["heldout_loss_difference"]) <= result["heldout_loss_noise"]
    return result


def report(results: list[dict]) -> str:
    head = (f"{'task':<14}{'arm':<10}{'wall s':>8}{'cpu s':>8}{'tokens/s':>10}{'padding eff':>12}"
            f"{'(in/target)':>13}{'steps':>6}{'train loss':>11}{'final loss':>11}{'held-out':>9}")
    lines = [head, "-" * len(head)]
    for result in results:
        for arm, m in result["arms"].items():
            parts = (f"{m['input_padding_efficiency']:.2f}/{m['target_padding_efficiency']:.2f}"
                     if "input_padding_efficiency" in m else "")
            lines.append(f"{result['task']:<14}{arm:<10}{m['wall_s']:>8.1f}{m['cpu_s']:>8.1f}"
                         f"{m['tokens_per_s']:>10.0f}{m['padding_efficiency']:>12.3f}{parts:>13}"
                         f"{m['optimizer_steps']:>6}{m['train_loss']:>11.4f}{m['final_loss']:>11.4f}"
                         f"{m['heldout_loss']:>9.4f}")
        orders = result["arms"]["original"]["orders"]
        lines.append(f"{result['task']:<14}speed-up {result['speedup_wall']:.2f}x wall time "
                     f"({result['speedup_cpu']:.2f}x CPU time); held-out loss project - original "
                     f"{result['heldout_loss_difference']:+.4f}, "
                     + (f"another example order moves it up to {result['heldout_loss_noise']:.4f} "
                        f"({'within' if result['loss_within_noise'] else 'OUTSIDE'} noise)"
                        if orders > 1 else "no noise estimate (one order)"))
    lines.append(f"(times, tokens/s and losses: means over {orders} example orders per arm)")
    return "\n".join(lines)


TASKS = {"summarization": bench_summarization, "sft": bench_sft}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="default")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=list(TASKS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=DEFAULT_OUT, help="where the JSON goes")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (0: torch's default). One by default: on a machine shared "
                             "with other work, threads that wait for each other at every operation slow "
                             "small operations most and make the comparison unfair")
    parser.add_argument("--orders", type=int, default=2,
                        help="example orders per arm: their spread is the loss noise (1: faster, no noise)")
    options = parser.parse_args(argv)

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    scale = SCALES[options.scale]
    results = []
    load_before = list(os.getloadavg())
    threads_before = torch.get_num_threads()
    threads = options.threads or threads_before
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory() as work:
            for task in options.tasks:
                print(f"bench: {task} ...", flush=True)
                results.append(compare(TASKS[task](scale, options.seed, work, options.orders)))
    finally:
        torch.set_num_threads(threads_before)  # a caller in the same process keeps its setting
    print(report(results))
    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "scale": options.scale, "settings": asdict(scale), "seed": options.seed,
        "max_length": MAX_LENGTH, "max_target_length": MAX_TARGET_LENGTH,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": threads,
                    "device": "cuda" if torch.cuda.is_available() else "cpu",
                    # Other work on the machine slows both arms, unevenly: compare runs on a quiet one.
                    "load_average_before": load_before, "load_average_after": list(os.getloadavg())},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "trl": metadata.version("trl")},
        "results": results}, indent=2) + "\n")
    print(f"bench results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
