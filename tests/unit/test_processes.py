"""infra.processes.process_alive: a running process, a finished one, a zombie, and a reused PID."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

from infra.processes import process_alive


def test_running_process_with_its_start_time_is_alive():
    me = psutil.Process(os.getpid())
    assert process_alive(os.getpid()) and process_alive(os.getpid(), me.create_time())


def test_a_reused_pid_does_not_count():
    started = psutil.Process(os.getpid()).create_time()
    assert not process_alive(os.getpid(), started - 3600)  # same PID, another start time: another process


def test_finished_and_zombie_processes_are_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    for _ in range(300):  # until it has exited but is not reaped yet
        if psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE:
            break
        time.sleep(0.1)
    assert not process_alive(child.pid)  # a zombie
    child.wait()
    assert not process_alive(child.pid)  # reaped: no such process
