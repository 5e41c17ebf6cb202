"""gpt2_modules: parity with Hugging Face and with the lecture's code, sizes, errors, sampling, the CLI."""
import dataclasses
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import gpt2_modules
from gpt2_modules import AUTOCAST, MODEL_SIZES, GPT, GPTConfig, default_dtype, export_hf, generate, load_checkpoint
from test_train_gpt2 import HEURISTIC_OVERCOMMIT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "Hello, I'm a language model,"
TINY = dict(block_size=64, n_layer=2, n_head=2, n_embd=32)


def run_cli(*args, **env):
    # HF_HUB_OFFLINE: no test may wait on the hub, which is unreachable here and slow to time out
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, os.path.join(ROOT, "gpt2_modules.py"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def assert_one_error_line(result):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def hf_logits(folder, idx):
    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return hf(idx).logits


def write_checkpoint(path, model, compiled_prefix=True):
    # the format train_gpt2.py writes; torch.compile prefixes every key with _orig_mod.
    prefix = "_orig_mod." if compiled_prefix else ""
    torch.save({"model": {prefix + k: v for k, v in model.state_dict().items()},
                "config": dataclasses.asdict(model.config), "step": 7, "val_loss": 10.9}, path)


# -----------------------------------------------------------------------------
# Hugging Face interop

def test_from_pretrained_folder_and_export_match_hf_logits(tmp_path):
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=64, vocab_size=1000)).eval()
    hf.save_pretrained(tmp_path / "hf")
    idx = torch.randint(0, 1000, (3, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(idx).logits

    model = GPT.from_pretrained(str(tmp_path / "hf")).eval()
    assert dataclasses.asdict(model.config) == dict(block_size=64, vocab_size=1000, n_layer=2, n_head=2, n_embd=64)
    with torch.no_grad():
        logits, _ = model(idx)
    assert logits.dtype == torch.float32
    assert (logits - expected).abs().max().item() <= 1e-5

    export_hf(model, str(tmp_path / "export"))
    assert (hf_logits(str(tmp_path / "export"), idx) - expected).abs().max().item() <= 1e-5


@pytest.fixture(scope="module")
def padded_export(tmp_path_factory):
    # the training vocab (50304, padded for speed) with a toy body, so that export and pipeline are quick
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50304, **TINY)).eval()
    folder = str(tmp_path_factory.mktemp("padded_export"))
    export_hf(model, folder)
    return model, folder


def test_export_cuts_padded_vocab_to_50257_with_same_logits(padded_export):
    model, folder = padded_export
    assert GPT2LMHeadModel.from_pretrained(folder).config.vocab_size == 50257
    assert sorted(os.listdir(folder)) == ["config.json", "generation_config.json", "merges.txt", "model.safetensors",
                                          "tokenizer_config.json", "vocab.json"]  # as README lists them
    from transformers import AutoTokenizer
    assert AutoTokenizer.from_pretrained(folder).model_max_length == 64  # the model's block size, not GPT-2's 1024
    idx = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, _ = model(idx)
    theirs = hf_logits(folder, idx)
    assert theirs.shape == (2, 64, 50257)
    assert (theirs - ours[..., :50257]).abs().max().item() <= 1e-5


def test_exported_files_are_as_readable_as_the_umask_makes_new_files(tmp_path):
    # transformers' save_pretrained writes model.safetensors as 0600: another user, or a serving container,
    # could read the config and tokenizer beside it but not the weights; a file of the user's stays as it was
    model = GPT(GPTConfig(vocab_size=50304, **TINY))
    (tmp_path / "notes.txt").write_text("mine")
    os.chmod(tmp_path / "notes.txt", 0o600)
    previous = os.umask(0o022)
    try:
        export_hf(model, str(tmp_path))
    finally:
        os.umask(previous)
    modes = {name: os.stat(tmp_path / name).st_mode & 0o777 for name in os.listdir(tmp_path)}
    assert modes.pop("notes.txt") == 0o600
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes


def test_exported_folder_generates_with_hf_pipeline_like_our_greedy_decode(padded_export, enc):
    from transformers import pipeline
    model, folder = padded_export
    prompt_ids = enc.encode(PROMPT)
    x = torch.tensor([prompt_ids])
    with torch.no_grad():
        for _ in range(8):
            next_id = model(x)[0][0, -1, :50257].argmax()
            x = torch.cat([x, next_id.view(1, 1)], dim=1)
    generator = pipeline("text-generation", model=folder)
    out = generator(PROMPT, max_new_tokens=8, do_sample=False, return_tensors=True)
    assert out[0]["generated_token_ids"] == x[0].tolist()
    text = generator(PROMPT, max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith(PROMPT) and len(text) > len(PROMPT)


# -----------------------------------------------------------------------------
# the command line on a training checkpoint

def test_cli_export_of_compiled_checkpoint_matches_model_logits(tmp_path):
    torch.manual_seed(3)
    model = GPT(GPTConfig(vocab_size=50304, **TINY)).eval()
    write_checkpoint(tmp_path / "model_00007.pt", model)
    result = run_cli("export", str(tmp_path / "model_00007.pt"), str(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {tmp_path / 'hf'}"
    idx = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours, _ = model(idx)
    assert (hf_logits(str(tmp_path / "hf"), idx) - ours[..., :50257]).abs().max().item() <= 1e-5


def test_load_checkpoint_strips_compile_prefix_and_restores_weights(tmp_path):
    torch.manual_seed(5)
    model = GPT(GPTConfig(vocab_size=512, **TINY))
    write_checkpoint(tmp_path / "ckpt.pt", model)
    ckpt = load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert list(ckpt["model"]) == list(model.state_dict())
    assert ckpt["step"] == 7
    loaded = GPT.load(str(tmp_path / "ckpt.pt"))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_cli_sample_prints_seeded_samples_from_checkpoint(tmp_path, enc):
    torch.manual_seed(6)
    model = GPT(GPTConfig(vocab_size=50304, **TINY)).eval()
    write_checkpoint(tmp_path / "ckpt.pt", model)
    args = ("sample", "--model", str(tmp_path / "ckpt.pt"), "--num-samples", "2", "--max-length", "12", "--seed", "7")
    first, second = run_cli(*args), run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    lines = first.stdout.strip().splitlines()
    assert len(lines) == 2
    # the CLI prints exactly what generate() draws for the same seed, at --dtype auto's precision
    rows = generate(model, enc.encode(PROMPT), 12, 2, top_k=50, seed=7, autocast_dtype=AUTOCAST[default_dtype("cpu")])
    for i, (line, row) in enumerate(zip(lines, rows)):
        assert line.startswith(f"sample {i}: {PROMPT}")
        assert line == f"sample {i}: {enc.decode([t for t in row if t < enc.n_vocab])}"


# -----------------------------------------------------------------------------
# sizes and the optimizer

# V*C + P*C + L*(12*C^2 + 13*C) + 2*C, the counts Hugging Face reports for OpenAI's checkpoints
PUBLISHED_PARAMS = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168,
                    "gpt2-large": 774_030_080, "gpt2-xl": 1_557_611_200}


@pytest.mark.parametrize("name", list(MODEL_SIZES))
def test_named_sizes_have_openai_parameter_counts(name):
    assert set(MODEL_SIZES) == set(PUBLISHED_PARAMS)
    with torch.device("meta"):
        model = GPT(GPTConfig.named(name))
    assert model.num_params() == PUBLISHED_PARAMS[name]
    c = model.config
    assert model.num_params() == (c.vocab_size * c.n_embd + c.block_size * c.n_embd
                                  + c.n_layer * (12 * c.n_embd ** 2 + 13 * c.n_embd) + 2 * c.n_embd)


def test_gpt2_default_config_has_124_439_808_parameters_on_cpu():
    model = GPT(GPTConfig())
    assert sum(p.numel() for p in model.parameters()) == 124_439_808
    assert model.num_params(non_embedding=True) == 124_439_808 - 1024 * 768


def test_configure_optimizers_reports_lecture_group_counts(capsys):
    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=50304))
    optimizer = model.configure_optimizers(weight_decay=0.1, learning_rate=6e-4, device_type="cpu")
    assert capsys.readouterr().out.splitlines() == [
        "num decayed parameter tensors: 50, with 124,354,560 parameters",
        "num non-decayed parameter tensors: 98, with 121,344 parameters",
        "using fused AdamW: False",
    ]
    decay, nodecay = optimizer.param_groups
    assert (decay["weight_decay"], nodecay["weight_decay"]) == (0.1, 0.0)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in nodecay["params"])
    assert decay["betas"] == (0.9, 0.95) and decay["eps"] == 1e-8 and decay["lr"] == 6e-4

    model.configure_optimizers(weight_decay=0.1, learning_rate=6e-4, device_type="cpu", verbose=False)
    assert capsys.readouterr().out == ""


def test_configure_optimizers_uses_fused_adamw_for_cuda(capsys):
    # guards use_fused: the CPU runs of the tests never ask for CUDA, so fused AdamW always off went unseen. torch
    # (>= 2.4) has a fused AdamW for CPU tensors too, so the CUDA choice can be built and stepped here
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=1, n_embd=8))
    optimizer = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-3, device_type="cuda")
    assert capsys.readouterr().out.splitlines()[-1] == "using fused AdamW: True"
    assert optimizer.defaults["fused"] is True and all(g["fused"] is True for g in optimizer.param_groups)
    x = torch.randint(0, 64, (2, 8))
    model(x, x)[1].backward()
    before = model.lm_head.weight.detach().clone()
    optimizer.step()  # the fused kernel runs
    assert not torch.equal(model.lm_head.weight, before)


# -----------------------------------------------------------------------------
# the same fresh model as the lecture's code (values measured against build-nanogpt's GPT class)

def assert_exact(tensor, values):
    assert torch.equal(tensor.detach(), torch.tensor(values, dtype=torch.float32)), tensor.tolist()


def test_init_matches_build_nanogpt_small_config():
    torch.manual_seed(1337)
    model = GPT(GPTConfig(block_size=64, vocab_size=512, n_layer=3, n_head=4, n_embd=64))
    sd = model.state_dict()
    assert sd["transformer.wte.weight"].double().sum().item() == pytest.approx(0.8655796596, rel=1e-6)
    assert sd["transformer.wpe.weight"].double().sum().item() == pytest.approx(-0.5605298746, rel=1e-6)
    assert_exact(model.transformer.h[2].mlp.c_proj.weight[0, :3],
                 [-0.006854212377220392, 0.0032759038731455803, 0.007971792481839657])
    assert_exact(model.lm_head.weight[5, :3],
                 [-0.013580624014139175, 0.002788663376122713, 0.0023293655831366777])
    total = sum(v.double().abs().sum().item() for v in sd.values())
    assert total == pytest.approx(3339.149092551409, rel=1e-6)
    x = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    _, loss = model(x, x)
    assert loss.item() == pytest.approx(5.508396625518799, rel=1e-6)


def test_init_matches_build_nanogpt_gpt2_with_padded_vocab():
    torch.manual_seed(1337)
    model = GPT(GPTConfig(vocab_size=50304))
    assert_exact(model.lm_head.weight[0, :4], [0.008970124647021294, -0.0009961825562641025,
                                               -0.04377645254135132, -0.008385252207517624])
    assert_exact(model.transformer.h[11].mlp.c_proj.weight[0, :2], [-0.00225190375931561, 0.007094993721693754])
    assert_exact(model.transformer.wpe.weight[1023, :2], [-0.005387404002249241, 0.022600306198000908])


def test_state_dict_uses_nanogpt_names_and_ties_wte_to_lm_head():
    model = GPT(GPTConfig(vocab_size=512, **TINY))
    per_block = ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                 "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                 "mlp.c_proj.weight", "mlp.c_proj.bias"]
    expected = (["transformer.wte.weight", "transformer.wpe.weight"]
                + [f"transformer.h.{i}.{k}" for i in range(2) for k in per_block]
                + ["transformer.ln_f.weight", "transformer.ln_f.bias", "lm_head.weight"])
    sd = model.state_dict()
    assert list(sd) == expected  # no causal-mask buffer
    assert list(dict(model.named_buffers())) == []
    assert sd["transformer.wte.weight"].data_ptr() == sd["lm_head.weight"].data_ptr()
    assert model.transformer.wte.weight is model.lm_head.weight


@pytest.mark.parametrize("vocab_size", [512, 50304])
def test_fresh_model_loss_is_near_ln_vocab_size(vocab_size):
    torch.manual_seed(1337)
    model = GPT(GPTConfig(vocab_size=vocab_size, **TINY))
    idx = torch.randint(0, vocab_size, (4, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, loss = model(idx[:, :-1], idx[:, 1:])
    assert abs(loss.item() - math.log(vocab_size)) < 0.2


def test_logits_at_gives_the_picked_positions_of_the_full_logits():
    torch.manual_seed(1337)
    model = GPT(GPTConfig(vocab_size=512, **TINY)).eval()
    idx = torch.randint(0, 512, (3, 20), generator=torch.Generator().manual_seed(0))
    rows, cols = torch.tensor([0, 0, 2, 1, 2]), torch.tensor([19, 4, 0, 7, 4])
    with torch.no_grad():
        full, _ = model(idx)
        picked, loss = model(idx, logits_at=(rows, cols))
    assert picked.shape == (5, 512) and loss is None
    torch.testing.assert_close(picked, full[rows, cols], rtol=0, atol=1e-5)
    with torch.no_grad():
        last, _ = model(idx, logits_at=(slice(None), -1))  # any index into (B, T): here the last position
    torch.testing.assert_close(last, full[:, -1], rtol=0, atol=1e-5)


def cpuinfo_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return None


def test_cpu_bf16_detection_agrees_with_the_kernels_cpuinfo():
    flags = cpuinfo_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo flags (not Linux on x86)")
    assert gpt2_modules.cpu_has_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


# -----------------------------------------------------------------------------
# errors a user can cause

def test_sequence_longer_than_block_size_raises_value_error():
    model = GPT(GPTConfig(vocab_size=512, **TINY))
    with pytest.raises(ValueError, match="block_size 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_token_id_out_of_vocab_raises_value_error():
    model = GPT(GPTConfig(vocab_size=512, **TINY))
    idx = torch.zeros(1, 8, dtype=torch.long)
    idx[0, 3] = 512
    with pytest.raises(ValueError, match="vocab_size 512"):
        model(idx)


@pytest.mark.parametrize("change", [dict(activation_function="relu"), dict(layer_norm_epsilon=1e-6),
                                    dict(n_inner=96), dict(tie_word_embeddings=False),
                                    dict(add_cross_attention=True)])
def test_a_gpt2_variant_this_model_does_not_implement_is_refused(tmp_path, change):
    # untied output weights used to load silently: lm_head's matrix overwrote the shared embedding (wrong logits);
    # another MLP width, or cross-attention (an encoder-decoder's GPT-2), failed in load_state_dict with a traceback
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=16, vocab_size=100, **change)) \
        .save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match="is a GPT-2 variant this model does not implement"):
        GPT.from_pretrained(str(tmp_path / "hf"))


def test_a_folder_that_lacks_weights_is_refused_not_filled_with_random_ones(tmp_path):
    from safetensors.torch import load_file, save_file
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=16)).save_pretrained(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    tensors = load_file(weights)
    del tensors["transformer.h.0.mlp.c_fc.weight"]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks weights of GPT-2 \(transformer.h.0.mlp.c_fc.weight\): it is not a "
                                         r"whole GPT-2 checkpoint"):
        GPT.from_pretrained(str(tmp_path / "hf"))


def test_a_folder_with_its_weights_cut_short_is_an_error_line(tmp_path):
    # GPT-2's vocabulary: a smaller one makes transformers warn about <|endoftext|>'s id on stderr
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=16)).save_pretrained(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    line = assert_one_error_line(run_cli("sample", "--model", str(tmp_path / "hf"), "--device", "cpu"))
    assert line.startswith(f"error: could not load '{tmp_path / 'hf'}' with transformers (")


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors"])
def test_a_folder_that_is_not_save_pretrained_s_is_named_without_the_offline_hint(tmp_path, missing):
    # a local folder asks no hub: "offline, pass a local folder written by save_pretrained instead" misled;
    # without config.json transformers built a default GPT-2 and printed a 30-line report of mismatched weights
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=16)).save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / missing).unlink()
    line = assert_one_error_line(run_cli("sample", "--model", str(tmp_path / "hf"), "--device", "cpu"))
    if missing == "config.json":
        assert line == f"error: {tmp_path / 'hf'} is not a folder written by save_pretrained: it has no config.json"
    else:
        assert line.startswith(f"error: could not load '{tmp_path / 'hf'}' with transformers (")
        assert line.endswith("): it is not a whole folder written by save_pretrained"), line


def test_a_training_log_folder_given_as_the_model_names_its_last_checkpoint(tmp_path, tiny_checkpoint):
    _, path = tiny_checkpoint
    for step in (2, 10):
        shutil.copy(path, tmp_path / f"model_{step:05d}.pt")
    (tmp_path / "log.txt").write_text("0 train 10.9\n")
    line = assert_one_error_line(run_cli("sample", "--model", str(tmp_path), "--device", "cpu"))
    assert line == (f"error: {tmp_path} is a folder of training checkpoints, not one written by save_pretrained: "
                    f"pass a checkpoint file, such as its last by name, {tmp_path / 'model_00010.pt'}")


def test_unknown_pretrained_name_lists_valid_names():
    for call in (lambda: GPT.from_pretrained("gpt3"), lambda: GPTConfig.named("gpt3")):
        with pytest.raises(ValueError) as info:
            call()
        assert all(name in str(info.value) for name in MODEL_SIZES)


@pytest.mark.parametrize("fields, message", [
    (dict(n_embd=65, n_head=4), "divisible by n_head"),
    (dict(n_layer=0), "n_layer"),
    (dict(n_head=-2), "n_head"),
    (dict(block_size=0), "block_size"),
    (dict(vocab_size=-1), "vocab_size"),
])
def test_bad_config_raises_value_error(fields, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**fields)


class NotAllowedInCheckpoints:
    pass


def test_load_checkpoint_rejects_files_that_are_not_checkpoints(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    model = GPT(GPTConfig(vocab_size=512, **TINY))
    write_checkpoint(tmp_path / "good.pt", model)
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[:len(data) // 2])
    torch.save({"weights": model.state_dict()}, tmp_path / "no_config.pt")
    torch.save({"model": {}, "config": NotAllowedInCheckpoints()}, tmp_path / "foreign.pt")
    for name in ("notes.pt", "truncated.pt", "no_config.pt", "foreign.pt"):
        with pytest.raises(ValueError, match="checkpoint") as error:
            load_checkpoint(str(tmp_path / name))
        assert "KeyError" not in str(error.value)  # not pickle's "KeyError: 101" for a text file's first byte


@pytest.mark.parametrize("kind", ["missing file", "text file", "unknown name", "missing folder"])
def test_cli_reports_bad_model_in_one_line_without_traceback(tmp_path, kind):
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    model = {"missing file": str(tmp_path / "nope.pt"), "text file": str(tmp_path / "notes.pt"),
             "unknown name": "gpt3", "missing folder": str(tmp_path / "nope")}[kind]
    line = assert_one_error_line(run_cli("sample", "--model", model, "--max-length", "9"))  # the prompt is 8
    assert model in line
    if kind == "unknown name":
        assert line.startswith("error: unknown pretrained model 'gpt3': expected one of gpt2, gpt2-medium, ")
    if kind == "missing folder":  # it was "unknown pretrained model" too
        assert line.startswith(f"error: no such folder '{model}': expected one of gpt2, gpt2-medium, ")


@pytest.mark.slow
def test_an_unreachable_hub_is_one_error_line_that_says_how_to_skip_the_retries(tmp_path):
    # a machine without network: the hub client retries for ~30 s, and logged two lines per try before ours
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the with ends: every request is refused
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(tmp_path / "hf_home"))
    result = subprocess.run([sys.executable, "gpt2_modules.py", "sample", "--model", "gpt2"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    line = assert_one_error_line(result)
    assert line.startswith("error: could not load 'gpt2' with transformers (") and line.endswith(
        "; offline, pass a local folder written by save_pretrained instead (and set HF_HUB_OFFLINE=1 to skip the "
        "retries)")


def test_openai_name_offline_raises_value_error_suggesting_local_folder(tmp_path):
    # a fresh, empty HF cache so a previously downloaded gpt2 cannot make this pass by accident;
    # one process for both checks (HF_HUB_OFFLINE is read at import), main() being what the CLI runs
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    code = ("import gpt2_modules\n"
            "try:\n    gpt2_modules.GPT.from_pretrained('gpt2')\n"
            "except ValueError as e:\n    print('ValueError:', e, flush=True)\n"
            "gpt2_modules.main(['sample', '--model', 'gpt2'])\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.startswith("ValueError: could not load 'gpt2'") and "local folder" in result.stdout
    line = assert_one_error_line(result)
    assert "'gpt2'" in line and "local folder" in line


# -----------------------------------------------------------------------------
# sampling

def test_generate_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(1337)
    model = GPT(GPTConfig(vocab_size=512, **TINY)).eval()
    prompt = [1, 2, 3, 4]
    state = torch.get_rng_state()
    a = generate(model, prompt, max_length=20, num_return_sequences=3, seed=42)
    b = generate(model, prompt, max_length=20, num_return_sequences=3, seed=42)
    c = generate(model, prompt, max_length=20, num_return_sequences=3, seed=43)
    assert torch.equal(torch.get_rng_state(), state)
    assert a == b
    assert a != c
    assert len(a) == 3
    for row in a + c:
        assert len(row) == 20 and row[:4] == prompt
        assert all(0 <= t < 512 for t in row)
    assert len(set(map(tuple, a))) > 1  # the rows are independent draws, not copies


def test_generate_with_top_k_1_is_greedy_and_top_k_bounds_the_choices():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, **TINY)).eval()
    # GPT-2's init: nearly flat logits, so sampling among more than top_k would leave the top tokens at once
    prompt = [1, 2, 3, 4]
    x = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(8):
            x = torch.cat([x, model(x)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert generate(model, prompt, 12, num_return_sequences=3, top_k=1, seed=7) == [x[0].tolist()] * 3
    # top_k=2: every sampled token is one of the two most likely after its context
    for row in generate(model, prompt, 12, num_return_sequences=4, top_k=2, seed=7):
        with torch.no_grad():
            logits = model(torch.tensor([row[:-1]]))[0][0]
        assert all(row[i + 1] in logits[i].topk(2).indices.tolist() for i in range(3, 11))


def test_generate_crops_context_to_block_size():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, **{**TINY, "block_size": 8})).eval()
    rows = generate(model, [5] * 6, max_length=20, seed=1)
    assert len(rows) == 1 and len(rows[0]) == 20

def test_generate_past_block_size_conditions_on_the_last_block_size_tokens():
    # guards the crop x[:, -block_size:]: a crop to the first block_size tokens (x[:, :block_size]) runs as
    # well, but predicts every token after the 8th from the same 8 tokens
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, **{**TINY, "block_size": 8})).eval()
    with torch.no_grad():  # 10x GPT-2's init: at 0.02 greedy decoding repeats one token whatever the context
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    prompt = [5, 17, 300, 42, 9, 250]
    x, first = torch.tensor([prompt]), torch.tensor([prompt])
    with torch.no_grad():
        while x.size(1) < 20:  # greedy, by hand: the model sees the last 8 tokens
            x = torch.cat([x, model(x[:, -8:])[0][:, -1].argmax(-1, keepdim=True)], dim=1)
            first = torch.cat([first, model(first[:, :8])[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert x[0].tolist() != first[0].tolist()  # the two crops really disagree here: a real comparison
    assert generate(model, prompt, max_length=20, top_k=1, seed=1) == [x[0].tolist()]


def test_generate_draws_what_the_lectures_sampling_loop_draws():
    # the lecture's loop, written out: softmax of the last position's logits as they are (no temperature), top 50,
    # torch.multinomial with a generator seeded 42, gather; generate must pick the very same tokens
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, **TINY)).eval()
    prompt = [1, 2, 3, 4]
    x = torch.tensor(prompt, dtype=torch.long).unsqueeze(0).repeat(4, 1)
    sample_rng = torch.Generator(device="cpu")
    sample_rng.manual_seed(42)
    with torch.no_grad():
        while x.size(1) < 30:
            logits, _ = model(x)
            logits = logits[:, -1, :]
            probs = torch.nn.functional.softmax(logits, dim=-1)
            topk_probs, topk_indices = torch.topk(probs, 50, dim=-1)
            ix = torch.multinomial(topk_probs, 1, generator=sample_rng)
            xcol = torch.gather(topk_indices, -1, ix)
            x = torch.cat((x, xcol), dim=1)
    assert generate(model, prompt, max_length=30, num_return_sequences=4, top_k=50, seed=42) == x.tolist()


# -----------------------------------------------------------------------------
# the sample and export commands' own flags: one error line, before any model loads

def run_main_in_process(*argv):
    """gpt2_modules.main as the CLI calls it: the line sys.exit would print."""
    with pytest.raises(SystemExit) as e:
        gpt2_modules.main(list(argv))
    return str(e.value.code)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(8)
    model = GPT(GPTConfig(vocab_size=50304, **TINY)).eval()
    path = tmp_path_factory.mktemp("tiny") / "ckpt.pt"
    write_checkpoint(path, model)
    return model, str(path)


@pytest.mark.parametrize("flags, expected", [
    (["--device", "gpu"], "error: unknown device 'gpu': expected auto, cpu, cuda, cuda:N or mps"),
    (["--prompt", ""], "error: --prompt is empty: GPT-2 needs at least one token to continue "
                       "(pass --prompt '<|endoftext|>' for unconditional samples)"),
    # the default prompt is 8 tokens: --max-length counts them, so 8 would print the prompt alone
    (["--max-length", "3"], "error: --max-length 3 leaves nothing to sample: it counts the prompt's 8 tokens, "
                            "so it must be more than 8"),
    (["--max-length", "8"], "error: --max-length 8 leaves nothing to sample: it counts the prompt's 8 tokens, "
                            "so it must be more than 8"),
    (["--seed", str(2**64)], "error: --seed must fit in 64 bits, got 18446744073709551616"),
])
def test_cli_sample_refuses_bad_flags_in_one_line(tiny_checkpoint, flags, expected):
    assert run_main_in_process("sample", "--model", tiny_checkpoint[1], *flags) == expected


def test_a_checkpoint_that_cannot_give_a_model_is_named_with_why(tiny_checkpoint, tmp_path):
    ckpt = torch.load(tiny_checkpoint[1], weights_only=True)
    ckpt["model"]["_orig_mod.transformer.wte.weight"][3, 5] = float("nan")
    torch.save(ckpt, tmp_path / "diverged.pt")
    ckpt["config"]["n_head"] = 3
    torch.save(ckpt, tmp_path / "three_heads.pt")
    ckpt["model"] = [1, 2]
    torch.save(ckpt, tmp_path / "model_list.pt")
    # a nan weight ended in torch.multinomial's traceback; a bad size and a list named no file, or in a traceback
    assert run_main_in_process("sample", "--model", str(tmp_path / "diverged.pt")) == (
        f"error: {tmp_path / 'diverged.pt'} holds weights that are not finite (nan or inf in transformer.wte.weight): "
        "the checkpoint of a run that diverged?")
    assert run_main_in_process("sample", "--model", str(tmp_path / "three_heads.pt")) == (
        f"error: {tmp_path / 'three_heads.pt'} does not hold a model this code can build (n_embd (32) must be "
        "divisible by n_head (3))")
    assert run_main_in_process("sample", "--model", str(tmp_path / "model_list.pt")) == (
        f"error: {tmp_path / 'model_list.pt'} is not a training checkpoint of this project (its 'model' and 'config' "
        "are a list and a dict, not dicts)")


@pytest.mark.skipif(not HEURISTIC_OVERCOMMIT, reason="needs vm.overcommit_memory = 0, which refuses 80 GB at once")
def test_cli_sample_out_of_memory_is_one_error_line(tiny_checkpoint):
    # 100,000 rows of 50,304 logits each: the allocator refuses the ~80 GB of float32 at once
    line = run_main_in_process("sample", "--model", tiny_checkpoint[1], "--num-samples", "100000", "--max-length", "12")
    assert re.fullmatch(r"error: out of memory \(.*can't allocate memory.*\); fewer --num-samples or a smaller "
                        r"--max-length need less", line), line


def test_a_checkpoint_of_the_lectures_code_is_refused_with_what_it_holds_and_how_to_convert_it(tmp_path):
    # the lecture's train_gpt2.py saves {'model': ..., 'config': raw_model.config, ...}: a pickled dataclass
    path = tmp_path / "model_19072.pt"
    script = ("import dataclasses, sys, torch\n"
              "@dataclasses.dataclass\nclass GPTConfig:\n    block_size: int = 1024\n    vocab_size: int = 50257\n"
              "torch.save({'model': {}, 'config': GPTConfig(), 'step': 19072, 'val_loss': 3.07}, sys.argv[1])\n")
    subprocess.run([sys.executable, "-c", script, str(path)], check=True)
    with pytest.raises(ValueError) as e:
        load_checkpoint(str(path))
    assert str(e.value) == (f"{path} holds a pickled Python object (__main__.GPTConfig; the lecture's train_gpt2.py "
                            "saves its config as one), which a weights-only load refuses: in a Python session you "
                            "trust, load it with weights_only=False and save its 'model' with 'config' as a dict "
                            "(dataclasses.asdict)")


def test_cli_sample_with_max_length_one_past_the_prompt_samples_one_token(tiny_checkpoint, capsys, enc):
    model, path = tiny_checkpoint
    gpt2_modules.main(["sample", "--model", path, "--max-length", "9", "--num-samples", "1"])
    row = generate(model, enc.encode(PROMPT), 9, 1, seed=42, autocast_dtype=AUTOCAST[default_dtype("cpu")])[0]
    assert len(row) == 9
    assert capsys.readouterr().out == f"sample 0: {enc.decode(row)}\n"


def test_cli_sample_from_endoftext_is_unconditional(tiny_checkpoint, capsys, enc):
    # '<|endoftext|>' is the one special token, id 50256, as OpenAI's unconditional samples begin
    model, path = tiny_checkpoint
    gpt2_modules.main(["sample", "--model", path, "--prompt", "<|endoftext|>", "--max-length", "6",
                       "--num-samples", "2"])
    rows = generate(model, [50256], 6, 2, seed=42, autocast_dtype=AUTOCAST[default_dtype("cpu")])
    assert capsys.readouterr().out == "".join(f"sample {i}: {enc.decode(row)}\n" for i, row in enumerate(rows))
    assert all(row[0] == 50256 and len(row) == 6 for row in rows)


def test_cli_sample_on_cuda_without_a_gpu_is_one_error_line(tiny_checkpoint):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    # a real interpreter: before the fix, torch's AssertionError reached stderr as a traceback
    line = assert_one_error_line(run_cli("sample", "--model", tiny_checkpoint[1], "--device", "cuda"))
    assert line == "error: --device cuda was asked for but torch sees no CUDA GPU (use --device cpu or auto)"


def test_resolve_device_checks_the_name_against_this_machine():
    auto = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert gpt2_modules.resolve_device("auto") == auto
    assert gpt2_modules.resolve_device("cpu") == "cpu"
    for name in ("gpu", "cuda:x", "meta", ""):
        with pytest.raises(ValueError, match=f"unknown device {name!r}: expected auto, cpu, cuda, cuda:N or mps"):
            gpt2_modules.resolve_device(name)
    with pytest.raises(ValueError, match=f"--device cuda:{torch.cuda.device_count()} was asked for but torch sees"):
        gpt2_modules.resolve_device(f"cuda:{torch.cuda.device_count()}")  # one past the last GPU, or none at all


@pytest.mark.parametrize("where, reason", [("file", "a file of that name is in the way"),
                                           ("under a file", "Not a directory")])
def test_cli_export_to_a_folder_it_cannot_make_is_one_error_line(tiny_checkpoint, tmp_path, where, reason):
    (tmp_path / "notes.txt").write_text("keep me\n")
    out = str(tmp_path / "notes.txt") if where == "file" else str(tmp_path / "notes.txt" / "hf")
    assert run_main_in_process("export", tiny_checkpoint[1], out) == \
        f"error: cannot write the export folder {out} ({reason})"
    assert (tmp_path / "notes.txt").read_text() == "keep me\n"


@pytest.mark.skipif(not HEURISTIC_OVERCOMMIT,
                    reason="needs Linux's default overcommit heuristic, which refuses an 800 GB allocation at once")
def test_out_of_memory_is_recognised_from_the_cpu_allocator_and_cuda():
    with pytest.raises(RuntimeError) as e:
        torch.empty(100 * 2**30, dtype=torch.float64)  # 800 GB
    assert gpt2_modules.is_out_of_memory(e.value)
    assert gpt2_modules.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not gpt2_modules.is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_first_line_of_a_compile_failure_names_its_cause():
    # torch.compile's error starts "backend='...' raised:" and gives the cause on the next line: an error line
    # that kept only the first line said nothing (seen once: "torch.compile failed ... (backend='inductor' raised:)")
    def failing_backend(gm, example_inputs):
        raise RuntimeError("the C++ compiler crashed")

    compiled = torch.compile(lambda x: x.sin() + 1, backend=failing_backend)
    with pytest.raises(Exception) as e:
        compiled(torch.ones(3))
    assert gpt2_modules.first_line(e.value) == \
        "backend='failing_backend' raised: RuntimeError: the C++ compiler crashed"
    assert gpt2_modules.first_line(RuntimeError("  one line \nthe rest")) == "one line"
    assert gpt2_modules.first_line(ValueError(""), "no detail") == "no detail"
    assert gpt2_modules.first_line(ValueError("ends with a colon:")) == "ends with a colon:"
