"""A model card: the ``README.md`` of a model folder, in the Hugging Face format, so the folder can be published as is.

YAML metadata first (pipeline tag, language, license placeholder, base model, metrics as a ``model-index``), then
what a reader of a model needs: what it is for, the data it was trained on (rows, labels, the SHA-256 of the
training rows), the recipe, dev and test scores per class, calibration and the known limitations.

Label names are the user's data: a ``|`` in one ended its table cell and shifted every score of its row, a newline
(possible from JSONL or a DataFrame) ended the row. Every label name is written through :func:`markdown_cell`.
"""

from __future__ import annotations

import json
import re
from typing import Any

CARD_FILE = "README.md"
# Hub names of the aliases textclf resolves to local folders (the card names the real base model).
HUB_NAMES = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
LANGUAGES = {"zh": "Chinese", "en": "English"}


# Characters with a meaning in (GitHub-flavoured) markdown inside a line: escaped with a backslash, they render as
# themselves, so a label such as "a*b*c" or "<none>" is shown as written.
_MARKDOWN = re.compile(r"([\\`*_\[\]<>|])")


def markdown_cell(text: str) -> str:
    """``text`` as it must be written to show as itself in a markdown table cell or list item: markdown characters
    (the ``|`` that ends a cell first) backslash-escaped, a line break shown as ``\\n`` instead of ending the row."""
    escaped = _MARKDOWN.sub(r"\\\1", str(text))
    return escaped.replace("\r\n", "\\n").replace("\r", "\\n").replace("\n", "\\n")


def _yaml_text(value: str) -> str:
    """A string as a YAML scalar that stays a string (paths, names with colons)."""
    return json.dumps(str(value), ensure_ascii=False)


def language_of(texts: list[str]) -> str:
    """``"zh"`` when most of a sample of the texts hold Chinese characters, else ``"en"`` (a card's best guess)."""
    sample = texts[:2000]
    chinese = sum(bool(_CJK.search(text)) for text in sample)
    return "zh" if sample and chinese / len(sample) > 0.5 else "en"


def model_card(name: str, meta: dict[str, Any], metrics: dict[str, Any], data: dict[str, Any]) -> str:
    """The card of a model folder.

    Args:
        name: the folder's name in the title (e.g. ``runs/trec/best``).
        meta: the folder's ``textclf.json`` (base model, training config, labels are read from it).
        metrics: ``metrics.json`` of the run (``dev``, ``test``, ``calibration``, ``truncated_rows``).
        data: ``{"language", "train_rows", "train_sha256", "label_counts", "source", "multi_label"}``.
    """
    language = LANGUAGES.get(data.get("language", "en"), data.get("language", "en"))
    base = meta.get("base_model")
    base = HUB_NAMES.get(base, base)
    train = meta.get("train_config") or {}
    evaluated = {split: metrics[split] for split in ("dev", "test") if metrics.get(split)}
    front = ["---", "pipeline_tag: text-classification", "library_name: transformers", "tags:", "  - textclf",
             "  - text-classification", f"language:\n  - {data.get('language', 'en')}",
             "license: other  # set the license of your data and base model before publishing"]
    if base and "/" in str(base) and not str(base).startswith(("/", ".")):
        front.append(f"base_model: {base}")
    if evaluated:  # one result per split, each naming its data set (the Hub's model-index format)
        dataset = _yaml_text(data.get("dataset") or "custom")
        front += ["model-index:", f"  - name: {_yaml_text(name)}", "    results:"]
        for split, report in evaluated.items():
            front += ["      - task:", "          type: text-classification", "        dataset:",
                      f"          name: {dataset}", f"          type: {dataset}", f"          split: {split}",
                      "        metrics:"]
            for key, label in (("accuracy", "accuracy"), ("macro_f1", "f1")):
                front += [f"          - type: {label}", f"            name: {split} {key.replace('_', ' ')}",
                          f"            value: {report[key]:.4f}"]
    front.append("---")

    kind = "multi-label" if data.get("multi_label") else "single-label"
    # A custom model class loads only when named (it runs the user's code); the HF layout only without a custom head.
    model_class = meta.get("model_class")
    opt_in = f", model_class={json.dumps(model_class, ensure_ascii=False)}" if model_class else ""
    loads_with = ([f"It was trained with the custom model class `{model_class}`: name it to load the folder "
                   f"(`textclf predict --model-class {model_class} ...`), only if you trust that code.", ""]
                  if model_class else [])
    if meta.get("hf_compatible", True):
        loads_with += ["The weights also load with `transformers.AutoModelForSequenceClassification` (same "
                       "logits).", ""]
    labels = data.get("label_counts") or {}
    lines = [f"# {name}", "",
             f"A {kind} text classifier over {len(labels)} labels, fine-tuned with "
             f"textclf from `{base or 'a custom encoder'}`.", "",
             *_distillation(meta, train),
             "## Intended use", "",
             f"Classifying {language} texts like the training data below into its labels. It has "
             "seen only that data: texts from another domain, another language or with labels it does not know will "
             "get one of its labels anyway, with a confidence that means little.", "",
             "```python", "import textclf", "",
             f"clf = textclf.Predictor.from_pretrained(\"PATH/TO/THIS/FOLDER\"{opt_in})",
             "clf.predict([\"a text to classify\"], top_k=3)", "```", "",
             *loads_with,
             "## Training data", "",
             f"- source: `{data.get('source')}`",
             f"- training rows: {data.get('train_rows')} (SHA-256 of the rows in order: `{data.get('train_sha256')}`)",
             "- rows per label: " + ", ".join(f"{markdown_cell(k)} {v}" for k, v in labels.items()), "",
             "## Training recipe", "",
             "| setting | value |", "|---|---|"]
    for key in ("epochs", "max_steps", "lr", "batch_size", "grad_accum", "max_length", "long_texts", "warmup_ratio",
                "weight_decay", "precision", "seed", "metric", "class_weights", "sampler"):
        if train.get(key) is not None:
            lines.append(f"| {key} | {train[key]} |")
    for split, report in evaluated.items():
        lines += ["", f"## {split.capitalize()} scores ({report.get('num_rows')} rows)", "",
                  f"accuracy {report['accuracy']:.4f}, macro F1 {report['macro_f1']:.4f}, micro F1 "
                  f"{report['micro_f1']:.4f}, weighted F1 {report['weighted_f1']:.4f}", "",
                  "| label | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for label, scores in (report.get("per_class") or {}).items():
            lines.append(f"| {markdown_cell(label)} | {scores['precision']:.4f} | {scores['recall']:.4f} | "
                         f"{scores['f1']:.4f} | {scores['support']} |")
    calibration = metrics.get("calibration") or {}
    if calibration.get("temperature"):
        lines += ["", "## Calibration", "",
                  f"Probabilities are temperature-scaled (T = {calibration['temperature']:.3f}, fitted on dev); "
                  "see `reliability.png` in the run folder."]
    lines += ["", "## Limitations", ""]
    truncated = {k: v for k, v in (metrics.get("truncated_rows") or {}).items() if v}
    if truncated:
        lines.append("- texts longer than the model reads were cut: " +
                     ", ".join(f"{v} in {k}" for k, v in truncated.items()))
    rare = [label for label, count in labels.items() if count < 20]
    if rare:
        lines.append(f"- labels with fewer than 20 training rows (their scores are the least reliable): "
                     f"{', '.join(map(markdown_cell, rare))}")
    test = evaluated.get("test") or evaluated.get("dev")
    if test:
        weak = [label for label, s in (test.get("per_class") or {}).items() if s["f1"] < 0.5 and s["support"]]
        if weak:
            lines.append(f"- labels below 0.5 F1 on {('test' if 'test' in evaluated else 'dev')}: "
                         f"{', '.join(map(markdown_cell, weak))}")
    lines.append("- the scores above are for data like the training data; measure on your own before relying on it "
                 "(`textclf evaluate --model PATH --data YOUR_TEST.csv`), and consider `textclf audit` for label "
                 "errors in the training data.")
    return "\n".join(front + [""] + lines) + "\n"


def _distillation(meta: dict, train: dict) -> list[str]:
    """The card's lines on a distilled model's teacher (none for a model trained on labels alone)."""
    if not meta.get("teacher"):
        return []
    return [f"It was distilled from the teacher `{meta['teacher']}`: it learned the teacher's probabilities "
            f"(alpha {train.get('distill_alpha')}, temperature {train.get('distill_temperature')}) besides the "
            "labels; the teacher's own scores are in its run folder.", ""]
