"""Architecture pins: the API process never imports torch, the trainer never imports the web stack or SQL, and
every setting is documented in the README, whose quickstart is the script a user runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from openft.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return {m.split(".")[0] for m in out.stdout.split()}


def test_api_process_never_imports_torch(tmp_path):
    modules = _modules_after(
        "from fastapi.testclient import TestClient\n"
        "from openft.app import create_app\nfrom openft.config import Settings\n"
        f"app = create_app(Settings(data_dir={str(tmp_path)!r}, enable_scheduler=False))\n"
        "with TestClient(app) as c: assert c.get('/v1/models').status_code == 200\n"
        "import openft.cli, openft.scheduler, openft.executors"
    )
    assert "fastapi" in modules and not modules & {"torch", "transformers", "trl", "peft"}


def test_trainer_never_imports_the_web_stack_or_sql():
    modules = _modules_after("import openft.train.__main__, openft.train.sft, openft.train.dpo, openft.train.data, "
                               "openft.train.rft, openft.infer.worker, openft.infer.engine, openft.export")
    assert "torch" in modules or "transformers" in modules or "trl" in modules
    assert not modules & {"fastapi", "starlette", "sqlalchemy", "uvicorn", "alembic", "httpx"}


def test_every_setting_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`OPENFT_{name.upper()}`" in readme, name


def test_readme_quickstart_is_the_quickstart_script():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quickstart (openai SDK)")[1].split("```python\n")[1].split("```\n")[0]
    assert block == (ROOT / "examples" / "quickstart.py").read_text()


def test_training_and_inference_share_the_chat_format_and_never_import_each_other():
    def openft_modules_after(code: str) -> set[str]:
        out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
                             capture_output=True, text=True, check=True, cwd=ROOT)
        return {m for m in out.stdout.split() if m.startswith("openft.")}

    train = openft_modules_after("import openft.train.__main__, openft.train.sft, openft.train.dpo, "
                                 "openft.train.rft, openft.train.data")
    infer = openft_modules_after("import openft.infer.worker, openft.infer.engine, openft.infer.client, "
                                 "openft.infer.request")
    assert "openft.chatformat" in train and "openft.chatformat" in infer
    assert not any(m.startswith("openft.infer") for m in train)
    assert not any(m.startswith("openft.train") for m in infer)
