"""The ``textclf`` command line: subcommands over the same Python API.

``textclf train | evaluate | predict | info | report | export | serve | baseline | audit | pretrain | tokenizer train``
(also ``python -m textclf ...``).

Training flags are generated from the config dataclasses, so ``--help`` always lists every field with the
same text as the configuration reference. Values resolve in this order: dataclass defaults, then a
``--config`` YAML/JSON file (sections ``run``, ``data``, ``model``, ``train``), then flags.

Exit codes: 0 success, 2 bad input or usage (one readable paragraph, no traceback), 1 anything else, and
128 + the signal number (130 for Ctrl-C, 143 for SIGTERM) when ``train`` stopped on a signal after writing a
checkpoint: the run is not finished, so scripts chaining ``textclf train ... && next`` do not go on.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import math
import os
import shlex
import sys
import types
import typing
import warnings
from pathlib import Path

from . import outputs
from .config import DataConfig, ModelConfig, RunConfig, RunPaths, TrainConfig, field_docs, load_mapping
from .errors import ConfigError, DataError, OutputDirError, TextclfError
from .model import bundle
from .train.phases import command_clock, current_clock

# Config sections whose fields become flags; a field may get a flag name other than its own.
SECTIONS = (("run", RunPaths), ("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig))
FLAG_NAMES = {("model", "name"): "--model"}


class UsageError(TextclfError):
    """The command line itself is wrong."""


def _number_in(kind: type, low: float | None, high: float | None):
    """An argparse type: an ``int`` or a finite ``float`` within [low, high] (None: unbounded), else a usage error
    naming the range (``nan`` would turn a check off silently, 0 texts per batch would never finish)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got "
                                             f"{text!r}") from None
        if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(_range_message(low, high, text))
        return value

    return parse


def _range_message(low, high, text: str) -> str:
    if high is None:
        return f"must be a number >= {low}, got {text}"
    return f"must be a number between {low} and {high}, got {text}"


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but usage errors go through the same exit-code-2 path as bad input."""

    def error(self, message: str) -> typing.NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


# ==================================================================================================== parser


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="textclf", description="Fine-tune transformer encoders into text classifiers.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"textclf {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    commands.required = True

    train = commands.add_parser("train", help="fine-tune a model on labelled data",
                                description="Fine-tune a model. Every flag can also be set in --config.")
    _add_config_flags(train, config_help="YAML/JSON config (sections run, data, model, train); flags override it. "
                      "Every run writes its resolved config to OUTPUT/config.yaml.")
    train.add_argument("--resume", metavar="auto|DIR", help="continue from the newest complete checkpoint in the "
                       "output folder (auto) or from the checkpoint folder DIR")
    train.add_argument("--overwrite", action="store_true", help="replace a previous run in the output folder")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--seeds", metavar="S1,S2,...", help="train one model per seed into OUTPUT/seed-N and combine "
                       "them into a soft-voting ensemble in OUTPUT/ensemble (load it like any model folder)")
    train.add_argument("--baseline", action="store_true", help="also fit the TF-IDF baseline on the same splits, "
                       "print its scores beside the model's and store them in metrics.json under \"baseline\"")
    train.add_argument("--cv", type=int, metavar="K", help="K-fold cross-validation over train+dev instead of one "
                       "run: one model per fold in OUTPUT/fold-k, mean ± std in OUTPUT/cv.json")
    train.set_defaults(handler=cmd_train, paths=_paths_of_training)

    lr_find = commands.add_parser("lr-find", help="learning-rate range test: loss against lr, and a suggested lr",
                                  description="Train for --steps optimizer steps while the learning rate grows "
                                  "exponentially from --start-lr to --end-lr, with the data, model and settings "
                                  "train would use; plot the loss against the lr (OUTPUT/lr_find.png, TensorBoard "
                                  "under OUTPUT/runs) and suggest an lr. Nothing is trained for keeps.")
    _add_config_flags(lr_find, config_help="YAML/JSON config, as for train; flags override it")
    lr_find.add_argument("--start-lr", type=_number_in(float, 1e-12, None), default=1e-7,
                         help="learning rate of the first step (default 1e-7)")
    lr_find.add_argument("--end-lr", type=_number_in(float, 1e-12, None), default=1.0,
                         help="learning rate of the last step (default 1)")
    lr_find.add_argument("--steps", type=_number_in(int, 5, None), default=100,
                         help="optimizer steps (default 100); the test stops early once the loss diverges")
    lr_find.add_argument("--overwrite", action="store_true", help="replace an earlier lr-find in the output folder")
    lr_find.set_defaults(handler=cmd_lr_find, paths=_paths_of_training)

    tune = commands.add_parser("tune", help="time-boxed search of lr, epochs, trained layers and recipe (Optuna)",
                               description="Search the learning rate, the epochs, the layers that train and (when "
                               "few-shot training fits the data) the recipe within --budget, starting from what "
                               "--recipe auto picks; settings given as flags or in --config are held fixed. Trials "
                               "are scored on dev (successive halving over epochs) or, with no dev split, by "
                               "--folds-fold cross-validation. Each trial is a run folder in OUTPUT/trials; the best "
                               "model is copied to OUTPUT/best. Run the same command again to continue a search.")
    _add_config_flags(tune, config_help="YAML/JSON config, as for train; flags override it")
    tune.add_argument("--budget", required=True, metavar="DURATION", help="wall-clock time for the whole search, "
                      "e.g. 20m, 1h30m, 90s (over every session that continues it)")
    tune.add_argument("--trials", type=_number_in(int, 1, None), metavar="N",
                      help="stop after N finished trials even if time is left")
    tune.add_argument("--folds", type=_number_in(int, 2, 20), default=3, metavar="K",
                      help="cross-validation folds per trial when there is no dev split (default 3)")
    tune.add_argument("--overwrite", action="store_true", help="start afresh over an earlier search in --output")
    tune.set_defaults(handler=cmd_tune, paths=_paths_of_training)

    evaluate = commands.add_parser("evaluate", help="score a trained model on a labelled file",
                                   description="Score a trained model on a labelled file.")
    evaluate.add_argument("--model", required=True, metavar="DIR", help="model folder (e.g. OUTPUT/best)")
    _add_model_class_flag(evaluate)
    evaluate.add_argument("--data", required=True, metavar="FILE", help="labelled CSV/TSV/JSONL file or class folder")
    evaluate.add_argument("--output", metavar="FILE", help="also write the report as JSON to FILE, and as a page to "
                          "look at beside it (FILE with the suffix .html)")
    _add_reading_flags(evaluate, as_trained=True)
    evaluate.add_argument("--batch-size", type=_number_in(int, 1, None), default=128,
                          help="texts per batch (default 128)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    evaluate.add_argument("--errors", metavar="FILE.csv", help="write the misclassified rows (line, text, label, "
                          "top-2 labels and probabilities) to FILE.csv, most confident mistakes first")
    evaluate.set_defaults(handler=cmd_evaluate, paths=_paths_of_evaluate)

    predict = commands.add_parser("predict", help="classify texts with a trained model",
                                  description="Classify texts given as arguments or in a file.")
    predict.add_argument("--model", required=True, metavar="DIR", help="model folder (e.g. OUTPUT/best)")
    _add_model_class_flag(predict)
    predict.add_argument("--input", metavar="FILE",
                         help=".txt (one text per line) or CSV/TSV/JSONL with a text column")
    predict.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify (instead of --input)")
    predict.add_argument("--top-k", type=_number_in(int, 1, None), default=1, metavar="K",
                         help="also list the K most likely labels (1 to the number of labels)")
    predict.add_argument("--output", metavar="FILE.jsonl",
                         help="write one JSON object per text here instead of stdout")
    _add_reading_flags(predict, labels=False)
    predict.add_argument("--batch-size", type=_number_in(int, 1, None), default=64,
                         help="texts per batch (default 64)")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    predict.add_argument("--quiet", action="store_true", help="no progress bar (shown on a terminal when there are "
                         "more than 8 batches of texts)")
    predict.set_defaults(handler=cmd_predict, paths=_paths_of_predict)

    info = commands.add_parser("info", help="describe a trained model",
                               description="Labels, base encoder, training config and metrics of a model folder.")
    info.add_argument("--model", required=True, metavar="DIR", help="model folder (e.g. OUTPUT/best)")
    info.set_defaults(handler=cmd_info, paths=_writes_nothing)

    report = commands.add_parser("report", help="write a run's report.html (scores, curves, errors) to look at",
                                 description="One self-contained HTML page about a training or baseline run folder: "
                                             "headline scores, the per-class table, the confusion matrix, curves, "
                                             "calibration, the most confident errors. Written at the end of every "
                                             "train and baseline run as well.")
    report.add_argument("run", metavar="RUN_DIR", help="a training (or textclf baseline) output folder")
    report.add_argument("--output", metavar="FILE", help="where to write the page (default RUN_DIR/report.html)")
    report.set_defaults(handler=cmd_report, paths=_paths_of_report)

    export = commands.add_parser("export", help="export a model to ONNX (optionally int8) or TorchScript",
                                 description="Export a trained model into a self-contained folder and check it "
                                 "against PyTorch (max |logit diff|, label agreement, accuracy change on --data); "
                                 "a failed check fails the export.")
    export.add_argument("--model", required=True, metavar="DIR", help="model folder (e.g. OUTPUT/best)")
    _add_model_class_flag(export)
    export.add_argument("--output", required=True, metavar="DIR", help="export folder to create")
    export.add_argument("--format", default="onnx", choices=["onnx", "torchscript", "torch-export"],
                        help="onnx (default), torchscript (torch.jit.trace, deprecated upstream; falls back to "
                        "torch-export where torch has no torch.jit) or torch-export (model.pt2)")
    export.add_argument("--quantize", choices=["int8"], help="dynamic int8 quantization with ONNX Runtime (onnx only)")
    export.add_argument("--data", metavar="FILE", help="texts for the parity check (CSV/TSV/JSONL/class folder); with "
                        "labels the accuracy change is checked too (default: a built-in sample of sentences)")
    _add_reading_flags(export)
    export.add_argument("--num-samples", type=_number_in(int, 1, None), default=512, metavar="N",
                        help="texts from --data compared "
                        "logit by logit (default 512)")
    export.add_argument("--atol", type=_number_in(float, 0, None), metavar="X",
                        help="largest allowed max |logit diff| "
                        "(default 1e-3; not checked for int8)")
    export.add_argument("--min-agreement", type=_number_in(float, 0, 1), metavar="F",
                        help="smallest allowed fraction of equal labels "
                        "(default 0.99, int8 0.95)")
    export.add_argument("--max-accuracy-drop", type=_number_in(float, 0, 1), default=0.01, metavar="F",
                        help="largest allowed "
                        "accuracy loss on a labelled --data file, as a fraction (default 0.01 = 1 point)")
    export.add_argument("--opset", type=_number_in(int, 1, None),
                        help="ONNX opset (default: the exporter's current one)")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty --output folder")
    export.set_defaults(handler=cmd_export, paths=_paths_of_export)

    serve = commands.add_parser("serve", help="serve a model over HTTP (FastAPI, micro-batching)",
                                description="Serve POST /classify, GET /health, /metadata, /stats and /docs. "
                                "Concurrent requests are batched server-side. Set the environment variable named by "
                                "--api-key-env to require an X-API-Key header.")
    serve.add_argument("--model", required=True, metavar="DIR", help="model folder or export folder")
    _add_model_class_flag(serve)
    serve.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"],
                       help="auto (what the folder holds), torch or onnx")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; 0.0.0.0 for all)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    serve.add_argument("--threads", type=int, help="intra-op threads of ONNX Runtime, or of torch for PyTorch "
                       "models (default: one per core)")
    serve.add_argument("--max-batch-size", type=_number_in(int, 1, None), default=64,
                       help="texts per model call (default 64)")
    serve.add_argument("--max-wait-ms", type=_number_in(float, 0, 60_000), default=5.0, help="how long a request "
                       "waits for others to join its batch, 0 to 60000 (default 5)")
    serve.add_argument("--no-batching", dest="batching", action="store_false", help="one model call per request")
    serve.add_argument("--max-texts-per-request", type=_number_in(int, 1, None), default=64,
                       help="default 64 (more: 413)")
    serve.add_argument("--max-text-chars", type=_number_in(int, 1, None), default=10_000,
                       help="default 10000 (longer: 413)")
    serve.add_argument("--max-body-bytes", type=_number_in(int, 1, None), default=1_000_000,
                       help="default 1000000 (larger: 413)")
    serve.add_argument("--read-timeout", type=_number_in(float, 0.1, None), default=20.0, metavar="S",
                       help="seconds a client has to send a request's headers, and as long again for its body; "
                       "then 408 and the connection is closed (default 20)")
    serve.add_argument("--max-connections", type=_number_in(int, 1, None), default=512, metavar="N",
                       help="open connections, idle and stalled ones included; a request beyond them gets 503 "
                       "(default 512)")
    serve.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the API key; requests "
                       "then need the X-API-Key header, and an unset or empty VAR refuses to start (default: "
                       "TEXTCLF_API_KEY; when it is unset, no key is needed)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--no-access-log", dest="access_log", action="store_false", help="no line per request")
    serve.add_argument("--drain-seconds", type=_number_in(float, 0, None), default=1.0, metavar="S",
                       help="after SIGTERM/SIGINT, keep answering new requests with 503 for at least S seconds (and "
                       "until in-flight ones are done) before closing the port (default 1)")
    serve.add_argument("--graceful-timeout", type=_number_in(float, 0, None), default=30.0, metavar="S",
                       help="seconds to finish in-flight requests after SIGTERM/SIGINT (default 30)")
    serve.set_defaults(handler=cmd_serve, paths=_writes_nothing)
    _add_baseline_and_audit_commands(commands)
    _add_select_command(commands)
    _add_distill_command(commands)
    _add_pretrain_commands(commands)
    return parser


def _add_model_class_flag(parser: argparse.ArgumentParser) -> None:
    """--model-class: the opt-in to load a model saved from a TextClassifier subclass (textclf.model.custom)."""
    parser.add_argument("--model-class", metavar="MODULE:CLASS", help="the TextClassifier subclass the model was "
                        "saved from (a custom head), as MODULE:CLASS (importable) or FILE.py:CLASS; this imports and "
                        "runs that code, so only for code you trust (an export folder needs none)")


def _add_config_flags(parser: argparse.ArgumentParser, config_help: str, names: dict | None = None) -> None:
    """--config FILE, then one flag per config field, help text from the field's comment; unset flags leave the value
    alone. ``names``: this command's own flag names for some fields (``{("model", "name"): "--student"}``)."""
    parser.add_argument("--config", metavar="FILE", help=config_help)
    for section, klass in SECTIONS:
        group = parser.add_argument_group(f"{section} settings")
        docs = field_docs(klass)
        hints = typing.get_type_hints(klass)
        for f in dataclasses.fields(klass):
            flag = {**FLAG_NAMES, **(names or {})}.get((section, f.name), "--" + f.name.replace("_", "-"))
            kind, optional = _base_type(hints[f.name])
            help_text = f"{docs.get(f.name, '')} (default: {f.default})".replace("%", "%%")
            dest = f"{section}.{f.name}"
            if kind is bool:
                group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                                   default=argparse.SUPPRESS, help=help_text)
            else:
                group.add_argument(flag, dest=dest, type=_parser_for(kind, optional, flag), default=argparse.SUPPRESS,
                                   metavar=f.name.upper(), help=help_text)


def _add_reading_flags(parser: argparse.ArgumentParser, labels: bool = True, as_trained: bool = False) -> None:
    """--text-column, --label-column, --encoding; ``as_trained``: unset flags read files as the model's training
    files were read (saved in its textclf.json), else as the defaults."""
    default = (lambda value: None) if as_trained else (lambda value: value)
    where = "as in training, else {}" if as_trained else "{}"
    parser.add_argument("--text-column", default=default("text"),
                        help=f"column/key holding the text (default: {where.format('text')})")
    if labels:
        parser.add_argument("--label-column", default=default("label"),
                            help=f"column/key holding the label (default: {where.format('label')})")
    parser.add_argument("--encoding", default=default("utf-8"),
                        help=f"file encoding, e.g. gbk (default: {where.format('utf-8')})")


def _base_type(hint) -> tuple[type, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def _parser_for(kind: type, optional: bool, flag: str):
    def parse(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}{' or none' if optional else ''}, "
                                             f"got {text!r}") from None

    parse.__name__ = kind.__name__
    return parse


# ==================================================================================================== commands


def resolve_run_config(args: argparse.Namespace) -> RunConfig:
    """Defaults, then the --config file, then flags; every section validated with errors that name the field."""
    return RunConfig.from_dict(given_settings(args), source=args.config or "command line")


def given_settings(args: argparse.Namespace) -> dict[str, dict]:
    """The settings the user gave, by section: the --config file's, then the flags' (argparse leaves flags that
    were not given out of ``args``)."""
    raw = load_mapping(args.config) if getattr(args, "config", None) else {}
    for name, _ in SECTIONS:
        if not isinstance(raw.get(name) or {}, dict):
            raise ConfigError(f"{args.config}: {name}: expected a mapping of fields, got {type(raw[name]).__name__}")
    sections = {name: dict(raw.get(name) or {}) for name, _ in SECTIONS}
    unknown = set(raw) - set(sections)
    if unknown:
        raise ConfigError(f"{args.config}: unknown section(s) {sorted(unknown)}; expected some of {list(sections)}")
    for dest, value in vars(args).items():
        if "." in dest:
            section, name = dest.split(".", 1)
            sections[section][name] = value
    return sections


def _config_with_data_and_output(args: argparse.Namespace, command: str) -> RunConfig:
    """The resolved config of a command that trains: it needs training data and an output folder."""
    config = resolve_run_config(args)
    if not config.run.data:
        raise UsageError(f"textclf {command}: no training data; pass --data DIR_OR_FILE (or set run.data in --config)")
    if not config.run.output:
        raise UsageError(f"textclf {command}: no output folder; pass --output DIR (or set run.output in --config)")
    return config


def cmd_train(args: argparse.Namespace) -> int:
    from .data.readers import load_dataset
    from .train.trainer import Trainer

    if getattr(args, "seeds", None) and getattr(args, "cv", None) is not None:
        raise UsageError("textclf train: --seeds (a seed ensemble) and --cv (cross-validation) are separate runs; "
                         "give one of them")
    config = _config_with_data_and_output(args, "train")  # the output folder passed check_paths already
    if config.train.teacher is not None or config.train.recipe == "distill" or config.data.unlabelled:
        raise UsageError("textclf train: a teacher and unlabelled texts mean distillation; run it as textclf distill "
                         "--teacher FOLDER [--unlabelled FILE] (with the same data flags)")
    with current_clock().phase("read data"):
        data = _training_data(config, load_dataset)
    if config.train.recipe == "auto":
        with current_clock().phase("choose recipe"):
            config = _choose_recipe(args, config, data)
    if getattr(args, "seeds", None):
        return _train_ensemble(args, config, data)
    if getattr(args, "cv", None) is not None:
        return _train_cross_validation(args, config, data)
    trainer = Trainer(model=config.model.name, data=data, output_dir=config.run.output, config=config.train,
                      model_config=config.model, data_config=config.data, overwrite=args.overwrite,
                      progress=not args.quiet)
    return _fit_and_report(args, trainer, data)


def _fit_and_report(args: argparse.Namespace, trainer, data) -> int:
    """Train, then print the report, where the models are and how to look at the run (rank 0)."""
    trainer.resume_hint = resume_command(getattr(args, "argv", None))  # said once, by the trainer, after a signal
    result = trainer.fit(resume=args.resume)
    if result.interrupted or not trainer.runtime.is_main:  # under torchrun, rank 0 reports for the whole job
        return 128 + result.signal if result.interrupted else 0
    out = Path(trainer.output_dir)
    report = (out / "report.txt").read_text(encoding="utf-8") if (out / "report.txt").is_file() else ""
    print(report)
    if (out / "best").is_dir():
        print(f"best model: {out / 'best'} (step {result.best_step}); last model: {out / 'last'}")
    else:  # no dev split: nothing chose a best step
        print(f"model: {out / 'last'} (no dev split, so the final weights; there is no best/)")
    print(f"TensorBoard: tensorboard --logdir {out / 'runs'}")
    print(f"time: {trainer.clock.summary()}; every phase in {out / 'timings.json'}")
    if getattr(args, "baseline", False):
        from .tools.baseline import compare_with_baseline

        print("\nTF-IDF baseline on the same splits (also in metrics.json under \"baseline\"):\n"
              + compare_with_baseline(out, data))
    return 0


# textclf distill names the model it trains the student, and the distillation settings as the literature does.
DISTILL_FLAG_NAMES = {("model", "name"): "--student", ("model", "keep_layers"): "--student-layers",
                      ("model", "layer_choice"): "--student-layer-choice", ("train", "distill_alpha"): "--alpha",
                      ("train", "distill_temperature"): "--temperature"}


def _add_distill_command(commands) -> None:
    distill = commands.add_parser(
        "distill", help="train a smaller, faster model (the student) on a trained model's probabilities (the teacher)",
        description="Distillation: the student learns the teacher's softened probabilities on the labelled rows of "
        "--data and on the texts of --unlabelled, and the labels (weighed against the teacher by --alpha; --alpha 0 "
        "trains the same student on the labels alone, the control). The teacher is a model folder (OUTPUT/best), a "
        "seed-ensemble folder (OUTPUT/ensemble) or an export; its probabilities are computed once and cached in the "
        "run folder. The student is --student (an encoder name or folder) or, by default, a copy of the teacher's "
        "own model keeping --student-layers of its encoder layers (half by default), initialised from the teacher. "
        "Epochs, lr and batch size default to what --recipe auto picks for fine-tuning on the data; every train "
        "flag applies. The student's folders are ordinary model folders (predict, evaluate, export, serve).")
    _add_config_flags(distill, config_help="YAML/JSON config (sections run, data, model, train), as for train; flags "
                      "override it", names=DISTILL_FLAG_NAMES)
    distill.add_argument("--resume", metavar="auto|DIR", help="continue from the newest complete checkpoint in the "
                         "output folder (auto) or from the checkpoint folder DIR")
    distill.add_argument("--overwrite", action="store_true", help="replace a previous run in the output folder")
    distill.add_argument("--quiet", action="store_true", help="no progress bar")
    distill.set_defaults(handler=cmd_distill, paths=_paths_of_training)


def cmd_distill(args: argparse.Namespace) -> int:
    from .data.labels import LabelMap
    from .data.readers import load_dataset
    from .model.ensemble import load_model
    from .train.distill import check_same_labels, check_teacher, student_source
    from .train.trainer import Trainer

    config = _config_with_data_and_output(args, "distill")
    given = given_settings(args)
    if not config.train.teacher:
        raise UsageError("textclf distill: no teacher; pass --teacher FOLDER: OUTPUT/best of a training run, the "
                         "OUTPUT/ensemble folder of textclf train --seeds, or a textclf export folder")
    if "recipe" in given["train"] and config.train.recipe not in ("distill", "auto"):
        raise UsageError(f"textclf distill: --recipe {config.train.recipe} is not distillation; use textclf train")
    data = load_dataset(config.run.data, dev=config.run.dev, test=config.run.test, config=config.data)
    teacher = check_teacher(config.train.teacher)
    check_same_labels(teacher, LabelMap.load(teacher), data.label_map)  # before a student is built on either
    model: object = config.model.name
    model_config = config.model
    if "name" not in given["model"]:  # the student is the teacher's own model, cut to fewer layers
        source = student_source(config.train.teacher)
        model = load_model(source)
        layers = len(model.encoder_layers())
        keep = model_config.keep_layers if "keep_layers" in given["model"] else max(1, layers // 2)
        model_config = dataclasses.replace(model_config, name=str(source), keep_layers=keep,
                                           pooling=model.pooling, normalize=model.normalize)
    config = dataclasses.replace(config, model=model_config, train=_distill_settings(args, config, data, given))
    trainer = Trainer(model=model, data=data, output_dir=config.run.output, config=config.train,
                      model_config=config.model, data_config=config.data, overwrite=args.overwrite,
                      progress=not args.quiet)
    return _fit_and_report(args, trainer, data)


def _distill_settings(args: argparse.Namespace, config: RunConfig, data, given: dict) -> TrainConfig:
    """The student's epochs, lr, batch size and max_length: what --recipe auto picks for fine-tuning the student on
    the data, with every setting given kept; a resumed run keeps the settings it started with."""
    from .model.classifier import load_tokenizer
    from .train.recipes import resolve_auto

    resumed = _resumed_settings(args, config, given)
    if resumed is not None:
        return resumed[0]
    plain = dataclasses.replace(config.train, recipe="fine-tune", teacher=None)
    recipe = resolve_auto(data, load_tokenizer(config.model.name), config.model, plain,
                          explicit_train=set(given["train"]) | {"recipe"},
                          explicit_model=set(given["model"]) | {"freeze_layers_below"})
    print(recipe.reason.replace("recipe auto: fine-tune", "distill: sized as auto fine-tuning", 1))
    return dataclasses.replace(recipe.train, recipe="distill", teacher=config.train.teacher)


def _training_data(config: RunConfig, load_dataset):
    """The data set a run trains on: the labelled files, or (``--label-names``) rows made from the label names and
    the unlabelled pool in ``--data``."""
    if not config.data.label_names:
        return load_dataset(config.run.data, dev=config.run.dev, test=config.run.test, config=config.data)
    from .data.label_names import read_label_names
    from .tools.zero_shot import dataset_from_label_names

    if config.run.dev:
        raise UsageError("textclf train --label-names: a dev file means labelled rows; train on them (without "
                         "--label-names), or give them as --test to score the zero-shot model")
    return dataset_from_label_names(config.run.data, read_label_names(config.data.label_names), config.model.name,
                                    test=config.run.test, data_config=config.data, device=config.train.device)


def cmd_lr_find(args: argparse.Namespace) -> int:
    from .data.readers import load_dataset
    from .train.trainer import Trainer

    config = _config_with_data_and_output(args, "lr-find")
    if args.start_lr >= args.end_lr:
        raise UsageError(f"textclf lr-find: --start-lr ({args.start_lr:g}) must be below --end-lr ({args.end_lr:g})")
    out = Path(config.run.output)  # checked by check_paths, before anything was loaded
    if outputs.has_content(out):  # an earlier lr-find is replaced only with --overwrite
        outputs.check_replaceable(out, outputs.LR_FIND)
        if not args.overwrite:
            raise OutputDirError(f"output folder {out} holds an earlier lr-find; pass --overwrite to replace it, "
                                 "or choose another --output")
    data = load_dataset(config.run.data, dev=config.run.dev, test=config.run.test, config=config.data)
    if config.train.recipe == "auto":
        config = _choose_recipe(args, config, data)
    trainer = Trainer(model=config.model.name, data=data, output_dir=out, config=config.train,
                      model_config=config.model, data_config=config.data, progress=False)
    outputs.replace(out, outputs.LR_FIND)
    outputs.claim(out, outputs.LR_FIND)
    result = trainer.find_lr(args.start_lr, args.end_lr, args.steps, output_dir=out)
    print(result.summary())
    print(f"plot: {out / 'lr_find.png'}; curve: {out / 'lr_find.json'}; TensorBoard: tensorboard --logdir "
          f"{out / 'runs'}")
    if result.suggestion is not None:
        print(f"train with it: add --lr {result.suggestion:.1e} to the textclf train command")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from .data.readers import load_dataset
    from .tools.tune import parse_budget, tune

    config = _config_with_data_and_output(args, "tune")
    budget = parse_budget(args.budget)  # a malformed budget is refused before anything is loaded
    data = load_dataset(config.run.data, dev=config.run.dev, test=config.run.test, config=config.data)
    given = given_settings(args)
    try:
        result = tune(data, config.run.output, budget, config.model, config.train, config.data,
                      explicit_train=set(given["train"]), explicit_model=set(given["model"]), folds=args.folds,
                      max_trials=args.trials, overwrite=args.overwrite)
    except KeyboardInterrupt:
        result = None
    if result is None or result.interrupted:
        again = [arg for arg in (sys.argv[1:] if getattr(args, "argv", None) is None else args.argv)
                 if arg != "--overwrite"]
        print(f"textclf tune: interrupted; continue the search with:\n  {shlex.join(['textclf', *again])}",
              file=sys.stderr)
        return 130
    print(result.format())
    out = Path(config.run.output)
    best = f"best model: {out / 'best'}" if result.best_params is not None else "no trial finished"
    print(f"spent {result.spent_seconds:.0f} s of the budget; {best}; every trial: {out / 'trials'}; summary: "
          f"{out / 'tune.json'}")
    return 0


def _choose_recipe(args: argparse.Namespace, config: RunConfig, data) -> RunConfig:
    """``--recipe auto``: the recipe for this data, keeping every setting given as a flag or in --config (even one
    given at its default value); the choice goes into OUTPUT/config.yaml like any other setting."""
    from .model.classifier import load_tokenizer
    from .train.recipes import resolve_auto

    given = given_settings(args)
    resumed = _resumed_settings(args, config, given) if "recipe" not in given["train"] else None
    if resumed is not None:
        return dataclasses.replace(config, train=resumed[0], model=resumed[1])
    recipe = resolve_auto(data, load_tokenizer(config.model.name), config.model, config.train,
                          explicit_train=set(given["train"]), explicit_model=set(given["model"]))
    print(recipe.reason)
    return dataclasses.replace(config, train=recipe.train, model=recipe.model)


def _resumed_settings(args: argparse.Namespace, config: RunConfig, given: dict) -> tuple | None:
    """``(train, model)`` of the run being resumed, with the settings given now on top; None for a new run.

    A resumed run goes on with the settings it started with, whatever chose them (auto's recipe, distill's
    sizing, or none: runs from before auto was the default); flags given now still win, and the resume check judges
    them. A config.yaml of another release gives None: settings are chosen as for a new run, and the resume check
    says more."""
    saved = _settings_to_resume(args, config) if getattr(args, "resume", None) else None
    if saved is None:
        return None
    from .config import section_from_dict

    try:
        return (section_from_dict(TrainConfig, {**saved["train"], **given["train"]}, "train"),
                section_from_dict(ModelConfig, {**saved["model"], **given["model"]}, "model"))
    except ConfigError:
        return None


def _settings_to_resume(args: argparse.Namespace, config: RunConfig) -> dict | None:
    """The train and model sections of the run being resumed (``OUTPUT/config.yaml``, or the config beside the
    checkpoint folder given to --resume); None when there is none or it cannot be read (the resume says why)."""
    folder = Path(config.run.output) if args.resume == "auto" else Path(args.resume).parent.parent
    try:
        saved = load_mapping(folder / "config.yaml") if (folder / "config.yaml").is_file() else None
    except (OSError, ValueError, TextclfError):
        return None
    if not isinstance(saved, dict) or not isinstance(saved.get("train"), dict) or \
            saved["train"].get("recipe", "fine-tune") == "auto":
        return None
    return {"train": saved["train"], "model": saved.get("model") if isinstance(saved.get("model"), dict) else {}}


def _train_ensemble(args: argparse.Namespace, config: RunConfig, data) -> int:
    """``textclf train --seeds 1,2,3``: one run per seed, then the soft-voting ensemble (textclf.model.ensemble)."""
    from .tools.seed_ensemble import train_ensemble

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds: expected comma-separated integers such as 1,2,3, got {args.seeds!r}") from None
    try:
        result = train_ensemble(seeds, config.model.name, data, config.run.output, config.train,
                                model_config=config.model, data_config=config.data, overwrite=args.overwrite,
                                resume=args.resume, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"textclf train: interrupted; continue with:\n  {resume_command(getattr(args, 'argv', None))}",
              file=sys.stderr)
        return 130
    print((result.output_dir / "report.txt").read_text(encoding="utf-8"))
    print(f"ensemble model: {result.ensemble_dir} ({len(seeds)} members)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data.readers import read_split
    from .train.trainer import Trainer

    if args.output and Path(args.output).suffix.lower() == ".html":
        raise UsageError(f"--output {args.output}: name the JSON file (e.g. eval.json); the page is written beside it "
                         "with the suffix .html")
    meta = bundle.read_meta(args.model)  # a clear error for a folder that is no model
    # The test file is read as the training files were (columns, separator, encoding); flags given now win.
    given = {"text_column": args.text_column, "label_column": args.label_column, "encoding": args.encoding}
    reading = {**(meta.get("data_reading") or {}), **{k: v for k, v in given.items() if v is not None}}
    from .model.tfidf import KIND as TFIDF

    if meta.get("export") or meta.get("kind") == TFIDF:  # an export or the TF-IDF baseline: its own backend
        from .deploy.predict import Predictor

        if getattr(args, "errors", None):
            kind = "an export" if meta.get("export") else "a TF-IDF baseline"
            raise UsageError(f"--errors needs the training model folder (e.g. OUTPUT/best); {args.model} is {kind}")
        predictor = Predictor.from_pretrained(args.model, device=args.device, batch_size=args.batch_size)
        split = read_split(args.data, "test", DataConfig(**reading, multi_label=predictor.label_map.multi_label))
        return _print_report(predictor.evaluate(split), args)
    trainer = Trainer.from_pretrained(args.model, device=args.device, eval_batch_size=args.batch_size,
                                      model_class=args.model_class)
    split = read_split(args.data, "test", DataConfig(**reading, multi_label=trainer.label_map.multi_label))
    if getattr(args, "errors", None):
        from .eval.analysis import evaluate_with_errors, saved_temperature

        report, count = evaluate_with_errors(trainer, split, args.errors, saved_temperature(args.model))
        print(f"wrote {count} misclassified rows to {args.errors}", file=sys.stderr)
    else:
        report = trainer.evaluate(split)
    return _print_report(report, args)


def _print_report(report, args: argparse.Namespace) -> int:
    """Print the evaluation; with --output, write it as JSON and as a page (FILE.html) beside it."""
    from .eval.html_report import write_evaluation_report

    print(report.headline())
    print(report.format())
    if args.output:
        output = Path(args.output)
        outputs.write_file_atomically(output, json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
        page = write_evaluation_report(report.to_dict(), output.with_suffix(".html"), args.model, args.data,
                                       getattr(args, "errors", None))
        print(f"wrote {output} and {page}", file=sys.stderr)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .data.readers import read_texts
    from .deploy.predict import Predictor

    if bool(args.input) == bool(args.texts):
        raise UsageError("textclf predict: give either --input FILE or texts as arguments (not both, not neither)")
    for i, text in enumerate(args.texts, start=1):
        if not text.strip():
            raise UsageError(f"textclf predict: text {i} is empty; give the texts to classify")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # the shell passed bytes that are not UTF-8 (a lone surrogate here)
            raise UsageError(f"textclf predict: text {i} is not valid UTF-8 (at character {exc.start + 1}); pass "
                             "UTF-8 text, or put the texts in a file and use --input FILE --encoding ...") from None
    texts = read_texts(args.input, DataConfig(text_column=args.text_column, encoding=args.encoding)) \
        if args.input else args.texts
    predictor = Predictor.from_pretrained(args.model, device=args.device, batch_size=args.batch_size,
                                          model_class=args.model_class)
    if args.top_k > len(predictor.label_map):
        raise UsageError(f"textclf predict: --top-k must be between 1 and {len(predictor.label_map)} (the model's "
                         f"labels), got {args.top_k}")
    lines = [json.dumps({"text": text, **p.to_dict()}, ensure_ascii=False)
             for text, p in zip(texts, _predict_with_progress(predictor, texts, args))]
    if args.output:
        outputs.write_file_atomically(args.output, "\n".join(lines) + "\n")
        print(f"wrote {len(lines)} predictions to {args.output}")
    else:
        print("\n".join(lines))
    return 0


def _predict_with_progress(predictor, texts: list[str], args: argparse.Namespace) -> list:
    """Predictions in chunks of a few batches, with a bar on stderr when it is a terminal and the texts fill more
    than one chunk (``--quiet``: none); stdout carries only the predictions."""
    from tqdm.auto import tqdm

    step = 8 * args.batch_size
    quiet = args.quiet or len(texts) <= step
    predictions = []
    with tqdm(total=len(texts), desc="predict", unit="text", file=sys.stderr, disable=True if quiet else None,
              dynamic_ncols=True) as bar:
        for start in range(0, len(texts), step):
            predictions += predictor.predict(texts[start:start + step], top_k=args.top_k)
            bar.update(min(step, len(texts) - start))
    return predictions


def cmd_report(args: argparse.Namespace) -> int:
    from .eval.html_report import write_html_report

    if not (Path(args.run) / "metrics.json").is_file():
        raise UsageError(f"{args.run} holds no metrics.json: pass the output folder of a finished textclf train or "
                         "textclf baseline run")
    print(f"wrote {write_html_report(args.run, args.output)} (open it in any browser; it needs no network)")
    return 0


def _test_scores(metrics_path: Path) -> dict:
    """``{"test": headline scores}`` of a run's metrics.json, or {} when it has none or cannot be read."""
    from .eval.html_report import read_metrics

    try:
        test = read_metrics(metrics_path).get("test") or {} if metrics_path.is_file() else {}
    except DataError:
        return {}
    scores = {k: v for k, v in test.items() if k in ("accuracy", "macro_f1", "micro_f1", "loss")}
    return {"test": scores} if scores else {}


def cmd_info(args: argparse.Namespace) -> int:
    from .data.labels import LABELS_FILE, LabelMap

    folder = Path(args.model)
    meta = bundle.read_meta(folder)
    labels = LabelMap.load(folder) if (folder / LABELS_FILE).is_file() else None
    metrics_path = folder.parent / "metrics.json"
    summary = {
        "model": str(folder),
        "base_model": meta.get("base_model"),
        "labels": labels.names if labels else None,
        "multi_label": labels.multi_label if labels else False,
        "pooling": meta.get("pooling"),
        "windows": meta.get("windows"),
        "hf_compatible": meta.get("hf_compatible"),
        "step": meta.get("step"),
        "train_config": meta.get("train_config"),
        "dev": {k: v for k, v in (meta.get("dev") or {}).items() if k in ("accuracy", "macro_f1", "micro_f1", "loss")},
    }
    if meta.get("teacher"):  # a distilled model: the model it learned from (and its scores, where its run has them)
        summary["teacher"] = {"model": meta["teacher"], **_test_scores(Path(meta["teacher"]).parent / "metrics.json")}
    if meta.get("model_class"):  # what --model-class predict, evaluate, serve and export need for this folder
        summary["model_class"] = meta["model_class"]
    if labels is None and meta.get("num_labels"):
        print(f"textclf info: warning: {folder / LABELS_FILE} is missing: the names of the model's "
              f"{meta['num_labels']} outputs are unknown, so predict, evaluate, export and serve refuse this folder; "
              "copy it back from the training run's model folder", file=sys.stderr)
    metrics = None
    if metrics_path.is_file():
        from .eval.html_report import read_metrics

        try:
            metrics = read_metrics(metrics_path)
        except DataError as exc:
            print(f"textclf info: warning: {exc}; its scores are left out", file=sys.stderr)
    if metrics is not None:
        summary["test"] = {k: v for k, v in (metrics.get("test") or {}).items()
                           if k in ("accuracy", "macro_f1", "micro_f1", "loss")}
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .deploy.export import export_model

    export_model(args.model, args.output, format=args.format, quantize=args.quantize, data=args.data,
                 text_column=args.text_column, label_column=args.label_column, encoding=args.encoding,
                 num_samples=args.num_samples, atol=args.atol, min_agreement=args.min_agreement,
                 max_accuracy_drop=args.max_accuracy_drop, opset=args.opset, overwrite=args.overwrite,
                 model_class=args.model_class)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .deploy.predict import Predictor
    from .deploy.serve import ServeConfig, api_key_from_env, serve

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UsageError("textclf serve needs fastapi and uvicorn; install them with "
                         "`pip install \"textclf[serve]\"`") from None
    config = ServeConfig(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, batching=args.batching,
                         max_texts_per_request=args.max_texts_per_request, max_text_chars=args.max_text_chars,
                         max_body_bytes=args.max_body_bytes, api_key=api_key_from_env(args.api_key_env),
                         read_timeout=args.read_timeout, max_connections=args.max_connections)
    predictor = Predictor.from_pretrained(args.model, backend=args.backend, device=args.device,
                                          batch_size=max(args.max_batch_size, args.max_texts_per_request),
                                          threads=args.threads, model_class=args.model_class)
    print(f"serving {args.model} ({predictor.backend.name}) on http://{args.host}:{args.port} "
          f"(docs at /docs; batching {'on' if args.batching else 'off'}"
          f"{'; API key required' if config.api_key else ''})", flush=True)
    serve(predictor, args.host, args.port, config, log_level=args.log_level, access_log=args.access_log,
          timeout_graceful_shutdown=args.graceful_timeout, drain_seconds=args.drain_seconds)
    return 0


# ---- the rows to label next (textclf.tools.select) ----------------------------------------------------------------


def _add_select_command(commands) -> None:
    from .tools.strategies import DEFAULT_STRATEGY, STRATEGIES

    select = commands.add_parser(
        "select", help="choose the unlabelled rows an annotator should label next",
        description="Score an unlabelled pool with a trained model and write the BUDGET rows most worth labelling, "
        "best first, as a CSV that textclf train reads once its label column is filled in. Round 0 (no labels yet): "
        "give an encoder (--model minilm) and, ideally, --label-names; the first batch is then a random sample of "
        "the pool opened by the row most like each name.")
    select.add_argument("--model", required=True, metavar="RUN_OR_MODEL", help="a training run (its best/ model), a "
                        "model folder, or in round 0 an encoder (minilm, a folder or hub name)")
    select.add_argument("--pool", required=True, metavar="FILE", help="the unlabelled texts (CSV/TSV/JSONL with a "
                        "text column, or a .txt file with one text per line); any label column is ignored")
    select.add_argument("--budget", required=True, type=_number_in(int, 1, None), metavar="N",
                        help="how many rows to choose")
    select.add_argument("--output", required=True, metavar="FILE.csv",
                        help="the rows to label: text, label (empty), guess, confidence, pool_line")
    select.add_argument("--strategy", choices=sorted(STRATEGIES), help=f"how to choose (default {DEFAULT_STRATEGY}: "
                        "the typical rows of the pool's largest clusters without a label; badge: uncertain and "
                        "diverse rows at once; margin/entropy: the most uncertain; kcenter: the most diverse; "
                        "random); round 0 without a trained model: the first-batch rule")
    select.add_argument("--labelled", nargs="+", default=[], metavar="FILE", help="files of rows already labelled "
                        "(or already sent to an annotator): their texts are never chosen")
    select.add_argument("--label-names", metavar="FILE", help="round 0: one label per line (optionally "
                        "label<TAB>description); the first batch opens with the row most like each name")
    select.add_argument("--seed", type=int, default=0, help="the same pool, model and seed choose the same rows")
    select.add_argument("--text-column", default="text", help="the pool's text column (default text)")
    select.add_argument("--encoding", default="utf-8", help="the pool's encoding (default utf-8)")
    select.add_argument("--batch-size", type=_number_in(int, 1, None), default=64, help="texts per forward pass")
    select.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    select.add_argument("--cache-dir", metavar="DIR", help="where the pool's scores are kept between runs (default "
                        "$TEXTCLF_CACHE or ~/.cache/textclf; TEXTCLF_CACHE=off keeps none)")
    _add_model_class_flag(select)
    select.set_defaults(handler=cmd_select, paths=_paths_of_select)


def cmd_select(args: argparse.Namespace) -> int:
    from .data.label_names import read_label_names
    from .tools.select import select_rows

    model = Path(args.model) / "best" if (Path(args.model) / "best").is_dir() else args.model
    names = read_label_names(args.label_names) if args.label_names else None
    config = DataConfig(text_column=args.text_column, encoding=args.encoding)
    selection = select_rows(model, args.pool, args.budget, args.output, args.strategy, args.seed, args.labelled,
                            names, config, args.batch_size, args.device, args.cache_dir, args.model_class)
    print(f"wrote {len(selection.rows)} rows to label to {args.output} (strategy: {selection.strategy}); fill in "
          f"the label column, then train on them: textclf train --data {args.output} ...")
    return 0


def _paths_of_select(args: argparse.Namespace):
    inputs = {"--model": _local(args.model), "--pool": args.pool, "--label-names": args.label_names,
              **{f"--labelled {file}": file for file in args.labelled}, **_model_class_input(args)}
    return inputs, [("--output", args.output, "file")]


# ---- TF-IDF baseline, label audit, cross-validation (textclf.tools) -----------------------------------------------


def _add_baseline_and_audit_commands(commands) -> None:
    baseline = commands.add_parser("baseline", help="TF-IDF + linear model in seconds, reported like evaluate",
                                   description="Fit a TF-IDF + linear-model baseline on the training split and "
                                   "score it on dev and test, in the report format of textclf train/evaluate.")
    audit = commands.add_parser("audit", help="flag likely label errors, duplicates across splits, conflicts",
                                description="Cross-validated out-of-fold predictions flag rows whose given label is "
                                "unlikely (confident learning); also exact/near duplicates across splits and "
                                "texts with conflicting labels. Writes OUTPUT/audit.csv ranked by suspicion.")
    for sub in (baseline, audit):
        sub.add_argument("--data", required=True, metavar="DIR_OR_FILE", help="training data: a folder with "
                         "train/dev/test files, a class folder, or one CSV/TSV/JSONL file")
        sub.add_argument("--dev", metavar="FILE", help="dev file (default: a dev file in --data, or a hold-out)")
        sub.add_argument("--test", metavar="FILE", help="test file (default: a test file in --data, or a hold-out)")
        _add_reading_flags(sub)
        sub.add_argument("--multi-label", action="store_true", help="labels are sets joined by | (or a JSON list)")
        sub.add_argument("--analyzer", default="auto", choices=["auto", "word", "char"], help="n-grams of words, "
                         "or of characters (auto: characters when most text is Chinese/Japanese)")
    baseline.add_argument("--output", metavar="DIR", help="write report.txt, metrics.json and the model "
                          "here (a model folder: textclf predict/evaluate/serve --model DIR)")
    baseline.set_defaults(handler=cmd_baseline, paths=_paths_of_toolbox)

    audit.add_argument("--output", metavar="DIR", help="write audit.csv and audit.json here (default: print the top "
                       "rows only)")
    audit.add_argument("--method", default="baseline", choices=["baseline", "transformer"], help="model behind the "
                       "out-of-fold predictions: baseline (seconds) or transformer (one fine-tuning run per fold)")
    audit.add_argument("--folds", type=int, default=5, metavar="K", help="folds of the cross-validation (default 5)")
    audit.add_argument("--splits", default="train,dev,test", metavar="S1,S2",
                       help="labelled splits audited for label errors (default train,dev,test)")
    audit.add_argument("--near-threshold", type=float, default=0.9, metavar="X", help="TF-IDF cosine at or above "
                       "which texts in different splits count as near duplicates (default 0.9; 0 skips the search)")
    audit.add_argument("--top", type=int, default=20, metavar="N", help="rows printed (default 20)")
    audit.add_argument("--model", default="minilm", metavar="NAME_OR_DIR", help="encoder for --method transformer")
    audit.add_argument("--epochs", type=float, default=3, help="epochs per fold for --method transformer (default 3)")
    audit.add_argument("--max-length", type=int, default=128, help="tokens per text for --method transformer")
    audit.add_argument("--batch-size", type=int, default=32, help="batch size for --method transformer")
    audit.add_argument("--lr", type=float, default=5e-5, help="learning rate for --method transformer")
    audit.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N for --method transformer")
    audit.set_defaults(handler=cmd_audit, paths=_paths_of_toolbox)


def _toolbox_data_config(args: argparse.Namespace) -> DataConfig:
    return DataConfig(text_column=args.text_column, label_column=args.label_column, encoding=args.encoding,
                      multi_label=args.multi_label)


def _toolbox_data(args: argparse.Namespace):
    from .data.readers import load_dataset

    return load_dataset(args.data, dev=args.dev, test=args.test, config=_toolbox_data_config(args))


def cmd_baseline(args: argparse.Namespace) -> int:
    from .tools.baseline import run_baseline

    data = _toolbox_data(args)
    result = run_baseline(data, args.output, analyzer=args.analyzer, data_config=_toolbox_data_config(args))
    print(result["report"])
    info = result["baseline"]
    print(f"TF-IDF {info['analyzer']} n-grams ({info['num_features']} features) + {info['model']}: fit on "
          f"{info['train_rows']} rows in {info['fit_seconds']:.1f} s"
          + (f"; report, metrics.json and the model in {args.output} (textclf predict --model {args.output})"
             if args.output else ""))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from .tools.audit import audit

    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    train_config = None
    if args.method == "transformer":
        # recipe fine-tune: audit's own flags (and their defaults) are the settings of every fold, not re-chosen
        train_config = TrainConfig(recipe="fine-tune", epochs=args.epochs, max_length=args.max_length,
                                   batch_size=args.batch_size,
                                   lr=args.lr, device=args.device)
    result = audit(_toolbox_data(args), args.method, args.folds, splits=splits,
                   near_threshold=args.near_threshold or None, model=args.model, train_config=train_config,
                   baseline_kwargs={"analyzer": args.analyzer} if args.method == "baseline" else None,
                   log=lambda message: print(f"textclf audit: {message}", file=sys.stderr, flush=True))
    print(result.format_summary())
    for rank, row in enumerate(result.rows[: args.top], start=1):
        suggestion = f" -> {row.suggested_label}" if row.suggested_label is not None else ""
        print(f"{rank:>4}. {row.split} {row.line}: [{';'.join(row.reasons)}] {row.given_label}{suggestion} "
              f"(score {row.score:.3f}) {row.text[:80]}")
    if args.output:
        out = Path(args.output)
        result.to_csv(out / "audit.csv")
        summary = {**result.summary, "thresholds": result.thresholds}
        outputs.write_file_atomically(out / "audit.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {len(result.rows)} flagged rows to {out / 'audit.csv'} (summary in {out / 'audit.json'})")
    return 0


def _train_cross_validation(args: argparse.Namespace, config: RunConfig, data) -> int:
    """``textclf train --cv K``: one run per fold (textclf.tools.crossval), then mean ± std."""
    from .tools.crossval import cross_validate

    if args.resume:
        raise UsageError("textclf train: --cv cannot --resume; rerun the cross-validation with --overwrite")
    result = cross_validate(data, args.cv, config.model.name, config.run.output, config.train,
                            model_config=config.model, data_config=config.data, seed=config.data.split_seed,
                            baseline=args.baseline, overwrite=args.overwrite, progress=not args.quiet)
    print(result.format())
    print(f"per-fold runs in {result.output_dir}/fold-*/; summary in {result.output_dir / 'cv.json'}")
    return 0


# ---- MLM pretraining and tokenizer training (textclf.train.pretrain) --------------------------------------------

# TrainConfig fields that mean something to pretraining (the evaluation ones do not); their flags and help come from
# the dataclass, as for textclf train.
PRETRAIN_TRAIN_FIELDS = ("epochs", "max_steps", "lr", "weight_decay", "warmup_ratio", "schedule", "batch_size",
                         "grad_accum", "max_length", "max_grad_norm", "precision", "device", "seed", "group_by_length",
                         "speedups", "max_tokens", "save_steps", "keep_checkpoints", "log_steps", "num_workers")
PRETRAIN_FLAG_NAMES = {"architecture": "--config"}


def _add_pretrain_commands(commands) -> None:
    from .config import PretrainConfig

    pretrain = commands.add_parser("pretrain", help="masked-language-model pretraining on unlabelled text",
                                   description="Continue pretraining an encoder (--model) on unlabelled domain text, "
                                   "or pretrain one from scratch (--config small|base|PATH.json --tokenizer DIR). "
                                   "Writes OUTPUT/model, which textclf train --model takes.")
    pretrain.add_argument("--data", required=True, action="append", metavar="FILE_OR_DIR", help="a .txt file (one "
                          "text per line), a CSV/TSV/JSONL file (its text column) or a folder (its train.* file "
                          "only); repeat for several sources. Never pretrain on test text")
    pretrain.add_argument("--model", metavar="NAME_OR_DIR", help="encoder to continue pretraining (hub name, folder "
                          "or alias); leave out with --config")
    pretrain.add_argument("--output", required=True, metavar="DIR", help="output folder (model/, mlm/, "
                          "checkpoints/, runs/, log.jsonl, config.yaml)")
    group = pretrain.add_argument_group("pretrain settings")
    docs, hints = field_docs(PretrainConfig), typing.get_type_hints(PretrainConfig)
    for f in dataclasses.fields(PretrainConfig):
        _add_field_flag(group, "pretrain", f, docs, hints, PRETRAIN_FLAG_NAMES.get(f.name))
    group = pretrain.add_argument_group("train settings")
    docs, hints = field_docs(TrainConfig), typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in PRETRAIN_TRAIN_FIELDS:
            _add_field_flag(group, "train", f, docs, hints)
    pretrain.add_argument("--text-column", default="text", help="column/key holding the text (default text)")
    pretrain.add_argument("--encoding", default="utf-8", help="file encoding, e.g. gbk (default utf-8)")
    pretrain.add_argument("--resume", metavar="auto|DIR", help="continue from the newest complete checkpoint in the "
                          "output folder (auto) or from the checkpoint folder DIR")
    pretrain.add_argument("--overwrite", action="store_true", help="replace a previous run in the output folder")
    pretrain.add_argument("--quiet", action="store_true", help="no progress bar")
    pretrain.set_defaults(handler=cmd_pretrain, paths=_paths_of_pretraining)

    tokenizer = commands.add_parser("tokenizer", help="train a WordPiece tokenizer on a corpus",
                                    description="Tokenizer tools. `textclf tokenizer train` trains a BERT-style "
                                    "WordPiece vocabulary (every CJK character its own token).")
    actions = tokenizer.add_subparsers(dest="action", metavar="ACTION", parser_class=ArgumentParser)
    actions.required = True
    train = actions.add_parser("train", help="train a WordPiece tokenizer", description="Train a BERT-style WordPiece "
                               "tokenizer and save it as a fast tokenizer folder (AutoTokenizer loads it; "
                               "textclf pretrain --tokenizer takes it).")
    train.add_argument("--data", required=True, action="append", metavar="FILE_OR_DIR", help="as for textclf "
                       "pretrain; repeat for several sources")
    train.add_argument("--output", required=True, metavar="DIR", help="tokenizer folder to write")
    train.add_argument("--vocab-size", type=int, default=21128, help="largest vocabulary, special tokens included "
                       "(default 21128, as bert-base-chinese)")
    train.add_argument("--min-frequency", type=int, default=2, help="pieces seen fewer times are left out (default 2)")
    train.add_argument("--cased", action="store_true", help="keep case and accents (default: lowercase, as uncased "
                       "BERT)")
    train.add_argument("--text-column", default="text", help="column/key holding the text (default text)")
    train.add_argument("--encoding", default="utf-8", help="file encoding, e.g. gbk (default utf-8)")
    train.add_argument("--overwrite", action="store_true", help="replace a non-empty --output folder")
    train.set_defaults(handler=cmd_tokenizer_train, paths=_paths_of_pretraining)


def _add_field_flag(group, section: str, f: dataclasses.Field, docs: dict, hints: dict, flag: str | None = None):
    flag = flag or "--" + f.name.replace("_", "-")
    kind, optional = _base_type(hints[f.name])
    help_text = f"{docs.get(f.name, '')} (default: {f.default})".replace("%", "%%")
    if kind is bool:
        group.add_argument(flag, dest=f"{section}.{f.name}", action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS, help=help_text)
    else:
        group.add_argument(flag, dest=f"{section}.{f.name}", type=_parser_for(kind, optional, flag),
                           default=argparse.SUPPRESS, metavar=f.name.upper(), help=help_text)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .config import PretrainConfig, section_from_dict
    from .train.pretrain import Pretrainer

    sections: dict[str, dict] = {"pretrain": {}, "train": {}}
    for dest, value in vars(args).items():
        if "." in dest:
            section, name = dest.split(".", 1)
            sections[section][name] = value
    pretrain_config = section_from_dict(PretrainConfig, sections["pretrain"], "pretrain")
    train_config = section_from_dict(TrainConfig, sections["train"], "train")
    if pretrain_config.architecture is None and not args.model:
        raise UsageError("textclf pretrain: pass --model NAME_OR_DIR to continue pretraining, or --config "
                         "small|base|PATH.json with --tokenizer DIR to pretrain from scratch")
    if pretrain_config.architecture is not None and args.model:
        raise UsageError("textclf pretrain: --model continues pretraining a model and --config builds a new one; "
                         "give one of them")
    trainer = Pretrainer(args.model, args.data, args.output, train_config, pretrain_config,
                         data_config=DataConfig(text_column=args.text_column, encoding=args.encoding),
                         overwrite=args.overwrite, progress=not args.quiet)
    trainer.resume_hint = resume_command(getattr(args, "argv", None))
    result = trainer.fit(resume=args.resume)
    if result.interrupted:
        return 128 + result.signal
    print(f"TensorBoard: tensorboard --logdir {Path(args.output) / 'runs'}")
    return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from .train.pretrain import train_tokenizer

    tokenizer = train_tokenizer(args.data, args.output, args.vocab_size, lowercase=not args.cased,
                                min_frequency=args.min_frequency, overwrite=args.overwrite,
                                data_config=DataConfig(text_column=args.text_column, encoding=args.encoding))
    print(f"wrote a WordPiece tokenizer with {len(tokenizer)} tokens to {args.output}")
    return 0


# ==================================================================================================== entry point


def resume_command(argv: list[str] | None) -> str:
    """The command continuing an interrupted ``textclf train``: same flags, ``--resume auto``, no ``--overwrite``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif arg != "--overwrite" and not arg.startswith("--resume="):
            kept.append(arg)
    return shlex.join(["textclf", *kept, "--resume", "auto"])


# ---- what each command reads and writes: one check for all of them ----------------------------------------------

def check_paths(args: argparse.Namespace) -> None:
    """The one output check every command passes before it loads anything: its outputs are never, never contain and
    never lie inside its inputs (:func:`textclf.outputs.check_not_input`), and an output folder can be made.

    Each subcommand declares what it reads and writes with ``set_defaults(paths=...)``;
    ``tests/test_cli_properties.py`` fails for a command without a declaration."""
    inputs, written = args.paths(args)
    for flag, path, kind in written:
        if not path:
            continue
        if kind == "folder":
            outputs.check_output_folder(path, flag)
        else:
            outputs.check_output_file(path, flag)
        outputs.check_not_input(path, inputs, flag)


def _local(value) -> str | None:
    """A model given by name: a path only when it exists here (a hub name or alias reads nothing local)."""
    return value if value and (Path(value).exists() or Path(value).is_symlink()) else None


def _paths_of_training(args: argparse.Namespace):
    """train, lr-find, tune: the data files, the model folder, the config file and the files settings name."""
    config = resolve_run_config(args)
    data, model = config.data, config.model
    inputs = {"--data": config.run.data, "--dev": config.run.dev, "--test": config.run.test,
              "--model": _local(model.name), "--config": getattr(args, "config", None),
              "--synonyms": data.synonyms, "--augment-synonyms": data.augment_synonyms, "--entities": data.entities,
              "--label-names": data.label_names, "--unlabelled": data.unlabelled, "--teacher": config.train.teacher,
              "--class-weights": _local(config.train.class_weights)}
    return inputs, [("--output", config.run.output, "folder")]


def _paths_of_evaluate(args: argparse.Namespace):
    written = [("--errors", getattr(args, "errors", None), "file")]
    if args.output:
        written += [("--output", args.output, "file"), ("--output", str(Path(args.output).with_suffix(".html")),
                                                       "file")]
    return {"--model": args.model, "--data": args.data, **_model_class_input(args)}, written


def _paths_of_predict(args: argparse.Namespace):
    return {"--model": args.model, "--input": args.input, **_model_class_input(args)}, [("--output", args.output,
                                                                                          "file")]


def _model_class_input(args: argparse.Namespace) -> dict:
    """--model-class FILE.py:CLASS reads FILE.py: never written over (an export --overwrite could remove it)."""
    from .model.custom import spec_file

    return {"--model-class": spec_file(getattr(args, "model_class", None))}


def _paths_of_report(args: argparse.Namespace):
    """Everything in the run folder is the report's input, except the page it writes."""
    run = Path(args.run)
    read = [p for p in run.iterdir() if p.name != "report.html"] if run.is_dir() else []
    return {"RUN_DIR": read}, [("--output", args.output, "file")]


def _paths_of_export(args: argparse.Namespace):
    return {"--model": args.model, "--data": args.data, **_model_class_input(args)}, [("--output", args.output,
                                                                                       "folder")]


def _paths_of_toolbox(args: argparse.Namespace):
    """baseline and audit."""
    inputs = {"--data": args.data, "--dev": args.dev, "--test": args.test,
              "--model": _local(getattr(args, "model", None))}
    return inputs, [("--output", args.output, "folder")]


def _paths_of_pretraining(args: argparse.Namespace):
    """pretrain and tokenizer train."""
    inputs = {"--data": args.data, "--model": _local(getattr(args, "model", None)),
              "--config": _local(getattr(args, "pretrain.architecture", None)),
              "--tokenizer": getattr(args, "pretrain.tokenizer", None),
              "--words": getattr(args, "pretrain.words", None)}
    return inputs, [("--output", args.output, "folder")]


def _writes_nothing(args: argparse.Namespace):
    """info and serve read a model folder and write no file."""
    return {}, []


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input or usage, 1 other errors, 128+N on signal N)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    prefix = f"textclf {args.command}"
    with warnings.catch_warnings():
        # Data warnings (rows dropped, conflicting duplicates) are messages to the user, not code locations.
        from .errors import DataWarning

        warnings.simplefilter("always", DataWarning)
        default_show = warnings.showwarning

        package = str(Path(__file__).resolve().parent)

        def show(message, category, filename, lineno, file=None, line=None):
            # textclf's own warnings (data rows dropped, emulated bf16) are messages to the user, not code locations
            if issubclass(category, DataWarning) or str(filename).startswith(package):
                print(f"{prefix}: warning: {message}", file=sys.stderr)
            else:
                default_show(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        try:
            check_paths(args)  # before any model or data is loaded, for every command
            with command_clock():  # the runs it makes time their phases from the process's start (timings.json)
                return args.handler(args)
        except TextclfError as exc:
            print(f"{prefix}: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # a second Ctrl-C, or one outside the training loop: stop at once
            hint = (f"; continue from the last checkpoint (if any) with:\n  {resume_command(args.argv)}"
                    if args.command == "train" else "")
            print(f"{prefix}: interrupted{hint}", file=sys.stderr)
            return 130


def run() -> None:
    """The ``textclf`` command: :func:`main`, then a quick exit with its code.

    Python's own shutdown tears down every imported module (torch, transformers and what they import), about a
    second on 2 cores after the work is done. ``atexit`` handlers still run (temporary folders, the process group)
    and the output streams are flushed; only the teardown of modules is skipped. An exception that escapes
    ``main`` leaves the ordinary way, with its traceback.
    """
    code = main()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (textclf info | head) or stream: nothing more can be said
            pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
