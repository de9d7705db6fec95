#!/bin/bash
# Data-parallel vitkit training on a SLURM cluster: one task per node, each starting torchrun for its GPUs.
# Submit with:   sbatch examples/slurm_train.sh
# Resume with:   sbatch examples/slurm_train.sh --resume /shared/runs/cifar-<job id>   (any node count)
#SBATCH --job-name=vitkit
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=04:00:00
set -euo pipefail

head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
gpus=${SLURM_GPUS_ON_NODE:-8}
if [ $# -gt 0 ]; then
    args=("$@")  # e.g. --resume RUN_DIR
else
    args=(--recipe cifar10 --data-dir /shared/data --out-dir /shared/runs --name "cifar-$SLURM_JOB_ID")
fi

srun torchrun --nnodes="$SLURM_NNODES" --nproc_per_node="$gpus" \
    --rdzv-backend=c10d --rdzv-endpoint="$head:29500" --rdzv-id="$SLURM_JOB_ID" \
    -m vitkit train "${args[@]}"
