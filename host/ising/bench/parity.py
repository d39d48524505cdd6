#!/usr/bin/env python3
"""Are voidbox and dwave-samplers equally good per read? A pooled check.

compare.py gives the best of 10 reads for 10 seeds: the best of 10 reads
varies from seed to seed by more than the two solvers differ, so its sign can
flip with the seeds. This runs many reads per side on the same instances,
with the same sweeps and geometric schedule as compare.py and the same beta
range mode (each its own default range, or `--shared-range voidbox|dwave`:
see compare.py), and prints the mean final energy of a read and the mean
best of each group of 10 reads, each with its standard error:

    python3 host/ising/bench/parity.py [--reads N] [--only NAME,NAME] [--shared-range voidbox|dwave]

N (default 400, a multiple of 50) reads per side; voidbox runs them in one
call with master seed 777, dwave in calls of 50 reads with seeds 777, 778, ...
"""

import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402


def summary(energies, group=10):
    n = len(energies)
    mean = sum(energies) / n
    var = sum((e - mean) ** 2 for e in energies) / (n - 1)
    bests = [min(energies[i:i + group]) for i in range(0, n, group)]
    bmean = sum(bests) / len(bests)
    bvar = sum((b - bmean) ** 2 for b in bests) / max(1, len(bests) - 1)
    return {
        "mean_read_energy": mean,
        "mean_read_energy_stderr": math.sqrt(var / n),
        "mean_best_of_10": bmean,
        "mean_best_of_10_stderr": math.sqrt(bvar / len(bests)),
    }


def main():
    reads = 400
    if "--reads" in sys.argv:
        reads = int(sys.argv[sys.argv.index("--reads") + 1])
    assert reads % 50 == 0 and reads > 0, "--reads must be a positive multiple of 50"
    only = None
    if "--only" in sys.argv:
        only = sys.argv[sys.argv.index("--only") + 1].split(",")
    shared = compare.parse_shared_range(sys.argv)
    load_at_start = os.getloadavg()
    compare.ensure_dwave()
    import tempfile

    from dwave.samplers import SimulatedAnnealingSampler

    binary = compare.build_solver()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (name, kind, size, sweeps) in enumerate(compare.CASES):
            if only and name not in only:
                continue
            path = os.path.join(tmp, name + ".txt")
            bqm, offset, _, _ = compare.make_instance(kind, size, 1000 + k, path)
            dwave_range = None
            if shared == "dwave":
                probe = SimulatedAnnealingSampler().sample(
                    bqm, num_reads=1, num_sweeps=1, beta_schedule_type="geometric", seed=1)
                dwave_range = [float(b) for b in probe.info["beta_range"]]
            extra = [] if dwave_range is None else ["--beta-range"] + [repr(b) for b in dwave_range]
            ours = json.loads(compare.subprocess.check_output(
                [binary, path, "--sweeps", str(sweeps), "--reads", str(reads), "--seed", "777",
                 "--threads", "2", "--no-state"] + extra))
            kwargs = {"beta_range": list(ours["beta_range"])} if shared == "voidbox" else {}
            theirs = []
            for c in range(reads // 50):
                ss = SimulatedAnnealingSampler().sample(
                    bqm, num_reads=50, num_sweeps=sweeps,
                    beta_schedule_type="geometric", seed=777 + c, **kwargs)
                dwave_range = [float(b) for b in ss.info["beta_range"]]
                theirs += [float(e) + offset for e in ss.record.energy]
            out.append({"instance": name, "sweeps": sweeps, "reads_per_side": reads,
                        "voidbox_beta_range": ours["beta_range"], "dwave_beta_range": dwave_range,
                        "dwave": summary(theirs), "voidbox": summary(ours["read_energies"])})
            print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"mode": compare.MODES[shared], "load_average_at_start": load_at_start,
                      "load_average_at_end": os.getloadavg(), "results": out}, indent=2))


if __name__ == "__main__":
    main()
