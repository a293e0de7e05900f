"""The port probe of `attnflow up`: a socket left in TIME_WAIT by a crashed server does not make a port "in use"
(the servers bind with SO_REUSEADDR); a port something listens on is in use."""

from __future__ import annotations

import socket
import time

import psutil

from infra.stack import HOST, port_free


def _time_wait_on(port: int) -> bool:
    return any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_TIME_WAIT
               for c in psutil.net_connections(kind="tcp4"))


def test_port_in_time_wait_is_free_and_a_listening_port_is_not():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((HOST, 0))
    server.listen(1)
    port = server.getsockname()[1]
    assert not port_free(port)  # listening: in use

    client = socket.create_connection((HOST, port))
    conn, _ = server.accept()
    conn.close()  # the server side closes first, as a killed server does: its end goes to TIME_WAIT
    time.sleep(0.2)
    client.close()
    server.close()
    time.sleep(0.2)
    assert _time_wait_on(port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as plain:  # what the old probe did: refused
        try:
            plain.bind((HOST, port))
            plain_bind_failed = False
        except OSError:
            plain_bind_failed = True
    assert plain_bind_failed, "no TIME_WAIT effect on this kernel: the test proves nothing"
    assert port_free(port)
