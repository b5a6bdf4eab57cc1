import os
import subprocess
import sys
import time

import pytest

from capitu.environment import MachineLoad, is_busy, spare_cores


def spin(seconds: float) -> None:
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="the others' share is read from /proc/stat")
def test_machine_load_counts_other_programs_not_this_one():
    with MachineLoad() as own:
        spin(1.0)  # this process's own work is not a neighbour's
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        with MachineLoad() as crowded:
            spin(1.0)
    finally:
        neighbour.kill()
    cores = os.cpu_count()
    # a busy loop in another process keeps (up to) one core busy; on one core, it shares it with us
    assert crowded.result["others_cores"] > own.result["others_cores"] + 0.4 and is_busy(crowded.result)
    assert crowded.result["others"] == pytest.approx(crowded.result["others_cores"] / cores)
    assert crowded.result["cores"] == cores and crowded.result["loadavg"] >= 0


def test_busy_falls_back_to_the_load_average_without_proc():
    assert is_busy({"others_cores": None, "loadavg": 5.0, "cores": 2})
    assert not is_busy({"others_cores": None, "loadavg": 2.5, "cores": 2})  # the measurement's own threads count
    assert not is_busy({"others_cores": 0.1, "loadavg": 9.0, "cores": 2})  # the direct measure wins
    assert is_busy({"others_cores": 1.0, "loadavg": 1.0, "cores": 16})  # one busy core of 16 is enough
    assert not is_busy(None)


def test_a_gpu_measurement_leaves_all_cores_but_one_to_the_others():
    cores = os.cpu_count()
    assert spare_cores("cpu") == 0  # torch's threads are on every core
    assert spare_cores("cuda") == spare_cores("mps") == cores - 1  # one thread launches the kernels
    with MachineLoad("cuda") as load:
        pass
    assert load.result["spare_cores"] == cores - 1
    # the other shards of a --jobs study and the references beside them, on a 16-core GPU machine
    assert not is_busy({"others_cores": 4.0, "spare_cores": 15, "cores": 16})
    assert is_busy({"others_cores": 15.5, "spare_cores": 15, "cores": 16})  # no core left for the kernels' thread
    # busy: over 0.3 of a core more than the spare ones (a GPU run on 2 cores, as Colab's)
    assert is_busy({"others_cores": 1.4, "spare_cores": 1, "cores": 2})
    assert not is_busy({"others_cores": 1.2, "spare_cores": 1, "cores": 2})
    assert is_busy({"others_cores": 0.4, "cores": 2})  # an older record, without spare cores: none
