"""train_gpt2.ipynb runs top to bottom on a CPU, offline, and prints the numbers its prose relies on.

The notebook is executed from a copy in tmp_path (the committed one, with its outputs, is never rewritten), in a
kernel that is this interpreter: a kernelspec written into tmp_path and put first on JUPYTER_PATH, so that a
user-wide "python3" kernel of another Python can never be picked up instead.
"""
import os
import re
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "train_gpt2.ipynb")

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")


def this_python_kernel(folder):
    """Register this interpreter as kernel "python3" in folder/kernels, found first through JUPYTER_PATH."""
    from ipykernel.kernelspec import write_kernel_spec
    write_kernel_spec(os.path.join(folder, "kernels", "python3"))  # argv: sys.executable -m ipykernel_launcher
    return folder


def text_of(cell):
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def number_after(label, text):
    m = re.search(re.escape(label) + r"\s*([-+0-9.e]+)", text)
    assert m, f"{label!r} not in the output:\n{text}"
    return float(m.group(1))


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("notebook")
    path = tmp / "train_gpt2.ipynb"
    shutil.copy(NOTEBOOK, path)
    nb = nbformat.read(path, as_version=4)
    # the kernel inherits this process's environment; an empty tokenizer cache, as on a newcomer's fresh machine
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", this_python_kernel(str(tmp)))
        mp.setenv("TIKTOKEN_CACHE_DIR", str(tmp / "tiktoken"))
        mp.setenv("HF_HUB_OFFLINE", "1")  # hermetic online too: no 500 MB download of OpenAI's checkpoint
        client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                         resources={"metadata": {"path": ROOT}})
        client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    nbformat.write(nb, path)
    return {cell.get("id"): cell for cell in nb.cells}


@pytest.mark.slow
def test_notebook_ran_in_this_python_without_errors(executed):
    code = [c for c in executed.values() if c.cell_type == "code"]
    assert all(o.output_type != "error" for c in code for o in c.outputs)
    assert all(c.execution_count for c in code), "a code cell did not run"
    assert sys.version.split()[0] in text_of(executed["setup"])


@pytest.mark.slow
def test_notebook_tokenizes_the_prompt_and_counts_124m_parameters(executed):
    # from the empty cache: tiktoken downloaded its files, or (here, offline) they came from a registry
    assert "8 ids: [15496, 11, 314, 1101, 257, 3303, 2746, 11]" in text_of(executed["tokenizer"])
    out = text_of(executed["param-count"])
    assert "parameters: 124,439,808" in out
    assert "(what train_gpt2.py trains): 124,475,904" in out


@pytest.mark.slow
def test_notebook_shows_gpt2_s_init_with_the_residual_projections_scaled_down(executed):
    out = text_of(executed["init"])
    assert number_after("attn.c_attn              std", out) == pytest.approx(0.02, rel=0.05)
    # 0.02 / sqrt(2 * n_layer) = 0.01 for 2 layers; unscaled they would be at 0.02
    assert number_after("attn.c_proj (residual)   std", out) == pytest.approx(0.01, rel=0.05)
    assert number_after("mlp.c_proj (residual)    std", out) == pytest.approx(0.01, rel=0.05)
    assert "biases all zero: True" in out


@pytest.mark.slow
def test_notebook_loads_local_weights_with_the_logits_of_transformers(executed):
    hub = text_of(executed["weights-hub"])
    assert hub.startswith(("error: could not load 'gpt2'", "loaded OpenAI's GPT-2: 124,439,808 parameters")), hub
    out = text_of(executed["weights-local"])
    assert "(64, 192) in transformers (Conv1D), (192, 64) here (nn.Linear)" in out
    assert number_after("max |logits difference| vs transformers:", out) < 1e-5
    samples = text_of(executed["sampling"])
    assert samples.count("random tiny model, sample") == 4 and "same seed, same samples: True" in samples


@pytest.mark.slow
def test_notebook_data_loader_shifts_and_ddp_ranks_tile(executed):
    # pydoc_data's topics grow with Python: 139,016 tokens in 3.11, 148,942 in 3.12, 156,228 in 3.13 (4 shards)
    m = re.search(r"-> ([0-9,]+) tokens in (\d+) shards:", text_of(executed["shards"]))
    assert m, text_of(executed["shards"])
    tokens, shards = int(m[1].replace(",", "")), int(m[2])
    assert shards == -(-tokens // 50_000) >= 3  # 50,000-token shards: the val shard and at least two to train on
    assert "y is x shifted by one token: True" in text_of(executed["loader"])
    assert "at all 500 steps: True" in text_of(executed["ddp-loader"])


@pytest.mark.slow
def test_notebook_step_lowers_the_loss_and_clips_the_gradient(executed):
    out = text_of(executed["one-step"])
    before = number_after("loss before the step:", out)
    after = number_after("loss after the step, same batch:", out)
    assert 10.0 < before < 11.5 and after < before
    assert number_after("gradient norm:", out) > 1.0
    assert number_after("before clipping,", out) == pytest.approx(1.0, abs=1e-3)
    losses = [float(v) for v in re.findall(r"\| loss: ([0-9.]+) \|", text_of(executed["overfit"]))]
    assert len(losses) == 10 and losses[-1] < losses[0] < before


@pytest.mark.slow
def test_notebook_lr_schedule_and_gradient_accumulation_numbers(executed):
    lr = text_of(executed["lr"])
    assert "step     0: lr 8.3916e-07" in lr and "step   714: lr 6.0000e-04" in lr and "step 19072: lr 6.0000e-05" in lr
    assert any("image/png" in o.get("data", {}) for o in executed["lr"].outputs)
    assert "1 GPU(s), B=64, T=1024: grad_accum_steps = 8" in text_of(executed["accum-steps"])
    out = text_of(executed["grad-accum"])
    assert number_after("loss/2 vs one batch of 2B):", out) < 1e-6
    assert number_after("without the division the gradient is", out) == pytest.approx(2.0, abs=1e-3)


@pytest.mark.slow
def test_notebook_reads_the_real_log_and_plots_it_against_the_references(executed):
    # the small model after 11 steps on one batch: near the uniform guess ln(50257) = 10.82, a little below it
    assert 9.5 < number_after("validation loss:", text_of(executed["val-loss"])) < 11.0
    assert "mask, row 0:" in text_of(executed["hellaswag"])
    out = text_of(executed["log-read"])
    assert "NOT FineWeb-Edu" in out
    assert "train 200 points, step   0 -> 199: 10.9083 -> 3.8586" in out
    assert "val     4 points" in out and "hella   4 points" in out
    refs = text_of(executed["log-plot"])
    assert "3.2924" in refs and "0.2945" in refs and "0.337" in refs
    assert any("image/png" in o.get("data", {}) for o in executed["log-plot"].outputs)
