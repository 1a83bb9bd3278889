"""The model: ``TextClassifier`` (encoder, pooling, head), weight files, ensembles, and ``bundle``, the one reader
and writer of a model folder."""
