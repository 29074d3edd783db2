"""Child process of `test_footprint`: start N single-task mock allocations on a Client
with production locks and print how many objects the cyclic garbage collector tracks
per running allocation. Run as ``python -m tests.unit.client.footprint_child DATA_DIR
N`` from the repository root."""

from __future__ import annotations

import gc
import os
import sys

os.environ["ALLOCRUNNER_LOCKCHECK"] = "0"  # before anything imports allocrunner

from allocrunner.client import Client
from allocrunner.config import ClientConfig
from allocrunner.drivers import MockDriver
from allocrunner.structs import new_allocation
from allocrunner.testing import mock_job, mock_task, wait_for


def main(data_dir: str, n: int) -> None:
    job = mock_job(mock_task("t", config={"run_for": "24h"}))
    allocs = [new_allocation(job, "web", index=i) for i in range(n)]
    driver = MockDriver()
    config = ClientConfig.for_data_dir(data_dir, gc_max_allocs=1_000_000)
    client = Client(config, drivers={"mock_driver": driver})
    try:
        client.start()
        gc.collect()
        before = len(gc.get_objects())
        client.run_allocs(allocs)

        def all_running() -> None:
            states = [client.runner(a.id) for a in allocs]
            running = sum(
                1 for ar in states if ar is not None and ar.alloc_state().client_status == "running"
            )
            assert running == n, f"{running} of {n} allocations running"

        wait_for(all_running, timeout=60.0)
        client.state_db.flush()
        gc.collect()
        print((len(gc.get_objects()) - before) / n, flush=True)
    finally:
        client.shutdown()
        driver.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
