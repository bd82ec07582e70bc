#!/usr/bin/env bash
# The exact launch lines for train/pretrain.py. Re-running a line resumes from RUN's newest checkpoint, also at
# another world size (checkpoints are resharded on load and the loader position is global).
#
#   train/launch.sh cpu      SHARDS RUN [--key=value ...]   one CPU process (gloo is not even needed)
#   train/launch.sh cpu2     SHARDS RUN [--key=value ...]   2 CPU processes, gloo, FSDP2 (what the CI tests run)
#   train/launch.sh gpu8     SHARDS RUN [--key=value ...]   1 node x 8 GPUs, NCCL, FSDP2, bf16 autocast
#   train/launch.sh node2 RANK MASTER_ADDR SHARDS RUN [...] 2 nodes x 8 GPUs; run once on each node with RANK 0 / 1
#
# CONFIG (default tiny for cpu, small for GPUs) picks train/configs/$CONFIG.json.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: train/launch.sh cpu|cpu2|gpu8|node2 ...}; shift

case "$mode" in
  cpu)
    shards=$1 run=$2; shift 2
    exec python train/pretrain.py --config "${CONFIG:-tiny}" --data "$shards" --out "$run" "$@"
    ;;
  cpu2)
    shards=$1 run=$2; shift 2
    # One intra-op thread per process so two ranks do not fight over the same cores.
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} exec torchrun --standalone --nproc_per_node=2 \
      train/pretrain.py --config "${CONFIG:-tiny}" --data "$shards" --out "$run" "$@"
    ;;
  gpu8)
    shards=$1 run=$2; shift 2
    exec torchrun --standalone --nproc_per_node=8 \
      train/pretrain.py --config "${CONFIG:-small}" --data "$shards" --out "$run" "$@"
    ;;
  node2)
    node_rank=$1 master=$2 shards=$3 run=$4; shift 4
    # RUN must be on a file system both nodes see: checkpoints are written collectively and renamed by rank 0.
    exec torchrun --nnodes=2 --nproc_per_node=8 --node_rank="$node_rank" \
      --rdzv_backend=c10d --rdzv_endpoint="$master:29500" --rdzv_id="${RDZV_ID:-chameleon-lite}" \
      train/pretrain.py --config "${CONFIG:-base}" --data "$shards" --out "$run" "$@"
    ;;
  *)
    echo "unknown mode $mode (cpu, cpu2, gpu8, node2)" >&2; exit 2
    ;;
esac
