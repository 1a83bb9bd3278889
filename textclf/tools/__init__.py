"""Tools built on training: the TF-IDF baseline, the label audit, cross-validation and seed ensembles."""
