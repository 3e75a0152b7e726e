"""The applications built on the library: the ``dlopt`` command, the classic experiments, loss
curve diagnosis, hyperparameter tuning, figures and progress output."""
