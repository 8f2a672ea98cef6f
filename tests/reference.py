"""Helpers for tests that compare zoo with Hugging Face PyTorch models built locally."""


def randomize(model, seed: int = 0, std: float = 0.3):
  """Random values for every float tensor of a transformers model, in eval mode.

  transformers inits biases to 0 and norms to 1, which would hide swapped or dropped biases;
  norm scales stay near 1 and sinusoid tables are left alone.
  """
  import torch  # noqa: PLC0415 - only the tests that build torch models import it

  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in model.state_dict().items():
      if not t.is_floating_point() or "embed_positions" in name:
        continue
      noise = torch.randn(t.shape, generator=g) * std
      t.copy_(1.0 + noise if "norm" in name.lower() and name.endswith("weight") else noise)
  return model.eval()
