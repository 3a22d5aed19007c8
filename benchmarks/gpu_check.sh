#!/usr/bin/env bash
# The checks that need a CUDA machine, as one short script (about 5 minutes on one H100):
# every gpu-marked test (CUDA paths against float64 CPU references: EMA offload, attention off
# the CPU, FSDP2 over NCCL on one GPU, the integrations, experiments on cuda and in bf16), then
# the quick CUDA benchmarks of the training controls and their peers. Results land in
# benchmarks/results/quick/ (*-cuda.*). Exit status: the tests'.
set -uo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" || exit 2
python -m pytest -q -p no:cacheprovider -m gpu -rs
status=$?
python benchmarks/bench_train.py --quick --device cuda --threads 4 || status=$((status == 0 ? 1 : status))
python benchmarks/bench_integrations.py --quick --device cuda --threads 4 || status=$((status == 0 ? 1 : status))
exit $status
