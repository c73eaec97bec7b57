"""Test-wide settings: one intra-op thread (the CI machine has 2 shared cores, tests run with -n 2)."""

import torch

torch.set_num_threads(1)
