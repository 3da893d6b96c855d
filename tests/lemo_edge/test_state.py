"""State: bit-exact round trip, atomic saves, and clear errors for foreign states."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from lemo_edge.backbone import FeatureLevel, FeatureSpec
from lemo_edge.config import ModelConfig
from lemo_edge.errors import StateError
from lemo_edge.model import LemoModel
from lemo_edge.state import STATE_FILE, load_state, read_state, save_state
from lemo_edge.updater import OnlineUpdater

SPEC = FeatureSpec("toy", (0.5,) * 3, (0.5,) * 3, (FeatureLevel(0, 6, 8),))


def _trained(method: str) -> OnlineUpdater:
    torch.manual_seed(0)
    config = ModelConfig(method=method, memory_size=16, size=64, adapter=True, gate=True, warmup=2)
    model = LemoModel(config, SPEC)
    updater = OnlineUpdater(model)
    for _ in range(12):
        feats = torch.randn(1, 6, 8, 8)
        scores = model.score(feats)
        _, s = model.maps(scores.patch.detach())
        updater.observe(feats, scores, float(s[0]))
    return updater


@pytest.mark.parametrize("method", ["coreset", "lemo"])
def test_round_trip_is_bit_exact(tmp_path, method):
    updater = _trained(method)
    save_state(tmp_path, updater)
    loaded = load_state(tmp_path, SPEC)
    for (k, a), (k2, b) in zip(updater.model.state_dict().items(), loaded.model.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    assert loaded.threshold == updater.threshold
    assert loaded.stats == updater.stats
    a, b = updater.optimizer.state_dict(), loaded.optimizer.state_dict()
    for pid in a["state"]:
        for name in a["state"][pid]:
            assert torch.equal(torch.as_tensor(a["state"][pid][name]), torch.as_tensor(b["state"][pid][name]))
    # the loaded model keeps learning exactly like the original
    feats = torch.randn(1, 6, 8, 8)
    for u in (updater, loaded):
        s = u.model.score(feats)
        u.observe(feats, s, 0.0, force=True)
    assert torch.equal(updater.model.memory.items.detach(), loaded.model.memory.items.detach())


def test_state_for_another_backbone_is_refused(tmp_path):
    save_state(tmp_path, _trained("coreset"))
    other = FeatureSpec("other", (0.5,) * 3, (0.5,) * 3, (FeatureLevel(0, 7, 8),))
    with pytest.raises(StateError, match="made for backbone .*'toy'.* but this model uses .*'other'"):
        load_state(tmp_path, other)


def test_state_learned_from_features_pooled_otherwise_is_refused(tmp_path):
    save_state(tmp_path, _trained("coreset"))
    before = FeatureSpec("toy", (0.5,) * 3, (0.5,) * 3, (FeatureLevel(0, 6, 8),), "avg3-valid")
    with pytest.raises(StateError, match="pooled as 'avg3-zero-pad', but this backbone's are pooled as 'avg3-valid'"):
        load_state(tmp_path, before)


def test_state_saved_before_the_spec_recorded_its_pooling_is_refused(tmp_path):
    """A state of an earlier version (no ``pooling`` in its spec) was learned from the old 3x3 average."""
    save_state(tmp_path, _trained("coreset"))
    path = tmp_path / STATE_FILE
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    meta = json.loads(header["__metadata__"]["lemo_edge"])
    del meta["spec"]["pooling"]
    header["__metadata__"]["lemo_edge"] = json.dumps(meta)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + header_len :])
    with pytest.raises(StateError, match="learned from features pooled as 'avg3-valid'.*learn a new state"):
        load_state(tmp_path, SPEC)


def test_state_with_other_config_is_refused(tmp_path):
    updater = _trained("coreset")
    save_state(tmp_path, updater)
    with pytest.raises(StateError, match="memory_size"):
        load_state(tmp_path, SPEC, updater.model.config.replace(memory_size=32))


def test_missing_and_corrupt_state_name_the_file(tmp_path):
    with pytest.raises(StateError, match="state.safetensors, found no such file"):
        read_state(tmp_path)
    (tmp_path / STATE_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(StateError, match="is not a lemo-edge state file"):
        read_state(tmp_path)


def test_interrupted_save_leaves_the_previous_state_loadable(tmp_path):
    """A save killed mid-write (SIGKILL while writing the temporary file) never replaces the old state."""
    updater = _trained("coreset")
    save_state(tmp_path, updater)
    before = (tmp_path / STATE_FILE).read_bytes()
    script = textwrap.dedent(f"""
        import os, time, torch
        import lemo_edge.state as st
        from tests_helper import trained
        real_fdopen = os.fdopen
        class Slow:
            def __init__(self, f): self.f = f
            def write(self, data):
                self.f.write(data[: len(data) // 2]); self.f.flush()
                print("writing", flush=True); time.sleep(60)
            def __getattr__(self, name): return getattr(self.f, name)
            def __enter__(self): return self
            def __exit__(self, *a): return self.f.__exit__(*a)
        os.fdopen = lambda *a, **k: Slow(real_fdopen(*a, **k))
        st.save_state({str(tmp_path)!r}, trained())
    """)
    helper = tmp_path / "tests_helper.py"
    helper.write_text(
        textwrap.dedent("""
        import torch
        from lemo_edge.backbone import FeatureLevel, FeatureSpec
        from lemo_edge.config import ModelConfig
        from lemo_edge.model import LemoModel
        from lemo_edge.updater import OnlineUpdater
        def trained():
            spec = FeatureSpec("toy", (0.5,) * 3, (0.5,) * 3, (FeatureLevel(0, 6, 8),))
            model = LemoModel(ModelConfig(memory_size=16, size=64, seed=1), spec)
            u = OnlineUpdater(model)
            f = torch.randn(1, 6, 8, 8) * 5
            u.observe(f, model.score(f), 0.0, force=True)
            return u
    """)
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    assert (tmp_path / STATE_FILE).read_bytes() == before
    loaded = load_state(tmp_path, SPEC)
    assert torch.equal(loaded.model.memory.items, updater.model.memory.items)
    assert math.isfinite(loaded.threshold.mean)


def test_a_non_square_state_reloads_at_its_shape_and_an_old_int_size_loads_as_a_square(tmp_path):
    import json

    from lemo_edge.runtime.state_store import StateStore

    config = ModelConfig(size="64x128", memory_size=16, letterbox=True)
    updater = OnlineUpdater(LemoModel(config, SPEC))
    updater.observe(torch.randn(1, 6, 8, 16), updater.model.score(torch.randn(1, 6, 8, 16)), 0.0, force=True)
    save_state(tmp_path / "wide", updater)
    meta, _ = read_state(tmp_path / "wide")
    assert meta["config"]["size"] == [64, 128] and meta["config"]["letterbox"] is True
    loaded = load_state(tmp_path / "wide", SPEC)
    assert loaded.model.config.input_hw == (64, 128) and loaded.model.grid == (8, 16) and loaded.model.config.letterbox
    assert torch.equal(loaded.model.memory.items, updater.model.memory.items)
    with pytest.raises(StateError, match=r"'size': \(\(64, 128\), \(128, 64\)\)"):
        load_state(tmp_path / "wide", SPEC, config.replace(size="128x64"))

    # a state written before HxW: "size": 64 and no "letterbox" field in its metadata
    old = ModelConfig(size=64, memory_size=16)
    save_state(tmp_path / "old", OnlineUpdater(LemoModel(old, SPEC)))
    path = tmp_path / "old" / STATE_FILE
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    saved = json.loads(header["__metadata__"]["lemo_edge"])
    del saved["config"]["letterbox"]
    header["__metadata__"]["lemo_edge"] = json.dumps(saved, sort_keys=True)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n :])
    assert "letterbox" not in read_state(tmp_path / "old")[0]["config"]
    loaded = load_state(tmp_path / "old", SPEC)
    assert loaded.model.config.input_hw == (64, 64) and loaded.model.config == old
    assert StateStore(tmp_path / "old").saved_config() == old
