"""LASADGen on generated 16x16 grey images of ten shapes (256 tokens each), on CPU.

    python -m lasad_jax.main --config=configs/shapes.py --workdir=/tmp/shapes

The second dataset of the mixer ablation (`benchmarks/ablation.py`): exactly the demo's
model, optimizer and schedule (`configs/demo.py`, loaded below so the two cannot drift
apart) on 6,000 generated training images (600 held out), grey levels quantised to 17
tokens as for the digits. Nothing is downloaded: the images are drawn from `data.seed`
(`lasad_jax/data/shapes.py`). Sequences are 4x the digits', so a step costs about 4x
more.
"""

import importlib.util
import pathlib

from ml_collections import config_dict


def _demo_config() -> config_dict.ConfigDict:
    path = pathlib.Path(__file__).with_name("demo.py")
    spec = importlib.util.spec_from_file_location("lasad_demo_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config() -> config_dict.ConfigDict:
    config = _demo_config()
    config.data = dict(name="shapes", num_classes=10, size=16, num_train=6000, num_val=600,
                       seed=0, codes_dir="")
    config.tokenizer = dict(name="intensity", levels=17, image_size=(16, 16), channels=1)
    config.sample.grid_scale = 4
    return config
