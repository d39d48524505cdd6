#!/usr/bin/env python3
"""Voidbox's annealer against dwave-samplers' SimulatedAnnealingSampler.

Generates the instances deterministically (random max-cut graphs of 800 and
2000 nodes, random dense QUBOs with integer and with real coefficients),
runs the `solve` example of voidbox-ising and SimulatedAnnealingSampler in
the same run with the same sweeps, reads and beta range (geometric schedule
in both), and prints one JSON object with the time ratios and best energies.

    python3 host/ising/bench/compare.py [--quick] [--repeats N]

Installs dwave-samplers with pip if it is missing. Times are the best of
--repeats runs (default 3) of each side, to damp the noise of a shared
machine; every run uses the same seed, so energies do not change between
repeats. Voidbox's time is its own `elapsed_seconds` (model layout and
annealing, not file parsing); dwave's is the wall time of `sample()`. Both
CPU times are reported too (process CPU time of the solve for voidbox,
`time.process_time()` around `sample()` for dwave, which runs in one
thread): on a machine shared with other work they are the steadier figure.
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


def build_solver():
    env = dict(os.environ)
    subprocess.check_call(
        ["cargo", "build", "--release", "-q", "-p", "voidbox-ising", "--example", "solve"], cwd=REPO, env=env
    )
    target = env.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    return os.path.join(target, "release", "examples", "solve")


def run_voidbox(binary, path, sweeps, reads, threads, seed, repeats):
    best = None
    for _ in range(repeats):
        out = subprocess.check_output(
            [binary, path, "--sweeps", str(sweeps), "--reads", str(reads), "--seed", str(seed),
             "--threads", str(threads), "--no-state"]
        )
        report = json.loads(out)
        if best is None:
            best = report
        else:
            best["elapsed_seconds"] = min(best["elapsed_seconds"], report["elapsed_seconds"])
            best["process_cpu_seconds"] = min(best["process_cpu_seconds"], report["process_cpu_seconds"])
    return best


def run_dwave(bqm, offset, sweeps, reads, beta_range, seed, repeats):
    from dwave.samplers import SimulatedAnnealingSampler

    sampler = SimulatedAnnealingSampler()
    best_time = None
    best_cpu = None
    energy = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        c0 = time.process_time()
        ss = sampler.sample(bqm, num_reads=reads, num_sweeps=sweeps, beta_range=list(beta_range),
                            beta_schedule_type="geometric", seed=seed)
        cpu = time.process_time() - c0
        elapsed = time.perf_counter() - t0
        best_time = elapsed if best_time is None else min(best_time, elapsed)
        best_cpu = cpu if best_cpu is None else min(best_cpu, cpu)
        energy = float(ss.first.energy) + offset
    return {"best_energy": energy, "seconds": best_time, "cpu_seconds": best_cpu}


def main():
    quick = "--quick" in sys.argv
    repeats = 3
    if "--repeats" in sys.argv:
        repeats = int(sys.argv[sys.argv.index("--repeats") + 1])
    ensure_dwave()
    import dimod

    binary = build_solver()
    sweeps, reads = 1000, 10
    cases = [
        ("maxcut_800_19176", "maxcut", (800, 19176), sweeps),
        ("maxcut_2000_19990", "maxcut", (2000, 19990), sweeps),
        ("dense_qubo_500_integer", "qubo_int", 500, 200),
        ("dense_qubo_500_real", "qubo_real", 500, 200),
    ]
    if quick:
        cases = [("maxcut_800_19176", "maxcut", (800, 19176), 200)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (name, kind, size, case_sweeps) in enumerate(cases):
            path = os.path.join(tmp, name + ".txt")
            seed = 1000 + k
            if kind == "maxcut":
                nodes, edges = size
                pairs = maxcut_graph(nodes, edges, seed)
                write_maxcut(path, nodes, pairs)
                # Same model as the file: J = w/2 per edge, offset -W/2, so
                # the energy is minus the cut.
                bqm = dimod.BinaryQuadraticModel.from_ising({i: 0.0 for i in range(nodes)},
                                                            {p: 0.5 for p in pairs})
                offset = -0.5 * len(pairs)
                n, couplings = nodes, len(pairs)
            else:
                n = size
                q = dense_qubo(n, seed, integer=(kind == "qubo_int"))
                write_qubo(path, n, q)
                bqm = dimod.BinaryQuadraticModel.from_qubo(q)
                offset = 0.0
                couplings = n * (n - 1) // 2
            ours1 = run_voidbox(binary, path, case_sweeps, reads, 1, 7, repeats)
            ours2 = run_voidbox(binary, path, case_sweeps, reads, 2, 7, repeats)
            theirs = run_dwave(bqm, offset, case_sweeps, reads, ours1["beta_range"], 7, repeats)
            results.append({
                "instance": name,
                "variables": n,
                "couplings": couplings,
                "sweeps": case_sweeps,
                "reads": reads,
                "beta_range": ours1["beta_range"],
                "dwave_seconds": theirs["seconds"],
                "dwave_cpu_seconds": theirs["cpu_seconds"],
                "dwave_best_energy": theirs["best_energy"],
                "voidbox_1_thread_seconds": ours1["elapsed_seconds"],
                "voidbox_2_threads_seconds": ours2["elapsed_seconds"],
                "voidbox_1_thread_cpu_seconds": ours1["process_cpu_seconds"],
                "voidbox_best_energy": ours1["energy"],
                "voidbox_cut": ours1["cut"],
                "speedup_1_thread": theirs["seconds"] / ours1["elapsed_seconds"],
                "speedup_2_threads": theirs["seconds"] / ours2["elapsed_seconds"],
                "cpu_time_ratio_1_thread": theirs["cpu_seconds"] / ours1["process_cpu_seconds"],
                "voidbox_flip_attempts_per_second_1_thread": ours1["flip_attempts_per_second"],
                "energy_equal_or_better": ours1["energy"] <= theirs["best_energy"] + 1e-9 * max(1.0, abs(theirs["best_energy"])),
            })
    import dwave.samplers

    print(json.dumps({
        "dwave_samplers_version": getattr(dwave.samplers, "__version__", "unknown"),
        "repeats": repeats,
        "load_average_at_end": os.getloadavg(),
        "cpus": os.cpu_count(),
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
