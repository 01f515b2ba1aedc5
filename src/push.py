"""Push a built kernel to Kaggle: the weights dataset (create or new version), then the script kernel.

`push(kernel_root, dry_run, message)` takes `kernels/<name>/` as written by `python -m src.kernel build`
(`kernel/` with the script and kernel-metadata.json, `dataset/` with the weights and
dataset-metadata.json) and returns the `kaggle` CLI calls it runs (or, with `dry_run`, prints):

    kaggle datasets create -p kernels/<name>/dataset --dir-mode zip     (`datasets version -m ...` once it exists)
    kaggle kernels push -p kernels/<name>/kernel

What this adds to the kaggle CLI: the BirdCLEF rules kaggle does not check (CPU only, internet off, the kernel
mounts the weights dataset and the competition, no placeholder user), kaggle's own kernel-metadata check run
offline before anything is uploaded (`validate_with_kaggle_cli`), the choice of create or version, the wait
until the uploaded dataset is processed, and the failures kaggle prints while exiting 0. The rest (ids,
titles, slugs, licences, the code file) kaggle checks itself. Credentials are looked up in kaggle's own
order (`credentials`, also what `src.kernel build` names the ids with), never written. The kaggle package
authenticates when imported, so this module never imports it: the CLI and the offline check run in
subprocesses. Timeouts: configs/kernel.yaml `push`.
"""
from __future__ import annotations

import codecs
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

KERNEL_METADATA = "kernel-metadata.json"
DATASET_METADATA = "dataset-metadata.json"
PLACEHOLDER_USER = "your-kaggle-username"  # what `src.kernel build` writes when it knows no Kaggle user
# kaggle's CLI prints these and still exits 0, so the output is checked as well as the exit code.
_CLI_FAILURE = re.compile(r"^(?:Dataset (?:version )?creation error:|Kernel push error:"
                          r"|The following are not valid (?:dataset|competition|kernel) sources).*$", re.MULTILINE)


class PushError(RuntimeError):
    """Metadata, credentials or a kaggle CLI call that stops the push; the message says what to fix."""


def push(kernel_root: str | Path, dry_run: bool = False, message: str = "new weights from src.kernel build",
         settings: Mapping | None = None) -> list[list[str]]:
    """Upload `kernel_root/dataset` as a Kaggle dataset, wait until it is ready, then push `kernel_root/kernel`.

    Returns the two calls: `kaggle datasets create|version ...` and `kaggle kernels push ...`
    (`message` is the dataset version note). With `dry_run` nothing is sent and no credentials are
    needed: problems are logged as warnings and the calls printed, shell-quoted, one per line, with
    `create` standing for `version` when the dataset already exists. Otherwise raises PushError on bad
    metadata, missing credentials or the first failing call. `settings`: the timeouts (configs/kernel.yaml
    `push`, the default).
    """
    settings = settings or _settings()
    kernel_root = Path(kernel_root)
    kernel_dir, dataset_dir = kernel_root / "kernel", kernel_root / "dataset"
    dataset_id = _read_json(dataset_dir / DATASET_METADATA).get("id") or "<dataset id>"
    create = ["kaggle", "datasets", "create", "-p", str(dataset_dir), "--dir-mode", "zip"]
    version = ["kaggle", "datasets", "version", "-p", str(dataset_dir), "-m", message, "--dir-mode", "zip"]
    kernel_push = ["kaggle", "kernels", "push", "-p", str(kernel_dir)]
    problems = _metadata_problems(kernel_root)
    if dry_run:
        _dry_run(kernel_root, problems, settings)
        print(f"# dry run, nothing is sent to Kaggle; `datasets create` becomes "
              f"`{shlex.join(version)}` if {dataset_id} already exists")
        print(shlex.join(create))
        print(shlex.join(kernel_push))
        return [create, kernel_push]
    if problems:
        raise PushError("the kernel is not ready to push:\n  " + "\n  ".join(problems))
    username = credentials()
    validate_with_kaggle_cli(kernel_dir, settings)
    _owner_check(dataset_dir, kernel_dir, username)
    calls = [version if _dataset_exists(dataset_id) else create, kernel_push]
    _run_checked(calls[0])
    _wait_until_ready(dataset_id, kernel_push, float(settings["ready_timeout_s"]), float(settings["poll_s"]))
    _run_checked(calls[1])
    return calls


def _settings() -> Mapping:
    """configs/kernel.yaml `push` (timeouts)."""
    from src.config import compose

    return compose("kernel").push


def _dry_run(kernel_root: Path, problems: list[str], settings: Mapping) -> None:
    """Every check of a real push, each failure logged as a warning instead of stopping it."""
    for problem in problems:
        log.warning("%s", problem)
    try:
        if not problems:
            validate_with_kaggle_cli(kernel_root / "kernel", settings)
    except PushError as err:
        log.warning("%s", err)
    username = None
    try:
        username = credentials()
    except PushError as err:
        log.warning("%s (needed for the real push)", err)
    _owner_check(kernel_root / "dataset", kernel_root / "kernel", username or os.environ.get("KAGGLE_USERNAME"))


def _owner_check(dataset_dir: Path, kernel_dir: Path, username: str | None) -> None:
    """Warn when the kernel's or dataset's id belongs to another user than the credentials' (KAGGLE_USERNAME
    or kaggle.json): Kaggle refuses the upload unless that user may write there."""
    ids = [_read_json(folder / name).get("id") for folder, name in ((dataset_dir, DATASET_METADATA),
                                                                    (kernel_dir, KERNEL_METADATA))]
    others = sorted({i for i in ids if _is_ref(i) and i.split("/")[0] not in (username, PLACEHOLDER_USER)})
    if username and others:
        log.warning("%s belong(s) to another user than the credentials' %r: the upload fails unless %r may write "
                    "there; rebuild with `python -m src.kernel build name=<ensemble> user=%s`", ", ".join(others),
                    username, username, username)


def validate_with_kaggle_cli(kernel_dir: str | Path, settings: Mapping | None = None) -> None:
    """Check `kernel_dir/kernel-metadata.json` with kaggle's own `KaggleApi.kernels_push`, offline.

    Runs it in a subprocess with dummy credentials, a throwaway HOME/KAGGLE_CONFIG_DIR, sockets disabled
    and `KernelsApiClient.save_kernel` (the request it would send) replaced by a sentinel: reaching
    the sentinel means kaggle parsed and accepted the metadata. Raises PushError with kaggle's message
    otherwise, or if kaggle's parsed request would turn internet or a GPU on. kaggle's warnings (e.g.
    a title that does not slugify to the id) are logged. `settings["check_timeout_s"]` bounds the subprocess.
    """
    settings = settings or _settings()
    kernel_dir = Path(kernel_dir)
    with tempfile.TemporaryDirectory(prefix="kaggle-check-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
        env |= {"HOME": home, "XDG_CONFIG_HOME": home, "KAGGLE_CONFIG_DIR": home,
                "KAGGLE_USERNAME": "dummy", "KAGGLE_KEY": "0" * 32}
        proc = subprocess.run([sys.executable, "-c", _KAGGLE_CHECK, str(kernel_dir)], env=env,
                              capture_output=True, text=True, timeout=float(settings["check_timeout_s"]),
                              check=False)
    lines = proc.stdout.strip().splitlines()
    try:
        verdict = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PushError(f"could not run the kaggle package's metadata check ({detail}); "
                        f"is kaggle==2.2.4 installed in {sys.executable}?") from None
    for line in lines[:-1]:
        log.warning("kaggle about %s: %s", kernel_dir / KERNEL_METADATA, line)
    if not verdict["ok"]:
        raise PushError(f"kaggle rejects {kernel_dir / KERNEL_METADATA}: {verdict['error']}")
    request = verdict["request"]
    for key in ("enable_internet", "enable_gpu", "enable_tpu"):
        if request[key]:
            raise PushError(f"kaggle reads {key}=true from {kernel_dir / KERNEL_METADATA}; BirdCLEF kernels "
                            f"run on CPU with internet off: set \"{key}\": false")


# Runs in a fresh interpreter (argv[1] = kernel dir); its last stdout line is the JSON verdict.
_KAGGLE_CHECK = r'''
import json, socket, sys

def _no_network(*args, **kwargs):
    raise OSError("network disabled by the offline kaggle metadata check")

socket.socket.connect = socket.socket.connect_ex = _no_network
socket.create_connection = socket.getaddrinfo = _no_network

class ReachedSaveKernel(Exception):
    pass

def _save_kernel(self, request=None):
    raise ReachedSaveKernel(request)

from kagglesdk.kernels.services.kernels_api_service import KernelsApiClient
KernelsApiClient.save_kernel = _save_kernel
from kaggle import api  # authenticates from the dummy KAGGLE_USERNAME/KAGGLE_KEY, offline

try:
    api.kernels_push(sys.argv[1])
    verdict = {"ok": False, "error": "kernels_push returned without building its request"}
except ReachedSaveKernel as reached:
    r = reached.args[0]
    verdict = {"ok": True, "request": {
        "slug": r.slug, "title": r.new_title, "language": r.language, "kernel_type": r.kernel_type,
        "enable_internet": r.enable_internet, "enable_gpu": r.enable_gpu, "enable_tpu": r.enable_tpu,
        "dataset_sources": list(r.dataset_data_sources), "competition_sources": list(r.competition_data_sources)}}
except Exception as err:
    verdict = {"ok": False, "error": str(err) or type(err).__name__}
print(json.dumps(verdict))
'''


def _read_json(path: Path) -> dict:
    """The JSON object in `path`, or {} if it is missing or not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_ref(value) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[^/\s]+/[^/\s]+", value) is not None


def _is_false(value) -> bool:
    """False as kaggle's get_bool reads it: JSON false or the string "false"."""
    return value is False or (isinstance(value, str) and value.lower() == "false")


def _load_metadata(path: Path, problems: list[str]) -> dict | None:
    """The metadata file's JSON object, or None with the reason added to `problems`."""
    if not path.is_file():
        problems.append(f"{path}: missing; build it with `python -m src.kernel build name=<ensemble>`")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        problems.append(f"{path}: not valid JSON ({err}); fix it or rebuild with `python -m src.kernel build`")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path}: must hold a JSON object; rebuild it with `python -m src.kernel build`")
        return None
    return data


def _metadata_problems(kernel_root: Path) -> list[str]:
    """What breaks the BirdCLEF rules or the kernel's link to its weights in the two metadata files, each naming
    the file and the fix; [] when ready to push. (Ids, titles, licences and the code file kaggle checks itself.)"""
    kernel_file = kernel_root / "kernel" / KERNEL_METADATA
    dataset_file = kernel_root / "dataset" / DATASET_METADATA
    problems: list[str] = []
    kernel = _load_metadata(kernel_file, problems)
    dataset = _load_metadata(dataset_file, problems)
    if kernel is not None:
        problems += _rule_problems(kernel, kernel_file)
    for path, data in ((kernel_file, kernel), (dataset_file, dataset)):
        if data is not None and _is_ref(data.get("id")) and data["id"].split("/")[0] == PLACEHOLDER_USER:
            problems.append(f'{path}: "id" {data["id"]!r} carries the placeholder user {PLACEHOLDER_USER!r}: '
                            "rebuild with `python -m src.kernel build name=<ensemble> user=<your Kaggle username>` "
                            "(or set KAGGLE_USERNAME before building)")
    if kernel is not None and dataset is not None and _is_ref(dataset.get("id")):
        sources = kernel.get("dataset_sources") or []
        if dataset["id"] not in sources:
            problems.append(f'{kernel_file}: "dataset_sources" {sources} lacks the weights dataset '
                            f'"{dataset["id"]}" of {dataset_file}; add it so the kernel can read the weights')
    return problems


def _rule_problems(kernel: dict, kernel_file: Path) -> list[str]:
    """BirdCLEF's rules for the kernel: CPU only, internet off (kaggle turns it on when the key is missing), the
    competition mounted."""
    problems = []
    internet = "BirdCLEF kernels run with internet off (kaggle turns it on when the key is missing)"
    for key, why in (("enable_internet", internet), ("enable_gpu", "BirdCLEF scoring is CPU-only")):
        if not _is_false(kernel.get(key)):
            shown = json.dumps(kernel[key]) if key in kernel else "missing"
            problems.append(f'{kernel_file}: "{key}" is {shown}; {why}: set "{key}": false')
    if not _is_false(kernel.get("enable_tpu", False)):
        problems.append(f'{kernel_file}: "enable_tpu" is {json.dumps(kernel["enable_tpu"])}; BirdCLEF '
                        f'scoring is CPU-only: set "enable_tpu": false')
    if not kernel.get("competition_sources"):
        problems.append(f'{kernel_file}: "competition_sources" is empty; add the competition '
                        f'(e.g. "birdclef-2025") so the kernel sees the test soundscapes')
    return problems


def _config_dir() -> Path:
    """Where kaggle looks for kaggle.json: KAGGLE_CONFIG_DIR, else ~/.kaggle, else (Linux) XDG's kaggle/."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"])
    legacy = Path.home() / ".kaggle"
    if legacy.exists() or not sys.platform.startswith("linux"):
        return legacy
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"


def kaggle_username() -> str | None:
    """The Kaggle user of the credentials kaggle would use (`credentials`), else KAGGLE_USERNAME; None if neither
    (`src.kernel build` then writes PLACEHOLDER_USER into the ids)."""
    try:
        return credentials() or os.environ.get("KAGGLE_USERNAME") or None
    except PushError:
        return os.environ.get("KAGGLE_USERNAME") or None


def credentials() -> str | None:
    """Check that kaggle 2.2.4 will find credentials, in its order; returns the username when known.

    Access token (KAGGLE_API_TOKEN, its value or a file it names; ~/.kaggle/access_token), then
    username + key (kaggle.json in the config dir, overridden by KAGGLE_USERNAME/KAGGLE_KEY), then an
    OAuth login (~/.kaggle/credentials.json from `kaggle auth login`). Raises a one-line PushError if none.
    """
    token = os.environ.get("KAGGLE_API_TOKEN", "").strip()
    if token and Path(token).exists():
        if not Path(token).read_text().strip():
            raise PushError(f"malformed Kaggle credentials: KAGGLE_API_TOKEN names {token}, which is empty; "
                            f"put the token from kaggle.com/settings there")
        return None
    home_kaggle = Path.home() / ".kaggle"
    if token or any((home_kaggle / name).is_file() and (home_kaggle / name).read_text().strip()
                    for name in ("access_token", "access_token.txt")):
        return None

    config = _config_dir() / "kaggle.json"
    values, malformed = {}, None
    if config.is_file():
        values = _read_json(config)
        malformed = None if values else config
    values |= {k: os.environ[f"KAGGLE_{k.upper()}"] for k in ("username", "key") if f"KAGGLE_{k.upper()}" in os.environ}
    username, key = values.get("username"), values.get("key")
    if all(isinstance(v, str) and v.strip() for v in (username, key)):
        return username.strip()

    oauth = home_kaggle / "credentials.json"
    if _read_json(oauth).get("refresh_token"):
        return _read_json(oauth).get("username")
    if malformed:
        raise PushError(f'malformed Kaggle credentials: {malformed} must be JSON {{"username": ..., "key": ...}} '
                        f"(download it from kaggle.com/settings, chmod 600) or set KAGGLE_USERNAME and KAGGLE_KEY")
    if username or key:
        have, lack = ("username", "key") if username else ("key", "username")
        raise PushError(f"incomplete Kaggle credentials: a {have} but no {lack}; set KAGGLE_USERNAME and "
                        f"KAGGLE_KEY or put a complete kaggle.json in {config.parent} (chmod 600)")
    raise PushError(f"no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN) or put "
                    f"kaggle.json in {config.parent} (chmod 600; kaggle reads it from KAGGLE_CONFIG_DIR, else "
                    "~/.kaggle when that folder exists, else ~/.config/kaggle)")


def _kaggle_executable() -> str:
    """The `kaggle` script next to this interpreter (the venv's), else the one on PATH."""
    for name in ("kaggle", "kaggle.exe"):
        beside = Path(sys.executable).parent / name
        if beside.is_file():
            return str(beside)
    found = shutil.which("kaggle")
    if not found:
        raise PushError(f"the kaggle CLI is neither next to {sys.executable} nor on PATH: pip install kaggle==2.2.4")
    return found


def _run(cmd: list[str], echo: bool = True) -> tuple[int, str]:
    """Run one `kaggle ...` call (argv[0] resolved to the executable); stream its output when `echo`.

    Returns (exit code, stdout and stderr together). The only place that starts the kaggle CLI.
    """
    proc = subprocess.Popen([_kaggle_executable(), *cmd[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=os.environ | {"PYTHONUNBUFFERED": "1"})
    decoder, chunks = codecs.getincrementaldecoder("utf-8")("replace"), []
    for block in iter(lambda: proc.stdout.read1(8192), b""):
        chunks.append(decoder.decode(block))
        if echo:
            sys.stdout.write(chunks[-1])
            sys.stdout.flush()
    return proc.wait(), "".join(chunks) + decoder.decode(b"", final=True)


def _run_checked(cmd: list[str]) -> None:
    """Run a call, streaming it; PushError if it exits non-zero or prints one of kaggle's failure lines."""
    print(f"$ {shlex.join(cmd)}", flush=True)
    code, output = _run(cmd)
    failure = _CLI_FAILURE.search(output)
    if code or failure:
        lines = output.strip().splitlines() or ["no output"]
        detail = failure.group(0) if failure else lines[-1]
        raise PushError(f"`{shlex.join(cmd)}` failed (exit code {code}): {detail.strip()}; "
                        f"stopped there, nothing after it was run")


def _dataset_exists(dataset_id: str) -> bool:
    """Whether `kaggle datasets status <id>` finds the dataset (exit 0) or Kaggle answers 404 (False).
    Any other failure (the network, a refused login) is a PushError: guessing "absent" would run
    `datasets create` on a dataset that may exist."""
    code, output = _run(["kaggle", "datasets", "status", dataset_id], echo=False)
    if code == 0:
        return True
    if re.search(r"\b401\b|Unauthorized", output):
        raise PushError(f"Kaggle refused the credentials while looking up {dataset_id}: check KAGGLE_USERNAME/"
                        f"KAGGLE_KEY or kaggle.json in {_config_dir()}")
    if re.search(r"\b404\b|Not Found", output):
        return False
    detail = (output.strip().splitlines() or ["no output"])[-1].strip()
    raise PushError(f"`kaggle datasets status {dataset_id}` failed (exit code {code}: {detail}), so whether the "
                    "dataset exists is unknown: nothing was uploaded; check the network and push again")


def _wait_until_ready(dataset_id: str, then: list[str], timeout_s: float, poll_s: float) -> None:
    """Poll `kaggle datasets status` until the upload is processed, so the kernel mounts the new weights.

    `then` is the call that waits on it, named in the error if the dataset fails or takes too long.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        code, output = _run(["kaggle", "datasets", "status", dataset_id], echo=False)
        status = (output.strip().splitlines() or [""])[-1].strip().lower() if code == 0 else ""
        if status == "ready":
            return
        if status in ("failed", "deleted"):
            raise PushError(f"Kaggle reports dataset {dataset_id} as {status}; see its page on kaggle.com, "
                            f"`{shlex.join(then)}` was not run")
        if time.monotonic() > deadline:
            raise PushError(f"dataset {dataset_id} is still not ready after {timeout_s:.0f} s (status: "
                            f"{status or output.strip()[-200:]}); run `{shlex.join(then)}` once it is")
        print(f"waiting for {dataset_id} to be processed (status: {status or 'unknown'})", flush=True)
        time.sleep(poll_s)
