"""Run a list of fer-bench commands in one process, for tests that need another Keras backend.

Keras picks its backend once per process, so the test process (TensorFlow) cannot run JAX. Each
job list goes to one worker process (`KERAS_BACKEND` set by the caller), which pays the start-up
once for all its commands:

    python tests/cli_worker.py JOBS.json RESULTS.json

JOBS.json: {"id": [argv...], ...}; RESULTS.json: {"id": {"exit_code": int, "stdout": str, "output": str}, ...},
`output` holding stdout and stderr together (and a traceback, if any).
"""

import json
import os
import sys
import time
import traceback

from typer.testing import CliRunner

from fer_bench.cli import app


def main(jobs_file: str, results_file: str) -> None:
    jobs = json.loads(open(jobs_file).read())
    results = {}
    runner = CliRunner()
    for job, argv in jobs.items():
        start = time.perf_counter()
        outcome = runner.invoke(app, argv)
        output = outcome.output
        if outcome.exception is not None and not isinstance(outcome.exception, SystemExit):
            output += "".join(traceback.format_exception(outcome.exception))
        results[job] = {"exit_code": outcome.exit_code, "stdout": outcome.stdout, "output": output,
                        "seconds": round(time.perf_counter() - start, 1)}
    partial = f"{results_file}.partial"
    with open(partial, "w") as out:
        json.dump(results, out)
    os.replace(partial, results_file)  # whole, for test processes that wait for it to appear


if __name__ == "__main__":
    main(*sys.argv[1:])
