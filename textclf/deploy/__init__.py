"""Deployment: ``Predictor``, export with parity checks, and the HTTP service."""
