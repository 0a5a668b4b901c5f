"""What the tests share: writers of foreign files (torch, StyleGAN2-ADA and NVIDIA TF
pickles, hostile pickles and images), small generators, the two-process cluster, and the
programs the tests run in child processes (programs/). Not library code.

A test imports from here (`from helpers.torch_writer import save_torch_zip`), never from
another test file (tests/test_code_shape.py checks it).
"""
