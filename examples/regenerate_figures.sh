#!/usr/bin/env bash
# Regenerates every committed example output (examples/figures/*, the README's example numbers)
# from the current code, one example at a time (each is CPU-heavy). Run from the repository
# root: `bash examples/regenerate_figures.sh [name ...]` (default: all); each example's log is
# written to out/examples/<name>.log, whose numbers are the ones the README and the docstrings
# quote. diagnose_histories regenerates the diagnose test fixture.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p out/examples
ALL=(schedules initialization_activations breast_cancer_mlp data_parallel_mlp text_augmentation
     transfer_learning mnist_three_models modern_optimizers optimizer_paths regularization
     diagnose_histories)
for name in "${@:-${ALL[@]}}"; do
    args=()
    if [ "$name" = diagnose_histories ]; then
        args=(--out tests/fixtures/diagnose_histories.json)
    fi
    echo "== $name"
    start=$SECONDS
    nice python "examples/$name.py" "${args[@]}" 2>&1 | tee "out/examples/$name.log"
    echo "== $name: $((SECONDS - start)) s"
done
