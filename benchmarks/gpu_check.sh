#!/usr/bin/env bash
# The GPU path run for real, on a CUDA machine that has PyTorch but need not have DVC or MLflow
# (tracking is off): the GPU tests, the default Fashion-MNIST pipeline stage by stage in dvc.yaml's
# order, then the cifar100-resnet preset's teacher on CIFAR-100-shaped generated images (real
# CIFAR-100 cannot be fetched there). Prints each stage's own progress lines and wall time.
#
#   bash benchmarks/gpu_check.sh FASHION_MNIST_DIR [CIFAR_EPOCHS=30] [CIFAR_TRAIN_IMAGES=10000]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
fmnist=$(cd "$1" && pwd)
cifar_epochs=${2:-30}
cifar_images=${3:-10000}
py=${PYTHON:-python3}
export KD_TRACKING=off PYTHONUNBUFFERED=1 PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"  # keep a carried one

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
(cd "$repo" && "$py" -m pytest -q -p no:cacheprovider tests/test_gpu.py) || echo "== GPU TESTS FAILED"

stage() {  # stage NAME [ARGS...]: run one stage, then print its wall time
  local t0=$SECONDS
  "$py" -m "stages.$1" "${@:2}"
  echo "== $1: $((SECONDS - t0)) s wall"
}

echo "== Fashion-MNIST, default params (params.yaml) with data.root=$fmnist"
work=$(mktemp -d)
cd "$work"
"$py" - "$repo/params.yaml" "$fmnist" <<'PY'
import sys, yaml
p = yaml.safe_load(open(sys.argv[1]))
p["data"]["root"] = sys.argv[2]
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)
PY
for s in download teacher student soft_targets distill report; do stage "$s"; done
cat metrics/*.json

echo "== cifar100-resnet teacher: $cifar_epochs epochs on $cifar_images generated 32x32 images"
"$py" - "$repo" "$cifar_epochs" "$cifar_images" <<'PY'
import sys, yaml, torch
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from kd.data import splits
conf = Path(sys.argv[1]) / "conf"
p = yaml.safe_load(open(Path(sys.argv[1]) / "params.yaml"))
for layer in (conf / "dataset/cifar100.yaml", conf / "preset/cifar100-resnet.yaml"):
    for k, v in yaml.safe_load(layer.read_text()).items():
        p[k] = {**p[k], **v} if isinstance(v, dict) else v
p["teacher"]["epochs"] = int(sys.argv[2])
yaml.safe_dump(p, open("cifar.yaml", "w"), sort_keys=False)
# 100 classes, each a random 8x8 colour pattern blown up to 32x32, plus per-image noise:
# learnable, so accuracy shows that training works; the figure that matters is samples/s.
g = torch.Generator().manual_seed(0)
protos = torch.nn.functional.interpolate(torch.rand(100, 3, 8, 8, generator=g) * 255, size=32,
                                         mode="bilinear")
def images(n):
    y = torch.randint(0, 100, (n,), generator=g)
    x = (protos[y] + 60 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 255).to(torch.uint8)
    return x, y
n = int(sys.argv[3])
train, val = splits.split_off_validation(*images(n + n // 10), 0.1, 0)
splits.save(Path("data/cifar100-gen"), "cifar100", train, val, splits.Split(*images(2000)),
          tuple(f"class{i}" for i in range(100)), {"source": "generated"})
PY
stage teacher --params cifar.yaml --data data/cifar100-gen --model model/cifar-teacher.pt \
  --metrics metrics/cifar-teacher.json --plots plots/cifar-teacher.csv
cat metrics/cifar-teacher.json
