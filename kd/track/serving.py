"""The model MLflow serves: a trained net behind its input normalisation, taking stored pixels.

Logged by kd/track/mlflow_runs.py (`log_model`) for every trained model; `mlflow models serve`
answers with its logits.
"""

from __future__ import annotations

import torch
from torch import nn

from kd.data.splits import normalize


class Servable(nn.Module):
    """A trained net behind its input normalisation, as MLflow logs it: takes images as the
    download stage stores them ((N, C, H, W) pixel values 0..255) and returns logits, so a loaded
    model needs nothing from `data/<dataset>/meta.json`.

    The pixels come as uint8, or as floats holding those integers: MLflow's server parses a JSON
    request into the signature's dtype, and into uint8 it would truncate 0.5 to 0 and 12.99 to 12
    without a word. So the logged signature is float64, and a fraction, a value outside 0..255 or
    a NaN is refused (HTTP 400 from `mlflow models serve`), not rounded: pixels scaled to [0, 1]
    are a caller's mistake, not an image.
    """

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("std", std.detach().clone().float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.is_floating_point():
            pixels = (images == images.round()) & (images >= 0) & (images <= 255)
            if not bool(pixels.all()):
                raise _bad_pixels(images[~pixels])
        return self.net(normalize(images, self.mean, self.std))


def _bad_pixels(bad: torch.Tensor) -> Exception:
    message = (f"pixel values must be whole numbers 0..255, as the stored uint8 images hold them "
               f"({bad.numel()} are not, e.g. {bad[0].item()!r}); images scaled to [0, 1] must "
               "be multiplied by 255 and rounded")
    try:  # an MlflowException carries the message into the server's 400 answer
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
    except ImportError:
        return ValueError(message)
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)
