#!/usr/bin/env python
"""NaturalInversion vs DeepInversion at the same budget, judged by KD into the same student.

For each method: synthesise --num-images images (same batch size and iterations per batch), time it
(images/s, seconds per image-iteration) and its peak memory; then distil a fresh student on those
images only with the same schedule, and report its accuracy on the real CIFAR-10 test set. The upper
reference is the same KD on as many real CIFAR-10 training images.

CPU (the committed ResNet-20 teacher, ~10-15 min on 2 busy cores):
    nice -n 10 python scripts/bench_synth.py
GPU (the papers' protocol at a reduced image count; train the teacher first with scripts/train_teacher.py):
    python scripts/bench_synth.py --device cuda --teacher resnet34_cifar10.pt --student resnet18 \
        --num-images 2560 --batch-size 256 --iterations 2000 --kd-epochs 200 --test-limit 0

The decisive comparison (`--protocol`, BENCHMARKS.md "synth"): for each seed, NaturalInversion, DeepInversion
at the same iterations and DeepInversion at NaturalInversion's wall time (its iteration count calibrated
once, from the first seed's two timings, then fixed), each judged by KD into a fresh student and by
fine-tuning the teacher pruned at --prune-ratio (L1 filters, pruned once), both on the full 10k test set;
the same two with as many real training images as the reference. Reports per-seed figures, means with
95 % t-intervals, and the paired differences NI - DI with their intervals:
    nice -n 10 python scripts/bench_synth.py --protocol --seeds 0,1,2 --num-images 30 --batch-size 30 \
        --iterations 50 --kd-epochs 60 --kd-batch-size 15 --threads 1 --out /tmp/bench_protocol
(sized to finish in about an hour on the shared 2-core CPU; `--table JSON` reprints its tables).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import threading
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep on a shared CPU
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from gsplat_kit.common import atomic  # noqa: E402
from gsplat_kit.synth import distill as D  # noqa: E402
from gsplat_kit.synth import prune as P  # noqa: E402
from gsplat_kit.synth import runner  # noqa: E402
from gsplat_kit.synth.data import load_cifar10, subset_per_class, to_tensor  # noqa: E402
from gsplat_kit.synth.models import build_model, load_teacher  # noqa: E402
from gsplat_kit.synth.teacher import evaluate  # noqa: E402


class PeakMemory:
    """Peak resident memory (CPU, sampled from /proc every 20 ms) or peak allocated CUDA memory."""

    def __init__(self, device):
        self.cuda = str(device).startswith("cuda")

    @staticmethod
    def _rss():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def __enter__(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.peak = self._rss()
            self._stop = threading.Event()
            self._t = threading.Thread(target=self._poll, daemon=True)
            self._t.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._t.join()
            self.peak = max(self.peak, self._rss())

    @property
    def mib(self):
        return {"peak_mib": round(self.peak / 2 ** 20, 1), "above_start_mib": round((self.peak - self.base) / 2 ** 20, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="data/teachers/resnet20_cifar10.pt")
    p.add_argument("--student", default="resnet20")
    p.add_argument("--methods", default="natural,deep")
    p.add_argument("--num-images", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--iterations", type=int, default=100, help="optimisation steps per batch (both methods)")
    p.add_argument("--kd-epochs", type=int, default=60)
    p.add_argument("--kd-batch-size", type=int, default=50)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--test-limit", type=int, default=2000, help="balanced subset of the test set (0: all 10k)")
    p.add_argument("--no-real", action="store_true", help="skip the real-image KD reference")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="/tmp/bench_synth")
    p.add_argument("--protocol", action="store_true", help="the multi-seed comparison (see the docstring)")
    p.add_argument("--seeds", default="0,1,2", help="--protocol: comma-separated seeds (>= 3 for an interval)")
    p.add_argument("--prune-ratio", type=float, default=0.5)
    p.add_argument("--table", metavar="JSON", help="print the markdown tables of a --protocol run's JSON and exit")
    p.add_argument("--protocol-test-limit", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--ft-lr", type=float, default=0.01, help="--protocol: fine-tuning lr of the pruned network")
    args = p.parse_args(argv)
    if args.table:
        with open(args.table) as f:
            print(protocol_tables(json.load(f)))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = load_teacher(args.teacher)
    teacher = (teacher[0].to(args.device), dict(teacher[1], path=args.teacher))
    if args.protocol:
        return protocol(args, teacher)
    kd = dict(student_arch=args.student, epochs=args.kd_epochs, batch_size=args.kd_batch_size,
              temperature=args.temperature, seed=args.seed, device=args.device, progress=True,
              test_limit=args.test_limit or None, metrics_real_per_class=100)
    report = {"settings": vars(args), "device": _device_name(args.device), "threads": torch.get_num_threads(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "methods": {}}
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        out = os.path.join(args.out, method)
        shutil.rmtree(out, ignore_errors=True)  # time a fresh run, not a resumed one
        t0 = time.time()
        with PeakMemory(args.device) as mem:
            summ = runner.synthesize(teacher, method, args.num_images, out, batch_size=args.batch_size,
                                     iterations=args.iterations, seed=args.seed, device=args.device)
        sec = time.time() - t0
        res = {"synth_seconds": round(sec, 1), "images_per_second": round(args.num_images / sec, 4),
               "ms_per_image_iteration": round(1000 * sec / (args.num_images * args.iterations), 3),
               "memory": mem.mib, "mean_loss_final": summ.get("mean_loss_final"),
               "mean_teacher_acc_at_synthesis": summ.get("mean_teacher_acc")}
        res.update(D.distill(out, teacher, **kd))
        report["methods"][method] = res
        print(json.dumps({method: res}, indent=1), flush=True)
    if not args.no_real:
        report["real"] = D.distill_real(args.num_images, teacher, **kd)
        print(json.dumps({"real": report["real"]}, indent=1), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_synth.json"), "w") as f:
        json.dump(report, f, indent=2)
    _table(report)
    return 0


def _synth(teacher, method, args, iterations, seed, out):
    shutil.rmtree(out, ignore_errors=True)  # time a fresh run, not a resumed one
    t0, c0 = time.time(), time.process_time()
    summ = runner.synthesize(teacher, method, args.num_images, out, batch_size=args.batch_size,
                             iterations=iterations, seed=seed, device=args.device, progress=False)
    per_batch = [json.load(open(os.path.join(out, "batches", f"batch_{b:05d}.json"))) for b in range(summ["batches"])]
    cpu = time.process_time() - c0
    # CPU seconds of this (one-thread) process: on a shared machine the wall clock measures the other
    # users' load as much as the method, so "equal wall time" is calibrated on CPU time
    return cpu, {
        "iterations": iterations, "synth_seconds": round(time.time() - t0, 1), "synth_cpu_seconds": round(cpu, 1),
        "teacher_acc_at_synthesis": summ.get("mean_teacher_acc"),
        "teacher_acc_unclamped": sum(r["teacher_acc_unclamped"] for r in per_batch) / len(per_batch),
        "clipped_fraction": sum(r["clipped_fraction"] for r in per_batch) / len(per_batch)}


def _judge(model, x, seed, args, pruned, test):
    """KD of a fresh student and fine-tuning of the pruned network on images x; both tested on `test`."""
    torch.manual_seed(seed)
    student = build_model(args.student, model.num_classes)
    t0 = time.time()
    D.kd_train(student, model, x, args.kd_epochs, args.kd_batch_size, temperature=args.temperature, seed=seed,
               device=args.device)
    kd = evaluate(student.eval(), *test)
    t1 = time.time()
    tuned = copy.deepcopy(pruned)
    P.fine_tune(tuned, model, x, args.kd_epochs, args.kd_batch_size, args.ft_lr, args.temperature, seed,
                args.device, False)
    return {"kd_student_acc": kd, "pruned_finetuned_acc": evaluate(tuned.eval(), *test),
            "kd_seconds": round(t1 - t0, 1), "finetune_seconds": round(time.time() - t1, 1)}


def _interval(values):
    """Mean and the half-width of its 95 % t-interval."""
    import numpy as np
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return {"mean": float(v.mean()), "ci95": None, "n": len(v)}
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return {"mean": float(v.mean()), "ci95": half, "n": len(v)}


def protocol(args, teacher) -> int:
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    model, meta = teacher
    nc = int(meta["num_classes"])
    xte, yte, _ = load_cifar10("test")
    if args.protocol_test_limit:  # smoke checks of the script only; the protocol uses all 10k
        xte, yte = subset_per_class(xte, yte, args.protocol_test_limit // nc)
    test = (to_tensor(xte).to(args.device), torch.from_numpy(yte).to(args.device))
    pruned = P.prune_model(copy.deepcopy(model), args.prune_ratio, "l1")
    report = {"settings": vars(args), "device": _device_name(args.device), "threads": torch.get_num_threads(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "test_images": len(xte),
              # the teacher file records its accuracy on the full test set; re-measured only on a subset
              "teacher_test_accuracy": (meta["test_accuracy"] if not args.protocol_test_limit and
                                        "test_accuracy" in meta else evaluate(model, *test)),
              "pruned": {"before": P.cost(model), "after": P.cost(pruned),
                         "test_accuracy_before_finetuning": evaluate(pruned.eval(), *test)},
              "runs": []}
    path = os.path.join(args.out, "bench_protocol.json")
    print(json.dumps({k: report[k] for k in ("teacher_test_accuracy", "pruned")}), flush=True)
    wall_iterations = None
    xtr, ytr, _ = load_cifar10("train")
    for seed in seeds:
        times = {}
        for name, method in (("natural", "natural"), ("deep_iters", "deep"), ("deep_wall", "deep")):
            if name == "deep_wall" and wall_iterations is None:  # calibrated once, on the first seed
                wall_iterations = max(1, round(args.iterations * times["natural"] / times["deep_iters"]))
            iters = wall_iterations if name == "deep_wall" else args.iterations
            out = os.path.join(args.out, f"seed{seed}", name)
            sec, rec = _synth(teacher, method, args, iters, seed, out)
            times[name] = sec
            xs, _, _ = D.load_synthetic(out, nc, 32, meta.get("classes"))
            rec.update(_judge(model, to_tensor(xs), seed, args, pruned, test), set=name, seed=seed)
            report["runs"].append(rec)
            print(json.dumps(rec), flush=True)
            report["summary"] = _protocol_summary(report["runs"], seeds)
            atomic.write_json(path, report)
    for seed in seeds:  # the real-image reference last: the comparison itself comes first
        xr, _ = subset_per_class(xtr, ytr, max(1, args.num_images // nc), seed=seed + 1)
        rec = dict(_judge(model, to_tensor(xr), seed, args, pruned, test), set="real", seed=seed)
        report["runs"].append(rec)
        print(json.dumps(rec), flush=True)
        atomic.write_json(path, report)
    report["summary"] = _protocol_summary(report["runs"], seeds)
    atomic.write_json(path, report)
    print(protocol_tables(report))
    return 0


def _fmt(iv, scale=100.0, digits=1, interval=True):
    if iv is None:
        return "-"
    half = "" if iv.get("ci95") is None or not interval else f" ± {scale * iv['ci95']:.{digits}f}"
    return f"{scale * iv['mean']:.{digits}f}{half}"


def protocol_tables(report) -> str:
    """Markdown: per-set means with 95 % intervals, then the paired differences NI - DI."""
    summ = report.get("summary") or _protocol_summary(report["runs"], sorted({r["seed"] for r in report["runs"]}))
    names = {"natural": "NaturalInversion", "deep_iters": "DeepInversion, equal iterations",
             "deep_wall": "DeepInversion, equal CPU time", "real": "real training images (reference)"}
    rows = ["| set | seeds | iterations | synth CPU s | teacher acc on images (%) | KD student acc (%) | "
            "pruned + fine-tuned acc (%) |", "|---|---|---|---|---|---|---|"]
    for key in ("natural", "deep_iters", "deep_wall", "real"):
        ps = summ["per_set"].get(key)
        if not ps:
            continue
        rows.append(f"| {names[key]} | {ps['kd_student_acc']['n']} | {_fmt(ps.get('iterations'), 1, 0, False)} | "
                    f"{_fmt(ps.get('synth_cpu_seconds'), 1, 1, False)} | {_fmt(ps.get('teacher_acc_at_synthesis'))} | "
                    f"{_fmt(ps['kd_student_acc'])} | {_fmt(ps['pruned_finetuned_acc'])} |")
    rows += ["", "| paired difference (points) | seeds | mean ± 95 % CI | per seed |", "|---|---|---|---|"]
    for k, iv in summ["paired_natural_minus_deep"].items():
        metric, other = k.split(" vs ")
        label = ("KD" if metric.startswith("kd") else "pruning") + " NI - " + names[other].replace("DeepInversion", "DI")
        rows.append(f"| {label} | {iv['n']} | {_fmt(iv)} | {', '.join(f'{100 * d:+.1f}' for d in iv['diffs'])} |")
    return "\n".join(rows)


def _protocol_summary(runs, seeds):
    by = {(r["set"], r["seed"]): r for r in runs}
    sets = sorted({r["set"] for r in runs})
    out = {"per_set": {}, "paired_natural_minus_deep": {}}
    for metric in ("kd_student_acc", "pruned_finetuned_acc"):
        for s in sets:
            vals = [by[s, k][metric] for k in seeds if (s, k) in by]
            out["per_set"].setdefault(s, {})[metric] = _interval(vals)
        for other in ("deep_iters", "deep_wall"):
            if "natural" not in sets or other not in sets:
                continue
            diffs = [by["natural", k][metric] - by[other, k][metric] for k in seeds
                     if ("natural", k) in by and (other, k) in by]
            out["paired_natural_minus_deep"][f"{metric} vs {other}"] = _interval(diffs) | {"diffs": diffs}
    for s in sets:
        for key in ("teacher_acc_at_synthesis", "teacher_acc_unclamped", "clipped_fraction", "synth_seconds",
                    "synth_cpu_seconds", "iterations"):
            vals = [by[s, k][key] for k in seeds if (s, k) in by and key in by[s, k]]
            if vals:
                out["per_set"][s][key] = _interval(vals)
    return out


def _device_name(device):
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"CPU, {os.cpu_count()} cores"


def _table(r):
    s = r["settings"]
    print(f"\nteacher {s['teacher']} (test acc {next(iter(r['methods'].values()), r.get('real', {})).get('teacher_test_accuracy', float('nan')):.4f}),"
          f" {s['num_images']} images, batch {s['batch_size']}, {s['iterations']} iterations/batch,"
          f" KD {s['kd_epochs']} epochs -> {s['student']}, {r['device']}, {r['threads']} threads")
    print(f"{'set':<10}{'student acc':>12}{'img/s':>9}{'ms/img-it':>11}{'peak MiB':>10}{'T-acc syn':>10}{'IS(T)':>7}{'cls-FD':>9}")
    rows = list(r["methods"].items()) + ([("real", r["real"])] if "real" in r else [])
    for name, m in rows:
        print(f"{name:<10}{m['student_test_accuracy']:>12.4f}{m.get('images_per_second', float('nan')):>9.3f}"
              f"{m.get('ms_per_image_iteration', float('nan')):>11.2f}{m.get('memory', {}).get('peak_mib', float('nan')):>10.0f}"
              f"{m['teacher_acc_on_synthetic']:>10.3f}{m['inception_score_teacher']:>7.2f}{m['class_feature_distance']:>9.2f}")


if __name__ == "__main__":
    sys.exit(main())
