"""optax's own unit tests, run with dlopt's functions swapped in (the drop-in check).

`python -m benchmarks.optax_suite` runs each test file of the installed optax twice, once as
shipped and once with `plugin` loaded, which makes every optax module the test imports a
proxy: functions and classes whose name dlopt also exports at the same path (dlopt's top
level for optax's private modules) resolve to dlopt's, everything else to optax's own.
optax's internals keep the real modules, so only the test's view changes. The report lists,
per file, the tests that pass on optax and fail with dlopt, and the names that were swapped.
"""
