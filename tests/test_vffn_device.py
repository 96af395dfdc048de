"""vffn_megatron.device: the one place that decides CUDA vs CPU, DeepSpeed's accelerator, ports, torchrun argv."""
import socket
import subprocess
import sys

import torch

from vffn_megatron import device


def test_decision_follows_torch_cuda():
    cuda = torch.cuda.is_available()
    assert device.use_cuda() is cuda
    assert device.backend() == ("nccl" if cuda else "gloo")
    assert device.ds_accelerator({}) == ("cuda" if cuda else "cpu")
    assert device.local_device_count() == (torch.cuda.device_count() if cuda else 2)


def test_user_accelerator_is_kept():
    env = {"DS_ACCELERATOR": "xpu"}
    assert device.configure_environment(env) is env and env["DS_ACCELERATOR"] == "xpu"
    env = {"DS_ACCELERATOR": ""}  # empty counts as unset
    assert device.configure_environment(env)["DS_ACCELERATOR"] == device.ds_accelerator({})


def test_free_port_never_deepspeeds_default(monkeypatch):
    ports = iter([device.DEEPSPEED_DEFAULT_PORT, 40123])

    class FakeSocket:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def bind(self, addr):
            self.port = next(ports)

        def getsockname(self):
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(socket, "socket", FakeSocket)
    assert device.free_port() == 40123


def test_torchrun_command():
    assert device.torchrun_command(2, ["-m", "pretrain", "--config", "c.yaml"], port=1234) == [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1", "--node_rank=0",
        "--master_addr=127.0.0.1", "--master_port=1234", "-m", "pretrain", "--config", "c.yaml"]
    cmd = device.torchrun_command(1, ["s.py"], nnodes=2, node_rank=1, master_addr="node0", python="py")
    assert cmd[0] == "py" and "--nnodes=2" in cmd and "--node_rank=1" in cmd and "--master_addr=node0" in cmd
    port = int(next(a for a in cmd if a.startswith("--master_port=")).split("=")[1])
    assert port != device.DEEPSPEED_DEFAULT_PORT and cmd[-1] == "s.py"


def test_cli_answers_in_the_order_asked():
    env = {"DS_ACCELERATOR": "cpu", "PATH": ""}
    out = subprocess.run([sys.executable, "-m", "vffn_megatron.device", "--free-port", "--ds-accelerator"],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    assert len(out) == 2 and out[0].isdigit() and out[1] == "cpu"


def test_gloo_interface_is_the_route_to_the_master():
    """gloo would bind to the hostname's address, or fall back to loopback when that is not local (Debian's
    127.0.1.1, a namespace): with MASTER_ADDR another host, the interface on the route to it is chosen."""
    import psutil

    assert device.gloo_interface({"MASTER_ADDR": "127.0.0.1"}) is None
    assert device.gloo_interface({"MASTER_ADDR": "localhost"}) is None
    assert device.gloo_interface({"MASTER_ADDR": "10.1.2.3", "GLOO_SOCKET_IFNAME": "ib0"}) is None  # the user's
    assert device.gloo_interface({}) is None
    own = [(name, a.address) for name, addrs in psutil.net_if_addrs().items() for a in addrs
           if a.family == socket.AF_INET and not a.address.startswith("127.")]
    for name, address in own:  # this machine's own addresses route through the interface that holds them
        assert device.route_to(address) == (address, name)
        assert device.gloo_interface({"MASTER_ADDR": address}) == name
