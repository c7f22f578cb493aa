"""Suite-wide settings: the tests use small tensors, where torch's thread pool costs more than it gains."""

import torch

torch.set_num_threads(1)
