"""The generators PULSE searches: StyleGAN (v1), StyleGAN2 and the embedded DCGAN.

Their definitions: docs/method.md section 9.
"""
