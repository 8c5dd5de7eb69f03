"""A checkpoint writer killed (SIGKILL) at random moments never corrupts the previous checkpoint."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from core.checkpoint import list_checkpoints, load_checkpoint, load_model, resolve_checkpoint

ROOT = Path(__file__).resolve().parent.parent

# Saves a ~7M-parameter model with AdamW moments (~80 MB a checkpoint) in a loop, so a kill lands
# in the middle of a write most of the time.
WRITER = """
import sys, torch
from core.checkpoint import list_checkpoints, save_checkpoint
from core.config import model_config
from core.model import GPT
run = sys.argv[1]
model = GPT(model_config("micro", n_embd=128, n_head=4))
opt = torch.optim.AdamW(model.parameters())
model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)).loss.backward()
opt.step()
done = list_checkpoints(run)
step = int(done[-1].name.split("-")[1]) + 1 if done else 1
while True:
    save_checkpoint(run, step, model, {"marker": step}, opt, keep_last=2)
    print("saved", step, flush=True)
    step += 1
"""


def test_killed_writer_leaves_a_loadable_checkpoint(tmp_path):
    rng = random.Random(0)
    run = tmp_path / "run"
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(run)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().startswith("saved"), "the writer never saved a checkpoint"
        time.sleep(rng.uniform(0.05, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        latest = resolve_checkpoint(run)
        ck = load_checkpoint(latest)  # weights, optimizer and state all readable
        assert ck.state["marker"] == ck.state["step"] and ck.optimizer_state is not None
        for path in list_checkpoints(run):  # every checkpoint that is listed is complete
            assert load_checkpoint(path).state["marker"] == int(path.name.split("-")[1])
        model, _ = load_model(run)
        assert model.config.n_embd == 128
    assert int(resolve_checkpoint(run).name.split("-")[1]) >= 3
