"""Exporting a fine-tuned model for use outside openft (torch side: the CLI and the worker call it, never the API).

Two formats:

* ``adapter``: the PEFT LoRA adapter as trained (``adapter_config.json``, ``adapter_model.safetensors``), its
  tokenizer files (chat template included) and a README naming the base model and showing how to load it. Small;
  needs the base model to run.
* ``merged``: a plain Hugging Face model folder (safetensors weights, ``config.json``, ``generation_config.json``,
  tokenizer with chat template): the LoRA weights merged into the base (in fp32, then stored in the base's dtype),
  which ``AutoModelForCausalLM.from_pretrained(folder)`` loads as is, with no PEFT.

A folder appears only complete: it is written under a temporary name beside ``out_dir`` and renamed into place.
``export_archive`` packs the same folder into a ``.tar.gz`` (for a download), also written atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

FORMATS = ("adapter", "merged")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt")


def export_model(base_model_path: str | Path, adapter_path: str | Path | None, fmt: str, out_dir: str | Path, *,
                 base_model_name: str | None = None, parents: Sequence[str | Path] = ()) -> Path:
    """Write the fine-tuned model (``adapter_path`` on ``base_model_path``) as ``fmt`` into the new folder
    ``out_dir`` and return it. ``base_model_name`` is what the README calls the base (default: its folder name).
    ``parents``: the adapters of the ``ft:`` models it was trained on, oldest first, merged into the base first
    (only the merged format can carry them). No ``adapter_path``: ``base_model_path`` is a fully fine-tuned model,
    written out as it is (merged format only)."""
    base, out_dir = Path(base_model_path), Path(out_dir)
    adapter = Path(adapter_path) if adapter_path is not None else None
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if not (base / "config.json").is_file():
        raise FileNotFoundError(f"no base model folder at {base}")
    if adapter is None and fmt == "adapter":
        raise ValueError("a fully fine-tuned model has no adapter; export it in the merged format")
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no LoRA adapter folder at {adapter}")
    if parents and fmt == "adapter":
        raise ValueError("this model was trained on top of another fine-tuned model: its adapter alone does not "
                         "reproduce it; export it in the merged format")
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)
        if fmt == "adapter":
            _write_adapter(base, adapter, tmp, base_model_name or base.name)
        else:
            _write_merged(base, adapter, tmp, [Path(p) for p in parents])
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def export_archive(base_model_path: str | Path, adapter_path: str | Path | None, fmt: str, archive_path: str | Path, *,
                   base_model_name: str | None = None, parents: Sequence[str | Path] = ()) -> Path:
    """``export_model`` packed as a gzip'd tar at ``archive_path`` (``NAME.tar.gz`` holds one folder ``NAME/``)."""
    archive_path = Path(archive_path)
    name = archive_path.name.removesuffix(".gz").removesuffix(".tar").removesuffix(".tgz")
    archive_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=archive_path.parent, prefix=f".{archive_path.name}.partial-") as work:
        folder = export_model(base_model_path, adapter_path, fmt, Path(work) / name, base_model_name=base_model_name,
                              parents=parents)
        tmp_archive = Path(work) / "archive.tar.gz"
        with tarfile.open(tmp_archive, "w:gz") as tar:
            tar.add(folder, arcname=name)
        os.replace(tmp_archive, archive_path)
    return archive_path


def _write_adapter(base: Path, adapter: Path, out: Path, base_name: str) -> None:
    for name in ADAPTER_FILES:
        shutil.copy2(adapter / name, out / name)
    # The trainer saves the tokenizer with every adapter; an adapter made elsewhere may come without one.
    source = adapter if (adapter / "tokenizer_config.json").is_file() else base
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    (out / "README.md").write_text(_ADAPTER_README.format(base=base_name), encoding="utf-8")


_ADAPTER_README = """\
# LoRA adapter for {base}

A PEFT LoRA adapter fine-tuned with openft. Base model: **{base}** (apply it to exactly that model).

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("PATH/TO/{base}")
model = PeftModel.from_pretrained(base, "PATH/TO/THIS/FOLDER")
tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")  # the tokenizer and chat template it was trained with
```

`model.merge_and_unload()` folds the adapter into the base weights. `adapter_config.json`'s
`base_model_name_or_path` is where the base model lived on the training server.
"""


def _write_merged(base: Path, adapter: Path | None, out: Path, parents: list[Path]) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    stored_dtype = getattr(torch, config.get("dtype") or config.get("torch_dtype") or "float32")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with warnings.catch_warnings():  # a transformers deprecation that PEFT trips over; nothing to act on
        warnings.simplefilter("ignore", FutureWarning)
        for parent in parents:  # in fp32 and in order, exactly as training and sampling merge them
            model = PeftModel.from_pretrained(model, parent).merge_and_unload()
        if adapter is not None:
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.to(stored_dtype).save_pretrained(out)  # safetensors, config.json and generation_config.json
    source = adapter if adapter is not None and (adapter / "tokenizer_config.json").is_file() else base
    AutoTokenizer.from_pretrained(source).save_pretrained(out)


def main(argv: list[str] | None = None) -> int:
    """``python -m openft.export --base DIR --adapter DIR [--adapter DIR …] --format F --out PATH [--archive]``:
    the service runs exports in a process of their own (the API and the CLI never import torch). Adapters are
    the model's lineage, oldest first; the last one is the model's own."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m openft.export")
    parser.add_argument("--base", required=True)
    parser.add_argument("--base-name")
    parser.add_argument("--adapter", action="append", default=[])
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--archive", action="store_true")
    args = parser.parse_args(argv)
    write = export_archive if args.archive else export_model
    try:
        write(args.base, args.adapter[-1] if args.adapter else None, args.format, args.out,
              base_model_name=args.base_name, parents=args.adapter[:-1])
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        print(err, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
