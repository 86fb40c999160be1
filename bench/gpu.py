"""GPU figures in one short run: BERT-base seq-128 fine-tuning samples/s and MFU, inference texts/s.

Uses what the trainer uses on a GPU: bf16 autocast, fused AdamW and PyTorch's SDPA attention.
BERT-base is built from its configuration (12 layers, hidden 768, 110M parameters) with
random weights and random full-length token ids: throughput does not depend on the weights,
and the GPU machines have no internet to download them. Measured:

1. a plain training loop (forward, backward, fused AdamW step) under bf16 autocast;
2. the HF ``Trainer`` with the arguments ``services/trainer/training/fine_tune.py`` passes on a GPU
   (``bf16=True``, fused AdamW), to show what the shipped path reaches;
3. inference (``inference_mode``, bf16 autocast) at batch 256.

MFU = model FLOPs per second / the GPU's peak dense bf16 FLOPs. Model FLOPs per sequence:
6 x non-embedding parameters x tokens + 12 x layers x hidden x tokens^2 (attention scores),
the usual accounting (PaLM, appendix B). Without a CUDA device it prints why and exits 0.

    python -m bench.gpu [--batch-size 32] [--steps 30] [--peak-tflops 989]
        [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SECTION = "## GPU path"
SEQ_LEN = 128
# Peak dense bf16 tensor-core FLOP/s (no sparsity), by device name fragment, from vendor sheets.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
}


def peak_tflops(device_name: str, override: float | None) -> float | None:
    if override:
        return override
    for fragment, value in PEAK_BF16_TFLOPS.items():
        if fragment in device_name:
            return value
    return None


def bert_base() -> Any:
    """bert-base-uncased's shape (BertConfig's defaults), random weights, SDPA attention."""
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(num_labels=2, attn_implementation="sdpa"))


def flops_per_sequence(model: Any) -> float:
    config = model.config
    embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    dense = sum(p.numel() for p in model.parameters()) - embedding
    return 6 * dense * SEQ_LEN + 12 * config.num_hidden_layers * config.hidden_size * SEQ_LEN**2


def synthetic_batch(batch_size: int, vocab_size: int, device: str) -> dict[str, Any]:
    import torch

    return {
        "input_ids": torch.randint(1000, vocab_size, (batch_size, SEQ_LEN), device=device),
        "attention_mask": torch.ones(batch_size, SEQ_LEN, dtype=torch.long, device=device),
        "labels": torch.randint(0, 2, (batch_size,), device=device),
    }


def timed(step: Callable[[], None], steps: int, warmup: int, device: str) -> float:
    """Seconds per step after ``warmup`` untimed steps (CUDA work is synchronised)."""
    import torch

    def synchronize() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    return (time.perf_counter() - started) / steps


def training_loop(batch_size: int, steps: int, warmup: int, device: str) -> tuple[float, float]:
    """(samples/s, model FLOP/s) of forward + backward + fused AdamW under bf16 autocast."""
    import torch

    model = bert_base().to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
    batch = synthetic_batch(batch_size, model.config.vocab_size, device)

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = timed(step, steps, warmup, device)
    flops = flops_per_sequence(model) * batch_size / seconds
    return batch_size / seconds, flops


def trainer_path(batch_size: int, steps: int, device: str) -> float:
    """samples/s of the HF Trainer with the trainer worker's GPU arguments."""
    import datasets
    import torch
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    model = bert_base()
    rows = batch_size * (steps + 10)
    generator = torch.Generator().manual_seed(0)
    data = datasets.Dataset.from_dict(
        {
            "input_ids": torch.randint(
                1000, model.config.vocab_size, (rows, SEQ_LEN), generator=generator
            ).tolist(),
            "attention_mask": [[1] * SEQ_LEN] * rows,
            "labels": torch.randint(0, 2, (rows,), generator=generator).tolist(),
        }
    )
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            num_train_epochs=1,
            per_device_train_batch_size=batch_size,
            bf16=True,
            optim="adamw_torch_fused",
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            logging_strategy="no",
            dataloader_pin_memory=device == "cuda",
            use_cpu=device == "cpu",
        )
        trainer = Trainer(model=model, args=args, train_dataset=data)
        trainer.remove_callback(PrinterCallback)
        output = trainer.train()
    return float(output.metrics["train_samples_per_second"])


def inference(batch_size: int, steps: int, warmup: int, device: str) -> float:
    """texts/s of full-length (128-token) texts, bf16 autocast, inference mode."""
    import torch

    model = bert_base().to(device).eval()
    batch = synthetic_batch(batch_size, model.config.vocab_size, device)
    del batch["labels"]

    def step() -> None:
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16):
            model(**batch)

    seconds = timed(step, steps, warmup, device)
    return batch_size / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--inference-batch-size", type=int, default=256)
    parser.add_argument("--peak-tflops", type=float, help="the GPU's peak dense bf16 TFLOP/s")
    parser.add_argument("--write", type=Path, help="replace the GPU section of this file")
    parser.add_argument(
        "--smoke-on-cpu",
        action="store_true",
        help="run every measurement once on the CPU at batch 2 (checks the script, no figures)",
    )
    args = parser.parse_args()

    import torch

    if args.smoke_on_cpu:
        training_loop(2, 1, 1, "cpu")
        trainer_path(2, 1, "cpu")
        inference(2, 1, 1, "cpu")
        print("bench.gpu: smoke run on the CPU passed (no figures)")
        return
    if not torch.cuda.is_available():
        print(
            "bench.gpu: no CUDA GPU visible to torch "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
            "nothing measured. Run it on a GPU machine with a CUDA build of torch.",
            file=sys.stderr,
        )
        return
    if not torch.cuda.is_bf16_supported():
        print("bench.gpu: this GPU has no bf16 support; nothing measured.", file=sys.stderr)
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name()
    peak = peak_tflops(name, args.peak_tflops)
    print(f"bench.gpu: {name}, peak bf16 {peak or 'unknown'} TFLOP/s", flush=True)

    loop_rate, loop_flops = training_loop(args.batch_size, args.steps, args.warmup, "cuda")
    print(f"training loop: {loop_rate:.0f} samples/s", flush=True)
    torch.cuda.empty_cache()  # each measurement's model is gone once its function returns
    trainer_rate = trainer_path(args.batch_size, args.steps, "cuda")
    print(f"HF Trainer (worker's arguments): {trainer_rate:.0f} samples/s", flush=True)
    torch.cuda.empty_cache()
    infer_rate = inference(args.inference_batch_size, args.steps, args.warmup, "cuda")
    print(f"inference: {infer_rate:.0f} texts/s", flush=True)

    def mfu(flops_per_second: float) -> str:
        return f"{flops_per_second / (peak * 1e12):.1%}" if peak else "unknown peak"

    per_sequence = flops_per_sequence(bert_base())
    command = " ".join(["python -m bench.gpu", *sys.argv[1:]])
    report = "\n".join(
        [
            SECTION,
            "",
            f"Command: `{command}`",
            "",
            f"Machine: {name} (peak dense bf16 {peak or 'unknown'} TFLOP/s), torch "
            f"{torch.__version__}, CUDA {torch.version.cuda}. BERT-base (110M parameters), "
            f"sequence length {SEQ_LEN}, training batch {args.batch_size}, bf16 autocast, "
            "fused AdamW, SDPA attention; "
            f"{args.steps} timed steps after {args.warmup} warm-up steps.",
            "",
            "| what | throughput | MFU (goal ≥ 40%) |",
            "|---|---:|---:|",
            f"| fine-tuning, training loop | {loop_rate:.0f} samples/s | {mfu(loop_flops)} |",
            f"| fine-tuning, HF Trainer with the worker's arguments | {trainer_rate:.0f} "
            f"samples/s | {mfu(trainer_rate * per_sequence)} |",
            f"| inference, batch {args.inference_batch_size} | {infer_rate:.0f} texts/s | |",
            "",
        ]
    )
    print(report)
    if args.write:
        from bench.compare import replace_section

        replace_section(args.write, SECTION, report)
        print(f"written to {args.write}")


if __name__ == "__main__":
    main()
