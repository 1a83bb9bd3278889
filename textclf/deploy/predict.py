"""Inference: :class:`Predictor` turns raw texts into labels and probabilities, batched and fast.

Texts are tokenized in one batched call, sorted by length so each batch carries almost no padding, run
through a *backend* and put back in input order. Everything except the forward pass is shared between
backends: tokenization, truncation flags, length sorting, batching, softmax/sigmoid and top-k.

Backends (both map ``input_ids``/``attention_mask`` ``[B, T]`` to float32 logits ``[B, num_labels]``):

* :class:`TorchBackend` -- a PyTorch module under ``torch.inference_mode`` (and bf16/fp16 autocast where the
  hardware has it): the trained :class:`~textclf.model.classifier.TextClassifier`, or a TorchScript / ``torch.export``
  module written by ``textclf export``.
* :class:`OnnxBackend` -- an ONNX Runtime session on ``model.onnx`` / ``model.int8.onnx`` from ``textclf export``.

One backend reads raw texts instead (``read(texts) -> logits``, :class:`~textclf.data.inputs.WholeTexts`):
:class:`TfidfBackend`, the TF-IDF baseline's model folder (``textclf baseline --output DIR``).

``Predictor.from_pretrained(folder)`` picks the backend from what the folder holds (``backend="auto"``): a training
bundle (``OUTPUT/best``) runs in PyTorch, an export folder in the format it was exported to, a baseline folder in
numpy.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.inputs import WholeTexts, input_strategy_for
from ..data.labels import LabelMap
from ..data.normalize import TextNormalizer
from ..data.windows import WindowSpec
from ..errors import ConfigError, ModelLoadError
from ..eval.metrics import EvalReport
from ..eval.multilabel import Thresholds
from ..eval.tasks import saved_task, task_for
from ..model import bundle
from ..model.classifier import LABELS_FILE, WEIGHTS_FILE, TextClassifier, load_tokenizer
from ..model.ensemble import load_model, require_labels
from ..model.tfidf import KIND as TFIDF
from ..model.tfidf import TfidfModel
from ..runtime import resolve_device, resolve_precision, setup_runtime

BACKENDS = ("auto", "torch", "onnx")

# ONNX Runtime graph rewrites to skip. SkipLayerNormFusion merges each residual Add + LayerNormalization into one
# SkipLayerNormalization node, whose CPU kernel (onnxruntime 1.32) is slower than the two nodes it replaces: on the
# exported MiniLM, leaving them unfused makes int8 inference about 25% faster (fp32: 10%) with identical outputs.
ORT_DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]


@dataclass
class Prediction:
    """One text's result: the predicted label (labels, for multi-label) and probabilities.

    ``score`` is the probability of the most probable label. ``top_k`` ranks ``(label, probability)`` pairs, most
    probable first; for a multi-label model it lists every label of ``label`` first (each with its own probability),
    then the most probable other labels up to ``top_k``, so it never contradicts the label set. ``truncated`` is True
    when the text had more tokens than the model reads and only its first tokens were classified.
    """

    label: str | list[str]
    score: float
    top_k: list[tuple[str, float]] = field(default_factory=list)
    truncated: bool = False

    def to_dict(self) -> dict:
        return {"label": self.label, "score": self.score,
                "top_k": [{"label": name, "score": score} for name, score in self.top_k],
                "truncated": self.truncated}


# ==================================================================================================== backends


class TorchBackend:
    """Forward pass of a PyTorch module ``(input_ids, attention_mask[, token_type_ids]) -> logits``.

    Args:
        module: a :class:`TextClassifier`, or a TorchScript / ``torch.export`` module with the same inputs.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a ``torch.device``.
        precision: ``"auto"`` (bf16/fp16 autocast where supported), ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        token_type_ids: pass an all-zero ``token_type_ids`` as third input (exported modules that declare it).
    """

    name = "torch"

    def __init__(self, module: torch.nn.Module, device: str | torch.device = "auto", precision: str = "auto",
                 token_type_ids: bool = False):
        device = device if isinstance(device, torch.device) else resolve_device(device)
        self.runtime = setup_runtime(str(device), resolve_precision(precision, device))
        self.module = module.to(self.runtime.device)
        with contextlib.suppress(NotImplementedError):  # torch.export modules refuse eval(); they were exported in it
            self.module.eval()
        self.token_type_ids = token_type_ids
        # A TextClassifier combines a text's windows itself (mean, max or attention); exported modules score windows
        self.aggregates_windows = isinstance(module, TextClassifier)

    @property
    def pad_to_multiple_of(self) -> int | None:
        return self.runtime.pad_to_multiple_of

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs: torch.Tensor) -> np.ndarray:
        """Logits of a batch; ``inputs`` are the input strategy's extra model inputs (``num_windows``: a
        TextClassifier combines each text's windows itself, see :mod:`textclf.data.inputs`)."""
        device = self.runtime.device
        args = [input_ids.to(device), attention_mask.to(device)]
        if self.token_type_ids:
            args.append(torch.zeros_like(args[0]))
        kwargs = {name: value.to(device) for name, value in inputs.items()}
        with torch.inference_mode(), self.runtime.autocast():
            logits = self.module(*args, **kwargs)
        return logits.float().cpu().numpy()

    def describe(self) -> dict:
        return {"backend": self.name, "device": str(self.runtime.device), "precision": self.runtime.precision}


class OnnxBackend:
    """Forward pass of an ONNX Runtime session.

    ``token_type_ids`` is fed as zeros when the graph declares it (single-text classification uses segment 0),
    and left out when it does not, so graphs exported with or without it both work.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (default: ONNX Runtime's choice, one per physical core).
        providers: execution providers (default: CUDA when ``device`` is a GPU and available, else CPU).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    name = "onnx"
    pad_to_multiple_of = None
    aggregates_windows = False  # an exported graph scores windows; SlidingWindows combines them (mean or max)

    def __init__(self, path: str | Path, threads: int | None = None, providers: list[str] | None = None,
                 device: str = "auto"):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelLoadError("the ONNX backend needs onnxruntime; install it with "
                                 "`pip install \"textclf[onnx]\"` (or onnxruntime-gpu for CUDA)") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"{self.path} does not exist; export a model with `textclf export --format onnx`")
        if providers is None:
            available = ort.get_available_providers()
            wants_gpu = device != "cpu" and "CUDAExecutionProvider" in available
            providers = (["CUDAExecutionProvider"] if wants_gpu else []) + ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        # Idle worker threads sleep instead of spinning: on shared CPUs, and next to an HTTP event loop, spinning
        # threads take the cores that the other work needs (measured: up to 3x slower batches on 2 busy cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers,
                                                disabled_optimizers=ORT_DISABLED_OPTIMIZERS)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise ModelLoadError(f"{self.path} cannot be loaded by ONNX Runtime: {exc}") from None
        self.input_names = [item.name for item in self.session.get_inputs()]
        width = next((item.shape[-1] for item in self.session.get_outputs() if item.name == "logits" and item.shape),
                     None)
        self.num_outputs = width if isinstance(width, int) else None  # a named (dynamic) axis says nothing
        unknown = set(self.input_names) - {"input_ids", "attention_mask", "token_type_ids"}
        if unknown or "input_ids" not in self.input_names:
            raise ModelLoadError(f"{self.path}: unexpected graph inputs {self.input_names}; expected input_ids, "
                                 "attention_mask and optionally token_type_ids")

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
        ids = input_ids.numpy()
        feeds = {"input_ids": ids, "attention_mask": attention_mask.numpy()}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        (logits,) = self.session.run(["logits"], {name: feeds[name] for name in self.input_names})
        return np.asarray(logits, dtype=np.float32)

    def describe(self) -> dict:
        return {"backend": self.name, "file": self.path.name, "providers": self.session.get_providers()}


class TfidfBackend:
    """A TF-IDF + linear model (:class:`~textclf.model.tfidf.TfidfModel`, the baseline's model folder): it reads raw
    texts (:class:`~textclf.data.inputs.WholeTexts`), with numpy and scikit-learn's n-gram cutter, no torch."""

    name = "tfidf"
    pad_to_multiple_of = None

    def __init__(self, model: TfidfModel):
        self.model = model

    def read(self, texts: list[str]) -> np.ndarray:
        """Logits whose softmax (or per-label sigmoid) are the model's own probabilities."""
        return self.model.logits(texts)

    def describe(self) -> dict:
        return {"backend": self.name, "features": len(self.model.vocabulary),
                "analyzer": self.model.vectorizer.get("analyzer")}


# ==================================================================================================== predictor


class Predictor:
    """Batched inference with a trained classifier.

    Args:
        model: the classifier (moved to ``device`` and put in eval mode), or a ready backend object
            (:class:`TorchBackend`, :class:`OnnxBackend`; then ``label_map`` is required).
        tokenizer: its fast tokenizer.
        label_map: the label vocabulary (default: the model's own).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``... (for a PyTorch model).
        max_length: tokens per text; longer texts are truncated and flagged ``truncated=True``.
        precision: ``"auto"`` (bf16/fp16 autocast where supported), ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        batch_size: texts per forward pass.
        metadata: free-form description of the model (shown by the HTTP service's ``/metadata``).
        thresholds: multi-label decision thresholds: one float for every label, one per label (``[C]``), or a
            :class:`~textclf.eval.multilabel.Thresholds`; default 0.5. ``from_pretrained`` reads the tuned ones a
            training run saved in ``textclf.json``.
        windows: read texts longer than ``max_length`` as sliding windows (a
            :class:`~textclf.data.windows.WindowSpec`, its ``max_length`` wins); then ``truncated=True`` means the text
            needed more than ``max_windows`` windows. ``from_pretrained`` reads the model's own from ``textclf.json``.
        normalizer: a :class:`~textclf.data.normalize.TextNormalizer` applied to every text before tokenization (the
            synonym table and width folding of training); ``from_pretrained`` loads the model's own.
        temperature: calibration temperature: probabilities are those of ``logits / temperature`` (labels do not
            change; :meth:`logits` stays raw); ``from_pretrained`` reads the one fitted on dev after training.
        inputs: how texts become the backend's inputs (:mod:`textclf.data.inputs`); default: from ``windows`` and
            ``max_length``. ``from_pretrained`` gives a TF-IDF folder :class:`~textclf.data.inputs.WholeTexts`.
    """

    def __init__(self, model, tokenizer, label_map: LabelMap | None = None,
                 device: str | torch.device = "auto", max_length: int = 128, precision: str = "auto",
                 batch_size: int = 64, metadata: dict | None = None, thresholds=None, windows=None,
                 normalizer: TextNormalizer | None = None, temperature: float = 1.0, inputs=None):
        if isinstance(model, torch.nn.Module):
            self.backend = TorchBackend(model, device, precision)
            label_map = label_map or getattr(model, "label_map", None)
        else:
            self.backend = model
        if label_map is None:
            raise ModelLoadError("Predictor needs a label_map (the model carries none)")
        self.tokenizer = tokenizer
        self.label_map = label_map
        self.max_length = max_length
        self.batch_size = batch_size
        # single- or multi-label: probabilities, decisions (textclf.eval.tasks); the task owns the thresholds
        self.task = task_for(label_map, _as_thresholds(thresholds, len(label_map)))
        self.metadata = dict(metadata or {})
        self.normalizer = normalizer
        self.temperature = float(temperature)
        # truncation or sliding windows, or whole texts for a backend that reads them itself (textclf.data.inputs)
        self.inputs = inputs or input_strategy_for(windows, max_length)
        self.inputs.check_backend(self.backend)
        self.collate = self.inputs.collate(getattr(tokenizer, "pad_token_id", None) or 0,
                                           self.backend.pad_to_multiple_of)
        self.max_length = self.inputs.max_length

    @property
    def thresholds(self) -> np.ndarray:
        """The multi-label decision thresholds ``[C]`` (0.5 where none were tuned); assigning one float, ``[C]``
        values or a :class:`~textclf.eval.multilabel.Thresholds` changes what ``predict`` decides."""
        owned = self.task.thresholds
        return owned.values if owned is not None else np.full(len(self.label_map), 0.5, dtype=np.float32)

    @thresholds.setter
    def thresholds(self, value) -> None:
        self.task = task_for(self.label_map, _as_thresholds(value, len(self.label_map)))

    @property
    def windows(self) -> WindowSpec | None:
        """How long texts are read as windows (None: truncated at ``max_length``)."""
        return self.inputs.spec

    @property
    def model(self) -> torch.nn.Module | None:
        """The PyTorch module (None for the ONNX backend)."""
        return getattr(self.backend, "module", None)

    @property
    def runtime(self):
        """Device and precision of the PyTorch backend (None for ONNX)."""
        return getattr(self.backend, "runtime", None)

    @classmethod
    def from_pretrained(cls, folder: str | Path, backend: str = "auto", device: str = "auto",
                        precision: str = "auto", batch_size: int = 64, max_length: int | None = None,
                        threads: int | None = None, model_class: type | str | None = None) -> Predictor:
        """Load a model folder: a training bundle (``OUTPUT/best``, ``OUTPUT/last``) or a ``textclf export`` folder.

        Args:
            folder: the folder.
            backend: ``"auto"`` (what the folder holds), ``"torch"`` or ``"onnx"``.
            device: ``"auto"``, ``"cpu"``, ``"cuda"``...
            precision: PyTorch autocast precision (``"auto"``, ``"fp32"``, ``"bf16"``, ``"fp16"``).
            batch_size: texts per forward pass.
            max_length: tokens per text (default: the length the model was trained or exported with).
            threads: intra-op threads: ONNX Runtime's for this session or, for PyTorch, ``torch.set_num_threads``
                (which applies to the whole process). Default: the library's own choice, one per core.
            model_class: for a training bundle saved from a ``TextClassifier`` subclass (a custom head): that class,
                or ``"module:Class"`` / ``"file.py:Class"``, imported and run here, so only for code you trust (see
                :func:`textclf.model.ensemble.load_model`). Exports hold the whole graph and ignore it.
        """
        folder = Path(folder)
        if backend not in BACKENDS:
            raise ModelLoadError(f"backend must be one of {BACKENDS}, got {backend!r}")
        meta = bundle.read_meta(folder)
        export = meta.get("export")
        if meta.get("kind") == TFIDF:  # the TF-IDF baseline's folder: arrays and JSON, read without torch
            if backend != "auto":
                raise ModelLoadError(f"{folder} is a TF-IDF model folder (textclf baseline); load it with "
                                     "backend='auto'")
            model = TfidfModel.load(folder)
            info = {"model": str(folder), "base_model": None, "format": TFIDF}
            return cls(TfidfBackend(model), None, model.label_map, batch_size=batch_size, metadata=info,
                       inputs=WholeTexts())
        if export is None:  # a training bundle: PyTorch weights
            if backend == "onnx":
                raise ModelLoadError(f"{folder} holds PyTorch weights ({WEIGHTS_FILE}), not an ONNX model; run "
                                     f"`textclf export --model {folder} --format onnx --output DIR` and load DIR")
            model = load_model(folder, model_class)  # an EnsembleClassifier for an ensemble folder (soft voting)
            require_labels(folder, model)
            if threads:
                torch.set_num_threads(threads)
            length = max_length or meta.get("train_config", {}).get("max_length", 128)
            info = {"model": str(folder), "base_model": meta.get("base_model"), "format": "pytorch"}
            return cls(model, load_tokenizer(str(folder)), model.label_map, device, length, precision, batch_size,
                       metadata=info, thresholds=saved_task(folder, model.label_map).thresholds,
                       windows=WindowSpec.from_dict(meta.get("windows"), max_length),
                       normalizer=bundle.read_normalizer(folder, meta), temperature=_saved_temperature(meta))
        fmt = export["format"]
        if backend != "auto" and (backend == "onnx") != (fmt == "onnx"):
            raise ModelLoadError(f"{folder} is a {fmt} export; load it with backend='auto' or "
                                 f"backend={'onnx' if fmt == 'onnx' else 'torch'!r}")
        model_file = folder / export["file"]
        if fmt == "onnx":
            runner = OnnxBackend(model_file, threads=threads, device=device)
        else:
            if threads:
                torch.set_num_threads(threads)
            runner = TorchBackend(load_scripted(model_file, fmt), device, precision,
                                  token_type_ids="token_type_ids" in export.get("inputs", []))
        label_map = LabelMap.load(folder / LABELS_FILE)
        # The graph's own output width when it declares one (ONNX), else what textclf.json says (TorchScript)
        outputs = getattr(runner, "num_outputs", None) or meta.get("num_labels")
        if isinstance(outputs, int) and not isinstance(outputs, bool) and outputs != len(label_map):
            # Found now, not as a shape error at the first batch (or, with more names than outputs, never)
            raise ModelLoadError(f"{folder / LABELS_FILE} lists {len(label_map)} labels but {model_file.name} has "
                                 f"{outputs} outputs; the export is damaged: copy {LABELS_FILE} back from the model "
                                 f"folder it was exported from ({meta.get('source_model') or 'OUTPUT/best'}), or "
                                 "export again")
        info = {"model": str(folder), "base_model": meta.get("base_model"), "format": fmt,
                "quantize": export.get("quantize")}
        return cls(runner, load_tokenizer(str(folder)), label_map, device, max_length or meta.get("max_length", 128),
                   precision, batch_size, metadata=info, thresholds=saved_task(folder, label_map).thresholds,
                   windows=WindowSpec.from_dict(meta.get("windows"), max_length),
                   normalizer=bundle.read_normalizer(folder, meta), temperature=_saved_temperature(meta))

    def describe(self) -> dict:
        """Labels, backend and limits, for logs and the service's ``/metadata``."""
        return {**self.metadata, **self.backend.describe(), "labels": list(self.label_map.names),
                "multi_label": self.label_map.multi_label, "max_length": self.max_length,
                "windows": self.inputs.to_dict(),
                **self.task.describe(self.label_map.names)}

    def logits(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """Raw logits ``[N, num_labels]`` (float32), in input order."""
        logits, _ = self._forward(_check_texts(texts), batch_size or self.batch_size)
        return logits

    def predict_proba(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """Class probabilities ``[N, num_labels]``: softmax, or per-label sigmoid for multi-label models."""
        return self.probabilities(self.logits(texts, batch_size))

    def predict(self, texts: str | list[str], top_k: int = 1, batch_size: int | None = None):
        """Predict labels for one text (returns one :class:`Prediction`) or a list (returns a list)."""
        single = isinstance(texts, str)
        batch = [texts] if single else _check_texts(texts)
        logits, truncated = self._forward(batch, batch_size or self.batch_size)
        probabilities = self.probabilities(logits)
        names = self.label_map.names
        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        k = min(top_k, len(names))  # more than the labels lists them all
        results = []
        for row, was_truncated in zip(probabilities, truncated):
            label, score, ranked = self.task.decide(row, names, k)  # argmax, or the thresholded label set
            results.append(Prediction(label, score, ranked, bool(was_truncated)))
        return results[0] if single else results

    def evaluate(self, split, batch_size: int | None = None) -> EvalReport:
        """Scores on a labelled :class:`~textclf.data.readers.Split`, computed as ``Trainer.evaluate`` computes them
        (the task's streaming metrics over batches) through this predictor's backend: an exported ONNX or int8
        model is scored on the user's own test set. Labels the model does not know are refused, naming the line."""
        if split.labels is None:
            raise ConfigError(f"{split.source}: the {split.name} split has no labels, so it cannot be evaluated")
        self.label_map.check_known(split.labels, split.name, split.source, where=split.where)
        targets = self.task.targets(self.label_map, split.labels)
        metrics, loss_sum = self.task.metrics("cpu"), 0.0
        step = 8 * (batch_size or self.batch_size)  # a few backend batches at a time: no logits for all rows
        for start in range(0, len(split.texts), step):
            logits = torch.from_numpy(self.logits(split.texts[start:start + step], batch_size))
            labels = torch.from_numpy(targets[start:start + step])
            metrics.update(logits, labels)
            loss_sum += float(self.task.loss(logits, labels)) * len(labels)
        return metrics.report(self.label_map.names, loss_sum)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Probabilities of raw logits (``[N, C]``, from :meth:`logits`): the calibration temperature, then the task's
        softmax or per-label sigmoid."""
        tensor = torch.from_numpy(logits)
        if self.temperature != 1.0:  # calibration: the argmax is unchanged, only the probabilities soften/sharpen
            tensor = tensor / self.temperature
        return self.task.probabilities(tensor).numpy()

    # ---- internals ------------------------------------------------------------------------------------

    def _forward(self, texts: list[str], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        if not texts:
            return np.zeros((0, len(self.label_map)), dtype=np.float32), np.zeros(0, dtype=bool)
        if self.normalizer is not None:  # the model was trained on normalised texts
            texts = self.normalizer(texts)
        return self.inputs.logits(self.backend, self.tokenizer, texts, batch_size, len(self.label_map))


def _as_thresholds(thresholds, num_labels: int) -> Thresholds:
    """A :class:`Thresholds` from one float, ``[C]`` values, a ``Thresholds`` or None (0.5 for every label)."""
    if isinstance(thresholds, Thresholds):
        return thresholds
    values = np.asarray(0.5 if thresholds is None else thresholds, dtype=np.float32)
    return Thresholds(np.broadcast_to(values, (num_labels,)).copy())


def _saved_temperature(meta: dict) -> float:
    """The calibration temperature in a model folder's ``textclf.json`` (1.0: uncalibrated)."""
    return float((meta.get("calibration") or {}).get("temperature", 1.0))


def _check_texts(texts) -> list[str]:
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is a {type(text).__name__}, not a str; pass a list of strings")
    return texts


def load_scripted(path: str | Path, fmt: str) -> torch.nn.Module:
    """Load a TorchScript (``model.pt``) or ``torch.export`` (``model.pt2``) module written by ``textclf export``."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path} does not exist; the export folder is incomplete")
    if fmt == "torchscript":
        with warnings.catch_warnings():  # deprecated upstream; the folder asked for it, so load it without noise
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu")
    if fmt == "torch-export":
        return torch.export.load(str(path)).module()
    raise ModelLoadError(f"{path}: unknown export format {fmt!r}")
