"""LASADGen on generated 16x16 grey images of ten shapes (256 tokens each), on CPU.

    python -m lasad_jax.main --config=configs/shapes.py --workdir=/tmp/shapes

The second dataset of the mixer ablation (`benchmarks/ablation.py`): exactly the demo's
model, optimizer and schedule (`configs/demo.py`, loaded below so the two cannot drift
apart) on 6,000 generated training images (600 held out), grey levels quantised to 17
tokens as for the digits. Nothing is downloaded: the images are drawn from `data.seed`
(`lasad_jax/data/shapes.py`). Sequences are 4x the digits', so a step costs about 4x
more.
"""

import pathlib
import runpy

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
    config = runpy.run_path(str(pathlib.Path(__file__).with_name("demo.py")))["get_config"]()
    config.data.update(name="shapes", size=16, num_train=6000, num_val=600)
    config.tokenizer.image_size = (16, 16)
    config.sample.grid_scale = 4
    return config
