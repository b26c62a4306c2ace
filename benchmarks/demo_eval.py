"""The ADM metrics on the embedded demo, with the sample-size floor next to them.

    python -m lasad_jax.main --config=configs/demo.py --workdir=/tmp/demo                 # train
    python -m lasad_jax.main --config=configs/demo.py --workdir=/tmp/demo --mode=reference_stats
    python -m lasad_jax.main --config=configs/demo.py --workdir=/tmp/demo --mode=evaluate
    python benchmarks/demo_eval.py --workdir=/tmp/demo

Scores three image sets against the training-set statistics that `--mode=reference_stats`
wrote: the 179 held-out real digits (the floor: what real images of that count score),
the first 179 samples (the same count, so the two compare), and all samples of
`--mode=evaluate`. The demo's Inception has random weights (the real FID network cannot
ship in the package), so these numbers compare only with each other: they show that
the pipeline runs and how far the samples are from held-out real digits, not anything
comparable to ImageNet FIDs. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import pathlib

import numpy as np
from common import run_info, write_json

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/demo_eval.json"))
    args = parser.parse_args()

    from demo_ablation import demo_config

    from lasad_jax.config import parse
    from lasad_jax.evaluation import evaluate
    from lasad_jax.evaluation.real_images import dataset_images
    from lasad_jax.evaluation.reference import reference_path
    from lasad_jax.evaluation.weights import load_network

    config = parse(demo_config(), "evaluate")
    network, described = load_network(config.eval.inception, config.eval.preprocess)
    reference = reference_path(config.eval.reference, args.workdir)
    with np.load(os.path.join(args.workdir, "eval", "eval.npz")) as npz:
        samples = npz["arr_0"]
    val = np.concatenate(list(dataset_images(config.data, config.tokenizer, "val", 0)))
    sets = {"held-out real digits": val, f"samples, first {len(val)}": samples[:len(val)],
            f"samples, all {len(samples)}": samples}
    rows = []
    for name, images in sets.items():
        m = evaluate(images, reference, network, batch_size=100)
        rows.append({"set": name, "images": len(images), **{k: float(v) for k, v in m.items()}})
    print(f"Inception: {described}; reference: {reference}")
    print("| set | images | FID | sFID | IS | precision | recall |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['set']} | {r['images']} | {r['fid']:.2f} | {r['sfid']:.2f} | "
              f"{r['inception_score']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} |")
    write_json(args.out, {"info": run_info(), "inception": described, "rows": rows})


if __name__ == "__main__":
    main()
