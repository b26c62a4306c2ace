"""Model choices measured on the embedded digits demo: validation bits per token.

    python benchmarks/demo_ablation.py                       # mixers and feature maps
    python benchmarks/demo_ablation.py --steps 100 --runs mixer=lasad mixer=softmax

Each run is the demo config (`configs/demo.py`) with one field changed, trained from the
same seed for `--steps` steps (the cosine schedule laid out over those steps), without
samples. It reports the validation bits per token of the raw and the EMA weights and
the wall time. A small dataset and one seed: differences of a few hundredths of a bit are
noise; the table is for choices that matter by more than that.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import tempfile
import time

from absl import logging

from common import run_info, write_json

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_RUNS = ["mixer=lasad", "mixer=lasad_row", "mixer=linear_1d", "mixer=linear",
                "mixer=softmax", "feature_map=identity", "feature_map=elu1",
                "feature_map=relu", "pos_encoding=none"]


def demo_config():
    spec = importlib.util.spec_from_file_location("demo", ROOT / "configs" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def parse_run(run: str) -> tuple[str, str]:
    field, _, value = run.partition("=")
    if not value:
        raise ValueError(f"--runs entries look like model_field=value, got {run!r}")
    return field, value


def main(argv: list[str] | None = None) -> list[dict]:
    from lasad_jax.config import parse
    from lasad_jax.jobs import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/demo_ablation_cpu.json"))
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.WARNING)

    rows = []
    for run in args.runs:
        field, value = parse_run(run)
        config = demo_config()
        config.model[field] = type(config.model[field])(value)
        config.num_steps = args.steps
        config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, args.steps // 5)
        config.train.update(eval_every=0, sample_at_end=False, log_every=args.steps,
                            checkpoint_every=args.steps)
        with tempfile.TemporaryDirectory() as workdir:
            start = time.perf_counter()
            final = train.run(parse(config, "train"), os.path.join(workdir, "run"))
            seconds = time.perf_counter() - start
        rows.append(dict(run=run, steps=args.steps, train_loss=final["loss"],
                         val_bits=final["val_bits_per_token"],
                         val_bits_ema=final["val_bits_per_token_ema"], seconds=seconds))
        print(f"{run}: {rows[-1]['val_bits']:.4f} bits/token ({seconds:.0f} s)", flush=True)

    print("\n| change from configs/demo.py | val bits/token | EMA | train loss (nats) | s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['run']} | {r['val_bits']:.3f} | {r['val_bits_ema']:.3f} | "
              f"{r['train_loss']:.3f} | {r['seconds']:.0f} |")
    write_json(args.out, {"info": run_info(steps=args.steps), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
