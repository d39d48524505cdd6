#!/usr/bin/env python3
"""Voidbox's annealer against dwave-samplers' SimulatedAnnealingSampler.

Generates the instances deterministically (random max-cut graphs of 800 and
2000 nodes, the 800-node graph as an Ising model with real couplings, random
dense QUBOs with integer and with real coefficients),
runs the `solve` example of voidbox-ising and SimulatedAnnealingSampler in
the same run with the same sweeps and reads and a geometric schedule in
both, and prints one JSON object with the time ratios and best energies.

    python3 host/ising/bench/compare.py [--quick] [--seeds N] [--shared-range voidbox|dwave]

The beta range (see "mode" in the output):
- default, "own_default_ranges": each sampler with its own default range,
  voidbox's from the scale of the local fields (`auto_beta_range`),
  dwave's from the extreme coefficients. This is the comparison of the two
  solvers as a user gets them, at the same sweeps and reads.
- `--shared-range voidbox`: dwave is handed voidbox's default range.
- `--shared-range dwave`: voidbox is handed dwave's default range (as
  dwave reports it in `info["beta_range"]`).
With a shared range the two anneal the same way (in-order sweeps,
Metropolis test, geometric schedule); what still differs is that a voidbox
read answers with the lowest state it saw at the end of a sweep when that
is lower than its final state (both polished), and the implementation's
speed.

Installs dwave-samplers with pip if it is missing. Each side runs once per
seed (--seeds N, default 10, seeds 1..N, the same seeds for both): times are
medians over seeds, energies are given per seed and averaged (the best of
10 reads varies from seed to seed by more than the two solvers differ).
Voidbox's time is its own `elapsed_seconds` (model layout and
annealing, not file parsing); dwave's is the wall time of `sample()`. Both
CPU times are reported too (process CPU time of the solve for voidbox,
`time.process_time()` around `sample()` for dwave, which runs in one
thread): on a machine shared with other work they are the steadier figure.
Per seed, the best energies are also counted as voidbox better / tied /
worse. With 10 seeds the sign of the mean difference is mostly noise when
the solvers are close; `parity.py` pools many reads per side to tell.
"""

import json
import os
import random
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))


def ensure_dwave():
    try:
        import dwave.samplers  # noqa: F401
    except ImportError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "dwave-samplers"])


def maxcut_graph(nodes, edges, seed):
    """A random simple graph with unit weights, as sorted 0-based pairs."""
    r = random.Random(seed)
    chosen = set()
    while len(chosen) < edges:
        i, j = r.randrange(nodes), r.randrange(nodes)
        if i != j:
            chosen.add((min(i, j), max(i, j)))
    return sorted(chosen)


def dense_qubo(n, seed, integer):
    """Every pair coupled; integers in [-100, 100] or reals in [-1, 1]."""
    r = random.Random(seed)
    draw = (lambda: r.randint(-100, 100)) if integer else (lambda: r.uniform(-1.0, 1.0))
    q = {}
    for i in range(n):
        q[(i, i)] = draw()
        for j in range(i + 1, n):
            q[(i, j)] = draw()
    return q


def write_ising(path, nodes, couplings):
    with open(path, "w") as f:
        f.write(f"ising {nodes}\n")
        for (i, j), v in couplings.items():
            f.write(f"{i} {j} {v!r}\n")


def write_maxcut(path, nodes, pairs):
    with open(path, "w") as f:
        f.write(f"{nodes} {len(pairs)}\n")
        for i, j in pairs:
            f.write(f"{i + 1} {j + 1} 1\n")


def write_qubo(path, n, q):
    with open(path, "w") as f:
        f.write(f"qubo {n}\n")
        for (i, j), v in q.items():
            f.write(f"{i} {j} {v!r}\n")


# (name, kind, size, sweeps): the instances, each generated from seed 1000 + its index.
CASES = [
    ("maxcut_800_19176", "maxcut", (800, 19176), 1000),
    ("maxcut_2000_19990", "maxcut", (2000, 19990), 1000),
    ("sparse_ising_800_real", "ising_real", (800, 19176), 1000),
    ("dense_qubo_500_integer", "qubo_int", 500, 200),
    ("dense_qubo_500_real", "qubo_real", 500, 200),
]


def make_instance(kind, size, seed, path):
    """Writes the instance file for voidbox; returns (dimod bqm, offset, variables, couplings)."""
    import dimod

    if kind == "maxcut":
        nodes, edges = size
        pairs = maxcut_graph(nodes, edges, seed)
        write_maxcut(path, nodes, pairs)
        # Same model as the file: J = w/2 per edge, offset -W/2, so
        # the energy is minus the cut.
        bqm = dimod.BinaryQuadraticModel.from_ising({i: 0.0 for i in range(nodes)},
                                                    {p: 0.5 for p in pairs})
        return bqm, -0.5 * len(pairs), nodes, len(pairs)
    if kind == "ising_real":
        # The max-cut graph's edges with couplings uniform in [-1, 1]:
        # no integer quantum, so the float kernel runs.
        nodes, edges = size
        r = random.Random(seed + 7919)
        couplings = {p: r.uniform(-1.0, 1.0) for p in maxcut_graph(nodes, edges, seed)}
        write_ising(path, nodes, couplings)
        bqm = dimod.BinaryQuadraticModel.from_ising({i: 0.0 for i in range(nodes)}, couplings)
        return bqm, 0.0, nodes, len(couplings)
    n = size
    q = dense_qubo(n, seed, integer=(kind == "qubo_int"))
    write_qubo(path, n, q)
    return dimod.BinaryQuadraticModel.from_qubo(q), 0.0, n, n * (n - 1) // 2


def build_solver():
    env = dict(os.environ)
    subprocess.check_call(
        ["cargo", "build", "--release", "-q", "-p", "voidbox-ising", "--example", "solve"], cwd=REPO, env=env
    )
    target = env.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    return os.path.join(target, "release", "examples", "solve")


def run_voidbox(binary, path, sweeps, reads, threads, seed, beta_range=None):
    """beta_range None: voidbox's own default range."""
    extra = [] if beta_range is None else ["--beta-range", repr(float(beta_range[0])), repr(float(beta_range[1]))]
    out = subprocess.check_output(
        [binary, path, "--sweeps", str(sweeps), "--reads", str(reads), "--seed", str(seed),
         "--threads", str(threads), "--no-state"] + extra
    )
    report = json.loads(out)
    return {
        "best_energy": report["energy"],
        "mean_energy": sum(report["read_energies"]) / len(report["read_energies"]),
        "seconds": report["elapsed_seconds"],
        "cpu_seconds": report["process_cpu_seconds"],
        "beta_range": report["beta_range"],
    }


def run_dwave(bqm, offset, sweeps, reads, beta_range, seed):
    """beta_range None: dwave's own default range."""
    from dwave.samplers import SimulatedAnnealingSampler

    sampler = SimulatedAnnealingSampler()
    kwargs = {} if beta_range is None else {"beta_range": [float(b) for b in beta_range]}
    t0 = time.perf_counter()
    c0 = time.process_time()
    ss = sampler.sample(bqm, num_reads=reads, num_sweeps=sweeps,
                        beta_schedule_type="geometric", seed=seed, **kwargs)
    cpu = time.process_time() - c0
    elapsed = time.perf_counter() - t0
    return {
        "best_energy": float(ss.first.energy) + offset,
        "mean_energy": float(ss.record.energy.mean()) + offset,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "beta_range": [float(b) for b in ss.info["beta_range"]],
    }


MODES = {None: "own_default_ranges", "voidbox": "shared_voidbox_range", "dwave": "shared_dwave_range"}


def parse_shared_range(argv):
    """The --shared-range argument (None when absent)."""
    if "--shared-range" not in argv:
        return None
    k = argv.index("--shared-range")
    shared = argv[k + 1] if k + 1 < len(argv) else ""
    if shared not in ("voidbox", "dwave"):
        sys.exit("--shared-range takes voidbox or dwave")
    return shared


def run_pair(binary, path, bqm, offset, sweeps, reads, threads, seed, shared):
    """One seed of both samplers under the range mode; returns (voidbox, dwave)."""
    if shared == "dwave":
        theirs = run_dwave(bqm, offset, sweeps, reads, None, seed)
        ours = run_voidbox(binary, path, sweeps, reads, threads, seed, theirs["beta_range"])
    else:
        ours = run_voidbox(binary, path, sweeps, reads, threads, seed)
        theirs = run_dwave(bqm, offset, sweeps, reads, ours["beta_range"] if shared else None, seed)
    return ours, theirs


def median(values):
    v = sorted(values)
    return v[len(v) // 2]


def mean(values):
    return sum(values) / len(values)


def main():
    quick = "--quick" in sys.argv
    n_seeds = 10
    if "--seeds" in sys.argv:
        n_seeds = int(sys.argv[sys.argv.index("--seeds") + 1])
    seeds = list(range(1, n_seeds + 1))
    shared = parse_shared_range(sys.argv)
    load_at_start = os.getloadavg()
    ensure_dwave()
    binary = build_solver()
    reads = 10
    cases = CASES
    if quick:
        cases = [("maxcut_800_19176", "maxcut", (800, 19176), 200)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (name, kind, size, case_sweeps) in enumerate(cases):
            path = os.path.join(tmp, name + ".txt")
            bqm, offset, n, couplings = make_instance(kind, size, 1000 + k, path)
            ours1, ours2, theirs = [], [], []
            for seed in seeds:
                o1, t = run_pair(binary, path, bqm, offset, case_sweeps, reads, 1, seed, shared)
                ours1.append(o1)
                theirs.append(t)
                ours2.append(run_voidbox(binary, path, case_sweeps, reads, 2, seed,
                                         t["beta_range"] if shared == "dwave" else None))
            tol = 1e-9 * max(1.0, abs(theirs[0]["best_energy"]))
            results.append({
                "instance": name,
                "variables": n,
                "couplings": couplings,
                "sweeps": case_sweeps,
                "reads": reads,
                "seeds": seeds,
                "voidbox_beta_range": ours1[0]["beta_range"],
                "dwave_beta_range": theirs[0]["beta_range"],
                "dwave_median_seconds": median([t["seconds"] for t in theirs]),
                "voidbox_1_thread_median_seconds": median([o["seconds"] for o in ours1]),
                "voidbox_2_threads_median_seconds": median([o["seconds"] for o in ours2]),
                "dwave_median_cpu_seconds": median([t["cpu_seconds"] for t in theirs]),
                "voidbox_1_thread_median_cpu_seconds": median([o["cpu_seconds"] for o in ours1]),
                "speedup_1_thread": median([t["seconds"] for t in theirs]) / median([o["seconds"] for o in ours1]),
                "speedup_2_threads": median([t["seconds"] for t in theirs]) / median([o["seconds"] for o in ours2]),
                "cpu_time_ratio_1_thread": median([t["cpu_seconds"] for t in theirs])
                / median([o["cpu_seconds"] for o in ours1]),
                "dwave_best_energy_per_seed": [t["best_energy"] for t in theirs],
                "voidbox_best_energy_per_seed": [o["best_energy"] for o in ours1],
                "dwave_mean_best_energy": mean([t["best_energy"] for t in theirs]),
                "voidbox_mean_best_energy": mean([o["best_energy"] for o in ours1]),
                "dwave_mean_read_energy": mean([t["mean_energy"] for t in theirs]),
                "voidbox_mean_read_energy": mean([o["mean_energy"] for o in ours1]),
                "seeds_voidbox_equal_or_better": sum(
                    o["best_energy"] <= t["best_energy"] + tol for o, t in zip(ours1, theirs)),
                # Per seed, the best energies compared (equal within tol).
                "seeds_voidbox_better": sum(
                    o["best_energy"] < t["best_energy"] - tol for o, t in zip(ours1, theirs)),
                "seeds_tied": sum(
                    abs(o["best_energy"] - t["best_energy"]) <= tol for o, t in zip(ours1, theirs)),
                "seeds_voidbox_worse": sum(
                    o["best_energy"] > t["best_energy"] + tol for o, t in zip(ours1, theirs)),
            })
    import dwave.samplers

    print(json.dumps({
        "dwave_samplers_version": getattr(dwave.samplers, "__version__", "unknown"),
        "mode": MODES[shared],
        "seeds": seeds,
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
        "cpus": os.cpu_count(),
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
