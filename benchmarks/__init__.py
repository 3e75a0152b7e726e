"""Opt-in benchmarks: dlopt against optax on the same machine, in the same run.

Run ``python -m benchmarks`` (or ``dlopt bench``) from the repository root; ``--quick`` finishes
in under a minute. Contenders run interleaved (A B A B ...); every reported figure is a
speed-up over optax (optax time / contender time, the median over rounds; > 1 is faster).
Never part of the test suite.

Modules: `timing` (interleaved timing), `update_step` (optimizer update steps on many-leaf and
few-large-leaf trees), `roofline` (bytes moved, copy bandwidth, state bytes per parameter),
`train_step` (Flax MLP and CNN train steps), `memory` (optimizer state bytes, compiled peak
memory, low-precision step times), `memory_process` (peak resident memory of init and train
step, a fresh process per variant; the largest model under a cap: ``python -m benchmarks.memory
--process``), `report` (markdown, JSON, PNG).
"""
