"""Makes the example inputs in `experiments/examples/` (their provenance: examples/README.md).

    python experiments/make_examples.py                       # the generated faces
    python experiments/make_examples.py --astronaut astronaut_512.png   # and the astronaut

Every example is a 16 x 16 face, which the default 64 px DCGAN upsamples x4:

- `dcgan_seed<k>.png` / `.jpg`: faces the default generator renders from
  `z = jax.random.normal(jax.random.key(k), (1, 100))`, downscaled 64 -> 16 with
  the project's bicubic operator (`pulse_jax.degrade.downscale.bicubic_downscale`, the
  degradation PULSE inverts). One is saved as JPEG (quality 95, no chroma
  subsampling) to show that inputs need not be PNG.
- `astronaut.png`: NASA's public-domain portrait of astronaut Eileen Collins,
  as scikit-image ships it (`skimage.data.astronaut()`, 512 x 512). scikit-image
  is not a dependency of the project; export the photograph once from a scratch
  environment:

      python3 -m venv .venv-skimage && .venv-skimage/bin/pip install scikit-image
      .venv-skimage/bin/python -c "import skimage.data, PIL.Image; \
          PIL.Image.fromarray(skimage.data.astronaut()).save('astronaut_512.png')"

  and pass it with `--astronaut`. The face square `ASTRONAUT_FACE_BOX` is
  cropped, resized to 64 x 64 with Pillow's bicubic filter, then downscaled
  64 -> 16 with the project's bicubic operator.

On the same platform and library versions the output is byte-for-byte what is
committed; elsewhere a pixel may round differently.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from absl import app, flags
from PIL import Image

from pulse_jax import load_generator
from pulse_jax.degrade.downscale import bicubic_downscale
from pulse_jax.images import save_image, to_uint8

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
# (seed, file suffix) of the faces rendered by the default generator.
GENERATED = ((0, ".png"), (13, ".png"), (14, ".png"), (18, ".jpg"))
# (left, top, right, bottom) of the face (hair to chin) in the 512 x 512 photograph,
# framed like the DCGAN's faces.
ASTRONAUT_FACE_BOX = (160, 45, 300, 185)
HR_SIZE = 64
FACTOR = 4

_OUT_DIR = flags.DEFINE_string("out_dir", str(EXAMPLES_DIR), "Folder to write the examples to.")
_ASTRONAUT = flags.DEFINE_string(
    "astronaut",
    None,
    "skimage.data.astronaut() saved as a PNG (see the module docstring); "
    "without it astronaut.png is not regenerated.",
)


def downscale_64_to_16(image: np.ndarray) -> np.ndarray:
    """[64, 64, 3] in [0, 1] -> [16, 16, 3] with PULSE's bicubic operator, clipped to [0, 1]."""
    return np.clip(np.asarray(bicubic_downscale(image, FACTOR)), 0.0, 1.0)


def generated_face(generator, seed: int) -> np.ndarray:
    """The default generator's face for `seed`, [64, 64, 3] in [0, 1]."""
    z = jax.random.normal(jax.random.key(seed), (1, generator.arch.latent_size))
    return np.clip((np.asarray(generator.synthesize(z))[0] + 1.0) / 2.0, 0.0, 1.0)


def astronaut_face(photo_path: str | Path) -> np.ndarray:
    """The face square of the astronaut photograph resized to [64, 64, 3] in [0, 1]."""
    with Image.open(photo_path) as photo:
        crop = photo.convert("RGB").crop(ASTRONAUT_FACE_BOX)
        face = crop.resize((HR_SIZE, HR_SIZE), Image.Resampling.BICUBIC, reducing_gap=None)
    return np.asarray(face, np.float32) / 255.0


def write(path: Path, image: np.ndarray) -> None:
    """Saves a PNG atomically, or a JPEG (quality 95, 4:4:4) for a `.jpg` path."""
    if path.suffix == ".png":
        save_image(path, image)
    else:
        Image.fromarray(to_uint8(image)).save(path, quality=95, subsampling=0)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def main(argv: list[str]) -> None:
    del argv
    out = Path(_OUT_DIR.value)
    out.mkdir(parents=True, exist_ok=True)
    generator = load_generator("dcgan64")
    for seed, suffix in GENERATED:
        write(
            out / f"dcgan_seed{seed}{suffix}", downscale_64_to_16(generated_face(generator, seed))
        )
    if _ASTRONAUT.value:
        write(out / "astronaut.png", downscale_64_to_16(astronaut_face(_ASTRONAUT.value)))
    else:
        print("astronaut.png not regenerated (pass --astronaut; see the module docstring)")


if __name__ == "__main__":
    app.run(main)
