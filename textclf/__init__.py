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

from .callbacks import Callback, EarlyStopping, ProgressBar
from .config import DataConfig, ModelConfig, RunConfig, TrainConfig
from .data import DatasetSplits, Split, TextClassificationDataset, load_dataset, read_split, read_texts
from .errors import ConfigError, DataError, ModelLoadError, OutputDirError, TextclfError, TrainingError
from .labels import LabelMap
from .metrics import EvalReport
from .modeling import TextClassifier
from .predict import Prediction, Predictor
from .trainer import FitResult, StepOutput, Trainer, TrainState

__all__ = [
    "Callback", "ConfigError", "DataConfig", "DataError", "DatasetSplits", "EarlyStopping", "EvalReport",
    "FitResult", "LabelMap", "ModelConfig", "ModelLoadError", "OutputDirError", "Prediction", "Predictor",
    "ProgressBar", "RunConfig", "Split", "StepOutput", "TextClassificationDataset", "TextClassifier",
    "TextclfError", "TrainConfig", "TrainState", "Trainer", "TrainingError", "__version__", "load_dataset",
    "read_split", "read_texts",
]
