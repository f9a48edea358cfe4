"""Run a list of fer-bench commands in one process, for tests that need another Keras backend.

Keras picks its backend once per process, so the test process (TensorFlow) cannot run JAX. Each
job list goes to one worker process (`KERAS_BACKEND` set by the caller), which pays the start-up
once for all its commands:

    python tests/cli_worker.py JOBS.json RESULTS.json

JOBS.json: {"id": [argv...], ...}; RESULTS.json: {"id": {"exit_code": int, "stdout": str, "output": str}, ...},
`output` holding stdout and stderr together (and a traceback, if any).
"""

import json
import sys
import traceback

from typer.testing import CliRunner

from fer_bench.cli import app


def main(jobs_file: str, results_file: str) -> None:
    jobs = json.loads(open(jobs_file).read())
    results = {}
    runner = CliRunner()
    for job, argv in jobs.items():
        outcome = runner.invoke(app, argv)
        output = outcome.output
        if outcome.exception is not None and not isinstance(outcome.exception, SystemExit):
            output += "".join(traceback.format_exception(outcome.exception))
        results[job] = {"exit_code": outcome.exit_code, "stdout": outcome.stdout, "output": output}
    with open(results_file, "w") as out:
        json.dump(results, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
