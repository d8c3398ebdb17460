"""Without the ray extra, --ray is a usage error naming the extra (nothing else in the
engine imports ray, so everything else works)."""

from __future__ import annotations

import sys

from engine.cli import main


def test_ray_flags_without_ray_installed_name_the_extra(tiny_checkpoint, tmp_path, monkeypatch,
                                                         capsys):  # fmt: skip
    for name in [m for m in sys.modules if m == "engine.ray" or m.startswith("engine.ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "2+2?", "response": "4"}\n')
    argv = ["score", "--model", str(tiny_checkpoint), "--input", str(src), "--output",
            str(tmp_path / "out"), "--ray"]  # fmt: skip
    assert main(argv) == 2
    assert "pip install 'reward-engine[ray]'" in capsys.readouterr().err
    assert main(["serve", str(tiny_checkpoint), "--ray"]) == 2
    assert "pip install 'reward-engine[ray]'" in capsys.readouterr().err
    # a Ray flag without --ray says so
    assert main([*argv[:-1], "--replicas", "2"]) == 2
    assert "--replicas applies to --ray" in capsys.readouterr().err
