#!/usr/bin/env python3
"""Time one openretina MEI on a zoo fixture's model, for `retina bench --openretina-mei-seconds`.

Never imported by the build or the tests: run it by hand in the openretina venv (see tools/README.md).
One MEI is what `make_zoo_fixtures.py` times for the manifests' `timing`: output neuron 0 of the first
session, 10 SGD steps at lr 100 with visualize's objective, range penalty and post-processing, float32,
parameters requiring grad (as `openretina visualize` runs it), torch on 2 threads, from a random start.
With `--steps N` (N < 10) only N steps are timed and scaled to 10 (for models where one MEI takes long).
Prints every sample (wall seconds, and the process's CPU seconds: on a loaded machine torch's 2 threads
wait for each other and the wall time says little), the medians, and the 1-minute load average.

usage: time_openretina_mei.py FIXTURE_DIR [--runs 3] [--steps 10] [--time-steps 50]
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_zoo_fixtures as zoo  # noqa: E402  (its visualize pieces and MEI loop, not duplicated here)
from openretina.models.core_readout import load_core_readout_model  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("fixture", help="a zoo fixture folder (model.ckpt, manifest.json)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="SGD steps timed per run, scaled to 10")
    p.add_argument("--time-steps", type=int, default=None, help="stimulus frames (default: the manifest's)")
    args = p.parse_args()
    torch.set_num_threads(zoo.THREADS)
    torch.manual_seed(0)
    with open(os.path.join(args.fixture, "manifest.json")) as f:
        manifest = json.load(f)
    model = load_core_readout_model(os.path.join(args.fixture, "model.ckpt"), "cpu").eval()
    shape = list(manifest["visualize"]["stimulus_shape"])
    if args.time_steps:
        shape[2] = args.time_steps
    # The inner objectives need the layer shapes; an output neuron's does not.
    layer_shapes = manifest["visualize"]["layer_output_shapes"]
    session = model.readout.readout_keys()[0]
    post, penalty, opt_fn = zoo.visualize_pieces(tuple(shape))
    load_before = os.getloadavg()[0]
    samples, cpu_samples = [], []
    for _ in range(args.runs):
        init = post.process(torch.randn(shape) * 0.1)
        cpu0 = time.process_time()
        _, _, secs = zoo.run_mei(model, ("output", session, 0), init, post, penalty, opt_fn, layer_shapes, args.steps)
        samples.append(secs * 10 / args.steps)
        cpu_samples.append((time.process_time() - cpu0) * 10 / args.steps)
        print(f"sample {samples[-1]:.3f} s per MEI (CPU {cpu_samples[-1]:.3f} s)", flush=True)
    print(json.dumps({
        "fixture": os.path.basename(os.path.normpath(args.fixture)),
        "stimulus_shape": shape,
        "steps_timed": args.steps,
        "threads": zoo.THREADS,
        "mei_float32_samples": [round(s, 3) for s in samples],
        "mei_float32_seconds_median": round(statistics.median(samples), 3),
        "mei_float32_cpu_samples": [round(s, 3) for s in cpu_samples],
        "mei_float32_cpu_seconds_median": round(statistics.median(cpu_samples), 3),
        "load_average_1min_before_after": [load_before, round(os.getloadavg()[0], 2)],
    }))


if __name__ == "__main__":
    main()
