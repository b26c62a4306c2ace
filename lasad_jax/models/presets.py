"""Parameter counts of the presets against LlamaGen's, for every mixer.

    python -m lasad_jax.models.presets [--mixers lasad softmax] [--vocab 16384]

Counts come from an abstract init (`nnx.eval_shape`), so even 3B costs no memory.
"""

from __future__ import annotations

import argparse

from lasad_jax.models.config import MIXERS, PRESETS, ModelConfig
from lasad_jax.models.lasadgen import param_count

# LlamaGen's published sizes for its class-conditional GPT models (arXiv 2406.06525).
LLAMAGEN_PARAMS = {"B": 111e6, "L": 343e6, "XL": 775e6, "XXL": 1.4e9, "3B": 3.1e9}


def preset_config(preset: str, mixer: str = "lasad", **overrides) -> ModelConfig:
    layers, heads, dim = PRESETS[preset]
    fields = dict(vocab_size=16384, num_classes=1000, grid=(16, 16), num_layers=layers,
                  num_heads=heads, dim=dim, mixer=mixer)
    fields.update(overrides)
    return ModelConfig(**fields)


def table(mixers: tuple[str, ...], vocab: int) -> list[dict]:
    rows = []
    for preset, (layers, heads, dim) in PRESETS.items():
        row = {"preset": preset, "layers": layers, "heads": heads, "dim": dim,
               "llamagen": LLAMAGEN_PARAMS.get(preset)}
        for mixer in mixers:
            row[mixer] = param_count(preset_config(preset, mixer, vocab_size=vocab))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixers", nargs="+", default=["lasad", "softmax"], choices=MIXERS)
    parser.add_argument("--vocab", type=int, default=16384)
    args = parser.parse_args()
    head = "| preset | layers | heads | dim | LlamaGen |" + "".join(
        f" {m} (diff) |" for m in args.mixers)
    print(head)
    print("|" + "---|" * (5 + len(args.mixers)))
    for row in table(tuple(args.mixers), args.vocab):
        ref = row["llamagen"]
        cells = [row["preset"], row["layers"], row["heads"], row["dim"],
                 f"{ref / 1e6:.0f}M" if ref else "-"]
        for m in args.mixers:
            diff = f" ({100 * (row[m] / ref - 1):+.1f}%)" if ref else ""
            cells.append(f"{row[m] / 1e6:.1f}M{diff}")
        print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
