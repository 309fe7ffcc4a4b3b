"""Real DeepSpeed training on the CPU: 2 ranks, ZeRO stage x offload matrix, resume, bad input."""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.runtime.conftest import SHORT_RUN, ZERO_MATRIX, read_metrics, run_train

pytestmark = pytest.mark.deepspeed

WORLD_2 = "eyJsb2NhbGhvc3QiOiBbMCwgMV19"  # DeepSpeed's --world_info for 2 local ranks: base64 of {"localhost": [0, 1]}


@pytest.mark.parametrize("run_id", list(ZERO_MATRIX))
def test_zero_matrix_trains_two_ranks_with_falling_loss(zero_runs, run_id):
    run_dir = zero_runs.get(run_id)
    rows = read_metrics(run_dir)
    losses = [float(r["loss"]) for r in rows]
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, losses
    summary = zero_runs.summary(run_id)
    stage, offload = ZERO_MATRIX[run_id]
    assert (summary["world_size"], summary["zero_stage"], summary["offload"]) == (2, stage, offload)
    assert summary["global_batch_size"] == 32 and summary["micro_batch_size"] == 16
    assert (run_dir / "training.png").stat().st_size > 1000
    assert (run_dir / "checkpoints" / "latest").read_text() == "global_step12"


def test_zero3_each_rank_holds_about_half_of_the_parameters(zero_runs):
    """The parameter-server idea in ZeRO-3 form: each rank owns a shard; others fetch it on demand."""
    z3 = zero_runs.summary("z3-none")
    total, held = z3["num_parameters"], z3["params_held_per_rank"]
    assert len(held) == 2
    for h in held:
        assert 0.45 * total <= h <= 0.55 * total, (total, held)
    assert total <= sum(held) <= total + 2 * 4  # padding: at most one element per tensor per rank
    z2 = zero_runs.summary("z2-none")  # ZeRO-2 partitions optimizer state, but every rank has all params
    assert z2["params_held_per_rank"] == [z2["num_parameters"]] * 2


def _tensors(obj, prefix=""):
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _tensors(val, f"{prefix}/{key}").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, val in enumerate(obj) for k, v in _tensors(val, f"{prefix}/{i}").items()}
    return {prefix: obj} if torch.is_tensor(obj) else {}


def _optimizer_tensors(tag_dir):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    out = {}
    with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
        for f in sorted(tag_dir.glob("*optim_states.pt")):
            state = torch.load(f, weights_only=True, map_location="cpu")["optimizer_state_dict"]
            out.update({f"{f.name}{k}": v for k, v in _tensors(state).items()})
    return out


@pytest.mark.parametrize("run_id", ["z2-optimizer", "z3-none"])
def test_resume_in_a_new_process_is_bitwise_exact(zero_runs, tmp_path, run_id):
    """12 steps straight == 6 steps + save + new process + 6 steps: losses, weights, optimizer state."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    straight = zero_runs.get(run_id)
    resumed = tmp_path / run_id
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "global_step12")  # as if the run had stopped at step 6
    stage, offload = ZERO_MATRIX[run_id]
    result = run_train(
        tmp_path, run_id, *SHORT_RUN, f"parallel.zero_stage={stage}", f"parallel.offload={offload}", args=("--resume",)
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resumed" in result.stdout and "at step 6" in result.stdout
    before = {int(r["step"]): r["loss"] for r in read_metrics(straight)}
    after = {int(r["step"]): r["loss"] for r in read_metrics(resumed)}
    assert after == before  # every step's loss, as full-precision text
    weights = [
        get_fp32_state_dict_from_zero_checkpoint(str(d / "checkpoints"), "global_step12") for d in (straight, resumed)
    ]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
    opt = [_optimizer_tensors(d / "checkpoints" / "global_step12") for d in (straight, resumed)]
    assert opt[0].keys() == opt[1].keys() and len(opt[0]) >= 3
    for name in opt[0]:
        assert torch.equal(opt[0][name], opt[1][name]), name


def test_existing_run_is_not_restarted_without_resume(zero_runs, tmp_path):
    shutil.copytree(zero_runs.get("z2-none"), tmp_path / "z2-none")
    result = run_train(tmp_path, "z2-none", *SHORT_RUN)
    assert result.returncode == 2
    assert "already has checkpoints" in result.stdout + result.stderr and "--resume" in result.stdout + result.stderr
    assert "deepspeed.launcher" not in result.stdout + result.stderr


@pytest.mark.parametrize("damage", ["truncated", "same-size-modified"])
def test_resume_with_no_valid_checkpoint_fails_loudly(zero_runs, tmp_path, damage):
    """Sizes are checked before any rank starts; hashes again by rank 0 before anything is loaded."""
    shutil.copytree(zero_runs.get("z2-none"), tmp_path / "z2-none")
    for tag in (tmp_path / "z2-none" / "checkpoints").glob("global_step*"):
        state = next(tag.glob("*optim_states.pt"))
        data = state.read_bytes()
        state.write_bytes(data[:100] if damage == "truncated" else data[:-1] + bytes([data[-1] ^ 1]))
    result = run_train(tmp_path, "z2-none", *SHORT_RUN, args=("--resume",))
    out = result.stdout + result.stderr
    assert result.returncode == 3, out[-3000:]
    assert "cannot resume: no verified checkpoint" in out
    if damage == "truncated":
        assert "size 100 bytes" in out and "deepspeed.launcher" not in out
    else:
        assert "sha256 does not match" in out and "deepspeed.launcher" in out
    assert "step 1/" not in out  # never silently starts over


def test_bad_data_fails_before_any_process_group_starts(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n1,2,0\n1,2,7\n")
    result = run_train(tmp_path, "bad", args=("--data", str(bad)))
    assert result.returncode == 2
    assert f"{bad}: line 3 has label 7.0; labels must be 0 or 1" in result.stdout + result.stderr
    assert "deepspeed.launcher" not in result.stdout + result.stderr
    assert not (tmp_path / "bad").exists()


def test_dry_run_prints_config_and_command_and_starts_nothing(tmp_path):
    result = run_train(tmp_path, "dry", "parallel.zero_stage=3", args=("--dry-run",))
    assert result.returncode == 0, result.stderr
    assert '"stage": 3' in result.stdout and "deepspeed.launcher.launch --world_info=" + WORLD_2 in result.stdout
    assert not (tmp_path / "dry").exists()
