"""The generators PULSE searches: StyleGAN (v1), StyleGAN2 and the embedded DCGAN.

Their definitions: docs/method.md section 9.
"""

# The generator a launch uses unless told otherwise: the embedded 64 px face DCGAN, whose
# weights are fetched on first use (`pulse_jax.checkpoints.fetch.dcgan`).
DEFAULT_GENERATOR = "dcgan64"
