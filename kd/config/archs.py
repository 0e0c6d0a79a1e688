"""Architecture names and their parsing (no torch here, so params.py and the download stage do
not depend on the model code); each dataset's defaults are in conf/dataset/.

  mlp:W1-W2-...   fully connected ReLU net with hidden widths W1, W2, ...
  cnn:C1-C2-...   3x3 conv + BatchNorm + 2x2 max-pool + ReLU per entry, then a 256-unit head
  resnet<d>x4     CIFAR ResNet of depth d = 6n+2 with RepDistiller's 4x widths (resnet8x4, resnet32x4)
"""

from __future__ import annotations

import re

ARCH_HELP = "mlp:<width>-<width>..., cnn:<channels>-<channels>..., resnet<6n+2>x4"

def parse_arch(spec: str) -> tuple[str, tuple[int, ...]] | None:
    """'mlp:800-800' -> ('mlp', (800, 800)); 'resnet8x4' -> ('resnet', (8,)); bad -> None."""
    # [0-9], not \d: \d takes any script's digits ('mlp:٨٠٠'), which DVC shows as they are
    m = re.fullmatch(r"(mlp|cnn):([0-9]+(?:-[0-9]+)*)", spec)
    if m:
        sizes = tuple(int(s) for s in m.group(2).split("-"))
        return (m.group(1), sizes) if all(s > 0 for s in sizes) else None
    m = re.fullmatch(r"resnet([0-9]+)x4", spec)
    if m and int(m.group(1)) >= 8 and (int(m.group(1)) - 2) % 6 == 0:
        return ("resnet", (int(m.group(1)),))
    return None
