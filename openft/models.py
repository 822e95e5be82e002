"""The model domain: what a model name means for an organization; deleting and exporting fine-tuned models.

A name is either a catalog base model (``Settings.catalog()``), a fine-tuned model or checkpoint of the caller's
organization (a row of ``checkpoints``), or one that another organization shared with it (``openft.permissions``).
A fine-tuned model is its base plus a chain of LoRA adapters: a job that trained on top of ``ft:…`` adds its own
adapter to its parent's chain. ``resolve`` turns a name into that chain, which is what training (``spec.json``:
``base_model_path`` + ``parent_adapters``), sampling and export need. The chain a job starts from is frozen with
the job when it is created (``openft.spec.Lineage``), so a fine-tuned model keeps working when the model it was
trained on is deleted or no longer shared with its owner.

Deleting a model removes its name at once (404 to its owner and to those it was shared with), while its weights
stay on disk, unlisted, for as long as a model or job trained on them needs them; deleting the last of those
removes them (``collect``).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from openft import durable
from openft import tables as t
from openft.config import Settings
from openft.errors import Forbidden, InvalidRequest, NotFound
from openft.spec import Lineage
from openft.store import Store

BASE_CREATED = 1704067200  # catalog models carry no creation time of their own
MAX_LINEAGE = 16


@dataclass(frozen=True)
class ModelRef:
    name: str
    base: str  # the catalog name at the root of the lineage
    base_path: str  # a catalog folder, or (fully fine-tuned) the location of a checkpoint (openft.durable)
    adapters: list[str] = field(default_factory=list)  # adapter locations (openft.durable), applied in order
    created: int = BASE_CREATED
    owned_by: str = "openft"
    whole: bool = False  # a fully fine-tuned model: base_path is its own folder, with no adapters
    owners: frozenset[str] = frozenset()  # the organizations whose fine-tuned weights are in it (its lineage)
    parent: str | None = None  # the model a fine-tuned model was trained on (None for a catalog model)


def lineage(ref: ModelRef) -> Lineage:
    """The weights a job trained on ``ref`` starts from."""
    return Lineage(root_model=ref.base, base_model_path=ref.base_path, parent_adapters=tuple(ref.adapters),
                   owners=tuple(sorted(ref.owners)))


TERMINAL = ("succeeded", "failed", "cancelled")


def _lineage_paths(spec: dict | None) -> list[str]:
    frozen = (spec or {}).get("lineage")
    return [frozen["base_model_path"], *frozen["parent_adapters"]] if frozen else []


def is_whole_model(settings: Settings, path: str) -> bool:
    """A checkpoint of full fine-tuning holds a whole model (config.json + weights) rather than a LoRA adapter."""
    names = durable.open_store(settings.checkpoint_store()).files(path)
    return "config.json" in names and "adapter_config.json" not in names


def _lineage(store: Store, catalog: dict, row: t.Checkpoint) -> tuple[list[t.Checkpoint], str]:
    """``row`` and the fine-tuned models it was trained on, newest first, and the model the oldest of them was
    trained on: a catalog name, unless a link is gone (deleted, or no longer shared) or the chain is too long."""
    rows = [row]
    for _ in range(MAX_LINEAGE):
        job = store.get_job(None, rows[-1].job_id)
        parent = None
        if job.model not in catalog:
            parent = store.model_by_name(job.organization_id, job.model) or store.shared_model(job.organization_id,
                                                                                               job.model)
        if parent is None:
            return rows, job.model
        rows.append(parent)
    return rows, ""


def not_found(name: str) -> NotFound:
    return NotFound(f"The model '{name}' does not exist or you do not have access to it.", code="model_not_found")


def resolve(store: Store, settings: Settings, org: str, name: str) -> ModelRef:
    """The model ``name`` as ``org`` sees it; 404 ``model_not_found`` for unknown names and other orgs' models."""
    catalog = settings.catalog()
    if name in catalog:
        return ModelRef(name=name, base=name, base_path=str(catalog[name]))
    row = store.model_by_name(org, name) or store.shared_model(org, name)
    if row is None:
        raise not_found(name)
    job = store.get_job(None, row.job_id)
    owner = {"name": name, "created": row.created_at, "owned_by": row.organization_id, "parent": job.model}
    frozen = (job.spec or {}).get("lineage")
    if frozen:
        owner["owners"] = frozenset(frozen.get("owners", ())) | {row.organization_id}
        if is_whole_model(settings, row.path):
            return ModelRef(base=frozen["root_model"], base_path=row.path, whole=True, **owner)
        return ModelRef(base=frozen["root_model"], base_path=frozen["base_model_path"],
                        adapters=[*frozen["parent_adapters"], row.path], **owner)
    return _resolve_by_names(store, settings, row, owner)


def _resolve_by_names(store: Store, settings: Settings, row: t.Checkpoint, owner: dict) -> ModelRef:
    """A model of a job created before lineages were frozen with jobs: its chain is found by name."""
    name, catalog = owner["name"], settings.catalog()
    rows, root = _lineage(store, catalog, row)
    owner = {**owner, "owners": frozenset(link.organization_id for link in rows)}
    for i, link in enumerate(rows):
        if is_whole_model(settings, link.path):  # full fine-tuning: a model of its own, what it was trained on merged in
            adapters = [r.path for r in reversed(rows[:i])]
            return ModelRef(base=root, base_path=link.path, adapters=adapters, whole=i == 0, **owner)
    if root not in catalog:  # a link of the chain is gone: the model cannot be rebuilt
        raise not_found(name)
    return ModelRef(base=root, base_path=str(catalog[root]), adapters=[r.path for r in reversed(rows)], **owner)


def list_models(store: Store, settings: Settings, org: str) -> list[ModelRef]:
    """The catalog, then ``org``'s own fine-tuned models and checkpoints, then those shared with it."""
    refs = [ModelRef(name=n, base=n, base_path=str(p)) for n, p in settings.catalog().items()]
    for row in store.org_models(org) + store.models_shared_with(org):
        try:
            refs.append(resolve(store, settings, org, row.model_name))
        except NotFound:  # a model whose lineage cannot be rebuilt is not offered
            continue
    return refs


def delete(store: Store, settings: Settings, org: str, name: str) -> None:
    """Remove a fine-tuned model or checkpoint: its name and permissions now, its weights once nothing trained on
    them needs them. Base models cannot be deleted."""
    if name in settings.catalog():
        raise InvalidRequest(f"The base model '{name}' cannot be deleted.", param="model", code="model_not_deletable")
    row: t.Checkpoint | None = store.model_by_name(org, name)
    if row is None:
        raise not_found(name)
    store.delete_checkpoints([row.id])
    remove_exports(settings, name)
    collect(store, settings, [row.path, *_lineage_paths(store.get_job(None, row.job_id).spec)])


def release(store: Store, settings: Settings, job: t.Job) -> None:
    """A job that ended without models (cancelled) no longer needs the weights it was trained on."""
    collect(store, settings, _lineage_paths(job.spec))


def collect(store: Store, settings: Settings, paths: list[str]) -> None:
    """Remove those of ``paths`` (checkpoints in the store or under the jobs folder, never a catalog model) that no
    listed model points at and no job still needs: a job needs the weights of its lineage while it may still train
    (it is not finished) or while any of its own models is listed."""
    checkpoints = durable.open_store(settings.checkpoint_store())
    paths = [p for p in dict.fromkeys(paths)
             if checkpoints.owns(p) or ("://" not in p and Path(p).resolve().is_relative_to(settings.jobs_dir))]
    if not paths:
        return
    needed = store.checkpoint_paths(paths)
    for job_id, status, spec in store.job_specs():
        wanted = set(_lineage_paths(spec)) & set(paths)
        if wanted - needed and (status not in TERMINAL or store.has_checkpoints(job_id)):
            needed |= wanted
    for path in paths:
        if path not in needed:
            checkpoints.remove(path, settings.jobs_dir)


def materialize(settings: Settings, ref: ModelRef) -> ModelRef:
    """``ref`` with local folders for its weights: checkpoints in a remote store are fetched into the host's cache
    (``openft.durable``). Sampling and export run on what this returns."""
    checkpoints = durable.open_store(settings.checkpoint_store())
    try:
        return replace(ref, base_path=str(checkpoints.materialize(ref.base_path)),
                       adapters=[str(checkpoints.materialize(a)) for a in ref.adapters])
    except durable.Incomplete as exc:
        raise NotFound(f"The weights of the model '{ref.name}' are not available: {exc}",
                       code="model_not_found") from None


EXPORT_FORMATS = ("adapter", "merged")


def export(settings: Settings, ref: ModelRef, fmt: str, out: Path, archive: bool = False) -> Path:
    """Write ``ref`` as ``fmt`` (a folder, or a .tar.gz when ``archive``) in a torch process of its own
    (``python -m openft.export``), so that neither the API nor the CLI import torch."""
    ref = materialize(settings, ref)
    command = [sys.executable, "-m", "openft.export", "--base", ref.base_path, "--base-name", ref.base,
               "--format", fmt, "--out", str(out)]
    for adapter in ref.adapters:
        command += ["--adapter", adapter]
    if archive:
        command.append("--archive")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"export of {ref.name} failed: {done.stderr.strip()[-2000:]}")
    return out


def check_exportable(ref: ModelRef, org: str) -> None:
    """Sharing grants sampling and training, not the weights: ``org`` may export a model only when every fine-tuned
    link of its lineage is its own (a model trained on a shared one carries the owner's weights, whatever the
    learning rate, so neither its merged folder nor its adapter, trained against those weights, leaves)."""
    if ref.owners - {org}:
        raise Forbidden(f"The model '{ref.name}' is or was trained on a model shared with you by another "
                        "organization; a shared model may be sampled and trained on, but not exported.",
                        param="model", code="model_not_exportable")


def export_archive(settings: Settings, ref: ModelRef, fmt: str) -> Path:
    """The model as a downloadable .tar.gz, built once per model and format under ``<data_dir>/exports``."""
    if fmt not in EXPORT_FORMATS:
        raise InvalidRequest(f"format must be one of {', '.join(EXPORT_FORMATS)}, got '{fmt}'.", param="format")
    if not ref.adapters and not ref.whole:
        raise InvalidRequest(f"'{ref.name}' is a base model; only fine-tuned models are exported.", param="model")
    if fmt == "adapter" and ref.whole:
        raise InvalidRequest(f"'{ref.name}' was fully fine-tuned: it has no adapter; export it with format=merged.",
                             param="format")
    if fmt == "adapter" and len(ref.adapters) > 1:
        raise InvalidRequest(f"'{ref.name}' was trained on top of another fine-tuned model: its adapter alone does "
                             "not reproduce it; export it with format=merged.", param="format")
    path = _archive_path(settings, ref.name, fmt)
    with _EXPORTS_GUARD:
        lock = _EXPORTS.setdefault(path, threading.Lock())
    with lock:  # concurrent downloads of one model and format wait for one export process
        if not path.exists():
            export(settings, ref, fmt, path, archive=True)
    return path


_EXPORTS: dict[Path, threading.Lock] = {}
_EXPORTS_GUARD = threading.Lock()


def _archive_path(settings: Settings, name: str, fmt: str) -> Path:
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return settings.data_dir / "exports" / f"{digest}-{fmt}.tar.gz"


def remove_exports(settings: Settings, name: str) -> None:
    """Delete the downloadable archives of the model ``name`` (they go with the model)."""
    for fmt in EXPORT_FORMATS:
        _archive_path(settings, name, fmt).unlink(missing_ok=True)
