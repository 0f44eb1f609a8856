"""Time one job from and to a local S3 server (moto) against the same job on local disk.

Usage (needs the test extra: moto[server], s3fs):
  python benchmarks/object_storage.py COLLECTION_FOLDER [--repeat 3] [--k 5]

Each run is a fresh `kmeans-pipeline run` process (if_exists: overwrite), so every figure
includes start-up, listing, sampling, fitting, segmenting and writing every output.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from objectstore import S3Server, aws_environment  # noqa: E402  (the tests' server helper)


def _job(folder: str, paths: list[str], out: str, options: dict, k: int) -> str:
    job = {"input": {"paths": paths, "storage_options": options},
           "kmeans": {"k": k, "seed": 0},
           "output": {"dir": out, "if_exists": "overwrite", "storage_options": options}}
    path = os.path.join(folder, f"job-{len(os.listdir(folder))}.yaml")
    with open(path, "w") as handle:
        yaml.safe_dump(job, handle)
    return path


def _time(job: str, env: dict) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", "run", job, "-q"], env=env, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("collection")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    os.environ.update(aws_environment())
    env = dict(os.environ)
    files = sorted(f for f in os.listdir(args.collection)
                   if f.lower().endswith((".jpg", ".jpeg", ".png")))
    server = S3Server()
    try:
        client = server.client()
        client.create_bucket(Bucket="bench")
        for name in files:
            client.upload_file(os.path.join(args.collection, name), "bench", f"in/{name}")
        options = {"client_kwargs": {"endpoint_url": server.endpoint}}
        with tempfile.TemporaryDirectory() as folder:
            jobs = {"local disk -> local disk": _job(folder, [os.path.abspath(args.collection)],
                                                     os.path.join(folder, "out"), {}, args.k),
                    "s3 (moto) -> s3 (moto)": _job(folder, ["s3://bench/in/"],
                                                   "s3://bench/out", options, args.k)}
            times: dict[str, list[float]] = {name: [] for name in jobs}
            for _ in range(args.repeat):  # interleaved, so that load drifts hit both alike
                for name, job in jobs.items():
                    times[name].append(_time(job, env))
            with open(os.path.join(folder, "out", "report.json")) as handle:
                phases = {"local disk -> local disk": json.load(handle)["timings"]}
            body = client.get_object(Bucket="bench", Key="out/report.json")["Body"].read()
            phases["s3 (moto) -> s3 (moto)"] = json.loads(body)["timings"]
    finally:
        server.stop()
    print(f"{len(files)} images from {args.collection}, k={args.k}, "
          f"{args.repeat} runs each (median, min, max in s; phases of the last run):")
    for name, values in times.items():
        print(f"  {name:26} {statistics.median(values):6.2f} {min(values):6.2f} "
              f"{max(values):6.2f}   {phases[name]}")


if __name__ == "__main__":
    main()
