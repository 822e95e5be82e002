"""Routes for models: the catalog's base models plus this organization's fine-tuned models and checkpoints.

Under ``/v1`` a model is OpenAI's object (id, created, owned_by: ``openai_router``); under ``/api/v1/llm`` it is
MKA1's, which adds the model card: type, modalities, context window, parameter count, licence, base model,
capabilities (``mka1_router``). Both are mounted after the shared ``router`` (export, delete), so that
``/{model}/export`` is never read as a model named ``…/export``.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from openft import modelcard, models
from openft import protocol as p
from openft.api.deps import scope, services
from openft.services import Services
from openft.store import Scope

router = APIRouter(prefix="/models", tags=["models"])
openai_router = APIRouter(prefix="/models", tags=["models"])
mka1_router = APIRouter(prefix="/models", tags=["models"])


def _wire(ref: models.ModelRef) -> p.ModelObject:
    return p.ModelObject(id=ref.name, created=ref.created, owned_by=ref.owned_by)


def _mka1_wire(ref: models.ModelRef, org: str) -> p.Mka1Model:
    """A fine-tuned model has the parameters of the folder it is served from (LoRA merges into its base without
    adding any) and its base's licence; it names the model it was trained on, and its weights are open to its
    owner (export) and closed to organizations it was shared with."""
    card = modelcard.read(ref.base_path)
    fine_tuned = ref.parent is not None
    return p.Mka1Model(
        id=ref.name, created=ref.created, owned_by=ref.owned_by, input_modalities=["text"],
        output_modalities=["text"], context_window=card.context_window, parameter_count=card.parameter_count,
        active_parameter_count=None,  # dense models have none; a mixture of experts' is not in its files
        developer=ref.owned_by if fine_tuned else None,
        base_model=ref.parent if fine_tuned else card.base_model,
        weights="open" if ref.owned_by in (org, "openft") else "closed",
        license=card.license, languages=card.languages,
        limitations=None,
        lifecycle=p.Mka1Lifecycle(),
        capabilities=p.Mka1Capabilities(supports_temperature=True, supports_top_p=True, supports_reasoning=False,
                                        supports_reasoning_effort=False, supports_structured_outputs=False),
    )


@openai_router.get("", response_model=p.ModelList)
def list_models(who: Scope = Depends(scope), svc: Services = Depends(services)):
    return p.ModelList(data=[_wire(ref) for ref in models.list_models(svc.store, svc.settings, who.org)])


@mka1_router.get("", response_model=p.Mka1ModelList)
def list_mka1_models(who: Scope = Depends(scope), svc: Services = Depends(services)):
    refs = models.list_models(svc.store, svc.settings, who.org)
    return p.Mka1ModelList(data=[_mka1_wire(ref, who.org) for ref in refs])


@router.get("/{model:path}/export", response_class=FileResponse,
            responses={200: {"content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}},
                       403: {"description": "The model is or was trained on a model another organization shared: "
                                            "it may be sampled and trained on, not exported."}})
def export_model(model: str, format: str = "merged", who: Scope = Depends(scope), svc: Services = Depends(services)):
    """The fine-tuned model as a .tar.gz: its LoRA adapter (format=adapter) or a merged Hugging Face folder."""
    ref = models.resolve(svc.store, svc.settings, who.org, model)
    models.check_exportable(ref, who.org)
    path = models.export_archive(svc.settings, ref, format)
    filename = re.sub(r"[^A-Za-z0-9._-]", "_", model).strip(".") + f"-{format}.tar.gz"  # a plain file name
    return FileResponse(path, media_type="application/gzip", filename=filename)


@openai_router.get("/{model:path}", response_model=p.ModelObject)
def retrieve_model(model: str, who: Scope = Depends(scope), svc: Services = Depends(services)):
    return _wire(models.resolve(svc.store, svc.settings, who.org, model))


@mka1_router.get("/{model:path}", response_model=p.Mka1Model)
def retrieve_mka1_model(model: str, who: Scope = Depends(scope), svc: Services = Depends(services)):
    return _mka1_wire(models.resolve(svc.store, svc.settings, who.org, model), who.org)


@router.delete("/{model:path}", response_model=p.Deleted)
def delete_model(model: str, who: Scope = Depends(scope), svc: Services = Depends(services)):
    models.delete(svc.store, svc.settings, who.org, model)
    return p.Deleted(id=model, object="model", deleted=True)
