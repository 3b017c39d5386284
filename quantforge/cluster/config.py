"""Which cluster a run uses and where its artifacts live.

The address comes from ``--cluster``, else ``QUANTFORGE_CLUSTER``, else ``[cluster] address``
in the user config (``~/.config/quantforge/config.toml``); none of them means a local run,
exactly as before. ``ray://HOST:PORT`` connects through Ray Client (the head's client server,
port 10001 by default); ``HOST:PORT`` joins the cluster's GCS directly, which only works on a
machine that is itself a node.

The recipe's ``[cluster] shared = "/mnt/nfs/quants"`` names a folder that every node sees at
the same path: outputs are then written into it by the node that builds them. Without it each
node builds into its own scratch folder (``QUANTFORGE_SCRATCH`` on that node, else
``~/.cache/quantforge/cluster``) and the driver pulls the files back, checking every byte
against the sha256 the node's manifest lists.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from quantforge import constants
from quantforge.errors import InputError, UsageError
from quantforge.recipe import Recipe

_FROZEN = ConfigDict(frozen=True, extra="forbid")
_ADDRESS_RE = re.compile(r"^(ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")
#: Files shipped to a node through the object store when no shared folder holds them (an
#: imatrix, a corpus, a small model to evaluate); anything larger must be on a shared path.
DEFAULT_SHIP_MAX_BYTES = 8 * 1024**3


class ClusterSpec(BaseModel):
    """A resolved cluster: where to connect, and how outputs reach the driver."""

    model_config = _FROZEN
    address: str  # as given: ray://HOST:PORT or HOST:PORT
    source: Literal["--cluster", "QUANTFORGE_CLUSTER", "config"]
    shared: Path | None = None  # resolved; None: pull outputs back to the driver
    retries: int = 0  # Ray re-runs a task whose node died this many times (on another node)
    ship_max_bytes: int = DEFAULT_SHIP_MAX_BYTES

    @property
    def client(self) -> bool:
        return self.address.startswith("ray://")

    def label(self) -> str:
        return (f"{self.address} "
                f"({'shared ' + str(self.shared) if self.shared else 'pulled back to the driver'})")


def check_address(address: str, *, where: str) -> str:
    """``address`` when it is ``ray://HOST:PORT`` or ``HOST:PORT``; a UsageError naming ``where``
    otherwise."""
    text = address.strip()
    m = _ADDRESS_RE.match(text)
    if not m or not 0 < int(m.group(3)) < 65536:
        raise UsageError(
            f"bad cluster address {address!r}",
            where=where,
            hint="write ray://HOST:PORT (Ray Client, e.g. ray://10.0.0.1:10001) or HOST:PORT of the "
                 "head's GCS",
        )
    return text


def _config_cluster() -> dict[str, object]:
    path = constants.CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"cannot read the config file: {exc}", where=str(path),
                         hint="fix or remove the file") from None
    section = data.get("cluster", {})
    if not isinstance(section, dict):
        raise InputError("[cluster] must be a table", where=f"{path}: cluster",
                         hint='write [cluster] address = "ray://HOST:PORT"')
    return section


def resolve_cluster(flag: str | None, *, recipe: Recipe | None = None) -> ClusterSpec | None:
    """The cluster a command runs on, or None for a local run.

    ``recipe`` (a ``quantforge.recipe.Recipe``) contributes its ``[cluster]`` section.
    """
    cfg = _config_cluster()
    if flag:
        address, source, where = flag, "--cluster", "--cluster"
    elif constants.CLUSTER_ADDRESS:
        address, source, where = constants.CLUSTER_ADDRESS, "QUANTFORGE_CLUSTER", "QUANTFORGE_CLUSTER"
    elif cfg.get("address"):
        address, source, where = str(cfg["address"]), "config", f"{constants.CONFIG_FILE}: cluster.address"
    else:
        return None
    if address.strip().lower() in ("local", "none", "off"):
        return None  # --cluster local: override a configured cluster for one run
    address = check_address(address, where=where)
    section = recipe.cluster if recipe is not None else None
    shared: Path | None = None
    retries = 0
    if section is not None:
        if section.shared:
            raw = Path(section.shared).expanduser()
            rpath = recipe.path if recipe is not None else None
            if not raw.is_absolute() and rpath:
                raw = Path(rpath).parent / raw
            shared = raw.resolve()
            if not shared.is_dir():
                raise InputError(
                    "the shared cluster folder does not exist on the driver",
                    where=f"{rpath or 'recipe'}: cluster.shared ({shared})",
                    hint="mount the shared file system here at the same path as on the nodes, or remove "
                         "[cluster] shared",
                )
        retries = section.retries
    ship_max = cfg.get("ship_max_bytes", DEFAULT_SHIP_MAX_BYTES)
    if not isinstance(ship_max, int) or ship_max < 0:
        raise InputError(
            f"cluster.ship_max_bytes must be a byte count, not {ship_max!r}",
            where=f"{constants.CONFIG_FILE}: cluster.ship_max_bytes",
            hint="write e.g. ship_max_bytes = 8589934592",
        )
    return ClusterSpec(address=address, source=source, shared=shared, retries=retries,  # type: ignore[arg-type]
                       ship_max_bytes=ship_max)


def check_out_dir(spec: ClusterSpec, out_dir: Path, *, where: str) -> None:
    """With a shared folder, outputs must be inside it: the nodes write them there."""
    if spec.shared is None:
        return
    out = out_dir.resolve()
    if out != spec.shared and spec.shared not in out.parents:
        raise UsageError(
            f"the output folder {out} is not inside the shared cluster folder {spec.shared}",
            where=where,
            hint="choose an --out under [cluster] shared, or remove [cluster] shared to pull outputs back",
        )
