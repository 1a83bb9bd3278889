"""Distillation on SetFit's documented protocol: is a small student trained on a teacher's probabilities better than
the same student trained on the labels alone, and how much faster does it answer?

Per draw (a seed): 64 labelled rows per class of the AG News subset's training split and 500 other training texts
as the unlabelled pool; the data set's own dev and test splits. The teacher is the bundled ``minilm`` fine-tuned by
``textclf train`` (``TEACHER`` below). Each student is ``minilm`` cut to K layers, starting from the pretrained
encoder (``--student minilm --student-layers K``) or from the fine-tuned teacher, head included (``--student-layers
K`` alone, textclf distill's default), trained twice with the same settings: ``--alpha 0`` (the control: the labels
alone) and distilled (the default alpha and temperature, the pool included). Every run is the command a user types,
in a fresh process. The share of the gap closed is ``(distilled - control) / (teacher - control)``, from the mean
accuracies.

The peer, per draw and from the same teacher: SetFit's ``DistillationTrainer`` as its knowledge-distillation guide
runs it (``TrainingArguments(batch_size=16, max_steps=500)``, the 500 unlabelled texts), with the student SetFit
would be given here: ``minilm`` as a sentence transformer, cut to the same K layers (``--setfit``, model
``student-KL setfit distilled``). SetFit distils the teacher's sentence embeddings (the cosine similarity of pairs),
so the teacher's body embeds with the pooling it was fine-tuned with; the student's logistic-regression head is then
fitted to the teacher's predictions on the pool, which come from the textclf teacher itself. Its share of the gap
closed is taken against the same control as textclf's.

Latency (draw 0, ``--skip-latency`` to leave it out): one text at a time (median of ``--single`` calls) and the
test split in batches of 64, for the teacher and the 3-layer distilled student, as PyTorch fp32 and as int8 ONNX.

    python -m bench.distill_bench                           # writes bench/results/distill.json
    python -m bench.distill_bench --draws 0 --layers 3
    python -m bench.distill_bench --layers 3 --starts minilm --setfit   # the peer beside textclf

Runs kept in the results file are not repeated, so the benchmark resumes where it stopped.
"""

from __future__ import annotations

import csv
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.resumable import DATA, ROOT, load_runs, resumable_parser, save_runs, shared_data_missing
from bench.startup_bench import cpu_model

AG_NEWS = DATA / "ag_news_subset"
PER_CLASS, POOL = 64, 500
# The teacher: fine-tuned (10 epochs of 16 rows at lr 1e-4, about 160 steps). The default recipe picks few-shot
# pairs here, which costs about 30 minutes per draw on 2 cores; fine-tuning takes about 2.
TEACHER = ["--recipe", "fine-tune", "--epochs", "10", "--lr", "1e-4", "--batch-size", "16"]
# Where a student's weights start: the pretrained minilm cut to K layers (named "student-KL ..."), or the fine-tuned
# teacher cut to K layers, head included (textclf distill's default; "student-KL from-teacher ...").
STARTS = {"": ["--student", "minilm"], "from-teacher": []}


def log(message: str) -> None:
    print(message, flush=True)


def draw_data(draw: int, work: Path) -> tuple[Path, Path]:
    """``train.csv`` (64 rows per class) and ``pool.txt`` (500 other training texts) of one draw."""
    folder = work / f"draw-{draw}"
    folder.mkdir(parents=True, exist_ok=True)
    with open(AG_NEWS / "train.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    rng = random.Random(draw)
    rng.shuffle(rows)
    chosen, counts, rest = [], {}, []
    for row in rows:
        if counts.get(row["label"], 0) < PER_CLASS:
            counts[row["label"]] = counts.get(row["label"], 0) + 1
            chosen.append(row)
        else:
            rest.append(row)
    with open(folder / "train.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, ["text", "label"])
        writer.writeheader()
        writer.writerows(chosen)
    (folder / "pool.txt").write_text("\n".join(r["text"] for r in rest[:POOL]) + "\n", encoding="utf-8")
    return folder / "train.csv", folder / "pool.txt"


def textclf(*args: str) -> tuple[float, str]:
    command = [sys.executable, "-m", "textclf", *args, "--dev", str(AG_NEWS / "dev.csv"), "--test",
               str(AG_NEWS / "test.csv"), "--quiet", "--overwrite"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stdout


def scores(out: Path, seconds: float) -> dict:
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    speeds = [r["train/samples_per_second"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())
              if "train/samples_per_second" in r]
    return {"test_accuracy": metrics["test"]["accuracy"], "test_macro_f1": metrics["test"]["macro_f1"],
            "seconds": round(seconds, 1), "train_rows_per_second": statistics.median(speeds) if speeds else None}


def run_draw(draw: int, layers: list[int], starts: list[str], work: Path, runs: list[dict], save,
             setfit: bool = False) -> None:
    train, pool = draw_data(draw, work)
    teacher = work / f"draw-{draw}" / "teacher"

    def have(name: str) -> bool:
        return any((r["draw"], r["model"]) == (draw, name) for r in runs)

    if not have("teacher") or not (teacher / "best").is_dir():
        seconds, _ = textclf("train", "--data", str(train), "--model", "minilm", "--output", str(teacher),
                             "--seed", str(draw), *TEACHER)
        runs[:] = [r for r in runs if (r["draw"], r["model"]) != (draw, "teacher")]
        runs.append({"draw": draw, "model": "teacher", **scores(teacher, seconds)})
        log(f"draw {draw} teacher: {runs[-1]}")
        save()
    for k in layers:
        for start in starts:
            student = STARTS[start]
            for alpha, kind in (("0", "control"), (None, "distilled")):
                name = f"student-{k}L{start and ' ' + start} {kind}"
                if have(name):
                    continue
                out = work / f"draw-{draw}" / name.replace(" ", "-")
                extra = ["--alpha", alpha] if alpha is not None else []
                seconds, _ = textclf("distill", "--teacher", str(teacher / "best"), "--data", str(train),
                                     "--unlabelled", str(pool), *student, "--student-layers", str(k),
                                     "--output", str(out), "--seed", str(draw), *extra)
                runs.append({"draw": draw, "model": name, "folder": str(out), **scores(out, seconds)})
                log(f"draw {draw} {name}: {runs[-1]}")
                save()
        name = f"student-{k}L setfit distilled"
        if setfit and not have(name):
            runs.append({"draw": draw, "model": name,
                         **run_setfit(draw, k, train, pool, teacher / "best", work / f"draw-{draw}")})
            log(f"draw {draw} {name}: {runs[-1]}")
            save()


def run_setfit(draw: int, k: int, train: Path, pool: Path, teacher: Path, work: Path) -> dict:
    """SetFit's DistillationTrainer from the textclf teacher in ``teacher`` to minilm cut to ``k`` layers."""
    import numpy as np
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, models
    from setfit import DistillationTrainer, SetFitModel, TrainingArguments

    from bench.few_shot_bench import minilm_dir
    from bench.few_shot_bench import scores as accuracy_f1
    from textclf.config import DataConfig
    from textclf.data.readers import read_split
    from textclf.deploy.predict import Predictor
    from textclf.model.classifier import TextClassifier

    start = time.perf_counter()
    settings = json.loads((teacher / "textclf.json").read_text(encoding="utf-8"))
    body = models.Transformer(str(teacher), max_seq_length=settings["train_config"]["max_length"])
    pooling = models.Pooling(body.get_word_embedding_dimension(), pooling_mode=settings["pooling"])
    teacher_model = SetFitModel(model_body=SentenceTransformer(modules=[body, pooling], device="cpu"))
    predictor = Predictor.from_pretrained(teacher, device="cpu", precision="fp32")
    teacher_model.predict = lambda texts, **_: np.array([p.label for p in predictor.predict(list(texts))])

    student = SetFitModel.from_pretrained(minilm_dir())
    layers = student.model_body[0].auto_model.encoder.layer
    kept = TextClassifier.chosen_layers(len(layers), k)  # the layers textclf's --student-layers K keeps
    student.model_body[0].auto_model.encoder.layer = torch.nn.ModuleList(layers[i] for i in kept)
    student.model_body[0].auto_model.config.num_hidden_layers = k

    texts = [line for line in pool.read_text(encoding="utf-8").splitlines() if line.strip()]
    args = TrainingArguments(output_dir=str(work / "setfit"), batch_size=16, max_steps=500, seed=draw,
                             report_to="none")
    DistillationTrainer(teacher_model=teacher_model, student_model=student, args=args,
                        train_dataset=Dataset.from_dict({"text": texts})).train()
    test = read_split(AG_NEWS / "test.csv", "test", DataConfig())
    predicted = [str(p) for p in student.predict(list(test.texts), batch_size=64)]
    result = accuracy_f1(list(test.labels), predicted)
    return {"test_accuracy": result["accuracy"], "test_macro_f1": result["macro_f1"],
            "seconds": round(time.perf_counter() - start, 1), "train_rows_per_second": None}


def latency(teacher: Path, student: Path, work: Path, single: int) -> dict:
    """Median single-text latency and batch throughput, PyTorch fp32 and int8 ONNX, teacher and student."""
    from textclf.config import DataConfig
    from textclf.data.readers import read_split
    from textclf.deploy.export import export_model
    from textclf.deploy.predict import Predictor

    texts = list(read_split(AG_NEWS / "test.csv", "test", DataConfig()).texts)
    results = {}
    for name, folder in (("teacher", teacher), ("student", student)):
        export = work / f"{name}-int8"
        export_model(folder, export, format="onnx", quantize="int8", data=AG_NEWS / "test.csv", overwrite=True,
                     log=lambda line: None)
        for backend, path, kwargs in (("torch fp32", folder, {"precision": "fp32", "device": "cpu"}),
                                      ("onnx int8", export, {})):
            predictor = Predictor.from_pretrained(path, batch_size=64, **kwargs)
            predictor.predict(texts[:64])  # warm-up
            one = []
            for text in (texts * 2)[:single]:
                started = time.perf_counter()
                predictor.predict(text)
                one.append(time.perf_counter() - started)
            started = time.perf_counter()
            predictor.predict(texts)
            batch = time.perf_counter() - started
            results[f"{name} {backend}"] = {"single_text_ms": 1000 * statistics.median(one),
                                            "batch_texts_per_second": len(texts) / batch}
            log(f"  {name} {backend}: {results[f'{name} {backend}']}")
    base = results["teacher torch fp32"]
    for row in results.values():
        row["single_speedup_vs_teacher_fp32"] = base["single_text_ms"] / row["single_text_ms"]
        row["batch_speedup_vs_teacher_int8"] = (row["batch_texts_per_second"]
                                                / results["teacher onnx int8"]["batch_texts_per_second"])
    return results


def summarise(runs: list[dict]) -> dict:
    rows = {}
    for name in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == name]
        rows[name] = {"draws": len(mine), "accuracy": statistics.mean(r["test_accuracy"] for r in mine),
                      "accuracy_sd": statistics.pstdev(r["test_accuracy"] for r in mine),
                      "macro_f1": statistics.mean(r["test_macro_f1"] for r in mine),
                      "seconds": statistics.median(r["seconds"] for r in mine),
                      "train_rows_per_second": statistics.median(r["train_rows_per_second"] or 0 for r in mine)}
    teacher = rows.get("teacher", {}).get("accuracy")
    for name, row in rows.items():
        control = rows.get(name.replace(" setfit", "").replace("distilled", "control"))
        if name.endswith("distilled") and control and teacher is not None and teacher != control["accuracy"]:
            row["gap_closed"] = (row["accuracy"] - control["accuracy"]) / (teacher - control["accuracy"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = resumable_parser(__doc__, "distill.json", work="/tmp/textclf-distill")
    parser.add_argument("--draws", default="0,1,2,3,4")
    parser.add_argument("--layers", default="3,2")
    parser.add_argument("--starts", default="minilm,from-teacher",
                        help="student starts: minilm (the pretrained encoder cut) and/or from-teacher")
    parser.add_argument("--single", type=int, default=200, help="single-text calls timed per model (default 200)")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--setfit", action="store_true", help="also SetFit's DistillationTrainer, same teacher")
    args = parser.parse_args(argv)
    if shared_data_missing():
        return 0
    out, work = Path(args.out), Path(args.work)
    runs = load_runs(out)
    extra = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
    latencies = extra.get("latency")

    def save() -> None:
        save_runs(out, runs, summary=summarise(runs), latency=latencies)

    layers = [int(k) for k in args.layers.split(",")]
    starts = ["" if start == "minilm" else start for start in args.starts.split(",")]
    for draw in (int(d) for d in args.draws.split(",")):
        run_draw(draw, layers, starts, work, runs, save, setfit=args.setfit)
    if not args.skip_latency and latencies is None:
        first = next(r for r in runs if r["draw"] == 0 and r["model"] == f"student-{max(layers)}L distilled")
        latencies = latency(work / "draw-0" / "teacher" / "best", Path(first["folder"]) / "best", work, args.single)
    save()
    log(f"\n{'model':<26} {'draws':>5} {'accuracy':>16} {'macro F1':>9} {'gap closed':>11}")
    for name, row in summarise(runs).items():
        gap = f"{row['gap_closed']:.0%}" if "gap_closed" in row else ""
        log(f"{name:<26} {row['draws']:>5} {row['accuracy']:.4f} ± {row['accuracy_sd']:.4f} {row['macro_f1']:>9.4f} "
            f"{gap:>11}")
    log(f"wrote {out} ({cpu_model()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
