"""``report.html``: one self-contained page about a run that a person would rather look at than read.

Headline scores (against the TF-IDF baseline when the run folder holds one), the per-class table (click a header
to sort), the confusion matrix, training and dev curves from ``log.jsonl``, the calibration curve, the most
confident errors with their texts and, when an audit ran, its flags. Pictures are drawn with matplotlib and inlined
as data URIs, and the sorting script is inline too: the file opens offline, in any browser, copied anywhere.

``metrics.json`` is checked before anything is drawn (:func:`read_metrics`): a truncated file or a field of the
wrong type (``"test": 5``, ``"per_class": "x"``) is a :class:`~textclf.errors.DataError` that names the file and
the field, not a traceback from deep inside the page.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import tempfile
from pathlib import Path

from ..config import read_json_object
from ..errors import DataError
from ..model import bundle

REPORT_FILE = "report.html"
MAX_ERRORS = 25  # most confident errors shown

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", "Noto Sans", "PingFang SC", "Microsoft YaHei", sans-serif;
       margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.sub { color: #666; } table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: right; } th { background: #f4f6f8; }
td.text, th.text { text-align: left; max-width: 640px; } th.sortable { cursor: pointer; }
.low { background: #fdecea; } img { max-width: 100%; border: 1px solid #eee; } .note { color: #666; }
"""

# Sorts a table by the clicked column: numbers numerically, anything else as text.
_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, column) {
    th.classList.add("sortable");
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var ascending = th.dataset.order !== "asc";
      rows.sort(function (a, b) {
        var x = a.cells[column].textContent, y = b.cells[column].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var order = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
      th.dataset.order = ascending ? "asc" : "desc";
    });
  });
});
"""


def write_html_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write ``report.html`` for the run (or baseline) folder ``run_dir``; returns its path."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").is_file():
        raise FileNotFoundError(f"{run_dir / 'metrics.json'} is missing: report needs a finished training run "
                                "(textclf train) or baseline (textclf baseline) folder")
    metrics = read_metrics(run_dir / "metrics.json")
    sections = [_headline(run_dir, metrics), _per_class(metrics), _confusion(run_dir), _curves(run_dir),
                _calibration(run_dir, metrics), _errors(run_dir / "errors.csv"), _audit(run_dir)]
    path = Path(output) if output else run_dir / REPORT_FILE
    _write_page(path, run_dir.resolve().name, _subtitle(run_dir, metrics), sections)
    return path


def write_evaluation_report(report: dict, path: str | Path, model: str, data: str,
                            errors_csv: str | Path | None = None) -> Path:
    """The page of one ``textclf evaluate``: scores, the per-class table, the confusion matrix and (with
    ``--errors``) the most confident errors of ``model`` on ``data``; ``report`` is the evaluation's JSON."""
    metrics = {"test": report}
    confusion = ""
    if report.get("confusion_matrix"):  # multi-label reports have per-label counts instead
        from .calibration import plot_confusion

        with tempfile.TemporaryDirectory() as folder:
            image = Path(folder) / "confusion.png"
            plot_confusion(image, report["confusion_matrix"], report["labels"], f"{Path(data).name}")
            confusion = f"<h2>Confusion matrix</h2>\n{_inline_png(image)}"
    sections = [_scores(metrics), _per_class(metrics), confusion, _errors(errors_csv) if errors_csv else ""]
    _write_page(Path(path), f"{Path(model).name} on {Path(data).name}", f"model {model}; data {data}", sections)
    return Path(path)


def _write_page(path: Path, title: str, subtitle: str, sections: list[str]) -> None:
    title, subtitle = html.escape(title), html.escape(subtitle)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>textclf report: {title}</title>'
            f"<style>{_STYLE}</style></head><body>\n<h1>{title}</h1>\n<p class=\"sub\">{subtitle}</p>\n"
            + "\n".join(s for s in sections if s) + f"\n<script>{_SCRIPT}</script>\n</body></html>\n")
    bundle.write_atomically(path, page.rstrip("\n"))


# ---- metrics.json, checked for what the page reads from it -----------------------------------------------------

_FIX = ("restore it from a copy, or write it again with the command that made the folder (textclf train, textclf "
        "baseline)")
_SCORES = ("accuracy", "macro_f1", "micro_f1", "weighted_f1", "loss")


def read_metrics(path: str | Path) -> dict:
    """The ``metrics.json`` of a run or baseline folder, with every field the page shows checked for its type.

    Raises:
        DataError: the file cannot be read, is not JSON (a truncated write), or a field has the wrong type; the
            message names the file and the field (``test.per_class['sports'].f1``).
    """
    path = Path(path)
    metrics = read_json_object(path, DataError, f"the file is damaged or truncated: {_FIX}",
                               expected="an object of scores as textclf writes it")
    for field in ("best_step", "global_step"):
        _expect(path, field, metrics.get(field), (int,), "an integer")
    _expect(path, "metric", metrics.get("metric"), (str,), "a metric name")
    for split in ("dev", "test"):
        _check_report(path, split, metrics.get(split))
    baseline = metrics.get("baseline")
    if _expect(path, "baseline", baseline, (dict,), "an object"):
        for split in ("dev", "test"):
            _check_report(path, f"baseline.{split}", baseline.get(split))
    calibration = metrics.get("calibration")
    if _expect(path, "calibration", calibration, (dict,), "an object"):
        for field in ("temperature", "test_ece_before", "test_ece_after"):
            _expect(path, f"calibration.{field}", calibration.get(field), (int, float), "a number")
    return metrics


def _check_report(path: Path, field: str, report) -> None:
    """One split's scores (an ``EvalReport.to_dict()``); None or absent is a split the run did not have."""
    if not _expect(path, field, report, (dict,), "an object of scores"):
        return
    for name in _SCORES:
        _expect(path, f"{field}.{name}", report.get(name), (int, float), "a number")
    _expect(path, f"{field}.num_rows", report.get("num_rows"), (int,), "an integer")
    per_class = report.get("per_class")
    if not _expect(path, f"{field}.per_class", per_class, (dict,), "an object of per-class scores"):
        return
    for label, scores in per_class.items():
        where = f"{field}.per_class[{label!r}]"
        _expect(path, where, scores, (dict,), "an object of scores", required=True)
        for name in ("precision", "recall", "f1", "support"):
            _expect(path, f"{where}.{name}", scores.get(name), (int, float), "a number", required=True)


def _expect(path: Path, field: str, value, kinds: tuple, what: str, required: bool = False) -> bool:
    """Whether ``value`` is there; a value of another type (or a ``required`` one missing) raises a DataError."""
    if value is None and not required:
        return False
    if value is None:
        raise DataError(f"{path}: field {field} is missing (it should be {what}); the file is damaged: {_FIX}")
    if isinstance(value, bool) or not isinstance(value, kinds):  # JSON true is no number
        raise DataError(f"{path}: field {field} should be {what}, got {_json_type(value)} {_shorten(value)}; the "
                        f"file is damaged: {_FIX}")
    return True


def _json_type(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "the number",
            float: "the number"}.get(type(value), type(value).__name__)


def _shorten(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


# ---- the sections ---------------------------------------------------------------------------------------------------


def _subtitle(run_dir: Path, metrics: dict) -> str:
    meta = _read_json(run_dir / "best" / bundle.META_FILE)
    meta = meta if isinstance(meta, dict) else {}  # a damaged best/ loses its line in the subtitle, not the page
    parts = [f"base model {meta['base_model']}" if meta.get("base_model") else None,
             f"best model from step {metrics['best_step']} of {metrics['global_step']} (by {metrics.get('metric')})"
             if metrics.get("best_step") is not None else None]
    return "; ".join(p for p in parts if p) or "textclf run"


def _headline(run_dir: Path, metrics: dict) -> str:
    baseline = run_dir / "baseline" / "metrics.json"
    return _scores(metrics, (read_metrics(baseline) if baseline.is_file() else None) or metrics.get("baseline"))


def _scores(metrics: dict, baseline: dict | None = None) -> str:
    keys = ("accuracy", "macro_f1", "micro_f1", "weighted_f1", "loss")
    header = "<tr><th class=\"text\">split</th>" + "".join(f"<th>{k.replace('_', ' ')}</th>" for k in keys) + "</tr>"
    rows = []
    for split in ("dev", "test"):
        for who, source in (("", metrics), (" (TF-IDF baseline)", baseline or {})):
            report = source.get(split)
            if report:
                cells = "".join(f"<td>{_number(report.get(k))}</td>" for k in keys)
                rows.append(f"<tr><td class=\"text\">{split}{who} ({report.get('num_rows')} rows)</td>{cells}</tr>")
    if not rows:
        return ""
    return f"<h2>Scores</h2>\n<table>{header}{''.join(rows)}</table>"


def _per_class(metrics: dict) -> str:
    split = "test" if metrics.get("test") else "dev"
    per_class = (metrics.get(split) or {}).get("per_class") or {}
    if not per_class:
        return ""
    rows = []
    for name, s in per_class.items():
        low = ' class="low"' if s["f1"] < 0.5 else ""
        rows.append(f"<tr{low}><td class=\"text\">{html.escape(name)}</td><td>{s['precision']:.4f}</td>"
                    f"<td>{s['recall']:.4f}</td><td>{s['f1']:.4f}</td><td>{s['support']}</td></tr>")
    return (f"<h2>Per class ({split})</h2>\n<p class=\"note\">Click a column to sort; rows below 0.5 F1 are "
            "shaded.</p>"
            "<table class=\"sortable\"><thead><tr><th class=\"text\">label</th><th>precision</th><th>recall</th>"
            f"<th>F1</th><th>support</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _confusion(run_dir: Path) -> str:
    image = _inline_png(run_dir / "confusion.png")
    return f"<h2>Confusion matrix</h2>\n{image}" if image else ""


def _curves(run_dir: Path) -> str:
    """Training loss and dev scores against optimizer steps, from log.jsonl."""
    records = []
    try:
        with open(run_dir / "log.jsonl", encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):  # curves are a picture: a damaged log draws none
        return ""
    records = [r for r in records if isinstance(r, dict) and _is_number(r.get("step"))]
    train = [(r["step"], r["train/loss"]) for r in records if _is_number(r.get("train/loss"))]
    dev = [(r["step"], r["dev/macro_f1"], r["dev/accuracy"]) for r in records
           if _is_number(r.get("dev/macro_f1")) and _is_number(r.get("dev/accuracy"))]
    from .calibration import pyplot  # here, not at the top: calibration imports torch, which `info` need not load

    plt = pyplot()
    if plt is None or not train:
        return ""
    figure, (loss_axis, dev_axis) = plt.subplots(1, 2, figsize=(10, 3.4), dpi=100)
    loss_axis.plot(*zip(*train), color="#1f77b4")
    loss_axis.set(title="training loss", xlabel="optimizer step")
    if dev:
        steps, f1, accuracy = zip(*dev)
        dev_axis.plot(steps, f1, marker="o", label="macro F1")
        dev_axis.plot(steps, accuracy, marker="s", label="accuracy")
        dev_axis.legend()
    dev_axis.set(title="dev", xlabel="optimizer step", ylim=(0, 1))
    figure.tight_layout()
    return f"<h2>Training</h2>\n{_figure_png(plt, figure)}"


def _calibration(run_dir: Path, metrics: dict) -> str:
    image = _inline_png(run_dir / "reliability.png")
    calibration = metrics.get("calibration") or {}
    if not image and not calibration.get("temperature"):
        return ""
    note = ""
    if calibration.get("temperature"):
        note = (f"<p>Temperature {calibration['temperature']:.3f} fitted on dev; expected calibration error on test "
                f"{_number(calibration.get('test_ece_before'))} before, {_number(calibration.get('test_ece_after'))} "
                "after.</p>")
    return f"<h2>Calibration</h2>\n{note}{image}"


def _errors(errors_csv: Path) -> str:
    rows = _read_csv(Path(errors_csv), required=("text", "label", "predicted"))
    if not rows:
        return ""
    body = "".join(f"<tr><td>{html.escape(r.get('line') or '')}</td><td class=\"text\">{html.escape(r['text'] or '')}"
                   f"</td><td class=\"text\">{html.escape(r['label'] or '')}</td><td class=\"text\">"
                   f"{html.escape(r['predicted'] or '')}</td><td>{html.escape(r.get('confidence') or '')}</td></tr>"
                   for r in rows[:MAX_ERRORS])
    return (f"<h2>Most confident errors</h2>\n<p class=\"note\">{min(len(rows), MAX_ERRORS)} of {len(rows)} "
            f"misclassified rows, most confident first (all in {html.escape(Path(errors_csv).name)}): often label "
            "errors, not model errors.</p><table class=\"sortable\"><thead><tr><th>line</th>"
            "<th class=\"text\">text</th><th class=\"text\">label</th><th class=\"text\">predicted</th>"
            "<th>confidence</th></tr></thead>"
            f"<tbody>{body}</tbody></table>")


def _audit(run_dir: Path) -> str:
    """The label audit's top flags, when ``textclf audit --output RUN_DIR`` wrote ``audit.csv`` here."""
    rows = _read_csv(run_dir / "audit.csv")
    if not rows:
        return ""
    columns = list(rows[0])[:6]
    head = "".join(f"<th class=\"text\">{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td class=\"text\">{html.escape(str(r.get(c) or ''))}</td>" for c in columns)
                   + "</tr>" for r in rows[:MAX_ERRORS])
    return (f"<h2>Label audit</h2>\n<table class=\"sortable\"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
            "</table>")


def _inline_png(path: Path) -> str:
    try:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        return ""
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _figure_png(plt, figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return f'<img alt="curves" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode("ascii")}">'


def _number(value) -> str:
    return "" if value is None else f"{value:.4f}"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_csv(path: Path, required: tuple[str, ...] = ()) -> list[dict]:
    """The rows of a CSV file the run wrote (errors.csv, audit.csv); none when it is not there. A file that is not
    UTF-8 CSV, or lacks a ``required`` column, is a DataError naming it: a page silently without its errors
    section would read as a model without errors."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = reader.fieldnames or []
    except OSError:
        return []
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} cannot be read as UTF-8 CSV ({exc}); the file is damaged: {_FIX}") from None
    missing = [name for name in required if name not in columns]
    if rows and missing:
        raise DataError(f"{path} has no column {', '.join(map(repr, missing))} (its columns are {columns}); the file "
                        f"is damaged: {_FIX}")
    return rows


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
