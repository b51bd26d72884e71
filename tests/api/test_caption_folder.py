"""`loupe caption DIR` / scripts/caption_folder.py (app.cli.caption) on real files.

In-process runs use a tiny random BLIP folder (tests/unit/test_caption.py's `write_tiny_blip`,
the hub layout) found through CAPTION_PATH, loaded by the real registry: real decoding, real
generate, real .txt files. The --server engine is checked against the describe-task contract
with `Api.call` answering in place of a server (the only boundary replaced), and against the
real app served by uvicorn with the same tiny model (its describe task).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.cli import main as loupe_main
from app.cli.caption import caption_of, describe_task
from app.cli.caption import main as caption_main
from app.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, EXIT_SERVER, EXIT_USAGE, RefusedError
from tests.factories.models import BLIP_WORDS as WORDS
from tests.factories.models import write_tiny_blip
from tests.helpers import encode, photo

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory) -> Path:
    return write_tiny_blip(tmp_path_factory.mktemp("models") / "caption")


@pytest.fixture
def env(monkeypatch, blip_dir, tmp_path):
    monkeypatch.setenv("LOUPE_CAPTION_PATH", str(blip_dir))
    monkeypatch.setenv("LOUPE_MODEL_DIR", str(tmp_path / "no-models"))
    monkeypatch.setenv("LOUPE_DEVICE", "cpu")
    monkeypatch.chdir(tmp_path)  # no .env of the checkout


def small(name: str) -> np.ndarray:
    return np.ascontiguousarray(photo(name)[::4, ::4])


@pytest.fixture
def folder(tmp_path) -> Path:
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    (d / "cat.png").write_bytes(encode(small("chelsea"), "PNG"))
    (d / "cup.jpg").write_bytes(encode(small("coffee"), "JPEG"))
    (d / "sub" / "astronaut.png").write_bytes(encode(small("astronaut"), "PNG"))
    return d


def captions(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8") for p in sorted(folder.rglob("*.txt"))}


def test_in_process_writes_a_txt_beside_each_image(env, folder, capsys):
    assert caption_main([str(folder), "--max-length", "8", "--no-progress"]) == EXIT_OK
    got = captions(folder)
    assert set(got) == {"cat.txt", "cup.txt", "sub/astronaut.txt"}
    for text in got.values():
        assert text.endswith("\n") and text.count("\n") == 1
        words = text.split()
        assert len(words) <= 7 and all(w in WORDS for w in words)
    assert "captioned 3 image(s)" in capsys.readouterr().out


def test_existing_captions_are_skipped_unless_force(env, folder, capsys):
    (folder / "cat.txt").write_text("my own caption\n")
    assert loupe_main(["caption", str(folder), "--no-progress"]) == EXIT_OK
    assert (folder / "cat.txt").read_text() == "my own caption\n"
    assert set(captions(folder)) == {"cat.txt", "cup.txt", "sub/astronaut.txt"}
    out = capsys.readouterr().out
    assert "captioned 2 image(s)" in out and "1 skipped" in out
    assert loupe_main(["caption", str(folder), "--no-progress"]) == EXIT_OK
    assert "nothing to do" in capsys.readouterr().out
    before = captions(folder)
    assert loupe_main(["caption", str(folder), "--force", "--no-progress"]) == EXIT_OK
    after = captions(folder)
    assert after["cat.txt"] != "my own caption\n"
    assert after["cup.txt"] == before["cup.txt"]  # greedy decoding: the same caption again
    assert "captioned 3 image(s)" in capsys.readouterr().out


def test_a_broken_image_is_listed_and_the_others_are_captioned(env, folder, capsys):
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "cat.jpg").write_bytes(encode(small("chelsea"), "JPEG"))  # cat.png has cat.txt already
    assert caption_main([str(folder), "--no-progress", "--batch-size", "2"]) == EXIT_FAILED
    got = captions(folder)
    assert set(got) == {"cat.txt", "cup.txt", "sub/astronaut.txt"}
    out, err = capsys.readouterr()
    assert "captioned 3 image(s)" in out and "2 failed" in out
    assert "failed:" in err and "broken.jpg:" in err
    assert "cat.png:" in err and "cat.txt is the caption file of cat.jpg" in err


def test_usage_errors_and_missing_model(env, tmp_path, monkeypatch, folder, capsys):
    assert caption_main([str(tmp_path / "nope"), "--no-progress"]) == EXIT_USAGE
    (tmp_path / "empty").mkdir()
    assert caption_main([str(tmp_path / "empty"), "--no-progress"]) == EXIT_USAGE
    assert caption_main([str(folder), "--max-length", "1"]) == EXIT_USAGE
    monkeypatch.setenv("LOUPE_CAPTION_PATH", str(tmp_path / "no-model"))
    assert caption_main([str(folder), "--no-progress"]) == EXIT_REFUSED
    assert "caption model is not available" in capsys.readouterr().err
    assert captions(folder) == {}


# ------------------------------------------------------------------ --server (the describe-task contract)
def test_server_engine_posts_describe_tasks(folder, monkeypatch, capsys):
    from app.cli.client import Api

    sent: list[dict[str, Any]] = []

    async def call(self, method: str, path: str, **kw) -> tuple[int, Any]:
        if (method, path) == ("GET", "/v1/operations"):
            return 200, {"operations": [], "tasks": [{"type": "describe", "available": True}]}
        assert (method, path) == ("POST", "/v1/tasks")
        body = kw["json"]
        sent.append(body)
        if body["image"]["image_id"] == "cup.jpg":
            return 200, {"results": {"caption": {"status": "error", "error_message": "model failed"}}}
        return 200, {"results": {"caption": {"status": "success", "data": f" a photo {body['image']['image_id']} "}}}

    monkeypatch.setattr(Api, "call", call)
    rc = caption_main([str(folder), "--server", "http://loupe.test", "--max-length", "30", "--no-progress"])
    assert rc == EXIT_FAILED
    assert len(sent) == 3
    assert all(b["tasks"] == [describe_task(30)] and b["return_crops"] is False for b in sent)
    assert describe_task(30)["params"] == {"target": "whole_image", "max_length": 30}
    assert describe_task(30)["type"] == "describe"
    assert captions(folder) == {"cat.txt": "a photo cat.png\n", "sub/astronaut.txt": "a photo astronaut.png\n"}
    assert "cup.jpg: error: model failed" in capsys.readouterr().err


def test_caption_of_answers():
    assert caption_of(200, {"results": {"caption": {"status": "success", "data": " a dog \n"}}}, "s") == ("a dog", None)
    text, err = caption_of(400, {"error": {"type": "invalid_image", "message": "cannot decode"}}, "s")
    assert text is None and err == "invalid_image: cannot decode"
    bad_image = {"error": {"type": "validation_error", "message": "bad",
                           "detail": {"errors": [{"loc": ["image", "base64"]}]}}}
    assert caption_of(422, bad_image, "s")[1] is not None
    bad_task = {"error": {"type": "validation_error", "message": "unknown task type 'describe'",
                          "detail": {"errors": [{"loc": ["tasks", 0]}]}}}
    with pytest.raises(RefusedError, match="describe"):
        caption_of(422, bad_task, "s")
    with pytest.raises(RefusedError):
        caption_of(404, None, "s")
    assert json.dumps(describe_task(50))  # plain JSON


def test_server_engine_against_the_real_app(folder, blip_dir, live_factory, monkeypatch, tmp_path, capsys):
    """`--server` against the real app (uvicorn, the describe task, the same tiny BLIP): the same
    captions as in-process, and a broken image listed with the server's reason."""
    server = live_factory(caption_path=str(blip_dir), device="cpu", api_keys="k1")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    rc = caption_main([str(folder), "--server", server.base_url, "--api-key", "k1", "--max-length", "9",
                       "--no-progress"])
    assert rc == EXIT_FAILED
    remote = captions(folder)
    assert set(remote) == {"cat.txt", "cup.txt", "sub/astronaut.txt"}
    assert "broken.jpg:" in capsys.readouterr().err
    assert caption_main([str(folder), "--server", server.base_url, "--no-progress"]) == EXIT_SERVER  # no key
    (folder / "broken.jpg").unlink()
    for txt in folder.rglob("*.txt"):
        txt.unlink()
    monkeypatch.setenv("LOUPE_CAPTION_PATH", str(blip_dir))  # in-process with the same model: the same words
    monkeypatch.setenv("LOUPE_DEVICE", "cpu")
    monkeypatch.chdir(tmp_path)
    assert caption_main([str(folder), "--max-length", "9", "--no-progress"]) == EXIT_OK
    assert captions(folder) == remote
