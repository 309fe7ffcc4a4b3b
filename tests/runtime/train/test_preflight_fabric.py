"""The preflight's fabric check on EFA types: the network NCCL picked, read from its INIT,NET log.

The log lines are NCCL's and aws-ofi-nccl's own (as they print them on p4d/p5 with NCCL_DEBUG=INFO);
the file is named as the node command names it (`NCCL_DEBUG_FILE` with %h and %p).
"""

from __future__ import annotations

import os
import socket

import pytest

from runtime.train import preflight

OFI_LOG = """\
ip-10-0-1-5:4211:4290 [0] NCCL INFO NET/OFI Using aws-ofi-nccl 1.14.0
ip-10-0-1-5:4211:4290 [0] NCCL INFO NET/OFI Selected provider is efa, fabric is efa (found 32 nics)
ip-10-0-1-5:4211:4290 [0] NCCL INFO Using network Libfabric
"""
OLD_OFI_LOG = """\
ip-10-216-179-87:417138:417176 [7] NCCL INFO NET/OFI Selected Provider is efa
ip-10-216-179-87:417138:417176 [7] NCCL INFO Using network AWS Libfabric
"""
SOCKET_LOG = """\
ip-10-0-1-5:4211:4290 [0] NCCL INFO NET/Plugin: Could not find: libnccl-net.so
ip-10-0-1-5:4211:4290 [0] NCCL INFO NET/Socket : Using [0]ens32:10.0.1.5<0>
ip-10-0-1-5:4211:4290 [0] NCCL INFO Using network Socket
"""


def test_nccl_network_reads_the_network_and_the_provider():
    assert preflight.nccl_network(OFI_LOG) == ("Libfabric", "efa")
    assert preflight.nccl_network(OLD_OFI_LOG) == ("AWS Libfabric", "efa")
    assert preflight.nccl_network(SOCKET_LOG) == ("Socket", None)
    assert preflight.nccl_network("") == (None, None)


def _log(tmp_path, text: str) -> str:
    pattern = str(tmp_path / "node0.%h.%p.log")
    (tmp_path / f"node0.{socket.gethostname()}.{os.getpid()}.log").write_text(text)
    return pattern


def test_efa_passes_and_a_fallback_to_sockets_fails_the_run(tmp_path):
    preflight.check_fabric(_log(tmp_path, OLD_OFI_LOG))
    with pytest.raises(preflight.PreflightError, match=r"NCCL used network 'Socket' .*not aws-ofi-nccl over EFA"):
        preflight.check_fabric(_log(tmp_path, SOCKET_LOG))
    tcp = OLD_OFI_LOG.replace("Provider is efa", "Provider is tcp")  # libfabric, but not over EFA
    with pytest.raises(preflight.PreflightError, match=r"libfabric provider 'tcp'"):
        preflight.check_fabric(_log(tmp_path, tcp))


def test_no_log_only_warns(tmp_path, caplog):
    preflight.check_fabric(str(tmp_path / "absent.%h.%p.log"))
    assert "the network NCCL picked is unchecked" in caplog.text
