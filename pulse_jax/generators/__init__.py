"""The generators PULSE searches: StyleGAN (v1) and the embedded DCGAN."""
