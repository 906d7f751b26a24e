"""Facts about the box, gathered in one SSH round trip.

A small stdlib-only Python script runs with the box's python3 and prints one JSON object; the
planner (plan.py) turns those facts plus the config into steps. Nothing here decides anything.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

from agent.protocol.errors import TrainctlError
from agent.protocol.records import Record

_SCRIPT = r'''
import json, os, shutil, socket, subprocess, sys
a = json.loads(sys.argv[1])
def sh(cmd, t=20):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=t)
        return p.returncode, p.stdout
    except Exception as e:
        return -1, str(e)
f = {"uid": os.getuid(), "user": os.environ.get("USER") or "", "hostname": socket.gethostname(),
     "python": list(sys.version_info[:3]), "python_path": sys.executable,
     "systemd": os.path.isdir("/run/systemd/system"), "has_flock": bool(shutil.which("flock"))}
rc, out = sh(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"]) if shutil.which("nvidia-smi") else (-1, "")
f["gpus"] = [l.strip() for l in out.splitlines() if l.strip()] if rc == 0 else []
f["nvidia_smi"] = bool(shutil.which("nvidia-smi"))
root = a["data_root"]
f["data_root_exists"] = os.path.isdir(root)
f["data_root_mounted"] = os.path.ismount(root)
probe = root
while not os.path.exists(probe):
    probe = os.path.dirname(probe) or "/"
st = os.statvfs(probe)
f["free_bytes"] = st.f_bavail * st.f_frsize
f["data_root_writable"] = os.access(probe, os.W_OK) or os.getuid() == 0
rc, out = sh(["lsblk", "-J", "-b", "-o", "NAME,PATH,TYPE,FSTYPE,PTTYPE,MOUNTPOINT,SIZE"]) if shutil.which("lsblk") else (-1, "")
try:
    f["block_devices"] = json.loads(out).get("blockdevices", []) if rc == 0 else []
except ValueError:
    f["block_devices"] = []
# A disk with no filesystem is "blank" only if it is readable and blkid finds no signature at all;
# an unreadable disk is never taken for blank (blkid exits 2 for both).
pre = [] if os.getuid() == 0 else ["sudo", "-n"]
for d in f["block_devices"]:
    if d.get("type") != "disk" or d.get("children") or d.get("mountpoint") or d.get("fstype") or d.get("pttype"):
        continue
    path = d.get("path") or "/dev/" + d.get("name", "")
    if sh(pre + ["dd", "if=" + path, "of=/dev/null", "bs=4096", "count=1", "status=none"])[0] != 0:
        d["probe"] = "unreadable"
    elif shutil.which("blkid"):
        rc, out = sh(pre + ["blkid", "-p", "-o", "export", path])
        d["probe"] = "blank" if rc == 2 else ("filesystem" if "TYPE=" in out else "signature")
seed = a.get("seed_python") or "python3"
rc, out = sh([seed, "-c", "import json,sys,site,importlib.util as u;print(json.dumps({'version':list(sys.version_info[:3]),"
              "'prefix':sys.prefix,'base_prefix':sys.base_prefix,'site':site.getsitepackages(),"
              "'executable':sys.executable,'pip':__import__('pip').__version__ if u.find_spec('pip') else None}))"]
             ) if shutil.which(seed) or os.path.exists(seed) else (-1, "")
try:
    f["seed"] = json.loads(out) if rc == 0 else None
except ValueError:
    f["seed"] = None
venv = a.get("venv") or ""
f["venv_ready"] = bool(venv) and os.path.exists(os.path.join(venv, ".trainctl-ready"))
try:
    f["venv_wheel"] = open(os.path.join(venv, ".trainctl-wheel")).read().strip()
except OSError:
    f["venv_wheel"] = ""
f["wheel_uploaded"] = bool(a.get("wheel_path")) and os.path.exists(a["wheel_path"])
active = None
try:
    active = json.load(open(a["active_file"]))
    pid = int(active.get("pid") or 0)
    cmd = open("/proc/%d/cmdline" % pid, "rb").read().decode(errors="replace") if pid > 0 else ""
    active["alive"] = bool(pid) and active.get("run_id", "?") in cmd
except (OSError, ValueError, TypeError):
    if active is not None:
        active["alive"] = False
f["active_run"] = active
w = a.get("trainer_word") or ""  # the trainer command's first word: on PATH, in the venv, or beside the seed
if w and "/" in w:
    f["trainer_found"] = not w.startswith("/") or os.access(w, os.X_OK)  # a relative path: cwd is the run's
elif w:
    dirs = [os.path.join(venv, "bin")] if venv else []
    if f.get("seed"):
        dirs.append(os.path.dirname(f["seed"].get("executable") or ""))
    f["trainer_found"] = bool(shutil.which(w)) or any(os.access(os.path.join(d, w), os.X_OK) for d in dirs if d)
md = a.get("model_dir") or ""  # our trainer's model folder on the box, when nothing stages it there
if md:
    f["model_dir_exists"] = os.path.isdir(md)
    try:
        f["model_files"] = sorted(n for n in os.listdir(md) if os.path.isfile(os.path.join(md, n)))
    except OSError as e:
        f["model_files"], f["model_error"] = [], str(e)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        try:
            shards = set(json.load(open(os.path.join(md, index))).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError):
            continue
        f["model_missing_shards"] = sorted(s for s in shards if not os.path.isfile(os.path.join(md, s)))
host, port = a.get("store_host") or "", int(a.get("store_port") or 0)
if host:
    try:
        socket.create_connection((host, port), timeout=5).close()
        f["store_reachable"] = True
    except OSError as e:
        f["store_reachable"] = False
        f["store_error"] = str(e)
else:
    f["store_reachable"] = True
print(json.dumps(f))
'''


@dataclass
class Facts(Record):
    """What the box told us. Defaults describe an unknown (pessimistic) box.

    Read with the protocol Record's from_dict: the one rule that drops keys this version does not know.
    """

    uid: int = -1
    user: str = ""
    hostname: str = ""
    python: list = field(default_factory=list)  # [] = no python3 on the box
    python_path: str = ""
    systemd: bool = False
    has_flock: bool = False
    gpus: list = field(default_factory=list)
    nvidia_smi: bool = False
    data_root_exists: bool = False
    data_root_mounted: bool = False
    data_root_writable: bool = False
    free_bytes: int = 0
    block_devices: list = field(default_factory=list)
    seed: dict | None = None
    venv_ready: bool = False
    venv_wheel: str = ""
    wheel_uploaded: bool = False
    active_run: dict | None = None
    store_reachable: bool = False
    store_error: str = ""
    trainer_found: bool = True  # [trainer] command's first word runs on the box (True when not asked)
    model_dir_exists: bool = True  # the model folder asked about (model_dir) is there (True when not asked)
    model_files: list | None = None  # its file names; None when not asked
    model_error: str = ""  # why it could not be listed
    model_missing_shards: list = field(default_factory=list)  # shards its index names that are not there


def gather(box, args: dict, timeout: float = 60) -> Facts:
    """Run the fact script on `box` with `args` (data_root, seed_python, venv, wheel_path, ...)."""
    cmd = (f"if ! command -v python3 >/dev/null 2>&1; then echo '{{\"python\": []}}'; exit 0; fi; "
           f"python3 -c {shlex.quote(_SCRIPT)} {shlex.quote(json.dumps(args))}")
    r = box.run(cmd, timeout=timeout)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if not r.ok or not lines:
        raise TrainctlError(f"could not gather facts from {box.name} (exit {r.exited}): "
                            f"{(r.stderr or r.stdout).strip()[-400:]}")
    return Facts.from_dict(json.loads(lines[-1]))
