"""textclf: fine-tune pretrained transformer encoders into text classifiers with a hand-written PyTorch loop.

The public API::

    import textclf
    data = textclf.load_dataset("examples/data/trec")
    trainer = textclf.Trainer(model="minilm", data=data, output_dir="runs/trec",
                              config=textclf.TrainConfig(epochs=3, lr=5e-5, batch_size=32, max_length=128))
    result = trainer.fit()
    report = trainer.evaluate(data.test)
    clf = textclf.Predictor.from_pretrained("runs/trec/best")
    clf.predict(["what is the capital of china?"])
"""

__version__ = "0.1.0"

# Each public name and the module that defines it. They are imported on first use (PEP 562), so `textclf --help`,
# `textclf --version`, `textclf info` and `textclf report` start without importing torch (about 1.5 s).
_EXPORTS = {
    "config": ["DataConfig", "ModelConfig", "PretrainConfig", "RunConfig", "TrainConfig"],
    "errors": ["ConfigError", "DataError", "ModelLoadError", "OutputDirError", "TextclfError", "TrainingError"],
    "data.labels": ["LabelMap"],
    "data.readers": ["DatasetSplits", "Split", "TextClassificationDataset", "load_dataset", "read_split",
                     "read_texts"],
    "data.windows": ["WindowSpec", "WindowedTextDataset"],
    "data.augment": ["Augmenter"],
    "data.normalize": ["TextNormalizer"],
    "deploy.predict": ["Prediction", "Predictor"],
    "eval.metrics": ["EvalReport"],
    "eval.analysis": ["ErrorCollector", "evaluate_with_errors"],
    "eval.calibration": ["expected_calibration_error", "fit_temperature"],
    "model.classifier": ["TextClassifier"],
    "model.ensemble": ["EnsembleClassifier"],
    # TF-IDF baseline, label audit, k-fold cross-validation, seed ensembles
    "tools.audit": ["AuditResult", "audit"],
    "tools.baseline": ["TfidfBaseline", "compare_with_baseline", "run_baseline"],
    "tools.crossval": ["CVResult", "cross_validate"],
    "tools.seed_ensemble": ["EnsembleResult", "train_ensemble"],
    "train.callbacks": ["Callback", "EarlyStopping", "ProgressBar"],
    # masked-language-model pretraining and WordPiece tokenizer training
    "train.pretrain": ["Pretrainer", "PretrainResult", "pretrain", "train_tokenizer"],
    "train.trainer": ["FitResult", "StepOutput", "Trainer", "TrainState"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF) + ["__version__"]


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'textclf' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # imported once; later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
