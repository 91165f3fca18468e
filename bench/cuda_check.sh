# CUDA checks of the quantizer, for a machine with a GPU and torch+numpy+tqdm+pytest:
#   OUT=/tmp/out bash bench/cuda_check.sh    (run from the repository root)
mkdir -p "${OUT:=/tmp/semid_cuda_check}"
set -o pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, numpy, tqdm; print('torch', torch.__version__, torch.cuda.is_available(), 'numpy', numpy.__version__)"
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_residual.py tests/test_kmeans_core.py 2>&1 | tee $OUT/pytest.log | tail -25
timeout 200 python3 - <<'PY' 2>&1 | tee $OUT/speed.log
import time, torch, numpy as np, sys
sys.path.insert(0, "tests")
from conftest import gaussian_mixture
from semid_index.quantize import ResidualKMeans
x, _ = gaussian_mixture(1_000_000, 256, 500, seed=0)
for dev in ("cuda", "cpu"):
    n = 1_000_000 if dev == "cuda" else 200_000
    m = ResidualKMeans(3, 256, seed=0, device=dev)
    t = time.perf_counter(); m.fit(x[:n]); torch.cuda.synchronize(); fit_s = time.perf_counter() - t
    t = time.perf_counter(); c = m.encode(x[:n]); torch.cuda.synchronize(); enc_s = time.perf_counter() - t
    q = m.quality(x[:200_000])
    print(f"{dev}: fit {n:,} x 256, 3 x 256: {fit_s:.1f} s; encode {n / enc_s:,.0f} items/s; rel. error (200k) {q.relative_error:.4f}; threads {torch.get_num_threads()}")
PY
