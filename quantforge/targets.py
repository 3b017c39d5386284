"""Hardware targets: what a machine offers a model (RAM, GPUs, CPU), from TOML or detection.

A target is a small TOML file (``hw_targets/*.toml``)::

    name = "256gb-24gb"
    description = "Threadripper/EPYC workstation, 256 GB DDR5, one RTX 3090"

    [ram]
    total = "256 GiB"          # what the machine has
    os_reserved = "8 GiB"      # what the OS, desktop and page tables keep

    [cpu]
    name = "AMD Ryzen Threadripper 7970X"
    physical_cores = 32
    memory_bandwidth = "200 GB/s"
    isa = ["avx2", "avx512", "zen4"]

    [[gpu]]
    name = "RTX 3090"
    vram = "24 GiB"
    compute_capability = "8.6"
    pcie_bandwidth = "25 GB/s"
    memory_bandwidth = "936 GB/s"
    count = 1                  # several identical cards: count = 3

Sizes take an explicit unit: ``GiB``/``MiB`` are binary (2^30), ``GB``/``MB`` decimal (10^9).
People say "a 24 GB card" for a card that has 24 GiB (an RTX 3090 has 24,576 MiB): write
``"24 GiB"``. Bandwidths are decimal bytes per second (``"25 GB/s"``), as vendors quote them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from quantforge import units
from quantforge.errors import TargetError
from quantforge.shipped import targets_dir

#: The shipped targets: the repository's ``hw_targets/`` in a checkout, the packaged copy in a wheel.
TARGETS_DIR = targets_dir()

def parse_size(value: object) -> int:
    """``"24 GiB"`` -> 25769803776; an int is taken as bytes. Units are required in strings."""
    return units.parse_size(value, rate=True)


Bytes = Annotated[int, BeforeValidator(parse_size)]


class RAM(BaseModel):
    """System memory and what the operating system keeps for itself."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    total: Bytes = Field(gt=0)
    #: Kept by the OS, the desktop and other programs; never available to the model.
    os_reserved: Bytes = Field(default=4 << 30, ge=0)

    @model_validator(mode="after")
    def _reserve_below_total(self) -> RAM:
        if self.os_reserved >= self.total:
            raise ValueError("ram.os_reserved must be smaller than ram.total")
        return self

    @property
    def available(self) -> int:
        return self.total - self.os_reserved


class CPU(BaseModel):
    """The CPU side: what runs CPU-resident tensors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "unknown CPU"
    physical_cores: int = Field(default=8, gt=0)
    sockets: int = Field(default=1, gt=0)
    #: Sustained memory bandwidth (STREAM-like), decimal bytes/s: bounds token generation.
    memory_bandwidth: Bytes = Field(default=60 * 1000**3, gt=0)
    #: avx2 / avx512 / avx512_bf16 / zen4 / neon ...: decides which _r4 kernels are fast.
    isa: tuple[str, ...] = ("avx2",)


class GPU(BaseModel):
    """One GPU (``count`` identical ones are expanded when the target loads)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    vram: Bytes = Field(gt=0)
    compute_capability: str = "8.6"
    #: Host<->device bandwidth of the slot (PCIe 4.0 x16 ~ 25 GB/s in practice).
    pcie_bandwidth: Bytes = Field(default=25 * 1000**3, gt=0)
    memory_bandwidth: Bytes = Field(default=900 * 1000**3, gt=0)
    count: int = Field(default=1, gt=0)

    @field_validator("compute_capability")
    @classmethod
    def _cc(cls, v: str) -> str:
        if not re.fullmatch(r"[0-9]+\.[0-9]+", str(v)):
            raise ValueError(f'gpu.compute_capability: expected e.g. "8.6", got {v!r}')
        return str(v)


_MAX_GPUS = 64


class HardwareTarget(BaseModel):
    """A machine a quant should run on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str | None = None
    ram: RAM
    cpu: CPU = CPU()
    gpu: tuple[GPU, ...] = ()
    #: Apple-style unified memory: the GPU's share comes out of ``ram`` (vram = its working-set limit).
    unified_memory: bool = False
    #: A server rig (many memory channels, no desktop): the breakpoint matrix marks it.
    server: bool = False
    #: Kept free on every GPU on top of the estimates (fragmentation, other processes).
    gpu_margin: Bytes = Field(default=256 << 20, ge=0)
    path: str | None = None

    @field_validator("gpu", mode="before")
    @classmethod
    def _expand(cls, v: Any) -> Any:
        if isinstance(v, dict):
            v = [v]
        out: list[Any] = []
        for g in v or ():
            if isinstance(g, dict) and int(g.get("count", 1) or 1) > 1:
                if int(g["count"]) > _MAX_GPUS:
                    # Expanding an absurd count would allocate one entry per GPU (MemoryError).
                    raise ValueError(f"gpu.count {g['count']} is impossible (at most {_MAX_GPUS} GPUs in one machine)")
                out += [{**g, "count": 1}] * int(g["count"])
            else:
                out.append(g)
        return out

    @property
    def gpus(self) -> tuple[GPU, ...]:
        return self.gpu

    @property
    def kind(self) -> Literal["cpu", "hybrid", "unified"]:
        if self.unified_memory:
            return "unified"
        return "hybrid" if self.gpu else "cpu"

    @property
    def vram_total(self) -> int:
        return sum(g.vram for g in self.gpu)

    def summary(self) -> str:
        gib = 1 << 30
        parts = [f"{self.ram.total / gib:.0f} GiB RAM"]
        if self.gpu:
            names: dict[str, int] = {}
            for g in self.gpu:
                key = f"{g.name} {g.vram / gib:.0f} GiB"
                names[key] = names.get(key, 0) + 1
            parts += [f"{n}x {k}" if n > 1 else k for k, n in names.items()]
        if self.unified_memory:
            parts.append("unified")
        return " + ".join(parts)


def _first_error(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "target"
    msg = str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    return loc, msg


def target_from_dict(data: dict[str, Any], *, where: str) -> HardwareTarget:
    """Validate a parsed target; TargetError naming the field on any bad value."""
    try:
        return HardwareTarget.model_validate(data)
    except ValidationError as exc:
        loc, msg = _first_error(exc)
        raise TargetError(
            f"{loc}: {msg}", where=where, hint="see hw_targets/256gb-24gb.toml for the fields"
        ) from None


def load_target(path: str | Path) -> HardwareTarget:
    """Read one target TOML; a bare name (``256gb-24gb``) is looked up among the shipped ones."""
    p = Path(path)
    if not p.is_file() and not p.suffix and (TARGETS_DIR / f"{p.name}.toml").is_file():
        p = TARGETS_DIR / f"{p.name}.toml"
    if not p.exists() and not p.is_symlink():
        known = ", ".join(sorted(x.stem for x in TARGETS_DIR.glob("*.toml")))
        raise TargetError("no such target file", where=str(path), hint=f"shipped targets: {known}")
    from quantforge.paths import MAX_TARGET_BYTES, parse_toml, read_input_text

    # a FIFO, a device or a folder is refused before it is read; a target is a few hundred bytes
    text = read_input_text(p, what="hardware target", max_bytes=MAX_TARGET_BYTES, error=TargetError)
    data = parse_toml(text, where=str(p), what="hardware target", error=TargetError)
    data.setdefault("name", p.stem)
    t = target_from_dict(data, where=str(p))
    return t.model_copy(update={"path": str(p)})


def list_targets(directory: str | Path | None = None) -> list[HardwareTarget]:
    """Every ``*.toml`` target of a folder (default: the shipped ones), sorted by file name."""
    d = Path(directory) if directory is not None else TARGETS_DIR
    if not d.is_dir():
        raise TargetError("no such targets folder", where=str(d))
    return [load_target(p) for p in sorted(d.glob("*.toml"))]


# ---------------------------------------------------------------------------------------
# detection


def _meminfo_total() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _cpuinfo() -> tuple[str, int, int, tuple[str, ...]]:
    name, flags, cores = "unknown CPU", set(), set()
    sockets: set[str] = set()
    phys = core = "0"
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key, val = key.strip(), val.strip()
        if key == "model name":
            name = val
        elif key == "flags":
            flags = set(val.split())
        elif key == "physical id":
            phys = val
            sockets.add(val)
        elif key == "core id":
            core = val
            cores.add((phys, core))
    n_cores = len(cores) or (os.cpu_count() or 1)
    isa: list[str] = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "neon") if f in flags]
    isa = ["avx512" if f == "avx512f" else f for f in isa]
    if "avx512" in isa and "avx512_bf16" in isa and "AMD" in name.upper():
        isa.append("zen4")
    return name, n_cores, max(1, len(sockets)), tuple(isa) or ("generic",)


def _nvidia_gpus(nvidia_smi: str | None) -> list[dict[str, Any]]:
    exe = nvidia_smi or shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run(
            [
                exe,
                "--query-gpu=name,memory.total,compute_cap,pcie.link.gen.max,pcie.link.width.max",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        cols = [c.strip() for c in line.split(",")]
        if len(cols) < 2:
            continue
        try:
            vram = int(float(cols[1])) << 20
        except ValueError:
            continue
        cc = cols[2] if len(cols) > 2 and re.fullmatch(r"[0-9]+\.[0-9]+", cols[2]) else "8.6"
        pcie = 25 * 1000**3
        if len(cols) > 4 and cols[3].isdigit() and cols[4].isdigit():
            # per-lane GB/s of gen 3/4/5 after encoding overhead, times ~80 % achieved
            per_lane = {3: 0.985, 4: 1.969, 5: 3.938}.get(int(cols[3]), 0.985)
            pcie = int(per_lane * int(cols[4]) * 0.8 * 1000**3)
        gpus.append({"name": cols[0], "vram": vram, "compute_capability": cc, "pcie_bandwidth": pcie})
    return gpus


def detect_target(*, name: str | None = None, nvidia_smi: str | None = None) -> HardwareTarget:
    """A target for this machine: RAM from /proc/meminfo, cores and ISA from /proc/cpuinfo,
    GPUs from ``nvidia-smi`` when present. Bandwidths are not measured: conservative defaults."""
    total = _meminfo_total()
    if total <= 0:
        raise TargetError("cannot read the amount of system memory", where="/proc/meminfo")
    cpu_name, cores, sockets, isa = _cpuinfo()
    reserve = max(2 << 30, total // 20)
    gpus = _nvidia_gpus(nvidia_smi)
    data = {
        "name": name or "this-machine",
        "description": "detected by quantforge target detect (bandwidths are defaults, not measured)",
        "ram": {"total": total, "os_reserved": min(reserve, total // 2)},
        "cpu": {"name": cpu_name, "physical_cores": cores, "sockets": sockets, "isa": list(isa)},
        "gpu": gpus,
    }
    return target_from_dict(data, where="detected")


def _fmt_size(n: int) -> str:
    # exact: a value written and read back is the same number of bytes
    exact = units.exact_size(n)
    return f'"{exact}"' if exact else str(n)


def _fmt_rate(n: int) -> str:
    return f'"{n / 1000**3:g} GB/s"'


def target_toml(t: HardwareTarget) -> str:
    """The TOML text of a target (what ``target detect`` writes)."""
    lines = [f'name = "{t.name}"']
    if t.description:
        lines.append(f'description = "{t.description}"')
    if t.unified_memory:
        lines.append("unified_memory = true")
    if t.server:
        lines.append("server = true")
    lines += [
        "",
        "[ram]",
        f"total = {_fmt_size(t.ram.total)}",
        f"os_reserved = {_fmt_size(t.ram.os_reserved)}",
    ]
    c = t.cpu
    isa = ", ".join(f'"{x}"' for x in c.isa)
    lines += [
        "",
        "[cpu]",
        f'name = "{c.name}"',
        f"physical_cores = {c.physical_cores}",
        f"sockets = {c.sockets}",
        f"memory_bandwidth = {_fmt_rate(c.memory_bandwidth)}",
        f"isa = [{isa}]",
    ]
    for g in t.gpu:
        lines += [
            "",
            "[[gpu]]",
            f'name = "{g.name}"',
            f"vram = {_fmt_size(g.vram)}",
            f'compute_capability = "{g.compute_capability}"',
            f"pcie_bandwidth = {_fmt_rate(g.pcie_bandwidth)}",
            f"memory_bandwidth = {_fmt_rate(g.memory_bandwidth)}",
        ]
    return "\n".join(lines) + "\n"


def write_target(t: HardwareTarget, path: str | Path, *, force: bool = False) -> Path:
    """Write ``t`` as TOML (temp file + rename); refuses to overwrite without ``force``."""
    p = Path(path)
    if p.exists() and not force:
        raise TargetError("file exists", where=str(p), hint="pass --force to overwrite")
    tmp = p.with_name(p.name + ".partial")
    tmp.write_text(target_toml(t), encoding="utf-8")
    os.replace(tmp, p)
    return p
