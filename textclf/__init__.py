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

from .config import DataConfig, ModelConfig, PretrainConfig, RunConfig, TrainConfig
from .data.labels import LabelMap
from .data.readers import DatasetSplits, Split, TextClassificationDataset, load_dataset, read_split, read_texts
from .data.windows import WindowedTextDataset, WindowSpec
from .deploy.predict import Prediction, Predictor
from .errors import ConfigError, DataError, ModelLoadError, OutputDirError, TextclfError, TrainingError
from .eval.metrics import EvalReport
from .model.classifier import TextClassifier
from .tools.audit import AuditResult, audit
from .tools.baseline import TfidfBaseline, compare_with_baseline, run_baseline
from .tools.crossval import CVResult, cross_validate
from .train.callbacks import Callback, EarlyStopping, ProgressBar
from .train.pretrain import Pretrainer, PretrainResult, pretrain, train_tokenizer
from .train.trainer import FitResult, StepOutput, Trainer, TrainState

__all__ = [
    "Callback", "ConfigError", "DataConfig", "DataError", "DatasetSplits", "EarlyStopping", "EvalReport",
    "FitResult", "LabelMap", "ModelConfig", "ModelLoadError", "OutputDirError", "Prediction", "Predictor",
    "ProgressBar", "RunConfig", "Split", "StepOutput", "TextClassificationDataset", "TextClassifier",
    "TextclfError", "TrainConfig", "TrainState", "Trainer", "TrainingError", "__version__", "load_dataset",
    "read_split", "read_texts",
]
# TF-IDF baseline, label audit, k-fold cross-validation
__all__ += ["AuditResult", "CVResult", "TfidfBaseline", "audit", "compare_with_baseline", "cross_validate",
            "run_baseline"]
# long texts as sliding windows (TrainConfig.long_texts="windows")
__all__ += ["WindowSpec", "WindowedTextDataset"]
# masked-language-model pretraining and WordPiece tokenizer training
__all__ += ["PretrainConfig", "PretrainResult", "Pretrainer", "pretrain", "train_tokenizer"]
# small-data tools: normalisation, augmentation, seed ensembles, calibration, error analysis
from .data.augment import Augmenter  # noqa: E402
from .data.normalize import TextNormalizer  # noqa: E402
from .eval.analysis import ErrorCollector, evaluate_with_errors  # noqa: E402
from .eval.calibration import expected_calibration_error, fit_temperature  # noqa: E402
from .model.ensemble import EnsembleClassifier  # noqa: E402
from .tools.seed_ensemble import EnsembleResult, train_ensemble  # noqa: E402

__all__ += ["Augmenter", "EnsembleClassifier", "EnsembleResult", "ErrorCollector", "TextNormalizer",
            "evaluate_with_errors", "expected_calibration_error", "fit_temperature", "train_ensemble"]
