"""Mutation testing of numba_opt with cosmic-ray: ``make mutation`` (on demand, not in CI).

Usage: python tools/mutation/run.py --python PROJECT_PYTHON [SESSION ...] [--report-only]

Each SESSION is a tools/mutation/<name>.toml (default: all of them).  cosmic-ray writes each
mutant into the source file on disk, runs the session's test command, and puts the file back.
The tests run with NUMBA_DISABLE_JIT=1: numba compiles nothing, so a mutant of the rules in
_math.py is exercised as plain Python instead of costing ~2 minutes of kernel compilation, and
no stale on-disk kernel can hide it; NUMBA_CACHE_DIR points at a temporary folder all the same,
so the user's kernel cache is never touched.  Prints the score and every survivor's diff.
This script runs under the cosmic-ray virtual environment; the tests under PROJECT_PYTHON.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SESSIONS = HERE / "sessions"  # the sqlite work databases (git-ignored): re-running resumes


def run(*command, env=None):
    subprocess.run(command, check=True, cwd=ROOT, env=env)


def sample(session, keep, seed=17):
    """Keep ``keep`` pending mutants, drawn at random (seeded: the same ones each time), and mark
    the rest skipped: a cheaper run for the big modules.  The report says it was a sample."""
    import random
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult
    with use_db(str(session), WorkDB.Mode.open) as db:
        pending = sorted(item.job_id for item in db.pending_work_items)
        for job_id in set(pending) - set(random.Random(seed).sample(pending, min(keep, len(pending)))):
            db.set_result(job_id, WorkResult(output="Not in the sample",
                                             worker_outcome=WorkerOutcome.SKIPPED))


def keep_survivors_of(session, earlier):
    """Keep only the pending mutants that survived in the ``earlier`` session database (the same
    module, operator and occurrence) and mark the rest skipped: after writing tests for the
    survivors, re-run just those.  The source must not have changed above a survivor's line."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult
    with use_db(str(earlier), WorkDB.Mode.open) as db:
        wanted = {(str(m.module_path), m.operator_name, m.occurrence)
                  for item, result in db.completed_work_items
                  if result.test_outcome == TestOutcome.SURVIVED for m in item.mutations}
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item in list(db.pending_work_items):
            m = item.mutations[0]
            if (str(m.module_path), m.operator_name, m.occurrence) not in wanted:
                db.set_result(item.job_id, WorkResult(output="Not an earlier survivor",
                                                      worker_outcome=WorkerOutcome.SKIPPED))


def report(name):
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome
    counts = {"killed": 0, "survived": 0, "incompetent": 0}
    survivors = []
    with use_db(str(SESSIONS / f"{name}.sqlite"), WorkDB.Mode.open) as db:
        pending = db.num_work_items - db.num_results
        for item, result in db.completed_work_items:
            if result.test_outcome is None:  # skipped: the operator filter, or not in a sample
                continue
            counts[result.test_outcome.value] += 1
            if result.test_outcome == TestOutcome.SURVIVED:
                survivors.append((item, result))
        skipped = sum(1 for _, r in db.completed_work_items if r.test_outcome is None)
    tested = counts["killed"] + counts["survived"]
    score = 100.0 * counts["killed"] / tested if tested else float("nan")
    print(f"== {name}: {counts['killed']} killed / {tested} run ({score:.1f} %), "
          f"{counts['survived']} survived, {counts['incompetent']} incompetent, "
          f"{skipped} filtered out or not sampled, {pending} not run yet")
    for item, result in survivors:
        for m in item.mutations:
            print(f"-- SURVIVED {m.module_path}:{m.start_pos[0]} {m.operator_name} "
                  f"#{m.occurrence} ({item.job_id})")
        print(result.diff)
    return counts


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--python", required=True, help="the project's python (numpy, numba, torch)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--fresh", action="store_true", help="discard earlier results and re-run")
    parser.add_argument("--sample", type=int, metavar="N",
                        help="with a fresh session: test only N mutants drawn at random")
    parser.add_argument("--survivors-of", type=Path, metavar="DB",
                        help="with a fresh session: test only the mutants that survived in DB "
                             "(an earlier session's .sqlite, copied elsewhere first)")
    parser.add_argument("sessions", nargs="*")
    args = parser.parse_args()
    names = args.sessions or sorted(p.stem for p in HERE.glob("*.toml") if p.stem != "operators")
    SESSIONS.mkdir(exist_ok=True)
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", NUMBA_ENABLE_CUDASIM="0",
               PYTHONPATH=str(ROOT), NUMBA_CACHE_DIR=tempfile.mkdtemp(prefix="numba_opt_mut_"),
               PATH=str(Path(args.python).absolute().parent) + os.pathsep + os.environ["PATH"])
    bin_dir = Path(sys.executable).parent
    # the test commands run pytest in forks of one warm process (warm.py): torch's import alone
    # takes 3-10 s, which would otherwise be paid by every mutant
    env["MUTATION_SOCKET"] = str(Path(env["NUMBA_CACHE_DIR"]) / "warm.sock")
    totals = {"killed": 0, "survived": 0, "incompetent": 0}
    for name in names:
        config, session = HERE / f"{name}.toml", SESSIONS / f"{name}.sqlite"
        if not args.report_only:
            dirty = subprocess.run(["git", "status", "--porcelain", "numba_opt"], cwd=ROOT,
                                   capture_output=True, text=True, check=True).stdout
            if dirty:  # cosmic-ray edits these files in place: never mix in unsaved work
                sys.exit(f"numba_opt/ has uncommitted changes; commit or stash them first:\n{dirty}")
            server = subprocess.Popen([args.python, str(HERE / "warm.py"), "serve",
                                       env["MUTATION_SOCKET"], "numpy", "numba", "torch"],
                                      cwd=ROOT, env=env)
            while not os.path.exists(env["MUTATION_SOCKET"]) and server.poll() is None:
                time.sleep(0.2)
            try:
                exec_session(args, config, session, bin_dir, env)
            finally:
                server.terminate()
                server.wait()
        for key, value in report(name).items():
            totals[key] += value
    tested = totals["killed"] + totals["survived"]
    if tested:
        print(f"== total: {totals['killed']} killed / {tested} ({100 * totals['killed'] / tested:.1f} %)")


def exec_session(args, config, session, bin_dir, env):
    if args.fresh or not session.exists():
        session.unlink(missing_ok=True)
        run(bin_dir / "cosmic-ray", "init", config, session)
        run(bin_dir / "cr-filter-operators", session, HERE / "operators.toml")
        if args.sample:
            sample(session, args.sample)
        if args.survivors_of:
            keep_survivors_of(session, args.survivors_of)
        # the unmutated code must pass the session's tests, or every mutant is "killed"
        run(bin_dir / "cosmic-ray", "baseline", config, env=env)
    start = time.perf_counter()
    run(bin_dir / "cosmic-ray", "exec", config, session, env=env)
    print(f"== {config.stem}: exec took {time.perf_counter() - start:.0f} s", flush=True)

if __name__ == "__main__":
    main()
