"""The paper's core claim, measured: every token mixer, same size, data and budget.

    python benchmarks/ablation.py                                   # everything (~3 h on 2 cores)
    python benchmarks/ablation.py --datasets digits --seeds 0 --steps digits=200   # a quick look

LASADGen's argument is that linear attention with a 1D (raster) decay loses image
structure and that a decay following the 2D distance repairs it. Each run trains the
demo model (4 layers, dim 96; `configs/demo.py` and `configs/shapes.py`) with one
mixer: `softmax` (the LlamaGen baseline), `lasad` (2D decay), `lasad_row` (row decay
only), `linear_1d` (raster decay), `linear` (no decay). Datasets: the embedded 8x8
digits (64 tokens) and generated 16x16 shapes (256 tokens). Every mixer of a dataset
gets the same steps, batch, schedule and data; the seeds change the initialisation and
the data order. Reported: validation bits per token of the EMA weights at the end (mean
and standard deviation over seeds), the curves, and a sample grid per mixer (seed 0).

Runs are cached in `--out_dir/runs/*.json`: rerunning skips finished runs, so the whole
sweep can be spread over several sessions; `--report_only` summarises what is cached.
Writes `summary.json`, `curves.png`, `grids.png` (one panel per dataset and mixer) and
prints a Markdown table. On the 2-core CPU a digits run takes about 4 min and a shapes
run about 6 min; the README reports the measured table.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import pathlib
import shutil
import statistics
import tempfile
import time

import numpy as np
from absl import logging

from common import run_info, write_json

ROOT = pathlib.Path(__file__).resolve().parents[1]
MIXERS = ("softmax", "lasad", "lasad_row", "linear_1d", "linear")
CONFIGS = {"digits": "demo", "shapes": "shapes"}
DEFAULT_STEPS = {"digits": 600, "shapes": 150}


def load_config(dataset: str):
    name = CONFIGS[dataset]
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def run_config(dataset: str, mixer: str, seed: int, steps: int):
    config = load_config(dataset)
    config.seed = seed  # init and data order; the train/val split stays data.seed's
    config.model.mixer = mixer
    config.num_steps = steps
    config.optimizer.warmup_steps = max(1, steps // 10)
    config.train.update(log_every=max(1, steps // 30), eval_every=max(1, steps // 4),
                        checkpoint_every=steps, keep_checkpoints=1, progress_every_secs=600.0,
                        sample_at_end=seed == 0)
    config.sample.update(per_class=8, batch_size=80, grid_scale=4 if dataset == "shapes" else 6)
    return config


def train_one(dataset: str, mixer: str, seed: int, steps: int, out_dir: pathlib.Path) -> dict:
    from lasad_jax.config import parse
    from lasad_jax.jobs import train

    config = parse(run_config(dataset, mixer, seed, steps), "train")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = os.path.join(tmp, "run")
        start = time.perf_counter()
        train.run(config, workdir)
        seconds = time.perf_counter() - start
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
        if seed == 0:
            shutil.copy(glob.glob(os.path.join(workdir, "samples-step*.png"))[0],
                        out_dir / "grids" / f"{dataset}_{mixer}.png")
    if not rows or rows[-1]["step"] != steps:  # e.g. SIGTERM: the loop saved and returned
        raise RuntimeError(f"{dataset} {mixer} seed {seed} ended at step "
                           f"{rows[-1]['step'] if rows else 0} of {steps}; nothing cached")
    evals = [r for r in rows if "val_bits_per_token" in r]
    return {"dataset": dataset, "mixer": mixer, "seed": seed, "steps": steps,
            "seconds": seconds, "final_val": evals[-1]["val_bits_per_token"],
            "final_val_ema": evals[-1]["val_bits_per_token_ema"],
            "train_curve": [(r["step"], r["loss"]) for r in rows],
            "val_curve": [(r["step"], r["val_bits_per_token"],
                           r["val_bits_per_token_ema"]) for r in evals]}


def complete_seeds(runs: list[dict]) -> list[dict]:
    """The runs of the seeds that every mixer of their dataset has finished, so each
    mixer's mean is over the same seeds (same inits and data orders); a sweep stopped
    half-way through a seed reports the others and says what it left out."""
    kept = []
    for dataset in CONFIGS:
        mine = [r for r in runs if r["dataset"] == dataset]
        mixers = {r["mixer"] for r in mine}
        seeds = sorted({r["seed"] for r in mine})
        done = [s for s in seeds if {r["mixer"] for r in mine if r["seed"] == s} == mixers]
        if len(done) < len(seeds):
            print(f"{dataset}: seeds {sorted(set(seeds) - set(done))} are not finished by "
                  f"every mixer and are left out of the summary")
        kept += [r for r in mine if r["seed"] in done]
    return kept


def summarise(runs: list[dict]) -> list[dict]:
    table = []
    for dataset in CONFIGS:
        for mixer in MIXERS:
            vals = [r["final_val_ema"] for r in runs if (r["dataset"], r["mixer"]) ==
                    (dataset, mixer)]
            if vals:
                table.append({"dataset": dataset, "mixer": mixer, "seeds": len(vals),
                              "mean": statistics.mean(vals),
                              "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                              "values": vals})
    return table


def plot_curves(runs: list[dict], path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in CONFIGS if any(r["dataset"] == d for r in runs)]
    fig, axes = plt.subplots(2, len(datasets), figsize=(6 * len(datasets), 8), squeeze=False)
    colors = dict(zip(MIXERS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for col, dataset in enumerate(datasets):
        for r in runs:
            if r["dataset"] != dataset:
                continue
            label = r["mixer"] if r["seed"] == 0 else None
            steps, loss = zip(*r["train_curve"])
            axes[0, col].plot(steps, np.asarray(loss) / np.log(2), color=colors[r["mixer"]],
                              alpha=0.7, lw=1, label=label)
            steps, _, ema = zip(*r["val_curve"])
            axes[1, col].plot(steps, ema, "o-", color=colors[r["mixer"]], alpha=0.7, lw=1,
                              label=label)
        axes[0, col].set_title(f"{dataset}: training loss (bits/token)")
        axes[1, col].set_title(f"{dataset}: validation, EMA weights (bits/token)")
        for ax in axes[:, col]:
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_grids(out_dir: pathlib.Path, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    datasets = [d for d in CONFIGS if any((out_dir / "grids").glob(f"{d}_*.png"))]
    if not datasets:
        return
    fig, axes = plt.subplots(len(datasets), len(MIXERS), figsize=(4 * len(MIXERS),
                                                                 4.2 * len(datasets)),
                             squeeze=False)
    for row, dataset in enumerate(datasets):
        for col, mixer in enumerate(MIXERS):
            ax = axes[row, col]
            ax.axis("off")
            grid = out_dir / "grids" / f"{dataset}_{mixer}.png"
            if grid.exists():
                ax.imshow(np.asarray(Image.open(grid)), cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"{dataset}: {mixer}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--mixers", nargs="+", default=list(MIXERS), choices=list(MIXERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", nargs="*", default=[],
                        help="per dataset, e.g. digits=600 shapes=300")
    parser.add_argument("--out_dir", default=str(ROOT / "benchmarks/results/ablation"))
    parser.add_argument("--report_only", action="store_true",
                        help="train nothing: summarise and plot the runs already cached")
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.WARNING)
    steps = dict(DEFAULT_STEPS, **{k: int(v) for k, v in (s.split("=") for s in args.steps)})
    out_dir = pathlib.Path(args.out_dir)
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    (out_dir / "grids").mkdir(exist_ok=True)

    for dataset in [] if args.report_only else args.datasets:
        for seed in args.seeds:
            for mixer in args.mixers:
                path = out_dir / "runs" / f"{dataset}_{mixer}_seed{seed}_{steps[dataset]}.json"
                if path.exists():
                    continue
                result = train_one(dataset, mixer, seed, steps[dataset], out_dir)
                result["info"] = run_info()
                path.write_text(json.dumps(result))
                print(f"{dataset} {mixer} seed {seed}: {result['final_val_ema']:.4f} bits/token "
                      f"(EMA) in {result['seconds']:.0f} s", flush=True)

    runs = [json.loads(p.read_text()) for p in sorted((out_dir / "runs").glob("*.json"))]
    runs = complete_seeds([r for r in runs if r["steps"] == steps[r["dataset"]]])
    table = summarise(runs)
    print("\n| dataset | mixer | validation bits/token, EMA (mean +- sd) | seeds |")
    print("|---|---|---:|---:|")
    for row in table:
        print(f"| {row['dataset']} | {row['mixer']} | {row['mean']:.4f} +- {row['std']:.4f} | "
              f"{row['seeds']} |")
    write_json(str(out_dir / "summary.json"), {"info": measured_by(runs, steps), "table": table})
    plot_curves(runs, out_dir / "curves.png")
    plot_grids(out_dir, out_dir / "grids.png")
    return table


def measured_by(runs: list[dict], steps: dict[str, int]) -> dict:
    """The summary's date, device and software: those the runs recorded (the newest
    date), not the machine that summarises them, so that `--report_only` restamps
    nothing; a field the runs disagree on lists their values."""
    info = run_info(steps=steps)
    recorded = [r["info"] for r in runs if "info" in r]
    for key in ("date", "backend", "device", "machine", "cores", "jax"):
        values = [json.loads(v) for v in sorted({json.dumps(i[key]) for i in recorded
                                                  if key in i})]
        if values:
            info[key] = values[-1] if key == "date" or len(values) == 1 else values
    return info


if __name__ == "__main__":
    main()
