"""Evaluation: streaming metrics, multi-label metrics and thresholds, calibration, error analysis and the
run report."""
