"""Serverless prediction API for a pre-trained Gaussian-process surrogate."""
