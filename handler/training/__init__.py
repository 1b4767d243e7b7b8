"""Fitting GPs for the service: the training function's part (GPy and scipy), never imported by the API function.

`fit` fits a GP well whatever the data's units; `validation` scores it and holds the quality gate, which
scripts/package_model.py applies too.
"""
