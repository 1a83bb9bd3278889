"""``python -m bench``: the start-up time of the light commands (bench/startup_bench.py), the training benchmark
(textclf vs the Hugging Face Trainer), the same end to end (bench/end_to_end_bench.py: the whole command, with where
textclf's time went), the deployment one, then the few-shot grid against SetFit (bench/few_shot_bench.py; it
resumes into bench/results/few-shot.json, so runs already there are not repeated), distillation on SetFit's
protocol beside SetFit's DistillationTrainer (bench/distill_bench.py) and with every labelled row from a seed
ensemble (bench/distill_full_bench.py), each resuming into its results file, and the start from label names: the
zero-shot start against SetFit's (bench/zero_shot_bench.py) and simulated labelling rounds per selection strategy
(bench/active_learning_bench.py), both resuming into their results files."""

import sys

from bench import train_bench


def main() -> int:
    from bench import startup_bench

    startup_bench.main([])
    status = train_bench.main(sys.argv[1:])
    from bench import end_to_end_bench

    status = status or end_to_end_bench.main([])  # the command a user runs, with where its time went
    try:
        from bench import deploy_bench
    except ImportError:  # the deployment benchmark is optional
        deploy_bench = None
    status = status or (deploy_bench.main([]) if deploy_bench else 0)
    from bench import distill_bench, distill_full_bench, few_shot_bench

    status = status or few_shot_bench.main(["--out", "bench/results/few-shot.json", "--plot", "docs/img/few-shot.png"])
    status = status or distill_bench.main(["--setfit"])  # resumes into bench/results/distill.json
    status = status or distill_full_bench.main([])  # resumes into bench/results/distill-full.json
    from bench import active_learning_bench, zero_shot_bench

    status = status or zero_shot_bench.main([])  # resumes into bench/results/zero-shot.json
    return status or active_learning_bench.main([])  # resumes into bench/results/active-learning.json


sys.exit(main())
