"""Making versions on the service: training jobs and new simulations.

The training function's part imports GPy and scipy (`fit`, `packaging`, `worker`); the admin function's part is
numpy only (`data`, `jobs`, `validation`, `promotion`, `conditioning`, `surprise`, `observations`). The API
function imports none of it (tests/test_training_fit.py holds both).
"""
