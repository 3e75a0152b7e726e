"""The core: the contract (`base`), composition (`combine`), pytree math (`tree`), per-leaf
numerics (`numerics`) and eager argument checks (`validation`). Imports only jax, numpy, chex."""
