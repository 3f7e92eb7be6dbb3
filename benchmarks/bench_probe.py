"""The linear probe against scikit-learn on every trained run of a study (its frozen backbone features).

    DESUPCON_HOME=<a study's output home> python benchmarks/bench_probe.py --profile smoke

For each run recorded in ``json_results/comprehensive_results_<arch>_<dataset>.json`` it embeds the
train and test splits with the run's checkpoint and prints the test top-1 of
``desupcon.engine.evaluate.linear_probe`` beside scikit-learn's ``LogisticRegression(C=1)`` on
``StandardScaler`` features (the objective the probe minimises), and their difference.
"""

import argparse

import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from desupcon.analysis.figures import config_of
from desupcon.analysis.report import label
from desupcon.images.datasets import Data
from desupcon.engine.evaluate import embed, linear_probe
from desupcon.engine.runs import load_results
from desupcon.methods.distill.task import load_model
from desupcon.study.profiles import resolve_profile


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", help="smoke or cifar100 (default: $DESUPCON_PROFILE, then auto)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    profile, _ = resolve_profile(args.profile)
    runs = load_results(profile.student_config("undistilled").results_group)
    if not runs:
        raise SystemExit("no recorded student runs in this output home: train the study first (notebooks 02-04)")
    data = Data.load(profile.dataset, "cpu")
    print("| run | linear probe | scikit-learn | difference |\n|---|---:|---:|---:|")
    for summary in runs.values():
        cfg = config_of(summary)
        model = load_model(cfg.for_seed(cfg.seed))
        f_tr = embed(model, data.train.images, data.train.mean, data.train.std)[0]  # (N, F)
        f_te = embed(model, data.test.images, data.test.mean, data.test.std)[0]  # (M, F)
        ours = linear_probe(f_tr, data.train.labels, f_te, data.test.labels, data.test.num_classes,
                            max_iterations=cfg.probe_iterations)["top1"]
        scaler = StandardScaler().fit(f_tr.numpy())
        reference = 100 * LogisticRegression(max_iter=5000).fit(scaler.transform(f_tr.numpy()), data.train.labels.numpy()) \
            .score(scaler.transform(f_te.numpy()), data.test.labels.numpy())
        print(f"| {label(summary)} | {ours:.2f} | {reference:.2f} | {ours - reference:+.2f} |", flush=True)


if __name__ == "__main__":
    main()
