"""Three machines on one: network namespaces on a bridge, each with its own sshd, PID and mount
namespace and /tmp, for `ray up` of cluster-onprem.yaml with real worker nodes.

Layout (root only; everything lives under one base directory and a few kernel objects, all
removed by :meth:`Machines.remove`, which is safe to call after a partial :meth:`Machines.make`):

* a namespace ``<tag>-lan`` holding the bridge, so no rule of the host's firewall applies to
  the traffic between nodes; one veth pair per node into it, and one from the host (address
  ``.1``), so that `ray up` on the host reaches the head by its address, as a user's laptop would;
* one network namespace per node (``.10`` head, ``.11``, ``.12`` workers), with a route to the
  subnet only (plus an on-link default route, so that Ray's "which address do I have" UDP probe
  finds the node's own address; nothing on the bridge answers for addresses outside it);
* inside each, ``unshare --pid --fork --mount-proc --mount``: its own process tree (``ray stop``
  on one node sees no other node's processes) and its own mounts: a tmpfs on /tmp (Ray's
  session files) and the node's own home directory bind-mounted on the SSH user's home;
* PID 1 of each node is a small reaper that runs the node's sshd; SIGKILL to it ends every
  process of the node at once (the kernel kills a PID namespace with its init).

One unprivileged user (``USER``) logs in on every node; its home is a copy per node. The venv
in it sees the repository venv's packages through a .pth file, and pip there is offline
(``no-index``, no build isolation), so the cluster file's ``pip install -e ~/marktune[cluster]``
runs as written without reaching a package index: it needs every pin to be installed already
(``scripts/setup.sh`` installs the ``cluster`` extra).
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

USER = "marktune-node"
HOME = Path("/home") / USER
PG_BIN = Path("/usr/lib/postgresql")
TOOLS = ("ip", "unshare", "nsenter", "mount", "/usr/sbin/sshd", "ssh", "ssh-keygen", "rsync", "setfacl",
         "getfacl", "useradd", "userdel", "su")

# PID 1 of a node: start the command, reap every orphan (Ray daemonizes), never exit on its own.
NODE_INIT = '''\
import os, subprocess, sys, time
subprocess.Popen(sys.argv[1:])
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        time.sleep(1)
'''


def run(cmd: list[str], *, timeout: float = 60, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done


def as_user(script: str, *, timeout: float = 120) -> subprocess.CompletedProcess:
    return run(["su", "-s", "/bin/bash", "-l", USER, "-c", script], timeout=timeout, check=False)


def postgres_bin() -> Path | None:
    found = sorted(PG_BIN.glob("*/bin/postgres"))
    return found[-1].parent if found else None


def missing_prerequisites() -> str | None:
    """Why the machines cannot be made here, or None."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux (makes network namespaces, a user and sshds)"
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return (f"{tool} is missing (scripts/test.sh installs openssh-server, rsync, acl and "
                    "postgresql with apt; ip, unshare and nsenter come with iproute2 and util-linux)")
    if postgres_bin() is None:
        return f"PostgreSQL's server is missing (no {PG_BIN}/*/bin/postgres; apt-get install postgresql)"
    probe = run(["unshare", "--net", "--pid", "--fork", "--mount", "true"], check=False)
    if probe.returncode != 0:
        return f"cannot make namespaces here (unshare --net --pid --mount: {probe.stderr.strip()[:200]})"
    return None


def host_paths_under_tmp() -> list[Path]:
    """This interpreter's installation and the venv whose packages the nodes use, where they lie
    under /tmp (which each node replaces by its own)."""
    site_packages = Path(sysconfig.get_paths()["purelib"]).resolve()
    wanted = {site_packages.parents[2], Path(sys.base_prefix).resolve(),
              Path(getattr(sys, "_base_executable", sys.executable)).resolve().parent.parent}
    under = sorted(p for p in wanted if p.is_relative_to("/tmp") and p != Path("/tmp"))
    return [p for p in under if not any(p != q and p.is_relative_to(q) for q in under)]


def free_subnet() -> ipaddress.IPv4Network:
    import socket

    used = [ipaddress.ip_interface(f"{a.address}/{a.netmask}").network for addrs in psutil.net_if_addrs().values()
            for a in addrs if a.family == socket.AF_INET and a.netmask]
    routes = run(["ip", "-4", "route"]).stdout
    for third in range(213, 240):
        net = ipaddress.ip_network(f"10.{third}.0.0/24")
        if not any(net.overlaps(u) for u in used) and f"10.{third}." not in routes:
            return net
    raise RuntimeError("no free 10.x.0.0/24 subnet for the test's bridge")


@dataclass
class Node:
    name: str  # head, w1, w2
    ip: str
    netns: str
    home: Path  # bind-mounted on HOME inside the node
    init: subprocess.Popen | None = None  # `unshare`; its one child is the node's PID 1

    def pid1(self) -> int:
        """The host PID of the node's PID 1 (the reaper)."""
        (child,) = psutil.Process(self.init.pid).children()
        return child.pid

    def pid_namespace(self) -> str:
        return os.readlink(f"/proc/{self.pid1()}/ns/pid")

    def processes(self) -> list[psutil.Process]:
        """Every process of the node (host view), its PID 1 and sshd included."""
        ns = self.pid_namespace()
        found = []
        for p in psutil.process_iter():
            try:
                if os.readlink(f"/proc/{p.pid}/ns/pid") == ns:
                    found.append(p)
            except OSError:
                continue
        return found

    def ray_processes(self) -> list[str]:
        """What the SSH user runs on the node besides SSH (Ray; PostgreSQL runs as postgres)."""
        import pwd

        uid = pwd.getpwnam(USER).pw_uid
        left = []
        for p in self.processes():
            try:
                cmd = " ".join(p.cmdline()) or p.name()
                if (p.uids().real != uid and p.uids().effective != uid) or p.name() in ("ssh", "sshd") \
                        or "sshd" in cmd or p.status() == psutil.STATUS_ZOMBIE:  # (ssh: the autoscaler's)
                    continue
                left.append(f"{p.pid} {cmd[:120]}")
            except psutil.NoSuchProcess:
                continue
        return left

    def path(self, inside: str) -> Path:
        """A path of the node's own mounts (its /tmp, say), seen from the host; symbolic links
        (Ray's session_latest) resolved inside the node."""
        root = Path(f"/proc/{self.pid1()}/root")
        resolved = Path("/")
        for part in Path(inside).parts[1:]:
            resolved = resolved / part
            if (root / resolved.relative_to("/")).is_symlink():
                resolved = Path(os.readlink(root / resolved.relative_to("/")))
        return root / resolved.relative_to("/")

    def alive(self) -> bool:
        return self.init is not None and self.init.poll() is None


@dataclass
class Machines:
    """The bridge, the nodes, their user and sshds; and a PostgreSQL server on the head."""

    base: Path
    tag: str = field(default_factory=lambda: f"mt{os.getpid() % 100000}")
    subnet: ipaddress.IPv4Network | None = None
    nodes: dict[str, Node] = field(default_factory=dict)
    acl_dirs: dict[str, bool] = field(default_factory=dict)
    postgres: subprocess.Popen | None = None
    made_user: bool = False

    @property
    def lan(self) -> str:
        return f"{self.tag}-lan"

    @property
    def host_link(self) -> str:
        return f"{self.tag}x"

    @property
    def key(self) -> Path:
        return self.base / "id_ed25519"

    def address(self, last: int) -> str:
        return str(self.subnet.network_address + last)

    # ------------------------------------------------------------ making
    def make(self, names: tuple[str, ...] = ("head", "w1", "w2")) -> None:
        self.base.mkdir(mode=0o755, parents=True, exist_ok=True)
        (self.base / "logs").mkdir(exist_ok=True)
        self.subnet = free_subnet()
        self._make_lan()
        self._make_user()
        for i, name in enumerate(names):
            node = Node(name=name, ip=self.address(10 + i), netns=f"{self.tag}-{name}",
                        home=self.base / "homes" / name)
            self.nodes[name] = node
            self._make_link(node, index=i)
            node.home.parent.mkdir(exist_ok=True)
            run(["cp", "-a", str(HOME), str(node.home)])  # owner, modes and links as they are
            self._start(node)

    def _make_lan(self) -> None:
        run(["ip", "netns", "add", self.lan])
        ip_lan = ["ip", "-n", self.lan]
        run([*ip_lan, "link", "add", "br0", "type", "bridge"])
        run([*ip_lan, "link", "set", "br0", "up"])
        run([*ip_lan, "link", "set", "lo", "up"])
        run(["ip", "link", "add", self.host_link, "type", "veth", "peer", "name", f"{self.tag}xl"])
        run(["ip", "link", "set", f"{self.tag}xl", "netns", self.lan])
        run([*ip_lan, "link", "set", f"{self.tag}xl", "master", "br0", "up"])
        run(["ip", "addr", "add", f"{self.address(1)}/{self.subnet.prefixlen}", "dev", self.host_link])
        run(["ip", "link", "set", self.host_link, "up"])

    def _make_link(self, node: Node, *, index: int) -> None:
        run(["ip", "netns", "add", node.netns])
        outer, inner = f"{self.tag}l{index}", f"{self.tag}n{index}"
        run(["ip", "link", "add", inner, "type", "veth", "peer", "name", outer])
        run(["ip", "link", "set", outer, "netns", self.lan])
        run(["ip", "-n", self.lan, "link", "set", outer, "master", "br0", "up"])
        run(["ip", "link", "set", inner, "netns", node.netns])
        ip_node = ["ip", "-n", node.netns]
        run([*ip_node, "link", "set", inner, "name", "eth0"])
        run([*ip_node, "addr", "add", f"{node.ip}/{self.subnet.prefixlen}", "dev", "eth0"])
        run([*ip_node, "link", "set", "eth0", "up"])
        run([*ip_node, "link", "set", "lo", "up"])
        run([*ip_node, "route", "add", "default", "dev", "eth0"])

    def link_of(self, node: Node) -> str:
        return f"{self.tag}l{list(self.nodes).index(node.name)}"

    def _make_user(self) -> None:
        remove_user()
        # '*': no password to log in with, yet not "locked" for sshd's key login
        run(["useradd", "--create-home", "--shell", "/bin/bash", "--password", "*", USER])
        self.made_user = True
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "marktune-3node-test", "-f", str(self.key)])
        ssh_dir = HOME / ".ssh"
        ssh_dir.mkdir(mode=0o700)
        (ssh_dir / "authorized_keys").write_text(Path(f"{self.key}.pub").read_text())
        (ssh_dir / "authorized_keys").chmod(0o600)
        pip_conf = HOME / ".config" / "pip" / "pip.conf"
        pip_conf.parent.mkdir(parents=True)
        # offline: the nodes' namespaces reach no package index. (`no-build-isolation = false`
        # is pip's spelling of "build without isolation", with the venv's own setuptools.)
        pip_conf.write_text("[global]\nno-index = true\nno-build-isolation = false\n")
        self._make_venv()
        run(["chown", "-R", f"{USER}:{USER}", str(HOME)])

    def _make_venv(self) -> None:
        """~/venv from this interpreter's Python, seeing this venv's packages (read-only), with
        no pip of its own (pip and setuptools come from there too: new enough to build offline)."""
        base_python = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
        site_packages = Path(sysconfig.get_paths()["purelib"]).resolve()
        for target in (base_python, site_packages, Path(sys.executable).resolve()):
            self._grant_traversal(target)
        venv = HOME / "venv"
        run([str(base_python), "-m", "venv", "--without-pip", str(venv)])
        py = f"python{sys.version_info.major}.{sys.version_info.minor}"
        (venv / "lib" / py / "site-packages" / "_host_packages.pth").write_text(f"{site_packages}\n")
        for command, main in (("ray", "from ray.scripts.scripts import main"),
                              ("pip", "from pip._internal.cli.main import main")):
            script = venv / "bin" / command
            script.write_text(f"#!{venv}/bin/python\nimport sys\n{main}\nsys.exit(main())\n")
            script.chmod(0o755)
        run(["chown", "-R", f"{USER}:{USER}", str(HOME)])
        check = as_user("~/venv/bin/python -c 'import torch, sklearn, ray.tune, aiohttp_cors, psycopg'")
        assert check.returncode == 0, f"{USER} cannot use {site_packages}: {check.stderr[-2000:]}"

    def _grant_traversal(self, path: Path) -> None:
        """Let the user through directories closed to others (e.g. /root), and only through."""
        for d in map(str, reversed(path.parents)):
            if not os.stat(d).st_mode & 0o001 and d not in self.acl_dirs:
                had_acl = bool(run(["getfacl", "--skip-base", "-p", d]).stdout.strip())
                run(["setfacl", "-m", f"u:{USER}:x", d])
                self.acl_dirs[d] = had_acl

    def _start(self, node: Node) -> None:
        conf = self.base / "nodes" / node.name
        conf.mkdir(parents=True)
        host_key = conf / "ssh_host_ed25519_key"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)])
        (conf / "sshd_config").write_text("\n".join([
            "Port 22", f"ListenAddress {node.ip}", f"HostKey {host_key}", "PidFile /tmp/sshd.pid",
            f"AllowUsers {USER}", "PermitRootLogin no", "PubkeyAuthentication yes",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
            "X11Forwarding no", "AllowTcpForwarding local",  # `ray dashboard` forwards a port
            "Subsystem sftp internal-sftp", ""]))
        (conf / "init.py").write_text(NODE_INIT)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        # The node's own /tmp hides the host's: what the node needs from under the host's /tmp (a
        # clone and its venv there, say) is kept aside first and bound back into the tmpfs.
        keep = []
        for i, path in enumerate(host_paths_under_tmp()):
            aside = conf / "keep" / str(i)
            aside.mkdir(parents=True)
            keep.append((f"mount --bind {path} {aside}", f"mkdir -p {path} && mount --bind {aside} {path}"))
        python = Path(getattr(sys, "_base_executable", sys.executable)).resolve()  # stdlib only
        inside = " && ".join([*(k for k, _ in keep), "mount -t tmpfs -o mode=1777 tmpfs /tmp",
                              *(b for _, b in keep), f"mount --bind {node.home} {HOME}",
                              f"exec {python} {conf / 'init.py'} /usr/sbin/sshd -D -e -f {conf / 'sshd_config'}"])
        node.init = subprocess.Popen(
            ["ip", "netns", "exec", node.netns, "unshare", "--pid", "--fork", "--mount-proc", "--mount",
             "--propagation", "private", "--kill-child", "/bin/sh", "-c", inside],
            stdout=subprocess.DEVNULL, stderr=open(self.base / "logs" / f"{node.name}-sshd.log", "w"),
            start_new_session=True)
        wait_for_port(node.ip, 22, timeout=30, proc=node.init)

    # ------------------------------------------------------------ PostgreSQL on the head
    def start_postgres(self, *, password: str, port: int = 5432) -> str:
        """Debian's PostgreSQL server in the head's namespaces, a password-protected role and
        database; returns the URL (with the password: keep it out of every file)."""
        head = self.nodes["head"]
        pg = postgres_bin()
        data = self.base / "pgdata"
        data.mkdir(mode=0o700)
        shutil.chown(data, "postgres", "postgres")
        pwfile = self.base / "pgpass.tmp"
        pwfile.write_text(password + "\n")
        try:
            shutil.chown(pwfile, "postgres")
            pwfile.chmod(0o600)
            run(["su", "-s", "/bin/sh", "postgres", "-c",
                 f"{pg}/initdb -D {data} -U marktune --pwfile={pwfile} --auth-local=scram-sha-256 "
                 "--auth-host=scram-sha-256 -E UTF8"], timeout=120)
        finally:
            pwfile.unlink(missing_ok=True)
        with open(data / "pg_hba.conf", "a") as f:
            f.write(f"host all all {self.subnet} scram-sha-256\n")
        self.postgres = subprocess.Popen(
            ["nsenter", "-t", str(head.pid1()), "-n", "-m", "-p", "--", "su", "-s", "/bin/sh", "postgres", "-c",
             f"exec {pg}/postgres -D {data} -c listen_addresses={head.ip} -c port={port} "
             "-c unix_socket_directories=/tmp -c fsync=off"],
            stdout=subprocess.DEVNULL, stderr=open(self.base / "logs" / "postgres.log", "w"),
            start_new_session=True)
        wait_for_port(head.ip, port, timeout=60, proc=self.postgres)
        env = dict(os.environ, PGPASSWORD=password)
        run([f"{pg}/createdb", "-h", head.ip, "-p", str(port), "-U", "marktune", "marktune"], env=env)
        return f"postgresql://marktune:{password}@{head.ip}:{port}/marktune"

    def stop_postgres(self) -> None:
        if self.postgres is None or self.postgres.poll() is not None:
            return
        server = [p for p in psutil.Process(self.postgres.pid).children(recursive=True) if p.name() == "postgres"]
        for p in server[:1]:  # the postmaster: SIGINT is its fast shutdown
            p.send_signal(signal.SIGINT)
        gone, alive = psutil.wait_procs(server, timeout=30)
        for p in alive:
            p.kill()
        self.postgres.wait(timeout=30)

    # ------------------------------------------------------------ losing a node
    def lose(self, node: Node) -> None:
        """The node's link, then every process of it, gone at once."""
        run(["ip", "-n", self.lan, "link", "del", self.link_of(node)], check=False)
        os.kill(node.pid1(), signal.SIGKILL)  # the kernel kills the rest of its PID namespace
        node.init.wait(timeout=30)

    # ------------------------------------------------------------ removing
    def remove(self) -> list[str]:
        """Stop and delete everything :meth:`make` made; what was still running on a node."""
        leftovers = []
        if self.postgres is not None:
            self.stop_postgres()
        for node in self.nodes.values():
            if node.alive():
                try:
                    leftovers += [f"{node.name}: {p}" for p in node.ray_processes()]
                    os.kill(node.pid1(), signal.SIGKILL)
                except (ValueError, psutil.Error, OSError):
                    node.init.kill()
                node.init.wait(timeout=30)
            run(["ip", "netns", "del", node.netns], check=False)
        run(["ip", "link", "del", self.host_link], check=False)
        run(["ip", "netns", "del", self.lan], check=False)
        for d, had_acl in self.acl_dirs.items():
            # -b also drops the mask entry that -m added, leaving the directory as it was
            run(["setfacl", "-x", f"u:{USER}", d] if had_acl else ["setfacl", "-b", d], check=False)
        if self.made_user:
            remove_user()
        shutil.rmtree(self.base, ignore_errors=True)  # homes, keys, logs, PostgreSQL's data
        return leftovers


def remove_user() -> None:
    import pwd

    try:
        uid = pwd.getpwnam(USER).pw_uid
    except KeyError:
        return
    mine = [p for p in psutil.process_iter(["uids"]) if p.info["uids"] and uid in (p.info["uids"].real,
                                                                                      p.info["uids"].effective)]
    for p in mine:  # the user exists for this test alone
        p.kill()
    psutil.wait_procs(mine, timeout=10)
    run(["userdel", "--remove", USER], check=False)
    shutil.rmtree(f"/tmp/torchinductor_{USER}", ignore_errors=True)


def wait_for_port(host: str, port: int, *, timeout: float, proc: subprocess.Popen | None = None) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:6]} exited with {proc.returncode} before {host}:{port} opened")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")
