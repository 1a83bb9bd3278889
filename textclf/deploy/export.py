"""Export a trained classifier to ONNX (optionally int8) or TorchScript, checked against PyTorch before it counts.

``textclf export --model OUTPUT/best --format onnx [--quantize int8] [--data test.csv] --output DIR`` writes a
self-contained folder that ``Predictor.from_pretrained(DIR)`` (and ``textclf serve --model DIR``) loads::

    DIR/model.onnx | model.int8.onnx | model.pt | model.pt2   the network
    DIR/tokenizer.json, tokenizer_config.json, ...            its tokenizer
    DIR/labels.json                                           label names
    DIR/textclf.json                                          format, inputs, max_length, versions
    DIR/parity.json                                           the parity check below

Formats:

* ``onnx`` -- ``torch.onnx.export`` (the ``torch.export``-based exporter, the default opset of the installed
  torch), dynamic batch and sequence axes, one file (no external data). ``token_type_ids`` is a graph input
  exactly when the encoder's ``forward`` accepts it; the ONNX backend feeds zeros to it.
* ``--quantize int8`` -- dynamic int8 quantization (int8 weights, activations quantized per batch at run time)
  by ONNX Runtime's quantizer. ``torch.ao.quantization.quantize_dynamic`` is deprecated upstream and not used.
* ``torchscript`` -- ``torch.jit.trace`` while the installed torch still ships it (deprecated since 2.10);
  otherwise, and with ``--format torch-export``, ``torch.export`` saved as ``model.pt2``.

The parity check: the exported model and the PyTorch fp32 original classify the same real texts (a sample of
``--data``, or a built-in set of English and Chinese sentences), once length-sorted in batches and once one text
at a time, so that both dynamic axes are exercised. Max |logit difference| and label agreement must pass the
thresholds; with a labelled ``--data`` file the accuracy change is measured too. A failed check raises
:class:`ExportError` naming, for each check, the flag that sets its threshold, its value, the measured value and
the value that would accept it (``--min-agreement``, ``--atol``, ``--max-accuracy-drop``), and leaves no loadable
export behind. Its report goes into a new or empty ``DIR`` as ``DIR/parity.json``, in a folder claimed with
textclf's marker, so that the next export into ``DIR`` replaces it, with or without ``--overwrite``; anywhere else
(an earlier export in ``DIR``) it goes beside, to ``DIR.parity-failed.json``, and ``DIR`` stays as it was.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path

import numpy as np
import torch

from .. import outputs
from ..data.labels import LABELS_FILE
from ..errors import ConfigError, OutputDirError, TextclfError
from ..model import bundle
from ..model.bundle import copy_inference_settings
from ..model.card import CARD_FILE
from ..model.classifier import WEIGHTS_FILE

FORMATS = ("onnx", "torchscript", "torch-export")
PARITY_FILE = "parity.json"
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.pt", "torch-export": "model.pt2"}
INT8_FILE = "model.int8.onnx"

# Default thresholds. fp32 exports compute the same function, so logits agree to rounding error; int8 changes the
# numbers, so it is judged on labels and accuracy and its logit difference is only reported.
FP32_ATOL = 1e-3
FP32_MIN_AGREEMENT = 0.99
INT8_MIN_AGREEMENT = 0.95
MAX_ACCURACY_DROP = 0.01  # one accuracy point on a labelled file

# Used when no --data is given: varied real-world sentences (questions, news titles, reviews; English and
# Chinese; short and long) so that the check sees realistic token distributions and both dynamic axes.
SAMPLE_TEXTS = [
    "How far is it from Denver to Aspen?",
    "What is the capital of China?",
    "Who wrote the novel Pride and Prejudice?",
    "When did the Berlin Wall fall?",
    "What does NASA stand for?",
    "Why is the sky blue?",
    "How many calories are in a banana?",
    "Name a famous painting by Vincent van Gogh.",
    "The battery life of this laptop is outstanding, easily ten hours of work.",
    "Terrible service, the food arrived cold and the waiter never apologised.",
    "I would not buy this again.",
    "Great value for the price!",
    "Stocks rallied on Tuesday after the central bank left interest rates unchanged.",
    "The home team scored twice in the final five minutes to win the championship.",
    "Scientists report a new method for recycling lithium from used batteries.",
    "Heavy rain is expected across the north of the country this weekend.",
    "The committee will publish its final report on the proposed railway line next spring, after a long public "
    "consultation in which residents, businesses and local councils raised concerns about noise, the cost of the "
    "project and the number of homes that would have to be demolished along the planned route.",
    "ok",
    "?",
    "北京今天天气怎么样？",
    "央行宣布下调存款准备金率0.5个百分点",
    "国足客场2比1战胜对手，提前一轮出线",
    "这款手机的拍照效果非常好，电池也很耐用。",
    "物流太慢了，等了一个星期才到货。",
    "教育部发布2024年高考报名人数，再创历史新高",
    "新能源汽车销量同比增长超过三成，多家车企上调全年目标",
    "科学家在深海发现一种新的发光生物",
    "房价连续三个月环比下降，一线城市成交量回暖",
    "What is the population of Tokyo, and how has it changed over the last fifty years compared with other large "
    "cities in Asia such as Shanghai, Seoul, Jakarta and Mumbai?",
    "Can you recommend a good book about the history of mathematics?",
    "Where is the Eiffel Tower?",
    "Which planet is closest to the sun?",
]


class ExportError(TextclfError):
    """The export failed, or the exported model disagrees with PyTorch."""


@dataclass
class ParityReport:
    """How closely the exported model matches the PyTorch fp32 original on the same texts."""

    format: str
    quantize: str | None
    num_texts: int
    sample_source: str
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    label_agreement: float
    atol: float | None
    min_agreement: float
    passed: bool
    failures: list[str] = field(default_factory=list)
    # With a labelled file: {"file", "num_texts", "reference", "exported", "change", "max_drop"}.
    accuracy: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def format_lines(self) -> list[str]:
        what = f"{self.format}{' ' + self.quantize if self.quantize else ''}"
        lines = [f"parity ({what} vs PyTorch fp32, {self.num_texts} texts from {self.sample_source}): "
                 f"max |logit diff| {self.max_abs_logit_diff:.2e} (mean {self.mean_abs_logit_diff:.2e}"
                 f"{f', allowed {self.atol:.0e}' if self.atol is not None else ''}), label agreement "
                 f"{self.label_agreement:.2%} (required {self.min_agreement:.0%})"]
        if self.accuracy:
            acc = self.accuracy
            lines.append(f"accuracy on {acc['file']} ({acc['num_texts']} texts): PyTorch {acc['reference']:.2%}, "
                         f"exported {acc['exported']:.2%} (change {acc['change'] * 100:+.2f} points, "
                         f"allowed -{acc['max_drop'] * 100:.2f})")
        lines.append("parity check: " + ("passed" if self.passed else "FAILED: " + "; ".join(self.failures)))
        return lines


@dataclass
class ExportResult:
    """What :func:`export_model` wrote."""

    folder: Path
    model_file: Path
    parity: ParityReport
    size_bytes: int
    reference_size_bytes: int
    seconds: float

    @property
    def compression(self) -> float:
        """How many times smaller the exported file is than the PyTorch weights."""
        return self.reference_size_bytes / max(1, self.size_bytes)


def size_change(size: int, reference: int) -> str:
    """``"3.9x smaller"``, ``"1.02x larger"`` or ``"the same size"``: never "0.98x smaller" for a larger file."""
    if size == reference:
        return "the same size"
    return f"{reference / size:.2f}x smaller" if size < reference else f"{size / reference:.2f}x larger"


# ==================================================================================================== export


def export_model(model_dir: str | Path, output_dir: str | Path, format: str = "onnx", quantize: str | None = None,
                 data: str | Path | None = None, text_column: str = "text", label_column: str = "label",
                 encoding: str = "utf-8", num_samples: int = 512, atol: float | None = None,
                 min_agreement: float | None = None, max_accuracy_drop: float = MAX_ACCURACY_DROP,
                 opset: int | None = None, batch_size: int = 64, overwrite: bool = False,
                 log=print, model_class: type | str | None = None) -> ExportResult:
    """Export ``model_dir`` (a training bundle) to ``output_dir`` and check it against PyTorch.

    Args:
        model_dir: ``OUTPUT/best`` or any folder written by ``TextClassifier.save_pretrained``.
        output_dir: the export folder (created; must be empty or absent unless ``overwrite``).
        format: ``"onnx"``, ``"torchscript"`` or ``"torch-export"``.
        quantize: ``None`` or ``"int8"`` (ONNX only).
        data: a CSV/TSV/JSONL file (or class folder) of real texts for the parity check; with labels, the
            accuracy of both models on it is compared too. Default: a built-in set of sentences.
        text_column, label_column, encoding: how to read ``data``.
        num_samples: texts (at most) from ``data`` used for the logit comparison.
        atol: largest allowed max |logit difference| (default 1e-3 for fp32, not checked for int8).
        min_agreement: smallest allowed fraction of equal predicted labels (default 0.99 fp32, 0.95 int8).
        max_accuracy_drop: largest allowed accuracy loss on a labelled ``data`` file (default 0.01 = 1 point).
        opset: ONNX opset (default: the exporter's current default).
        batch_size: texts per forward pass in the check.
        overwrite: replace a non-empty ``output_dir``.
        log: where progress lines go (``print``, or ``lambda *_: None`` for silence).
        model_class: the ``TextClassifier`` subclass ``model_dir`` was saved from, when it was (a custom head): the
            class, ``"module:Class"`` or ``"file.py:Class"`` (imported and run). The export holds the whole graph, so
            loading it needs the class no more.

    Raises:
        ExportError: the export failed or the parity check failed (the message says which number).
    """
    from .predict import Predictor

    started = time.time()
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    if format not in FORMATS:
        raise ConfigError(f"export format must be one of {FORMATS}, got {format!r}")
    if quantize not in (None, "int8"):
        raise ConfigError(f"quantize must be 'int8' or None, got {quantize!r}")
    if quantize and format != "onnx":
        raise ConfigError("--quantize int8 needs --format onnx (int8 runs through ONNX Runtime's quantizer)")
    if format == "torchscript" and not _torchscript_available():
        log("torch.jit is not available in this torch; exporting with torch.export (model.pt2) instead")
        format = "torch-export"
    if num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
    for name, value, low, high in (("atol", atol, 0, math.inf), ("min_agreement", min_agreement, 0, 1),
                                   ("max_accuracy_drop", max_accuracy_drop, 0, 1)):
        if value is not None and not (math.isfinite(value) and low <= value <= high):  # nan turns a check off
            raise ConfigError(f"{name} must be a finite number between {low} and {high}, got {value}")
    outputs.check_not_input(output_dir, {"--model": model_dir})
    _check_output_dir(output_dir, overwrite)
    from ..model.ensemble import is_ensemble
    from ..model.tfidf import is_tfidf_folder

    if is_tfidf_folder(model_dir):
        raise ConfigError(f"{model_dir} is a TF-IDF model folder (textclf baseline): it needs no export, it is "
                          "already the deployable form (a few MB of arrays and JSON, read by numpy and scikit-learn): "
                          f"serve it as it is (textclf serve --model {model_dir}) or copy the folder. (ONNX's "
                          "TfIdfVectorizer operator counts n-grams of token ids: the text would still be split "
                          "outside the graph)")
    if is_ensemble(model_dir):
        raise ConfigError(f"{model_dir} is a seed ensemble; export is for single models: export one member "
                          f"({model_dir}/members/...), or serve the ensemble folder itself with PyTorch")
    default_atol = FP32_ATOL if not quantize else None
    atol = default_atol if atol is None else atol
    min_agreement = min_agreement if min_agreement is not None else (INT8_MIN_AGREEMENT if quantize
                                                                    else FP32_MIN_AGREEMENT)

    reference = Predictor.from_pretrained(model_dir, backend="torch", device="cpu", precision="fp32",
                                          batch_size=batch_size, model_class=model_class)
    reference.inputs.check_exportable(model_dir)  # e.g. attention over windows lives outside the exported graph
    texts, labels, source = _sample_texts(data, reference, text_column, label_column, encoding)
    sample = _pick(texts, num_samples)

    _remove_stale_staging(output_dir)
    staging = outputs.scratch(output_dir, "partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        module = reference.model
        inputs = _input_names(module)
        example = _example_inputs(reference, sample, inputs)
        file_name = INT8_FILE if quantize else MODEL_FILES[format]
        log(f"exporting {model_dir} to {format}{' (int8)' if quantize else ''} ...")
        if format == "onnx":
            fp32_path = staging / MODEL_FILES["onnx"]
            used_opset = _export_onnx(module, example, inputs, fp32_path, opset)
            log(f"  traced the graph ({fp32_path.stat().st_size / 1e6:.1f} MB, opset {used_opset})")
            if quantize:
                log("  quantizing to int8 ...")
                _quantize_int8(fp32_path, staging / INT8_FILE)
                fp32_path.unlink()
        elif format == "torchscript":
            used_opset = None
            _export_torchscript(module, example, staging / file_name)
        else:
            used_opset = None
            _export_torch_export(module, example, inputs, staging / file_name)

        meta = _export_metadata(model_dir, reference, format, quantize, file_name, inputs, used_opset)
        meta = copy_inference_settings(model_dir, staging, meta)  # synonym table, width folding, temperature
        if (model_dir / CARD_FILE).is_file():  # the model card travels with the model, saying what this folder is
            card = (model_dir / CARD_FILE).read_text(encoding="utf-8")
            (staging / CARD_FILE).write_text(
                f"{card.rstrip()}\n\n## This folder\n\nA `textclf export` of `{model_dir}` as {format}"
                f"{' (int8)' if quantize else ''}: it loads with `textclf.Predictor.from_pretrained`, and "
                "`parity.json` holds its agreement with the PyTorch model.\n", encoding="utf-8")
        reference.tokenizer.save_pretrained(str(staging))
        reference.label_map.save(staging / LABELS_FILE)
        bundle.write_meta(staging, meta)

        exported = Predictor.from_pretrained(staging, device="cpu", precision="fp32", batch_size=batch_size)
        log(f"  checking parity on {len(sample)} texts" + (f" and accuracy on {len(texts)} labelled texts ..."
                                                          if labels is not None else " ..."))
        report = check_parity(reference, exported, sample, source, format, quantize, atol, min_agreement)
        if labels is not None:
            report.accuracy = _accuracy_change(reference, exported, texts, labels, str(data), max_accuracy_drop)
            if report.accuracy is None:
                log(f"note: no label in {data} is one of the model's labels; accuracy was not compared")
            elif report.accuracy["change"] < -max_accuracy_drop:
                drop = -report.accuracy["change"]
                report.failures.append(_failure(f"accuracy fell by {_rounded(drop, 4, up=True)} ({drop * 100:.2f} "
                                                "points), more than", "--max-accuracy-drop", max_accuracy_drop,
                                                _rounded(drop, 2, up=True)))
                report.passed = False
        _write_json(staging / PARITY_FILE, report.to_dict())
        for line in report.format_lines():
            log(line)
        if not report.passed:
            existed = output_dir.exists() or output_dir.is_symlink()
            details = _file_failure_report(staging, output_dir)
            if details.parent == output_dir:
                where = f"Nothing was exported; the report is in {details} (the next export into {output_dir} " \
                        "replaces it)"
            else:
                kept = f"; the previous contents of {output_dir} are untouched" if existed else ""
                where = f"Nothing was exported{kept}. Details: {details}"
            instead = ", or export without --quantize" if quantize else ""
            raise ExportError(f"the exported model disagrees with PyTorch: {'; '.join(report.failures)}{instead}. "
                              f"{where}")
        outputs.claim(staging, outputs.EXPORT)
        outputs.replace(output_dir, outputs.EXPORT)  # checked before the work; checked again before it deletes
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    model_file = output_dir / file_name
    result = ExportResult(output_dir, model_file, report, model_file.stat().st_size,
                          (model_dir / WEIGHTS_FILE).stat().st_size, time.time() - started)
    log(f"exported {model_file} ({result.size_bytes / 1e6:.1f} MB; PyTorch weights "
        f"{result.reference_size_bytes / 1e6:.1f} MB, {size_change(result.size_bytes, result.reference_size_bytes)}) "
        f"in {result.seconds:.0f} s")
    return result


def check_parity(reference, exported, texts: list[str], source: str, format: str, quantize: str | None,
                 atol: float | None, min_agreement: float) -> ParityReport:
    """Compare two predictors' logits on ``texts``: batched (length-sorted) and, for a few texts, one at a time."""
    expected = reference.logits(texts)
    got = exported.logits(texts)
    # Batch of one and short sequences: the other end of both dynamic axes.
    few = texts[: min(8, len(texts))]
    expected = np.concatenate([expected, reference.logits(few, batch_size=1)])
    got = np.concatenate([got, exported.logits(few, batch_size=1)])
    diff = np.abs(expected - got)
    # The decision the reference model makes (argmax, or its tuned multi-label thresholds), on both sets of logits.
    task = reference.task
    agreement = float(task.agree(task.decisions(reference.probabilities(expected)),
                                 task.decisions(reference.probabilities(got))).mean())
    failures = []
    largest = float(diff.max())
    if not np.isfinite(got).all():
        failures.append("the exported model produced non-finite logits")  # no threshold accepts these
    elif atol is not None and largest > atol:
        # Rounded up, so that the printed number is above the limit and the suggested --atol passes.
        failures.append(_failure(f"max |logit diff| {_rounded(largest, 3, up=True, significant=True)} is above",
                                 "--atol", atol, _rounded(largest, 2, up=True, significant=True)))
    if agreement < min_agreement:
        # Rounded down: the printed agreement stays below the limit and the suggested --min-agreement passes.
        failures.append(_failure(f"label agreement {_rounded(agreement, 4, up=False)} is below", "--min-agreement",
                                 min_agreement, _rounded(agreement, 2, up=False)))
    return ParityReport(format, quantize, len(texts), source, largest, float(diff.mean()), agreement,
                        atol, min_agreement, not failures, failures)


# ==================================================================================================== formats


class _ExportWrapper(torch.nn.Module):
    """A fixed positional signature for the exporters: ``(input_ids, attention_mask[, token_type_ids])``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask)


class _ExportWrapperWithTypes(_ExportWrapper):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask, token_type_ids)


def _input_names(model) -> list[str]:
    """``token_type_ids`` is an input exactly when the encoder accepts it (BERT, RoBERTa; not DistilBERT)."""
    import inspect

    accepts = "token_type_ids" in inspect.signature(model.encoder.forward).parameters
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if accepts else [])


def _wrap(model, inputs: list[str]) -> torch.nn.Module:
    wrapper = _ExportWrapperWithTypes(model) if "token_type_ids" in inputs else _ExportWrapper(model)
    return wrapper.eval()


def _example_inputs(reference, texts: list[str], inputs: list[str]) -> tuple[torch.Tensor, ...]:
    """A padded batch of at least 2 rows and 3 tokens, so that no axis is specialised to a constant 1."""
    rows = [reference.tokenizer(t, truncation=True, max_length=reference.max_length)["input_ids"] for t in texts[:4]]
    while len(rows) < 2:
        rows.append(rows[0] if rows else [reference.tokenizer.pad_token_id or 0] * 3)
    batch = reference.collate([{"input_ids": r} for r in rows])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if ids.shape[1] < 3:
        pad = 3 - ids.shape[1]
        ids = torch.nn.functional.pad(ids, (0, pad), value=reference.tokenizer.pad_token_id or 0)
        mask = torch.nn.functional.pad(mask, (0, pad), value=0)
    example = (ids, mask)
    return example + ((torch.zeros_like(ids),) if "token_type_ids" in inputs else ())


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and warn about optional packages; keep the user's console readable."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export_onnx(model, example, inputs: list[str], path: Path, opset: int | None) -> int:
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs onnx, onnxscript and onnxruntime; install them with "
                          "`pip install \"textclf[onnx]\"`") from None
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dynamic = {name: {0: batch, 1: sequence} for name in inputs}
    try:
        with _quiet():
            torch.onnx.export(_wrap(model, inputs), example, str(path), dynamo=True, external_data=False,
                              input_names=inputs, output_names=["logits"], dynamic_shapes=dynamic,
                              opset_version=opset)
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except ExportError:
        raise
    except Exception as exc:  # the exporter raises many types; the user needs the message, not the class
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
    used = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset is not None and used != opset:  # the exporter writes its own opset rather than refuse the one asked for
        raise ExportError(f"--opset {opset}: the installed exporter cannot write that opset (it wrote opset {used}); "
                          f"use --opset {used} or leave --opset out")
    return used


def _quantize_int8(fp32_path: Path, int8_path: Path) -> None:
    """Dynamic int8: weights of MatMul/Gemm stored as int8, activations quantized per batch at run time."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise ExportError("int8 quantization needs onnxruntime; `pip install \"textclf[onnx]\"`") from None
    prepared = fp32_path.with_name("model.prepared.onnx")
    with _quiet():
        try:
            # Shape inference and graph cleanup first, as ONNX Runtime recommends before quantizing.
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            source = prepared
        except Exception:  # pre-processing is an optimisation; quantize the exported graph as it is
            source = fp32_path
        try:
            quantize_dynamic(str(source), str(int8_path), weight_type=QuantType.QInt8, per_channel=False)
        except Exception as exc:
            raise ExportError(f"ONNX Runtime quantization failed: {type(exc).__name__}: {exc}") from exc
        finally:
            prepared.unlink(missing_ok=True)


def _torchscript_available() -> bool:
    return hasattr(torch, "jit") and hasattr(torch.jit, "trace")


def _export_torchscript(model, example, path: Path) -> None:
    inputs = ["input_ids", "attention_mask", "token_type_ids"][: len(example)]
    try:
        with _quiet():
            traced = torch.jit.trace(_wrap(model, inputs), example, strict=False, check_trace=False)
            torch.jit.save(traced, str(path))
    except Exception as exc:
        raise ExportError(f"torch.jit.trace failed: {type(exc).__name__}: {exc}; "
                          "try --format torch-export or --format onnx") from exc


def _export_torch_export(model, example, inputs: list[str], path: Path) -> None:
    # AUTO lets torch.export find the valid range itself (e.g. sequence <= the position embeddings); an axis it had
    # to specialise would show up in the parity check, which runs other batch sizes and lengths.
    dynamic = {name: {0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO} for name in inputs}
    try:
        with _quiet():
            program = torch.export.export(_wrap(model, inputs), example, dynamic_shapes=dynamic)
            torch.export.save(program, str(path))
    except Exception as exc:
        raise ExportError(f"torch.export failed: {type(exc).__name__}: {exc}; try --format onnx") from exc


# ==================================================================================================== helpers


def _remove_stale_staging(output_dir: Path) -> None:
    """Delete the staging folders of exports that were killed (their process is gone); a running one's stays."""
    for folder in outputs.scratch_glob(output_dir.parent, output_dir.name, "partial"):
        pid = outputs.scratch_pid(folder)
        if pid is not None and not _process_alive(pid):
            shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputDirError(f"{output_dir} exists and is not a folder; choose another --output")
    if output_dir.is_dir() and _holds_only_a_failure_report(output_dir):
        if not outputs.is_marked(output_dir):
            # Earlier releases wrote the report into the folder without the marker; textclf cannot tell that
            # parity.json from a user's, so it says what it is and leaves the deleting to the user.
            raise OutputDirError(
                f"output folder {output_dir} holds only {PARITY_FILE}, the report of an export that failed its parity "
                f"check, written by a textclf that did not mark the folder as its own, so textclf will not replace "
                f"it: remove the report (rm {output_dir / PARITY_FILE}) and run again, or choose another --output")
        # Otherwise it is our own failed attempt at this export, holding nothing else: the folder counts as empty,
        # and outputs.replace (marker and layout checked) removes the report before the new export moves in.
    elif output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise OutputDirError(f"{output_dir} is not empty; pass --overwrite (overwrite=True) to replace it "
                             "or choose another --output")
    outputs.check_replaceable(output_dir, outputs.EXPORT)  # --overwrite replaces an earlier export and nothing else


def _holds_only_a_failure_report(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but a failed parity check's ``parity.json`` (besides marker and lock)."""
    names = {entry.name for entry in folder.iterdir()} - {outputs.MARKER, outputs.LOCK_FILE}
    path = folder / PARITY_FILE
    if names != {PARITY_FILE} or not path.is_file() or path.is_symlink():
        return False
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and report.get("passed") is False and "failures" in report


def _file_failure_report(staging: Path, output_dir: Path) -> Path:
    """Put a failed check's report where the user looks, leaving nothing loadable; returns its path.

    Into a new or empty ``output_dir`` (or one holding only an earlier failure report) it goes as
    ``output_dir/parity.json``, in a folder claimed with textclf's marker: the folder is then what textclf wrote
    and nothing else, so the next export into it replaces it like any export folder (outputs.py's rules), instead
    of finding an unmarked folder it must refuse. The staged folder, stripped to the report and claimed, is moved
    into place by one rename, which succeeds only onto a missing or empty folder: a folder the user has filled since
    the check is never marked, and gets the report beside it instead, ``OUTPUT.parity-failed.json``, as an earlier
    export in ``output_dir`` does.
    """
    outputs.clear(staging, keep={PARITY_FILE})  # our own staging folder: only the report stays
    outputs.claim(staging, outputs.EXPORT)
    if output_dir.is_dir() and not output_dir.is_symlink() and _holds_only_a_failure_report(output_dir) \
            and outputs.is_marked(output_dir):
        # An earlier failed attempt's report, superseded by this one. Changed meanwhile (files added): the rename
        # below refuses the folder and the report goes beside it.
        with contextlib.suppress(OutputDirError):
            outputs.replace(output_dir, outputs.EXPORT)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(staging, output_dir)
        return output_dir / PARITY_FILE
    except OSError:  # not empty (an earlier export, the user's files), or not a folder
        details = output_dir.with_name(f"{output_dir.name}.parity-failed.json")
        shutil.copy2(staging / PARITY_FILE, details)
        return details


def _failure(description: str, flag: str, limit: float, accept: str) -> str:
    """One failed check, naming the flag that sets its threshold, its value, and a value that accepts the result."""
    return f"{description} {flag} {_plain(limit)}: pass {flag} {accept} to accept it"


def _plain(value: float) -> str:
    """A threshold as the user would type it (0.95, 1, 0.001), exact where ``g`` would round it."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def _rounded(value: float, places: int, up: bool, significant: bool = False) -> str:
    """``value`` rounded up or down to ``places`` decimals (or significant digits), as a plain number.

    Rounding is always away from the threshold the value failed, so the printed value never seems to pass
    (0.94999 agreement is not shown as 0.95 against --min-agreement 0.95) and a suggested setting does pass.
    """
    exact = Decimal(repr(value))  # the shortest decimal that reads back as ``value``
    if significant and exact != 0:
        places = places - exact.adjusted() - 1
    rounded = exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_CEILING if up else ROUND_FLOOR)
    return f"{float(rounded):g}"


def _sample_texts(data, reference, text_column: str, label_column: str, encoding: str):
    """(texts, labels or None, description) for the check."""
    if data is None:
        return list(SAMPLE_TEXTS), None, "the built-in sample (pass --data FILE for your own texts)"
    from ..config import DataConfig
    from ..data.readers import read_split

    config = DataConfig(text_column=text_column, label_column=label_column, encoding=encoding,
                        multi_label=reference.label_map.multi_label)
    split = read_split(data, "parity", config, require_labels=False)
    if not split.texts:
        raise ExportError(f"{data} holds no texts for the parity check")
    return list(split.texts), split.labels, str(data)


def _pick(texts: list[str], n: int) -> list[str]:
    if len(texts) <= n:
        return list(texts)
    rows = np.sort(np.random.default_rng(0).choice(len(texts), size=n, replace=False))
    return [texts[i] for i in rows]


def _accuracy_change(reference, exported, texts, labels, source: str, max_drop: float) -> dict | None:
    label_map, task = reference.label_map, reference.task
    known = [i for i, label in enumerate(labels) if label_map.knows(label)]
    if not known:
        return None
    texts = [texts[i] for i in known]
    gold = task.gold(task.targets(label_map, [labels[i] for i in known]))

    def accuracy(predictor) -> float:  # exact match: the label, or the whole label set
        predicted = task.gold(task.targets(label_map, [p.label for p in predictor.predict(texts)]))
        return float(task.agree(predicted, gold).mean())

    before, after = accuracy(reference), accuracy(exported)
    # Rounded to 9 places: a difference of two ratios carries float noise (0.04 - 0.06 = -0.019999999999999997)
    # that must not decide a check at its threshold, nor the value a failure message suggests.
    return {"file": source, "num_texts": len(texts), "reference": before, "exported": after,
            "change": round(after - before, 9), "max_drop": max_drop}


def _export_metadata(model_dir: Path, reference, format: str, quantize: str | None, file_name: str,
                     inputs: list[str], opset: int | None) -> dict:
    from .. import __version__

    source_meta = bundle.read_meta(model_dir)
    versions = {"textclf": __version__, "torch": torch.__version__}
    if format == "onnx":
        import onnx
        import onnxruntime

        versions.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    return {
        "export": {"format": format, "file": file_name, "quantize": quantize, "inputs": inputs,
                   "outputs": ["logits"], "opset": opset, "dynamic_axes": {"0": "batch", "1": "sequence"}},
        "backend": "onnx" if format == "onnx" else "torch",
        "max_length": reference.max_length,
        "num_labels": len(reference.label_map),
        "multi_label": reference.label_map.multi_label,
        "thresholds": source_meta.get("thresholds"),  # tuned multi-label thresholds travel with the model
        "pooling": source_meta.get("pooling"),
        "windows": source_meta.get("windows"),  # the Predictor windows long texts the way the model was trained
        "base_model": source_meta.get("base_model"),
        "source_model": str(model_dir.resolve()),
        "source_step": source_meta.get("step"),
        "versions": versions,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _write_json(path: Path, payload: dict) -> None:
    outputs.write_file_atomically(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
