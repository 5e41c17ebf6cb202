"""
The GPT-2 model: config, attention, MLP, block, GPT; loading OpenAI's weights, the optimizer,
sampling, and export back to Hugging Face.

The architecture is GPT-2's (Radford et al. 2019), written the way nanoGPT and the lecture write it,
so that parameter names match OpenAI's checkpoints and a fresh model draws the same initial values
as the lecture's code for the same torch.manual_seed.

    python gpt2_modules.py sample --model gpt2                      # OpenAI's 124M (needs the HF hub)
    python gpt2_modules.py sample --model log/model_19073.pt        # a training checkpoint
    python gpt2_modules.py export log/model_19073.pt hf_gpt2/       # -> transformers.GPT2LMHeadModel
"""

import argparse
import inspect
import logging
import os
import re
import sys
import zipfile
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from gpt2_tokenizer import VOCAB_SIZE

# -----------------------------------------------------------------------------
# configuration

ADAMW_BETAS = (0.9, 0.95)  # with eps 1e-8, from GPT-3's paper (Brown et al. 2020, appendix B)

# the four sizes OpenAI released; everything that names a size looks it up here
MODEL_SIZES = {
    "gpt2":        dict(n_layer=12, n_head=12, n_embd=768),   # 124M params
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M params
    "gpt2-large":  dict(n_layer=36, n_head=20, n_embd=1280),  # 774M params
    "gpt2-xl":     dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M params
}


# what train_gpt2.py trains with: 50,257 padded to 393 x 128. GPU kernels like dimensions with many factors
# of 2 (the lecture's "nice numbers"); the 47 extra tokens never occur, so their logits are driven to -inf
PADDED_VOCAB_SIZE = 50304


@dataclass
class GPTConfig:
    block_size: int = 1024  # max sequence length: GPT-2's context window
    vocab_size: int = VOCAB_SIZE  # 50,257: 50,000 BPE merges + 256 byte tokens + 1 <|endoftext|> token
    n_layer: int = 12  # number of transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # width of the residual stream

    @classmethod
    def named(cls, name, **overrides):
        if name not in MODEL_SIZES:
            raise ValueError(f"unknown model size {name!r}: expected one of {', '.join(MODEL_SIZES)}")
        return cls(**{**MODEL_SIZES[name], **overrides})

    def __post_init__(self):
        for field, value in asdict(self).items():
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPTConfig.{field} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")


# -----------------------------------------------------------------------------
# the model

class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        # query, key and value projections for all heads, in one matmul (OpenAI's layout)
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.c_proj.NANOGPT_SCALE_INIT = 1  # a residual projection: see GPT._init_weights
        self.n_head = config.n_head
        self.n_embd = config.n_embd

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, n_head, T, head_size): the heads become a batch dimension
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        # flash attention: the (T, T) attention matrix never reaches memory, and no mask buffer is needed
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.c_proj(y)


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        # GPT-2 used the tanh approximation of GELU (it was faster in TensorFlow in 2019); we keep it to match
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.NANOGPT_SCALE_INIT = 1

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x):
        # pre-norm (GPT-2's change from GPT-1): the residual stream itself is never normalised
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
            wpe=nn.Embedding(config.block_size, config.n_embd),  # learned position embeddings
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd),  # GPT-2 adds a final LayerNorm after the last block
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying (Press & Wolf 2017), as GPT-2 does: the input embedding is the output classifier
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)

    def _init_weights(self, module):
        # GPT-2's init: N(0, 0.02) everywhere, zero biases; the projections that add into the residual
        # stream are scaled by 1/sqrt(2 * n_layer), since each block adds twice (attention and MLP)
        if isinstance(module, nn.Linear):
            std = 0.02
            if hasattr(module, "NANOGPT_SCALE_INIT"):
                std *= (2 * self.config.n_layer) ** -0.5
            torch.nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, logits_at=None):
        """(logits, loss): logits (B, T, vocab_size), or (N, vocab_size) for an index logits_at into (B, T)
        that picks N positions; loss, the mean cross-entropy against targets (B, T), or None."""
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        # a bad token id would be an opaque device-side assert on CUDA; the check costs a host sync,
        # so compiled code (the training hot path, fed by checked shards) skips it
        if not torch.compiler.is_compiling() and idx.numel() and int(idx.max()) >= self.config.vocab_size:
            raise ValueError(f"token id {int(idx.max())} is out of range for vocab_size {self.config.vocab_size}")
        pos = torch.arange(0, T, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if logits_at is not None:
            # only the positions that will be scored (HellaSwag's ending tokens, a third of its positions):
            # the projection onto the vocabulary is ~30% of GPT-2 small's FLOPs, wasted anywhere else
            x = x[logits_at]
        logits = self.lm_head(x)  # (B, T, vocab_size), or (N, vocab_size) at logits_at
        loss = None
        if targets is not None:
            # reshape, not view: targets sliced from a longer row (x[:, 1:]) are not contiguous
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def num_params(self, non_embedding=False):
        """Parameter count; wte is shared with lm_head, so it counts once. non_embedding drops wpe too."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    # -------------------------------------------------------------------------
    # loading pretrained weights

    @classmethod
    def from_pretrained(cls, name_or_dir):
        """OpenAI's GPT-2 by name (through transformers and the HF hub), or a local save_pretrained folder."""
        if name_or_dir not in MODEL_SIZES:
            if not os.path.isdir(name_or_dir):
                # a path (it names a folder) that is not there reads better as such than as an unknown model name
                looks_like_path = os.sep in name_or_dir or name_or_dir.startswith(".")
                what = "no such folder" if looks_like_path else "unknown pretrained model"
                raise ValueError(f"{what} {name_or_dir!r}: expected one of {', '.join(MODEL_SIZES)} or a folder "
                                 "written by save_pretrained")
            if not os.path.isfile(os.path.join(name_or_dir, "config.json")):
                # transformers would build a default GPT-2 and report every weight of another size, then fail
                raise ValueError(f"{name_or_dir} is not a folder written by save_pretrained: it has no config.json")
        from transformers import GPT2LMHeadModel  # after the checks: a typo should not wait on this import
        # without a network the hub client retries for ~30 s, logging a "Retrying in 8s" and a "... thrown while
        # requesting" line each time: the error line below says it all
        hub_logs = [logging.getLogger(name) for name in ("huggingface_hub.utils._http", "huggingface_hub.hf_api")]
        levels = [log.level for log in hub_logs]
        for log in hub_logs:
            log.setLevel(logging.ERROR)
        try:
            hf, info = GPT2LMHeadModel.from_pretrained(name_or_dir, output_loading_info=True)
        except OSError as e:  # transformers reports an unreachable hub or a broken folder as OSError
            if os.path.isdir(name_or_dir):  # a local folder: no hub was asked, so no hint about being offline
                raise ValueError(f"could not load {name_or_dir!r} with transformers ({first_line(e, type(e).__name__)})"
                                 ": it is not a whole folder written by save_pretrained") from e
            quick = "" if os.environ.get("HF_HUB_OFFLINE") else " (and set HF_HUB_OFFLINE=1 to skip the retries)"
            raise ValueError(f"could not load {name_or_dir!r} with transformers ({first_line(e, type(e).__name__)}); "
                             f"offline, pass a local folder written by save_pretrained instead{quick}") from e
        except Exception as e:  # a weights file cut short (safetensors' SafetensorError), a config of another model
            raise ValueError(f"could not load {name_or_dir!r} with transformers ({type(e).__name__}: "
                             f"{first_line(e)})") from e
        finally:
            for log, level in zip(hub_logs, levels):
                log.setLevel(level)
        _check_plain_gpt2(hf, info, name_or_dir)
        c = hf.config
        model = cls(GPTConfig(block_size=c.n_positions, vocab_size=c.vocab_size,
                              n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd))
        model.load_state_dict(_from_hf_state_dict(hf.state_dict()))  # the same weights, Conv1D ones transposed
        return model

    @classmethod
    def load(cls, source, map_location="cpu"):
        """A model from an OpenAI name, a save_pretrained folder or a training checkpoint (.pt)."""
        if os.path.isfile(source):
            ckpt = load_checkpoint(source, map_location)
            try:
                model = cls(GPTConfig(**ckpt["config"]))
                model.load_state_dict(ckpt["model"])
            except (TypeError, ValueError, RuntimeError) as e:  # unknown config keys, bad sizes, weights of other shapes
                raise ValueError(f"{source} does not hold a model this code can build "
                                 f"({first_line(e)})") from e
            if bad := next((name for name, p in model.named_parameters() if not torch.isfinite(p).all()), None):
                # sampling would stop in torch.multinomial's traceback, and an evaluation would score nothing
                raise ValueError(f"{source} holds weights that are not finite (nan or inf in {bad}): the checkpoint "
                                 "of a run that diverged?")
            return model
        if source.endswith((".pt", ".pth")):
            raise ValueError(f"{source}: no such checkpoint file")
        if os.path.isdir(source) and not os.path.isfile(os.path.join(source, "config.json")):
            # a training run's --log-dir, given for one of its checkpoints
            checkpoints = sorted(name for name in os.listdir(source) if name.endswith(".pt"))
            if checkpoints:
                raise ValueError(f"{source} is a folder of training checkpoints, not one written by save_pretrained: "
                                 f"pass a checkpoint file, such as its last by name, "
                                 f"{os.path.join(source, checkpoints[-1])}")
        return cls.from_pretrained(source)

    # -------------------------------------------------------------------------
    # the optimizer

    def configure_optimizers(self, weight_decay, learning_rate, device_type, verbose=True):
        # decay the weights of matmuls and embeddings (every >= 2-D tensor), not biases or LayerNorm gains
        params = [p for p in self.parameters() if p.requires_grad]
        decay_params = [p for p in params if p.dim() >= 2]
        nodecay_params = [p for p in params if p.dim() < 2]
        optim_groups = [
            {"params": decay_params, "weight_decay": weight_decay},
            {"params": nodecay_params, "weight_decay": 0.0},
        ]
        # the fused kernel updates all parameters in one launch instead of a loop over tensors
        use_fused = "fused" in inspect.signature(torch.optim.AdamW).parameters and device_type == "cuda"
        if verbose:
            print(f"num decayed parameter tensors: {len(decay_params)}, "
                  f"with {sum(p.numel() for p in decay_params):,} parameters")
            print(f"num non-decayed parameter tensors: {len(nodecay_params)}, "
                  f"with {sum(p.numel() for p in nodecay_params):,} parameters")
            print(f"using fused AdamW: {use_fused}")
        return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=ADAMW_BETAS, eps=1e-8, fused=use_fused)


# -----------------------------------------------------------------------------
# checkpoints (written by train_gpt2.py) and Hugging Face state dicts

def load_checkpoint(path, map_location="cpu"):
    """A training checkpoint as a dict; weights_only=True, so a checkpoint can never run code."""
    try:
        open(path, "rb").close()  # an unreadable file first: is_zipfile below says False for it, as for a text file
    except OSError as e:
        raise ValueError(f"cannot read the checkpoint {path} ({e.strerror or e})") from e
    if os.path.isfile(path) and not zipfile.is_zipfile(path):  # torch.save has written zip archives since 1.6
        raise ValueError(f"{path} is not a training checkpoint (not a torch.save archive: a text file, or cut short "
                         "before its end)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated zip, a pickle with foreign objects, a text file...
        if (found := re.search(r"Unsupported global: GLOBAL (\S+)", str(e))) is not None:
            # the lecture's train_gpt2.py saves its config as a GPTConfig object: pickled code, which
            # weights_only=True refuses to run
            raise ValueError(f"{path} holds a pickled Python object ({found[1]}; the lecture's train_gpt2.py "
                             "saves its config as one), which a weights-only load refuses: in a Python session "
                             "you trust, load it with weights_only=False and save its 'model' with 'config' as "
                             "a dict (dataclasses.asdict)") from e
        raise ValueError(f"{path} is not a readable training checkpoint ({type(e).__name__}: "
                         f"{first_line(e, 'unreadable')})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path} is not a training checkpoint of this project (no 'model' and 'config' entries)")
    if not (isinstance(ckpt["model"], dict) and isinstance(ckpt["config"], dict)):
        raise ValueError(f"{path} is not a training checkpoint of this project (its 'model' and 'config' are a "
                         f"{type(ckpt['model']).__name__} and a {type(ckpt['config']).__name__}, not dicts)")
    ckpt["model"] = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    return ckpt


# OpenAI's checkpoints used a Conv1D module whose weight is the transpose of nn.Linear's
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _from_hf_state_dict(sd_hf):
    sd = {}
    for k, v in sd_hf.items():
        # causal-mask buffers of older transformers; the leading dot keeps attn.c_attn.bias, a real weight
        if k.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        sd[k] = v.t().contiguous() if k.endswith(_CONV1D) else v
    return sd


def _check_plain_gpt2(hf, info, name):
    """A ValueError unless the transformers model `hf` is GPT-2 as our GPT implements it, all its weights loaded."""
    c = hf.config
    if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh") or c.scale_attn_by_inverse_layer_idx \
            or c.reorder_and_upcast_attn or not c.scale_attn_weights or abs(c.layer_norm_epsilon - 1e-5) > 1e-12 \
            or c.n_inner not in (None, 4 * c.n_embd) or not c.tie_word_embeddings or c.add_cross_attention:
        raise ValueError(f"{name!r} is a GPT-2 variant this model does not implement (activation, attention "
                         "scaling, LayerNorm epsilon, MLP width, untied output weights or cross-attention differ)")
    # transformers fills weights missing from the files with random ones, and only says so in its log
    absent = sorted(k for k in info["missing_keys"]
                    if not k.endswith((".attn.bias", ".attn.masked_bias", "lm_head.weight")))
    if absent:
        raise ValueError(f"{name!r} lacks weights of GPT-2 ({', '.join(absent[:3])}"
                         f"{', ...' if len(absent) > 3 else ''}): it is not a whole GPT-2 checkpoint")


def export_hf(model, out_dir, vocab_size=VOCAB_SIZE):
    """Write a folder that transformers.GPT2LMHeadModel.from_pretrained (and pipeline) load.

    A vocab padded for speed (50304) is cut back to GPT-2's 50257: the extra rows are never targets.
    """
    from transformers import GPT2Config, GPT2LMHeadModel
    from gpt2_tokenizer import EOT, folder_error, write_hf_tokenizer_files
    c = model.config
    vocab_size = min(vocab_size, c.vocab_size)
    eot = EOT if vocab_size > EOT else None  # a toy vocabulary has no <|endoftext|>; transformers warns on one
    hf_config = GPT2Config(vocab_size=vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                           n_layer=c.n_layer, n_head=c.n_head, activation_function="gelu_new",
                           bos_token_id=eot, eos_token_id=eot, tie_word_embeddings=True)
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().float().cpu()
        if k in ("transformer.wte.weight", "lm_head.weight"):
            v = v[:vocab_size]
        sd[k] = v.t().contiguous() if k.endswith(_CONV1D) else v.clone()
    hf = GPT2LMHeadModel(hf_config)
    hf.load_state_dict(sd, strict=False)  # strict=False: some transformers versions add mask buffers
    try:
        os.makedirs(out_dir, exist_ok=True)
        hf.save_pretrained(out_dir)
        # transformers writes model.safetensors readable by its owner alone (0600); the folder is to be shared
        # (a serving container, another user), like the files beside it that follow the umask
        umask = os.umask(0)
        os.umask(umask)
        for name in os.listdir(out_dir):
            if name.startswith("model") and ".safetensors" in name:  # not a file of the user's in that folder
                os.chmod(os.path.join(out_dir, name), 0o666 & ~umask)
        if vocab_size == VOCAB_SIZE:  # the GPT-2 tokenizer only makes sense for GPT-2's vocabulary
            write_hf_tokenizer_files(out_dir, model_max_length=c.block_size)
    except OSError as e:  # a file in the way, a read-only or virtual filesystem, a full disk
        raise ValueError(f"cannot write the export folder {out_dir} ({folder_error(e)})") from e
    return out_dir


# -----------------------------------------------------------------------------
# devices: what --device means for sampling and evaluation

def resolve_device(name="auto"):
    """The torch device string for --device auto|cpu|cuda|cuda:N|mps, checked against this machine.

    auto: cuda, then mps, then cpu. A name torch cannot parse, or a device this machine lacks, is a
    ValueError naming the fix: torch would otherwise fail later with a traceback (an AssertionError
    from a CPU-only build, a RuntimeError listing twenty device types).
    """
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {name!r}: expected auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was asked for but torch sees no CUDA GPU (use --device cpu or auto)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name} was asked for but torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name} was asked for but this torch has no MPS backend")
    return name


def check_seed(seed):
    """--seed as torch takes it (manual_seed, Generator.manual_seed), or a ValueError naming the flag."""
    if not -2**63 <= seed < 2**64:
        raise ValueError(f"--seed must fit in 64 bits, got {seed}")


def first_line(e, default=""):
    """An exception's message on one line, for an error line: its first line, and the next as well when the
    first only announces it (torch.compile's "backend='inductor' raised:", then the cause)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return default
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]


def is_out_of_memory(e):
    # CUDA raises torch.OutOfMemoryError; the CPU allocator a plain RuntimeError that says so
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e))


# -----------------------------------------------------------------------------
# precision: what --dtype auto means for training, evaluation and sampling alike

def default_dtype(device_type, dtype="auto"):
    """The precision for --dtype auto|bfloat16|float32 on a cuda, cpu or mps device: "bfloat16" (autocast)
    or "float32".

    auto: bf16 on CUDA, as in the lecture, and on CPUs with bf16 dot products (AVX512_BF16 or AMX),
    where it measured fastest on our 2-core AVX512_BF16 CPU: a training step 1.08x float32's, HellaSwag
    on GPT-2 124M 1.72x (70.2 s -> 40.7 s, benchmarks/README.md). float32 elsewhere: other CPUs emulate
    bf16 (slower), and MPS keeps the lecture's float32.
    """
    if dtype == "auto":
        return "bfloat16" if device_type == "cuda" or (device_type == "cpu" and cpu_has_bf16()) else "float32"
    return dtype


def cpu_has_bf16():
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}  # torch >= 2.11
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


# the dtype to hand torch.autocast for each --dtype; None: no autocast, plain float32
AUTOCAST = {"bfloat16": torch.bfloat16, "float32": None}


def autocast(device_type, autocast_dtype):
    """torch.autocast to autocast_dtype (an AUTOCAST value); for None, a disabled one (plain float32)."""
    return torch.autocast(device_type=device_type, dtype=autocast_dtype or torch.float32,
                          enabled=autocast_dtype is not None)


# -----------------------------------------------------------------------------
# sampling

# the lecture's samples: 4 continuations of this prompt, 32 tokens long, top-k 50, seed 42 (+ the rank in training)
PROMPT, NUM_SAMPLES, SAMPLE_LENGTH, TOP_K, SAMPLE_SEED = "Hello, I'm a language model,", 4, 32, 50, 42


@torch.no_grad()
def generate(model, tokens, max_length, num_return_sequences=1, top_k=TOP_K, seed=SAMPLE_SEED, autocast_dtype=None):
    """Extend `tokens` (a list of ids) to max_length tokens in total, num_return_sequences times.

    Top-k sampling as in the lecture (k=50, the HF pipeline default); an explicit torch.Generator
    keeps sampling from touching the global RNG, so samples never change the training run.
    """
    device = next(model.parameters()).device
    block_size = model.config.block_size if hasattr(model, "config") else None
    x = torch.tensor(tokens, dtype=torch.long, device=device).unsqueeze(0).repeat(num_return_sequences, 1)
    rng = torch.Generator(device=device)
    rng.manual_seed(seed)
    while x.size(1) < max_length:
        context = x if block_size is None else x[:, -block_size:]
        with autocast(device.type, autocast_dtype):
            logits, _ = model(context)
        probs = F.softmax(logits[:, -1, :].float(), dim=-1)
        topk_probs, topk_indices = torch.topk(probs, top_k, dim=-1)
        ix = torch.multinomial(topk_probs, 1, generator=rng)
        x = torch.cat((x, torch.gather(topk_indices, -1, ix)), dim=1)
    return x.tolist()


# -----------------------------------------------------------------------------
# command line: sample from a model, export a checkpoint

def check_sample_args(args):
    """(device, prompt tokens, encoding) for `sample`'s flags, or a ValueError naming the flag."""
    from gpt2_tokenizer import get_encoding
    for name, value in (("--num-samples", args.num_samples), ("--max-length", args.max_length),
                        ("--top-k", args.top_k)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    check_seed(args.seed)
    device = resolve_device(args.device)
    enc = get_encoding()
    # <|endoftext|> is the special token here, as in OpenAI's unconditional samples, not six ordinary tokens
    prompt = enc.encode(args.prompt, allowed_special={"<|endoftext|>"})
    if not prompt:
        raise ValueError("--prompt is empty: GPT-2 needs at least one token to continue "
                         "(pass --prompt '<|endoftext|>' for unconditional samples)")
    if args.max_length <= len(prompt):
        raise ValueError(f"--max-length {args.max_length} leaves nothing to sample: it counts the prompt's "
                         f"{len(prompt)} tokens, so it must be more than {len(prompt)}")
    return device, prompt, enc


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help keeps the docstring's layout and shows each flag's default, where it has one that its help
    does not already explain (as argparse.ArgumentDefaultsHelpFormatter does, less its "(default: None)")."""

    def _get_help_string(self, action):
        help = action.help or ""
        store_true = action.const is True and action.default is False  # off unless given: nothing to show
        if action.default in (None, argparse.SUPPRESS) or "default" in help or not action.option_strings or store_true:
            return action.help
        return help + " (default: %(default)s)"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sample", help="sample text from a model", formatter_class=HelpFormatter)
    p.add_argument("--model", default="gpt2",
                   help=f"an OpenAI name ({', '.join(MODEL_SIZES)}), a save_pretrained folder or a checkpoint .pt")
    p.add_argument("--prompt", default=PROMPT,
                   help="the text every sample continues; '<|endoftext|>' samples unconditionally, as OpenAI's did")
    p.add_argument("--num-samples", type=int, default=NUM_SAMPLES, help="samples, drawn as one batch")
    p.add_argument("--max-length", type=int, default=SAMPLE_LENGTH, help="tokens per sample, prompt included")
    p.add_argument("--top-k", type=int, default=TOP_K, help="sample among the k likeliest tokens (the lecture's)")
    p.add_argument("--seed", type=int, default=SAMPLE_SEED, help="the sampling generator's seed (the lecture's)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA if there is a GPU, else MPS, else the CPU, as train_gpt2.py), cpu, cuda, cuda:N "
                        "or mps")
    p = sub.add_parser("export", help="write a checkpoint as a Hugging Face GPT2LMHeadModel folder")
    p.add_argument("checkpoint", help="a training checkpoint .pt (or any --model source)")
    p.add_argument("out_dir")
    args = parser.parse_args(argv)

    from gpt2_tokenizer import TokenizerUnavailable
    try:
        if args.command == "export":
            print(f"wrote {export_hf(GPT.load(args.checkpoint), args.out_dir)}")
            return
        device, prompt, enc = check_sample_args(args)  # before the model loads: a typo should not wait on it
        model = GPT.load(args.model).to(device).eval()
        dtype = AUTOCAST[default_dtype(torch.device(device).type)]
        rows = generate(model, prompt, args.max_length, args.num_samples,
                        min(args.top_k, model.config.vocab_size), args.seed, dtype)
        for i, row in enumerate(rows):
            print(f"sample {i}: {enc.decode([t for t in row if t < enc.n_vocab])}")
    except (ValueError, TokenizerUnavailable) as e:
        sys.exit(f"error: {e}")
    except RuntimeError as e:
        if not is_out_of_memory(e):
            raise
        sys.exit(f"error: out of memory ({first_line(e)}); fewer --num-samples or a smaller "
                 "--max-length need less")


if __name__ == "__main__":
    main()
